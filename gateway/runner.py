"""The queue runner: the loops that take messages from the spool, run the
pipeline on them and hand them to delivery (Postfix's qmgr, Mailman's
runners).  It is apart from what it runs: the pipeline (gateway/pipeline/)
knows nothing of queues, and delivery (gateway/delivery/queue.py) nothing
of processing.

No loop dies quietly: an exception from anything a loop runs is logged
with the queue id, counted (``gateway_runner_errors``), and the message is
left where ``Spool.recover()`` finds it, while the loop goes on.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from gateway import logs, memory, metrics
from gateway.config import Config, RouteSettings
from gateway.delivery import Content
from gateway.delivery.queue import Deliverer
from gateway.ingress.routing import route_for
from gateway.mime.decode import message_header
from gateway.pipeline import Pipeline
from gateway.pipeline.services import Services
from gateway.spool.durable import write_atomic
from gateway.spool.envelope import Envelope, State
from gateway.spool.queue import MESSAGE, RESULT, REWRITTEN, Handle, Locked, Spool

log = logs.get("worker")

# Seconds between looks for messages a dead process left in ``active``.
RECOVERY_INTERVAL = 30.0
# Bytes of a message read to find its Message-ID when retrying it.
HEADER_READ = 64 << 10
# Seconds with no message in hand after which the heap is trimmed.
IDLE_TRIM_SECONDS = 2.0


@dataclass
class Loaded:
    """What handling a claimed message starts from, read with the claim."""

    envelope: Envelope
    state: State
    # rewritten.eml is there: processed before, deliver it as it is.
    rewritten: bool


@dataclass
class Claimed:
    """A message this process holds, and what was read with the claim (or
    why its envelope could not be read)."""

    handle: Handle
    loaded: Loaded | Exception


class Runner:
    """Dispatches, claims, processes and delivers spooled messages; one per
    process, ``worker.concurrency`` tasks."""

    def __init__(self, cfg: Config, spool: Spool, pipeline: Pipeline, deliverer: Deliverer) -> None:
        self.cfg = cfg
        self.spool = spool
        self.pipeline = pipeline
        self.deliverer = deliverer
        self._kick = asyncio.Event()
        self._inflight: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._queue: asyncio.Queue[tuple[str, str, tuple[Handle, Envelope] | None]] = asyncio.Queue()
        # Tasks waiting for a message (can_take).
        self._idle = 0
        # The trim due once nothing has been in hand for IDLE_TRIM_SECONDS.
        self._trim_timer: asyncio.TimerHandle | None = None

    @property
    def services(self) -> Services:
        """What the pipeline's steps share."""
        return self.pipeline.services

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded config: routes, policies, next hops."""
        self.cfg = cfg
        self.services.configure(cfg)
        self.deliverer.configure(cfg, self.services.limits)

    # -- scheduling -------------------------------------------------------

    def kick(self) -> None:
        """Wake the dispatcher (a message may be waiting)."""
        self._kick.set()

    def can_take(self) -> bool:
        """Whether a task is waiting for work (a message handed over locked
        would be taken at once, not kept from the other processes)."""
        return not self._stopping and self._idle > self._queue.qsize()

    def enqueue(self, queue_id: str, taken: tuple[Handle, Envelope] | None = None) -> None:
        """Take a message this process has just queued, without waiting for
        the next scan of ``incoming``; ``taken``: the message is in
        ``active``, locked by this process, with its envelope."""
        if self._stopping or queue_id in self._inflight:
            if taken is not None:
                # Unlocked in active: recover() puts it back in incoming.
                taken[0].release()
            return
        self._inflight.add(queue_id)
        self._queue.put_nowait(("incoming", queue_id, taken))

    async def start(self) -> None:
        """Start the dispatcher and the processing tasks."""
        self._tasks.append(asyncio.create_task(self._dispatch(), name="dispatch"))
        for i in range(self.cfg.worker.concurrency):
            self._tasks.append(asyncio.create_task(self._run(), name=f"worker-{i}"))

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking new messages; let the ones in hand finish within ``grace``."""
        self._stopping = True
        self._kick.set()
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        for _ in self._tasks:
            self._queue.put_nowait(("", "", None))
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.deliverer.close()
        await self.services.close()

    async def _dispatch(self) -> None:
        last_deferred_scan = 0.0
        last_recovery = time.monotonic()
        while not self._stopping:
            try:
                if time.monotonic() - last_recovery >= RECOVERY_INTERVAL:
                    last_recovery = time.monotonic()
                    recovery = await asyncio.to_thread(self.spool.recover, RECOVERY_INTERVAL)
                    # One line per entry, saying what it was and why it was
                    # taken (whose, how old, whether its owner still runs).
                    for found in recovery.found:
                        log.warning("spool recovery took an entry no live process holds", **found.fields())
                for qid in await asyncio.to_thread(self.spool.ids, "incoming"):
                    self._offer("incoming", qid)
                now = time.time()
                if now - last_deferred_scan >= self.cfg.worker.scan_interval:
                    last_deferred_scan = now
                    for qid in await asyncio.to_thread(self._due_deferred, now):
                        self._offer("deferred", qid)
            except Exception:  # noqa: BLE001 - the dispatcher never dies: a full or broken disk passes
                metrics.RUNNER_ERRORS.labels("dispatch").inc()
                log.exception("dispatcher: scanning the spool failed; trying again")
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=min(1.0, self.cfg.worker.scan_interval))
            except TimeoutError:
                pass

    def _idle_soon(self) -> None:
        """The last message in hand is done: trim the heap if nothing else
        comes within ``IDLE_TRIM_SECONDS`` (each message done starts the wait again)."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = asyncio.get_running_loop().call_later(IDLE_TRIM_SECONDS, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        """Give the heap freed by the last burst back to the system.

        Once per idle spell, on the event loop: it took 1-8 ms after the
        bench's mix, and nothing is in hand to wait for it.  Without it a
        process rested at 160-280 MiB after the mix, in free chunks glibc
        kept; with it (and one malloc arena) at 86-87 MiB, 77 MiB fresh.
        """
        self._trim_timer = None
        if not self._inflight and not self._stopping:
            memory.trim()

    def _offer(self, queue: str, qid: str) -> None:
        if qid not in self._inflight:
            self._inflight.add(qid)
            self._queue.put_nowait((queue, qid, None))

    def _due_deferred(self, now: float) -> list[str]:
        due = []
        for qid in self.spool.ids("deferred"):
            try:
                state = State.from_json((self.spool.root / "deferred" / qid / "state.json").read_bytes())
            except (OSError, ValueError, TypeError):
                state = State()
            if state.next_attempt <= now:
                due.append(qid)
        return due

    async def _run(self) -> None:
        while True:
            self._idle += 1
            try:
                queue, qid, taken = await self._queue.get()
            finally:
                self._idle -= 1
            if not qid:
                return
            try:
                await self._take(queue, qid, taken)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a task never dies: the message waits for recovery
                metrics.RUNNER_ERRORS.labels("message").inc()
                log.exception("runner: the message could not be handled; left for recovery", queue_id=qid)
            finally:
                self._inflight.discard(qid)
                if not self._inflight:
                    self._idle_soon()

    async def _take(self, queue: str, qid: str, taken: tuple[Handle, Envelope] | None) -> None:
        try:
            if taken is not None:
                claimed = Claimed(taken[0], Loaded(taken[1], State(), False))
            else:
                # On the loop: a claim is a few metadata calls (a lock that
                # never waits, a rename that is not fsynced, the envelope read
                # from a file just written), cheaper than a hop to a thread.
                claimed = self._claim(qid, queue)
        except (Locked, FileNotFoundError):
            return
        except OSError as e:
            log.error("cannot claim message", queue_id=qid, error=str(e))
            return
        try:
            await self.handle(claimed)
        finally:
            # Released where it is: a message an error left in active is
            # taken back by recover().
            claimed.handle.release()

    # -- one message ------------------------------------------------------

    def _claim(self, qid: str, queue: str) -> Claimed:
        """Claim a message and read what handling it starts with (blocking,
        but brief: no fsync, no lock wait)."""
        handle = self.spool.claim(qid, queue, "active")
        try:
            try:
                envelope = handle.envelope()
            except (OSError, ValueError, TypeError) as e:
                return Claimed(handle, e)
            return Claimed(handle, Loaded(envelope, handle.state(), handle.has(REWRITTEN)))
        except BaseException:
            handle.release()
            raise

    async def handle(self, claimed: Claimed) -> None:
        """Process (if not yet done) and deliver one claimed message."""
        handle, loaded = claimed.handle, claimed.loaded
        qlog = log.bind(queue_id=handle.queue_id)
        if isinstance(loaded, Exception):
            qlog.error("unreadable envelope; moved to corrupt", error=str(loaded))
            await asyncio.to_thread(handle.move, "corrupt")
            return
        envelope = loaded.envelope
        # Every line about this message, delivery's included, carries its
        # queue id, client and Message-ID (gateway.logs.message).
        message_id = await asyncio.to_thread(_message_id, handle.file(REWRITTEN)) if loaded.rewritten else ""
        with logs.message(handle.queue_id, client=envelope.client_addr, message_id=message_id):
            await self._handle(handle, loaded, qlog)

    async def _handle(self, handle: Handle, loaded: Loaded, qlog: Any) -> None:
        envelope = loaded.envelope
        route = next((r for r in self.cfg.routes if r.name == envelope.route), None) or \
            self._route_for(envelope.rcpt_tos)
        if route is None:
            await self._hold(handle, f"no route named {envelope.route!r} in the config any more")
            return
        try:
            if loaded.rewritten:
                content = Content(handle.file(REWRITTEN))
            else:
                content = await self.process(handle, envelope, route)
            await self.deliverer.deliver(handle, envelope, route, content, loaded.state)
        except asyncio.CancelledError:
            # Shutdown: the message stays in active and recover() requeues it.
            raise
        except Exception as e:  # noqa: BLE001 - rule 1: never lose a message
            qlog.exception("processing failed; message held")
            await self._hold(handle, f"internal error: {type(e).__name__}: {e}")

    async def process(self, handle: Handle, envelope: Envelope, route: RouteSettings) -> Content:
        """Run the pipeline; return what to deliver.

        When anything was stored, refused or unpacked, the rewritten message
        is saved in the spool (``rewritten.eml``) before delivery, so a retry
        or a crash never offloads twice; a message that needed no change is
        delivered straight from the spooled original.
        """
        with handle.message() as src:
            job = await self.pipeline.process(src, handle.file(MESSAGE), envelope, route, handle.file)
        logs.set_message_id(job.message_id)
        content = Content(job.path or handle.file(MESSAGE), job.segments)
        if job.changed:
            await asyncio.to_thread(self._save_output, handle, content, job.result)
            content = Content(handle.file(REWRITTEN))
        return content

    def _save_output(self, handle: Handle, content: Content, result: dict[str, Any]) -> None:
        content.write_to(handle.file(REWRITTEN))
        write_atomic(handle.file(RESULT), json.dumps(result).encode())

    def _route_for(self, rcpts: list[str]) -> RouteSettings | None:
        for r in rcpts:
            route = route_for(self.cfg.routes, r)
            if route is not None:
                return route
        return None

    async def _hold(self, handle: Handle, reason: str) -> None:
        def _do() -> None:
            state = handle.state()
            state.hold_reason = reason
            handle.save_state(state)
            handle.move("hold")

        await asyncio.to_thread(_do)
        metrics.HELD.labels(reason.split(":")[0]).inc()
        log.warning("message held", queue_id=handle.queue_id, reason=reason)


def _message_id(path: Path) -> str:
    """The Message-ID in a spooled message's header (blocking): a message
    retried from ``deferred`` is not parsed again."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_READ)
    except OSError:
        return ""
    end = head.find(b"\r\n\r\n")
    msg = BytesHeaderParser(policy=compat32).parsebytes(head[:end + 2] if end >= 0 else head)
    return " ".join(message_header(msg, "Message-ID").split())
