"""Turns that the nodes of a fleet take through the object store they share.

Nodes of a fleet share nothing but the object store and the keys
(docs/DEPLOY.md).  Work that must happen once per interval across the
fleet, not once per node (a retention sweep over a store), is run by the
node that first creates that interval's turn object,
``leases/<name>/<slot>`` with ``slot = floor(time / interval)``, through
the store's create-if-absent (``Storage.create``: S3 ``If-None-Match: *``,
Azure and GCS preconditions, ``link(2)`` on a filesystem).  Exactly one
create succeeds per slot however many nodes try, so nodes need no
election, no heartbeat and no clock agreement finer than a fraction of the
interval.  A node that dies during its turn loses that interval's run and
the next interval runs again, so what runs this way must be idempotent and
catch up.  The winner deletes the turn object of two intervals before, so
the prefix holds two or three objects per name.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable

from gateway import logs
from gateway.storage.base import ObjectMeta, Storage, StorageError

log = logs.get("fleet")

PREFIX = "leases/"


def node_name() -> str:
    """This process as the turn objects name it: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def turn_key(name: str, slot: int) -> str:
    """The object whose creation is the turn ``slot`` of ``name``."""
    return f"{PREFIX}{name}/{slot}"


async def take_turn(store: Storage, name: str, interval: float, now: float | None = None) -> int | None:
    """The slot of ``now`` when this node took its turn (created its turn
    object), or None when another node had it.  Raises StorageError when
    the store does not answer."""
    now = time.time() if now is None else now
    slot = int(now // interval)
    body = json.dumps({"name": name, "slot": slot, "node": node_name(), "at": round(now, 3),
                       "nonce": os.urandom(8).hex()}).encode()
    if not await store.create(turn_key(name, slot), body, ObjectMeta(content_type="application/json")):
        return None
    try:
        await store.delete(turn_key(name, slot - 2))
    except StorageError:
        pass  # history only; the next winner tries again
    return slot


class Periodic:
    """Run ``job`` once per ``interval`` seconds across every node that runs
    a Periodic of the same ``name`` on the same store.

    Each node wakes at every interval boundary and tries to take the turn;
    the one that does runs ``job``.  An unavailable store skips the interval
    (logged): such work is never urgent, and running it on every node
    instead would be what the turn is there to prevent."""

    def __init__(self, name: str, interval: float, store: Storage, job: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval = interval
        self.store = store
        self.job = job
        self.runs = 0
        self.slot: int | None = None  # the slot of the turn taken last (for the job to read)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start waking at interval boundaries (on the running loop)."""
        self._task = asyncio.create_task(self._forever(), name=f"periodic-{self.name}")

    async def stop(self) -> None:
        """Stop; a run under way is cancelled (the next interval catches up)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self, now: float | None = None) -> bool:
        """Take the turn of ``now``'s interval and run ``job`` if this node
        got it; True when it ran."""
        slot = await take_turn(self.store, self.name, self.interval, now)
        if slot is None:
            return False
        self.slot = slot
        started = time.monotonic()
        result = await self.job()
        self.runs += 1
        log.info("periodic run", name=self.name, slot=slot, store=self.store.name,
                 seconds=round(time.monotonic() - started, 3), result=result)
        return True

    async def _forever(self) -> None:
        while True:
            # The slot is computed from the boundary slept to, not from the
            # clock after waking: a timer that fires a hair early must not
            # try the interval that has just ended.
            boundary = (time.time() // self.interval + 1) * self.interval
            await asyncio.sleep(max(0.0, boundary - time.time()))
            try:
                await self.run_once(boundary + self.interval / 1000)
            except StorageError as e:
                log.warning("periodic run skipped: the store is unavailable", name=self.name, error=str(e))
            except Exception as e:  # noqa: BLE001 - the next interval tries again
                log.error("periodic run failed", name=self.name, error=f"{type(e).__name__}: {e}")
