"""Retention on the filesystem store: the gateway deletes what has expired.

A cloud store runs its own lifecycle rules; a directory has none, so the
worker processes sweep it: every ``SWEEP_INTERVAL`` seconds (and at start),
one process of the fleet in turn (``Sweeper``), each prefix of the store's
retention plan (``retention.plan``) is walked and every file whose mtime
is older than the prefix's days is deleted, with its
metadata sidecar.  ``storage apply-retention`` runs the same sweep once.

Several processes, or several nodes on one shared directory, may sweep at
the same time, and writers keep writing meanwhile; so every step tolerates
losing a race: a file another sweeper deleted first is skipped, and a
directory is removed only when it is empty and has not changed for
``DIR_GRACE`` seconds (``rmdir`` fails on a directory that is not empty; a
writer that finds its directory gone makes it again, see
``filesystem._create``).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway import fleet, logs
from gateway.storage.base import Storage
from gateway.storage.retention import PrefixRetention

log = logs.get("retention")

SWEEP_INTERVAL = 3600
DIR_GRACE = 3600
_META = ".meta.json"


def sweep(root: Path, rules: list[PrefixRetention], now: float | None = None) -> dict[str, int]:
    """Delete what has expired under each prefix of ``rules`` in ``root``;
    return the objects deleted per rule name (blocking: call in a thread)."""
    now = time.time() if now is None else now
    counts: dict[str, int] = {}
    for rule in rules:
        base = root / rule.prefix.rstrip("/")
        counts[rule.name] = counts.get(rule.name, 0) + _sweep_prefix(base, now - rule.days * 86400, now)
    return counts


def _sweep_prefix(base: Path, cutoff: float, now: float) -> int:
    deleted = 0
    for dirpath, _, files in os.walk(base, topdown=False):
        for name in files:
            path = os.path.join(dirpath, name)
            if name.endswith(_META) and os.path.exists(path[:-len(_META)]):
                continue  # a sidecar goes with its object, judged by the object's age
            try:
                if os.lstat(path).st_mtime >= cutoff:
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue  # another sweeper (or a delete) was first
            if not name.endswith(_META) and not name.startswith("."):
                deleted += 1
                try:
                    os.unlink(path + _META)
                except FileNotFoundError:
                    pass
        if dirpath != str(base):
            try:
                if os.stat(dirpath).st_mtime < now - DIR_GRACE:
                    os.rmdir(dirpath)
            except OSError:
                pass  # not empty, or gone already
    return deleted


class Sweeper:
    """The periodic sweep of every filesystem store, in a worker process.

    Each store's sweep takes its turn through the store itself
    (``fleet.Periodic``): however many processes or nodes share one
    directory, one of them sweeps it per interval, at start and then at
    every interval boundary.  The sweep would be safe run by all of them;
    the turn keeps N nodes from walking the same tree N times."""

    def __init__(self, stores: Callable[[], list[tuple[str, Storage, Path, list[PrefixRetention]]]],
                 interval: float = SWEEP_INTERVAL) -> None:
        self.stores = stores
        self.interval = interval
        self._periodic: list[fleet.Periodic] = []
        self._first: asyncio.Task[None] | None = None

    def start(self) -> None:
        """One turn-taking sweep per filesystem store, the first at once."""
        for name, store, _, _ in self.stores():
            self._periodic.append(fleet.Periodic(f"retention-{name}", self.interval, store, self._job(name)))
        for p in self._periodic:
            p.start()
        self._first = asyncio.create_task(self._at_start(), name="retention-sweep-at-start")

    async def stop(self) -> None:
        """Stop sweeping; a sweep under way is cancelled (the next catches up)."""
        if self._first is not None:
            self._first.cancel()
            await asyncio.gather(self._first, return_exceptions=True)
        for p in self._periodic:
            await p.stop()

    async def _at_start(self) -> None:
        for p in self._periodic:
            try:
                await p.run_once()
            except Exception as e:  # noqa: BLE001 - logged; the next interval tries again
                log.error("retention sweep failed", store=p.store.name, error=f"{type(e).__name__}: {e}")

    def _job(self, name: str) -> Callable[[], Awaitable[dict[str, int]]]:
        async def job() -> dict[str, int]:
            # The plan as the config in force says (a reload may change it).
            for n, _, root, rules in self.stores():
                if n == name:
                    counts = await asyncio.to_thread(sweep, root, rules)
                    if any(counts.values()):
                        log.info("retention sweep", store=name, **{k: v for k, v in counts.items() if v})
                    return counts
            return {}
        return job
