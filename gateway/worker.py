"""The worker: takes messages from the spool, carries out the policies'
decisions, and delivers.

For each message: verify its DKIM, SPF, DMARC and ARC on the original
(before anything changes it); parse its structure from the spool file; ask
the route's policies about each leaf part; offload the parts they say to offload
(streamed from the spool into storage, checked against the size and hash
measured beforehand); rewrite the message; put the Authentication-Results header on top and seal
the final bytes (ARC, optional DKIM); write ``rewritten.eml`` so a retry
never offloads twice; deliver to the next hop.  Everything after the 250 is
here, so everything here holds to rule 1: any exception moves the message to
``hold`` with the reason, never loses it, and the original stays in the
spool until the next hop has taken the message or a DSN has gone back.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from collections import Counter
from typing import Any, AsyncIterator, Callable, Iterator

import policies
from gateway import autoreply, invitations, logs, metrics
from gateway.authn.resolver import Resolver
from gateway.authn.seal import Key, Sealer
from gateway.authn.verify import Verification, Verifier
from gateway.config import Config, RouteSettings
from gateway.delivery import Content, DeliveryResult, NextHop
from gateway.delivery import build as build_next_hop
from gateway.delivery.dsn import build_dsn
from gateway.links import records
from gateway.links.mint import mint
from gateway.links.tokens import Keyring, new_object_id
from gateway.mime import container, filenames, tnef, uuencode
from gateway.mime.decode import Measure, decoded_bytes, decoded_chunks, measure, message_header
from gateway.mime.parse import ENCODED_MESSAGE, Limits, Part, parse
from gateway.mime.rewrite import (Link, Replacement, Segment, cid_references, human_size, notice_part, plan,
                                  segments_size, split_fields, write_segments)
from gateway.mime.source import Source
from policies.filetypes import DEFAULT_NAME_EXTENSIONS
from policies.next_hop_limits import NOTICE_ALLOWANCE, Kept, extra_offloads
from gateway.partfacts import HEAD_BYTES, object_key, part_facts, safe_type, utc_stamp
from gateway.spool import (MESSAGE, RESULT, REWRITTEN, Envelope, Handle, Locked, Spool, State,
                           write_atomic)
from gateway.scan import Clamd
from gateway.storage.base import ObjectMeta, Storage, StorageError

log = logs.get("worker")

# The message with its TNEF parts unpacked, in the message's spool directory.
UNPACKED = "unpacked.eml"
# HTML bodies up to this size are read for cid: references (inline images).
MAX_HTML_SCAN = 8 << 20

# Text parts up to this size are searched for uuencoded files (in memory,
# as a rewrite of the text would hold it anyway); larger ones that have a
# "begin" line are not examined and quarantined whole.
MAX_UU_SCAN = 64 << 20

# Messages up to this size are parsed on the event loop (see process_source).
INLINE_PARSE = 64 << 10

# Seconds between looks for messages a dead process left in ``active``.
RECOVERY_INTERVAL = 30.0
# Seconds the auto-reply waits for its upload invitation to be saved: the
# message it is about waits too (the store may be the one failing).
INVITATION_TIMEOUT = 5.0


class QuarantineError(Exception):
    """A refused file could not be kept in the quarantine; the message is held."""


@dataclass
class Offloaded:
    """One part moved to storage."""

    part: Part
    filename: str
    key: str
    size: int
    sha256: str
    url: str
    object_id: str = ""
    expires: int = 0


@dataclass
class Loaded:
    """What handling a claimed message starts from, read with the claim."""

    envelope: Envelope
    state: State
    # rewritten.eml is there: processed before, deliver it as it is.
    rewritten: bool


@dataclass
class Processed:
    """What processing made of one message file: the output as segments of
    that file, and what was stored or refused on the way."""

    segments: list[Segment]
    result: dict[str, Any]
    # True when a part was offloaded, refused or replaced: the body differs
    # from the input (otherwise only the trace headers are new).
    changed: bool
    # The file the segments refer to when it is not the input: the message
    # with its TNEF parts unpacked.
    path: Path | None = None


class Worker:
    """Processes and delivers spooled messages; one per process, many tasks.

    The milter builds one without a spool and never starts it: it only calls
    ``process_file``, so both ingresses run the same pipeline.
    """

    def __init__(self, cfg: Config, spool: Spool | None, stores: dict[str, Storage], keyring: Keyring,
                 audit: logs.AuditLog) -> None:
        self.spool = spool
        self.stores = stores
        self.keyring = keyring
        self.audit = audit
        self._kick = asyncio.Event()
        self._inflight: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._queue: asyncio.Queue[tuple[str, str, tuple[Handle, Envelope] | None]] = asyncio.Queue()
        # Tasks waiting for a message (can_take).
        self._idle = 0
        # Failures that fail open, counted in this process for the log lines
        # that report them (gateway/metrics.py counts them across processes).
        self.counts: Counter[str] = Counter()
        # Shared by every process on the spool directory, the milter's too.
        self.rates = autoreply.RateStore((spool.root if spool is not None else cfg.path(cfg.gateway.spool_dir))
                                         / "autoreply")
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded config: routes, policies, next hops."""
        self.cfg = cfg
        self.routes = {r.name: r for r in cfg.routes}
        self.policies = {r.name: [policies.build(p.name, p.settings) for p in r.policies] for r in cfg.routes}
        base = Path(cfg.base_dir)
        self.next_hops: dict[str, NextHop] = {}
        for r in cfg.routes:
            self.next_hops[r.name] = build_next_hop(
                r.next_hop, base_dir=base, hostname=cfg.gateway.hostname, tls=r.tls,
                connect_timeout=cfg.delivery.connect_timeout, command_timeout=cfg.delivery.command_timeout,
                max_connections=cfg.delivery.connections_per_next_hop,
                tls_ca_file=cfg.path(r.tls_ca_file) if r.tls_ca_file else None)
        self.bounce_hop = build_next_hop(cfg.delivery.bounce_next_hop, base_dir=base,
                                         hostname=cfg.gateway.hostname)
        self.autoreply_hops: dict[str, NextHop] = {
            r.name: build_next_hop(r.autoreply.next_hop, base_dir=base, hostname=cfg.gateway.hostname,
                                   connect_timeout=cfg.delivery.connect_timeout,
                                   command_timeout=cfg.delivery.command_timeout)
            for r in cfg.routes if r.autoreply is not None}
        self.scanner = Clamd(cfg.clamd.address, cfg.clamd.timeout) if cfg.clamd is not None else None
        self.limits = Limits(max_header_bytes=cfg.worker.max_header_bytes, max_depth=cfg.worker.max_mime_depth,
                             max_parts=cfg.worker.max_parts, max_header_fields=cfg.worker.max_header_fields,
                             max_header_line=cfg.worker.max_header_line,
                             max_params=cfg.worker.max_header_params)
        for r in cfg.routes:
            if r.unexamined == "forward-unexamined":
                log.error("route forwards parts it could not examine to the next hop as they came "
                          "(unexamined = \"forward-unexamined\"); executables behind a MIME limit reach agents",
                          route=r.name)
        self._offload_slots = asyncio.Semaphore(cfg.worker.offload_concurrency)
        auth = cfg.auth
        self.authserv_id = (auth.authserv_id or cfg.gateway.hostname).lower()
        self.verifier = Verifier(self.authserv_id, Resolver(auth.servers(), auth.dns_timeout),
                                 cfg.worker.max_header_bytes) if auth.verify else None
        keys = {name: Key.load(k.domain, k.selector, cfg.path(k.key_file)) if k is not None else None
                for name, k in (("arc", auth.arc), ("dkim", auth.dkim))}
        self.sealer = Sealer(self.authserv_id, keys["arc"], keys["dkim"]) if any(keys.values()) else None

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
        for _ in self._tasks:
            self._queue.put_nowait(("", "", None))
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for hop in [*self.next_hops.values(), self.bounce_hop, *self.autoreply_hops.values()]:
            await hop.close()

    async def _dispatch(self) -> None:
        last_deferred_scan = 0.0
        last_recovery = time.monotonic()
        while not self._stopping:
            if time.monotonic() - last_recovery >= RECOVERY_INTERVAL:
                last_recovery = time.monotonic()
                counts = await asyncio.to_thread(self.spool.recover, RECOVERY_INTERVAL)
                if any(counts.values()):
                    log.warning("spool recovered from a dead process", **counts)
            for qid in await asyncio.to_thread(self.spool.ids, "incoming"):
                if qid not in self._inflight:
                    self._inflight.add(qid)
                    self._queue.put_nowait(("incoming", qid, None))
            now = time.time()
            if now - last_deferred_scan >= self.cfg.worker.scan_interval:
                last_deferred_scan = now
                for qid in await asyncio.to_thread(self._due_deferred, now):
                    if qid not in self._inflight:
                        self._inflight.add(qid)
                        self._queue.put_nowait(("deferred", qid, None))
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=min(1.0, self.cfg.worker.scan_interval))
            except asyncio.TimeoutError:
                pass

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
                if taken is not None:
                    handle, loaded = taken[0], Loaded(taken[1], State(), False)
                else:
                    handle, loaded = await asyncio.to_thread(self._claim, qid, queue)
            except (Locked, FileNotFoundError):
                self._inflight.discard(qid)
                continue
            except OSError as e:
                log.error("cannot claim message", queue_id=qid, error=str(e))
                self._inflight.discard(qid)
                continue
            try:
                await self.handle(handle, loaded)
            finally:
                handle.release()
                self._inflight.discard(qid)

    # -- one message ------------------------------------------------------

    def _claim(self, qid: str, queue: str) -> tuple[Handle, "Loaded | Exception"]:
        """Claim a message and read what handling it starts with, in one
        thread call (blocking)."""
        handle = self.spool.claim(qid, queue, "active")
        try:
            try:
                envelope = handle.envelope()
            except (OSError, ValueError, TypeError) as e:
                return handle, e
            return handle, Loaded(envelope, handle.state(), handle.has(REWRITTEN))
        except BaseException:
            handle.release()
            raise

    async def handle(self, handle: Handle, loaded: "Loaded | Exception") -> None:
        """Process (if not yet done) and deliver one claimed message."""
        qlog = log.bind(queue_id=handle.queue_id)
        if isinstance(loaded, Exception):
            qlog.error("unreadable envelope; moved to corrupt", error=str(loaded))
            await asyncio.to_thread(handle.move, "corrupt")
            return
        envelope = loaded.envelope
        route = self.routes.get(envelope.route) or self._route_for(envelope.rcpt_tos)
        if route is None:
            await self._hold(handle, f"no route named {envelope.route!r} in the config any more")
            return
        try:
            if loaded.rewritten:
                content = Content(handle.file(REWRITTEN))
            else:
                content = await self.process(handle, envelope, route)
            await self.deliver(handle, envelope, route, content, loaded.state)
        except asyncio.CancelledError:
            # Shutdown: the message stays in active and recover() requeues it.
            raise
        except Exception as e:  # noqa: BLE001 - rule 1: never lose a message
            qlog.exception("processing failed; message held")
            await self._hold(handle, f"internal error: {type(e).__name__}: {e}")

    def _route_for(self, rcpts: list[str]) -> RouteSettings | None:
        from gateway.ingress.routing import route_for

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

    async def process(self, handle: Handle, envelope: Envelope, route: RouteSettings) -> Content:
        """Parse, decide, offload and rewrite; return what to deliver.

        When anything was stored, refused or unpacked, the rewritten message
        is saved in the spool (``rewritten.eml``) before delivery, so a retry
        or a crash never offloads twice; a message that needed no change is
        delivered straight from the spooled original.
        """
        qlog = log.bind(queue_id=handle.queue_id, route=route.name)
        # Verified before the policies and the rewrite change anything.
        auth = await self._verify(handle, envelope, qlog)
        src = handle.message()
        try:
            out = await self.process_source(src, envelope, route, qlog, handle.file)
        finally:
            src.close()
        path = out.path or handle.file(MESSAGE)
        content = Content(path, await self._finish(handle, path, out.segments, auth, qlog))
        if out.changed:
            await asyncio.to_thread(self._save_output, handle, content, out.result)
            content = Content(handle.file(REWRITTEN))
        return content

    async def process_file(self, path: Path, envelope: Envelope, route: RouteSettings) -> Processed:
        """Run the pipeline on a message file outside the spool (the milter's
        temporary file); the segments refer to ``path`` (or to
        ``Processed.path``), and work files are named ``PATH.NAME``."""
        qlog = log.bind(queue_id=envelope.queue_id, route=route.name)
        with Source(path) as src:
            return await self.process_source(src, envelope, route, qlog,
                                             lambda name: path.with_name(f"{path.name}.{name}"))

    async def _unpack_tnef(self, src: Source, root: Part, dest: Path, qlog: Any) -> bool:
        """Write ``dest``: the message with each readable TNEF part replaced
        by the files it carries; False when there is none to unpack."""
        edits: list[Replacement] = []
        for leaf in root.leaves():
            if not tnef.is_tnef(leaf):
                continue
            try:
                files = tnef.unpack(await asyncio.to_thread(decoded_bytes, src, leaf))
            except tnef.TnefError as e:
                qlog.warning("TNEF not unpacked; the policies refuse it packed", part=leaf.path or "1", reason=str(e))
                metrics.TNEF_PARTS.labels("failed").inc()
                continue
            keep = b""
            if leaf is root:
                keep = b"".join(raw for name, raw in split_fields(src.read(root.start, root.body_start))
                                if not name.startswith("content-") and raw.strip())
            qlog.info("TNEF unpacked", part=leaf.path or "1", files=[f.name for f in files])
            metrics.TNEF_PARTS.labels("unpacked").inc()
            edits.append(Replacement(leaf, "", raw=tnef.entity(files, keep)))
        if not edits:
            return False
        segments = plan(src, root, replacements=edits, links=[], text_part=None, html_part=None,
                        link_template="", trace=b"")
        await asyncio.to_thread(write_segments, src, segments, dest)
        return True

    async def process_source(self, src: Source, envelope: Envelope, route: RouteSettings, qlog: Any,
                             work: Callable[[str], Path]) -> Processed:
        """Parse, decide, offload and rewrite ``src``; no spool involved.
        ``work(name)`` is where a work file of this message goes (the
        unpacked TNEF, the auto-reply)."""
        started = time.monotonic()
        # A small message was written a moment ago and is in the page cache:
        # parsing it costs less than a hop to a thread and back.
        root, spent = _parse_timed(src, self.limits) if src.size <= INLINE_PARSE else \
            await asyncio.to_thread(_parse_timed, src, self.limits)
        budget = Budget(self.cfg.worker.max_cpu_seconds, spent)
        unpacked: Source | None = None
        if route.unpack_tnef and any(tnef.is_tnef(leaf) for leaf in root.leaves()):
            dest = work(UNPACKED)
            if await self._unpack_tnef(src, root, dest, qlog):
                unpacked = Source(dest)
                root, spent = await asyncio.to_thread(_parse_timed, unpacked, self.limits)
                budget.spend(spent)
        try:
            out = await self._decide_and_rewrite(envelope, route, unpacked or src, root, qlog, started, work,
                                                 unpacked=unpacked is not None, budget=budget)
        finally:
            if unpacked is not None:
                unpacked.close()
        if unpacked is not None:
            out.path = work(UNPACKED)
        return out

    async def _facts(self, src: Source, leaf: Part, route: RouteSettings, cids: set[str],
                     qlog: Any, budget: "Budget", signature: bool = False) -> tuple[policies.PartFacts, Measure]:
        """Measure, sniff and (when the route scans) scan one leaf."""
        m, detected, spent = await asyncio.to_thread(_measure_and_sniff, src, leaf)
        budget.spend(spent)
        name = filenames.original_filename(leaf.headers)
        disposition = _disposition(leaf)
        maintype = leaf.content_type.split("/", 1)[0]
        # A file the agent could open: named, or sent as an attachment, or
        # anything but text by its declaration or by its bytes (an "inline
        # text" part that is really a program is judged as a file).
        is_attachment = disposition == "attachment" or bool(name) or maintype != "text" \
            or not detected.startswith("text/")
        content_id = message_header(leaf.headers, "Content-ID").strip() or None
        scan = None
        if self.scanner is not None and any(p.name == "refuse_malware" for p in route.policies) \
                and is_attachment and m.size > 0:
            scan = await self._scan(src, leaf, m.size, route, qlog)
        facts = part_facts(
            path=leaf.path or "1", declared_type=leaf.content_type, filename=name, decoded_size=m.size,
            disposition=disposition, route=route, detected_type=detected, content_id=content_id,
            head=m.head, is_attachment=is_attachment,
            inline=bool(content_id) and content_id.strip("<>").lower() in cids, scan=scan,
            packed_tnef=tnef.is_tnef(leaf), signature_of_signed=signature)
        return facts, m

    async def _uuencoded(self, src: Source, texts: list[Part], route: RouteSettings, qlog: Any,
                         budget: "Budget") -> list[tuple[Part, uuencode.UuBlock, policies.Decision,
                                                         policies.PartFacts, bytes]]:
        """The uuencoded files in ``texts`` (decoded text parts up to
        MAX_UU_SCAN bytes), each with the policies' decision."""
        out = []
        for leaf in texts:
            if leaf.encoded_size > MAX_UU_SCAN:
                # Too large to search block by block: a text this size that
                # has a "begin" line at all is not examined, whole.
                if await asyncio.to_thread(_mentions_uuencode, src, leaf):
                    block = uuencode.UuBlock(start=0, end=leaf.end - leaf.body_start + 1, mode="", filename="",
                                             unexamined=f"a text of over {MAX_UU_SCAN >> 20} MiB with a "
                                                        "uuencoded file in it")
                    found, spent = [(block, b"", "application/octet-stream")], 0.0
                else:
                    continue
            else:
                found, spent = await asyncio.to_thread(_find_uuencoded, src, leaf)
            budget.spend(spent)
            for n, (block, data, detected) in enumerate(found, 1):
                path = f"{leaf.path or '1'}.uu{n}"
                if block.unexamined or budget.exhausted:
                    why = block.unexamined or "the time for examining one message ran out"
                    facts = part_facts(path=path, declared_type="application/octet-stream",
                                       filename=block.filename, decoded_size=len(data), disposition="attachment",
                                       route=route, is_attachment=True)
                    decision = policies.Decision(policies.Action.REFUSE, "unexamined",
                                                 f"it could not be examined ({why})", details={"raw": True})
                else:
                    facts = part_facts(path=path, declared_type="application/octet-stream",
                                       filename=block.filename, decoded_size=len(data), disposition="attachment",
                                       route=route, head=data[:HEAD_BYTES], detected_type=detected,
                                       is_attachment=True)
                    decision = policies.decide(self.policies[route.name], facts)
                metrics.DECISIONS.labels(route.name, decision.policy, decision.action.value).inc()
                qlog.info("decision", part=path, action=decision.action.value, policy=decision.policy,
                          reason=decision.reason, declared_type="uuencoded", detected_type=facts.detected_type,
                          size=len(data), filename=block.filename)
                out.append((leaf, block, decision, facts, data))
        return out

    async def _unexaminable(self, envelope: Envelope, route: RouteSettings, src: Source, root: Part, qlog: Any,
                            started: float, work: Callable[[str], Path]) -> Processed:
        """A message whose structure could not be examined at all: the
        original goes to quarantine whole, and the agent gets its From,
        To, Subject and a notice saying so; the sender is told."""
        assert root.unexamined is not None
        customer, _ = self._customer_id(root, envelope, route)
        message_id = message_header(root.headers, "Message-ID").strip()
        reason = f"it could not be examined ({root.unexamined})"
        decision = policies.Decision(policies.Action.REFUSE, "unexamined", reason, details={"raw": True})
        whole = Part(start=0, body_start=0, end=src.size, headers=Message(), depth=0, path="1",
                     unexamined=root.unexamined)
        name = "message.eml"
        key, sha = await self._quarantine(src, whole, Measure(src.size, b"", None), envelope, route, customer,
                                          name, decision) if route.quarantine.enabled else (None, None)
        metrics.REFUSED_PARTS.labels(route.name, decision.policy).inc()
        qlog.warning("message could not be examined; quarantined whole, a notice forwarded",
                     reason=root.unexamined, quarantine_key=key)
        notice = (f"This message could not be examined by the attachment gateway ({root.unexamined}), "
                  "so its content was withheld and kept for an administrator.\n"
                  "The customer has been told.\n")
        refused = [{"part": "1", "filename": name, "policy": decision.policy, "reason": reason,
                    "declared_type": "message/rfc822", "detected_type": None, "size": src.size, "sha256": sha,
                    "quarantine_key": key}]
        self.audit.event("FileRefused", "Failure", EventResultDetails=reason, QueueId=envelope.queue_id,
                         CustomerId=customer, TargetFileName=name, TargetFileSize=src.size, TargetFileSHA256=sha,
                         Policy=decision.policy, TargetFilePath=key, InternetMessageId=message_id or None)
        trace = self._trace(envelope, [], refused=1, note="not examined, quarantined")
        body = _salvage_headers(src) + b"MIME-Version: 1.0\r\n" + notice_part(notice)
        await self._autoreply(envelope, route, root, refused, [], customer, qlog, work("autoreply.eml"))
        result = {"offloaded": [], "failed": [], "refused": refused, "decisions": [], "tnef_unpacked": False,
                  "seconds": round(time.monotonic() - started, 4)}
        return Processed([trace, body], result, changed=True)

    def _unexamined(self, leaf: Part, route: RouteSettings, why: str,
                    qlog: Any) -> tuple[policies.PartFacts, Measure, policies.Decision]:
        """The decision on a part the gateway did not examine: refused and
        quarantined whole (headers and all) unless the route insists on
        forwarding unexamined parts, which is logged as an error."""
        size = leaf.end - leaf.start
        facts = part_facts(path=leaf.path or "1", declared_type="application/octet-stream", filename="",
                           decoded_size=size, disposition="attachment", route=route, is_attachment=True)
        measured = Measure(size=size, head=b"", sha256=None)
        if route.unexamined == "forward-unexamined":
            qlog.error("part not examined and forwarded as it is (route.unexamined = forward-unexamined)",
                       part=facts.path, reason=why)
            return facts, measured, policies.Decision(policies.Action.KEEP, "unexamined", f"not examined: {why}")
        return facts, measured, policies.Decision(policies.Action.REFUSE, "unexamined",
                                                  f"it could not be examined ({why})", details={"raw": True})

    async def _scan(self, src: Source, leaf: Part, size: int, route: RouteSettings,
                    qlog: Any) -> policies.ScanVerdict:
        assert self.scanner is not None and self.cfg.clamd is not None
        if size > self.cfg.clamd.max_size:
            verdict = policies.ScanVerdict("error", detail=f"{size} bytes is over clamd.max_size")
        else:
            verdict = await self.scanner.scan(_athread_iter(decoded_chunks(src, leaf)))
        metrics.SCANS.labels(route.name, verdict.status).inc()
        if verdict.status == "error":
            # Fail open (rule 2): the part goes on to the other policies.
            self.counts["scan_failed"] += 1
            qlog.warning("malware scan failed; failing open", part=leaf.path or "1", reason=verdict.detail,
                         scan_failures_total=self.counts["scan_failed"])
        return verdict

    async def _decide_and_rewrite(self, envelope: Envelope, route: RouteSettings, src: Source, root: Part,
                                  qlog: Any, started: float, work: Callable[[str], Path],
                                  unpacked: bool, budget: "Budget") -> Processed:
        if root.unexamined is not None and route.unexamined == "quarantine":
            return await self._unexaminable(envelope, route, src, root, qlog, started, work)
        message_id = message_header(root.headers, "Message-ID").strip()
        customer, believed = self._customer_id(root, envelope, route)
        if not believed:
            qlog.info("customer id header not believed from this client; removed", header=route.customer_id.header,
                      client=envelope.client_addr)
        text_part, html_part = _bodies(root)
        cids: set[str] = set()
        if html_part is not None and html_part.encoded_size <= MAX_HTML_SCAN:
            cids = cid_references(await asyncio.to_thread(decoded_bytes, src, html_part))
        parents = {id(child): p for p in root.walk() for child in p.children}
        decisions: list[tuple[Part, policies.Decision, Measure, policies.PartFacts]] = []
        for leaf in root.leaves():
            if leaf is text_part or leaf is html_part:
                continue
            why_not = leaf.unexamined
            if why_not is None and budget.exhausted:
                why_not = (f"the time for examining one message ({self.cfg.worker.max_cpu_seconds:g} s of CPU) "
                           "ran out")
            if why_not is not None:
                facts, m, decision = self._unexamined(leaf, route, why_not, qlog)
            else:
                facts, m = await self._facts(src, leaf, route, cids, qlog, budget,
                                             signature=_is_signature(leaf, parents))
                decision = policies.decide(self.policies[route.name], facts)
            metrics.DECISIONS.labels(route.name, decision.policy, decision.action.value).inc()
            qlog.info("decision", part=facts.path, action=decision.action.value, policy=decision.policy,
                      reason=decision.reason, declared_type=facts.declared_type, detected_type=facts.detected_type,
                      size=facts.decoded_size, filename=facts.filename, inline=facts.inline,
                      scan=facts.scan.status if facts.scan else None)
            decisions.append((leaf, decision, m, facts))
        decisions = self._fit_next_hop(src, route, decisions, qlog)
        to_offload = [(p, d, m) for p, d, m, _ in decisions if d.action is policies.Action.OFFLOAD]
        results = await asyncio.gather(*(self._offload(src, p, m, envelope, route, customer, message_id, qlog)
                                         for p, d, m in to_offload))
        offloaded = [r for r in results if isinstance(r, Offloaded)]
        failed = [p for (p, _, _), r in zip(to_offload, results) if not isinstance(r, Offloaded)]
        replacements = [Replacement(o.part, _offload_notice(o)) for o in offloaded]
        notices: list[str] = []
        refused: list[dict[str, Any]] = []
        for p, d, m, facts in decisions:
            name = filenames.display_name(facts.filename) or _default_name(p)
            if d.action is policies.Action.REPLACE:
                replacements.append(Replacement(p, d.notice or f"An attachment was removed: {d.reason}.\n"))
                notices.append(f"\"{name}\": {d.notice or d.reason}")
                qlog.info("attachment replaced", part=facts.path, filename=name, reason=d.reason)
            elif d.action is policies.Action.REFUSE:
                key, sha = await self._quarantine(src, p, m, envelope, route, customer, name, d) \
                    if route.quarantine.enabled else (None, m.sha256)
                metrics.REFUSED_PARTS.labels(route.name, d.policy).inc()
                text = f"The attachment \"{name}\" was removed: {d.reason}."
                replacements.append(Replacement(p, text + "\n"))
                notices.append(text)
                refused.append({"part": facts.path, "filename": name, "policy": d.policy, "reason": d.reason,
                                "declared_type": facts.declared_type, "detected_type": facts.detected_type,
                                "size": facts.decoded_size, "sha256": sha, "quarantine_key": key})
                self.audit.event("FileRefused", "Failure", EventResultDetails=d.reason, QueueId=envelope.queue_id,
                                 CustomerId=customer, TargetFileName=name, TargetFileSize=facts.decoded_size,
                                 TargetFileSHA256=sha, TargetFileMimeType=facts.detected_type,
                                 DeclaredMimeType=facts.declared_type, Policy=d.policy,
                                 TargetFilePath=key, InternetMessageId=message_id or None)
        # Files carried inside the text itself, uuencoded (several mail
        # clients show them as attachments): judged like any file; a
        # refused one is cut out of the text and quarantined.
        cuts: dict[int, list[tuple[int, int, bytes]]] = {}
        texts = [text_part] if text_part is not None else []
        texts += [p for p, d, _, f in decisions if d.action is policies.Action.KEEP
                  and p.content_type == "text/plain" and not f.is_attachment]
        for leaf, block, d, facts, data in await self._uuencoded(src, texts, route, qlog, budget):
            if d.action is not policies.Action.REFUSE:
                continue
            name = filenames.display_name(facts.filename) or "attachment.bin"
            # A block that was not examined is kept with the text around it.
            whole = d.details.get("raw", False)
            kept = Measure(leaf.end - leaf.start if whole else len(data), b"", None)
            key, sha = await self._quarantine(src, leaf, kept, envelope, route, customer, name, d,
                                              data=None if whole else data) \
                if route.quarantine.enabled else (None, None)
            metrics.REFUSED_PARTS.labels(route.name, d.policy).inc()
            text = f"The attachment \"{name}\" (uuencoded in the text) was removed: {d.reason}."
            notices.append(text)
            cuts.setdefault(leaf.start, []).append(
                (block.start, block.end, b"[a file was removed here by the attachment gateway]\r\n"))
            refused.append({"part": facts.path, "filename": name, "policy": d.policy, "reason": d.reason,
                            "declared_type": facts.declared_type, "detected_type": facts.detected_type,
                            "size": facts.decoded_size, "sha256": sha, "quarantine_key": key})
            self.audit.event("FileRefused", "Failure", EventResultDetails=d.reason, QueueId=envelope.queue_id,
                             CustomerId=customer, TargetFileName=name, TargetFileSize=facts.decoded_size,
                             TargetFileSHA256=sha, TargetFileMimeType=facts.detected_type,
                             DeclaredMimeType=facts.declared_type, Policy=d.policy,
                             TargetFilePath=key, InternetMessageId=message_id or None)
        links = [Link(o.filename, o.size, o.url) for o in offloaded]
        inline = {}
        for o in offloaded:
            cid = message_header(o.part.headers, "Content-ID").strip().strip("<>").lower()
            if cid and cid in cids:
                inline[cid] = Link(o.filename, o.size, o.url)
        template = route.link_text or self.cfg.links.text
        if route.landing_page and len(offloaded) >= 2:
            page_link = await self._landing_page(offloaded, route, customer, envelope.queue_id, message_id, qlog)
            if page_link is not None:
                links, template = [page_link], "{filename}"
        note = f"{len(failed)} not stored, forwarded as is" if failed else ""
        trace = self._trace(envelope, offloaded, refused=len(refused),
                            replaced=sum(d.action is policies.Action.REPLACE for _, d, _, _ in decisions),
                            tnef_unpacked=unpacked, note=note)
        segments = plan(src, root, replacements=replacements, links=links, text_part=text_part,
                        html_part=html_part, link_template=template, trace=trace, notices=notices, inline=inline,
                        cuts=cuts)
        unstored: list[str] = []  # files neither stored nor forwarded: the customer is told
        if failed and segments_size(segments) > route.next_hop_max_size:
            # Fail open, but never past the next hop's limit: the parts that
            # could not be stored give way to a notice.
            replacements += [Replacement(p, _failed_notice(p)) for p in failed]
            trace = self._trace(envelope, offloaded, refused=len(refused),
                                replaced=sum(d.action is policies.Action.REPLACE for _, d, _, _ in decisions),
                                tnef_unpacked=unpacked, note=f"{len(failed)} not stored, replaced by a notice")
            segments = plan(src, root, replacements=replacements, links=links, text_part=text_part,
                            html_part=html_part, link_template=template, trace=trace, notices=notices,
                            inline=inline, cuts=cuts)
            for p in failed:
                unstored.append(filenames.display_name(filenames.original_filename(p.headers)) or _default_name(p))
                qlog.warning("storage failed and the message would exceed the next hop's limit; "
                             "attachment replaced by a notice", part=p.path,
                             filename=filenames.original_filename(p.headers),
                             next_hop_max_size=route.next_hop_max_size)
                self.audit.event("FileRefused", "Failure", EventResultDetails="storage unavailable, too large to forward",
                                 QueueId=envelope.queue_id, CustomerId=customer,
                                 TargetFileName=filenames.original_filename(p.headers))
        elif failed:
            for p in failed:
                qlog.warning("storage failed; attachment forwarded as is (fits the next hop's limit)",
                             part=p.path, filename=filenames.original_filename(p.headers),
                             next_hop_max_size=route.next_hop_max_size)
        result = {
            "offloaded": [{"key": o.key, "size": o.size, "sha256": o.sha256, "filename": o.filename,
                           "part": o.part.path} for o in offloaded],
            "failed": [p.path for p in failed],
            "refused": refused,
            "decisions": [{"part": f.path, "action": d.action.value, "policy": d.policy, "reason": d.reason,
                           "declared_type": f.declared_type, "detected_type": f.detected_type,
                           "filename": f.filename, "size": f.decoded_size} for _, d, _, f in decisions],
            "tnef_unpacked": unpacked,
            "seconds": round(time.monotonic() - started, 4),
        }
        if refused or unstored:
            await self._autoreply(envelope, route, root, refused, unstored, customer, qlog, work("autoreply.eml"))
        # Headers only the gateway may write: inbound copies of its trace,
        # and a customer id from a client not trusted to name one.
        drop = {"x-attachment-offload"}
        if not believed and route.customer_id.header:
            drop.add(route.customer_id.header.lower())
        drops = header_field_ranges(src, root, drop)
        if drops:
            segments = [segments[0], *cut_ranges(segments[1:], drops, [src.read(a, b) for a, b in drops])]
        qlog.info("processed", offloaded=len(offloaded), offloaded_bytes=sum(o.size for o in offloaded),
                  failed=len(failed), refused=len(refused), size_in=src.size, size_out=segments_size(segments))
        return Processed(segments, result, changed=bool(offloaded or failed or replacements or notices or unpacked
                                                        or drops))

    def _fit_next_hop(self, src: Source, route: RouteSettings,
                      decisions: list[tuple[Part, policies.Decision, Measure, policies.PartFacts]],
                      qlog: Any) -> list[tuple[Part, policies.Decision, Measure, policies.PartFacts]]:
        """Offload the largest kept attachments too while the message is over
        the route's next-hop size or attachment count."""
        changed = [p for p, d, _, _ in decisions if d.action is not policies.Action.KEEP]
        estimate = src.size - sum(p.end - p.start for p in changed) + NOTICE_ALLOWANCE * len(changed)
        kept = [Kept(f.path, p.end - p.start) for p, d, _, f in decisions
                if d.action is policies.Action.KEEP and f.is_attachment]
        extra = set(extra_offloads(kept, estimate, route.next_hop_max_size, route.max_attachments))
        if not extra:
            return decisions
        out = []
        for p, d, m, f in decisions:
            if f.path in extra:
                d = policies.Decision(policies.Action.OFFLOAD, "next_hop_limits",
                                      f"the message is over the next hop's limits ({route.next_hop_max_size} bytes, "
                                      f"{route.max_attachments or 'any number of'} attachments); largest first")
                qlog.info("decision", part=f.path, action=d.action.value, policy=d.policy, reason=d.reason,
                          declared_type=f.declared_type, detected_type=f.detected_type, size=f.decoded_size,
                          filename=f.filename, inline=f.inline, scan=f.scan.status if f.scan else None)
            out.append((p, d, m, f))
        return out

    async def _quarantine(self, src: Source, part: Part, measured: Measure, envelope: Envelope,
                          route: RouteSettings, customer: str, name: str,
                          decision: policies.Decision,
                          data: bytes | None = None) -> tuple[str, str | None]:
        """Keep a refused part under the route's quarantine prefix (no link
        record: no token can lead there); return its key and SHA-256.  A
        failure raises, and the message is held: a refused file is never
        forwarded and never dropped."""
        store = self.stores[route.storage]
        key = f"{route.quarantine.prefix}{customer}/{utc_stamp()}-{filenames.sanitise(name)}"
        meta = ObjectMeta(content_type="application/octet-stream", filename=name,
                          metadata={"queue-id": envelope.queue_id, "customer-id": customer,
                                    "policy": decision.policy})
        async with self._offload_slots:
            try:
                # A part that was not examined is kept whole, headers and
                # all, as it came: its headers may be what could not be read.
                # An attached message in base64 or quoted-printable is kept
                # decoded: an email an administrator can open.
                if data is not None:
                    chunks: Iterator[bytes] = iter([data])
                elif decision.details.get("raw") and part.unexamined != ENCODED_MESSAGE:
                    chunks = src.iter_range(part.start, part.end)
                else:
                    chunks = decoded_chunks(src, part)
                stored = await store.put(key, chunks, meta)
            except (StorageError, OSError) as e:
                raise QuarantineError(f"refused file {name!r} could not be quarantined as {key} "
                                      f"({type(e).__name__}: {e}); held, neither forwarded nor dropped") from e
        decoded_whole = data is None and decision.details.get("raw") and part.unexamined == ENCODED_MESSAGE
        if stored.size != measured.size and not decoded_whole:
            raise StorageError(f"quarantined object {key} has {stored.size} bytes, expected {measured.size}")
        if measured.sha256 and stored.sha256 and stored.sha256 != measured.sha256:
            raise StorageError(f"quarantined object {key} has SHA-256 {stored.sha256}, expected {measured.sha256}")
        sha256 = stored.sha256 or measured.sha256
        log.info("quarantined", queue_id=envelope.queue_id, key=key, size=stored.size, sha256=sha256)
        return key, sha256

    async def _upload_url(self, envelope: Envelope, route: RouteSettings, customer: str, message_id: str,
                          template: str | None, qlog: Any) -> str:
        """A fresh upload-page invitation for the auto-reply (this customer,
        this thread; files announced to the address the message was for)
        when ``template`` shows one, or the route's fixed ``upload_url`` when
        the page is off or the invitation cannot be saved (logged, the reply
        still goes: when storage failed, saving it may fail too)."""
        settings = route.autoreply
        assert settings is not None
        if not self.cfg.upload.enabled or not autoreply.wants_upload_url(template):
            return settings.upload_url
        try:
            inv, url = await asyncio.wait_for(invitations.create(
                self.stores[route.storage], self.keyring, self.cfg.http.base_url, customer_id=customer,
                message_id=autoreply.thread_id(message_id), notify=envelope.rcpt_tos[0], route=route.name,
                ttl=self.cfg.upload.invitation_ttl), INVITATION_TIMEOUT)
        except (StorageError, OSError, asyncio.TimeoutError) as e:
            qlog.error("no upload invitation for the auto-reply", error=str(e) or type(e).__name__)
            return settings.upload_url
        qlog.info("upload invitation for the auto-reply", invitation=inv.object_id, customer_id=customer)
        return url

    async def _autoreply(self, envelope: Envelope, route: RouteSettings, root: Part,
                         refused: list[dict[str, Any]], unstored: list[str], customer: str, qlog: Any,
                         path: Path) -> None:
        """Tell the sender which files were refused, or could not be stored
        and were too large to forward (RFC 3834 rules); a failure is logged,
        never fatal to the message."""
        settings = route.autoreply
        if settings is None:
            return
        why_not = autoreply.skip_reason(envelope.mail_from, root.headers)
        if why_not is not None:
            metrics.AUTOREPLIES.labels(route.name, "skipped").inc()
            qlog.info("no auto-reply", reason=why_not)
            return
        if not await asyncio.to_thread(self.rates.claim, envelope.mail_from, settings.interval):
            metrics.AUTOREPLIES.labels(route.name, "skipped").inc()
            qlog.info("no auto-reply", reason=f"one went to this sender within {settings.interval}s")
            return
        subject = filenames.display_name(message_header(root.headers, "Subject").strip())
        message_id = message_header(root.headers, "Message-ID").strip()
        template = settings.template if refused else settings.storage_failed_template
        upload_url = await self._upload_url(envelope, route, customer, message_id, template, qlog)
        if refused:
            text = autoreply.render(settings.template, subject=subject, upload_url=upload_url,
                                    refusals=[(r["filename"], r["reason"]) for r in refused]
                                    + [(name, autoreply.STORAGE_FAILED_REASON) for name in unstored])
        else:
            text = autoreply.render_storage_failed(settings.storage_failed_template, files=unstored,
                                                   subject=subject, upload_url=upload_url)
        try:
            data = autoreply.build(sender=settings.sender, to=envelope.mail_from,
                                   subject=settings.subject if refused else settings.storage_failed_subject,
                                   text=text, in_reply_to=message_id, hostname=self.cfg.gateway.hostname)
        except (ValueError, TypeError) as e:
            await asyncio.to_thread(self.rates.release, envelope.mail_from)
            qlog.error("auto-reply not built", error=str(e))
            return
        await asyncio.to_thread(write_atomic, path, data)
        reply_env = Envelope(queue_id=envelope.queue_id + "R", mail_from="", rcpt_tos=[envelope.mail_from],
                             route=route.name, received_at=time.time())
        hop = self.autoreply_hops[route.name]
        result = await hop.deliver(reply_env, [envelope.mail_from], Content(path))
        if result.delivered:
            metrics.AUTOREPLIES.labels(route.name, "sent").inc()
            qlog.info("auto-reply sent", to=envelope.mail_from, next_hop=hop.name)
        else:
            await asyncio.to_thread(self.rates.release, envelope.mail_from)
            metrics.AUTOREPLIES.labels(route.name, "failed").inc()
            qlog.error("auto-reply not delivered", to=envelope.mail_from,
                       reason=next(iter({**result.deferred, **result.failed}.values()), ""))

    async def _verify(self, handle: Handle, envelope: Envelope, qlog: Any) -> Verification | None:
        """DKIM, SPF, DMARC and ARC over the original as it arrived; None
        when verification is off or failed (fail open: the message goes)."""
        if self.verifier is None:
            return None
        started = time.monotonic()
        try:
            auth = await asyncio.to_thread(self.verifier.verify, handle.file(MESSAGE), envelope,
                                          handle.message_size)
        except Exception as e:  # noqa: BLE001 - rule 2: a failed check never stops the message
            qlog.error("authentication checks failed; forwarded without results", error=f"{type(e).__name__}: {e}")
            metrics.AUTH_FAILURES.labels("verify").inc()
            return None
        for method, result in auth.summary.items():
            metrics.AUTH_RESULTS.labels(method, result).inc()
        qlog.info("authentication", seconds=round(time.monotonic() - started, 4),
                  dropped_authentication_results=len(auth.drop), **auth.summary)
        return auth

    async def _finish(self, handle: Handle, path: Path, segments: list[Segment], auth: Verification | None,
                      qlog: Any) -> list[Segment]:
        """The final message: forged Authentication-Results of ours dropped,
        ours on top, then the seal computed over exactly these bytes.
        ``path`` is the file the segments refer to: the spooled original, or
        the message with its TNEF parts unpacked."""
        if auth is not None and auth.drop and path != handle.file(MESSAGE):
            # The fields to drop are byte ranges of the original; the
            # unpacked copy has other offsets, so cut them by their text.
            segments = await asyncio.to_thread(drop_fields_by_text, segments, auth.drop, handle.file(MESSAGE),
                                               path)
            segments = [auth.header, *segments]
        elif auth is not None:
            segments = [auth.header, *drop_ranges(segments, auth.drop, handle.file(MESSAGE))]
        if self.sealer is None:
            return segments
        size = segments_size(segments)
        if size > self.cfg.auth.sign_max_size:
            qlog.warning("message too large to seal; forwarded unsealed", size=size,
                         limit=self.cfg.auth.sign_max_size)
            metrics.AUTH_FAILURES.labels("seal_size").inc()
            return segments
        content = Content(path, segments)

        def _seal() -> bytes:
            # dkimpy signs a message it holds whole; the bound above keeps
            # that to the (small, rewritten) messages it is meant for.
            return self.sealer.seal(b"".join(content.chunks()))  # type: ignore[union-attr]

        try:
            headers = await asyncio.to_thread(_seal)
        except Exception as e:  # noqa: BLE001 - fail open: unsealed beats undelivered
            qlog.error("sealing failed; forwarded unsealed", error=f"{type(e).__name__}: {e}")
            metrics.AUTH_FAILURES.labels("seal").inc()
            return segments
        return [headers, *segments]

    def _save_output(self, handle: Handle, content: Content, result: dict[str, Any]) -> None:
        content.write_to(handle.file(REWRITTEN))
        write_atomic(handle.file(RESULT), json.dumps(result).encode())

    async def _offload(self, src: Source, part: Part, measured: Measure, envelope: Envelope, route: RouteSettings,
                       customer: str, message_id: str, qlog: Any) -> Offloaded | None:
        store = self.stores[route.storage]
        original = filenames.original_filename(part.headers) or _default_name(part)
        display = filenames.display_name(original) or _default_name(part)
        key = object_key(customer, display)
        meta = ObjectMeta(content_type=safe_type(part.content_type), filename=original,
                          metadata={"queue-id": envelope.queue_id, "customer-id": customer})
        async with self._offload_slots:
            started = time.monotonic()
            try:
                stored = await store.put(key, decoded_chunks(src, part), meta)
                metrics.STORAGE_SECONDS.labels(store.name).observe(time.monotonic() - started)
                # The store's own count and hash of what it took, against what
                # the policies were told: a short or altered upload fails here.
                if stored.size != measured.size:
                    raise StorageError(f"stored object {key} has {stored.size} bytes, expected {measured.size}")
                if measured.sha256 and stored.sha256 and stored.sha256 != measured.sha256:
                    raise StorageError(f"stored object {key} has SHA-256 {stored.sha256}, "
                                       f"expected {measured.sha256}")
                sha256 = stored.sha256 or measured.sha256 or ""
                link = await mint(store, self.keyring, self.cfg.http.base_url, self.cfg.links.ttl, key=key,
                                  filename=original, size=stored.size, sha256=sha256,
                                  content_type=meta.content_type, customer_id=customer,
                                  queue_id=envelope.queue_id, message_id=message_id)
            except Exception as e:  # noqa: BLE001 - rule 2: any storage failure fails open
                # StorageError and OSError are the expected ones; anything else
                # from a backend (an SDK's own exception) must not hold the
                # message either.
                metrics.OFFLOAD_FAILURES.labels(store.name).inc()
                error = str(e) if isinstance(e, (StorageError, OSError)) else f"{type(e).__name__}: {e}"
                qlog.error("offload failed; failing open", part=part.path, key=key, error=error)
                return None
        metrics.OFFLOADED_PARTS.labels(route.name, store.name).inc()
        metrics.OFFLOADED_BYTES.labels(route.name, store.name).inc(stored.size)
        qlog.info("offloaded", part=part.path, key=key, size=stored.size, sha256=sha256)
        return Offloaded(part=part, filename=display, key=key, size=stored.size, sha256=sha256, url=link.url,
                         object_id=link.object_id, expires=link.expires)

    async def _landing_page(self, offloaded: list[Offloaded], route: RouteSettings, customer: str, queue_id: str,
                            message_id: str, qlog: Any) -> Link | None:
        """One link to a page listing every offloaded file (route.landing_page);
        None, and per-file links stay, when the page record cannot be stored."""
        store = self.stores[route.storage]
        page_id = new_object_id()
        expires = min(o.expires for o in offloaded)
        try:
            await records.save_page(store, records.PageRecord(
                page_id=page_id, object_ids=[o.object_id for o in offloaded], customer_id=customer,
                queue_id=queue_id, message_id=message_id, created=time.time(), expires=expires))
        except (StorageError, OSError) as e:
            qlog.error("landing page not stored; one link per file instead", error=str(e))
            return None
        token = self.keyring.sign(store.name, page_id, expires, purpose="page")
        total = sum(o.size for o in offloaded)
        label = route.landing_page_text.replace("{count}", str(len(offloaded))).replace("{size}", human_size(total))
        return Link(label, total, f"{self.cfg.http.base_url}/p/{token}")

    def _customer_id(self, root: Part, envelope: Envelope, route: RouteSettings) -> tuple[str, bool]:
        """The customer id for keys and links, and False when the message's
        customer header was there but not believed (it is then removed
        from the forwarded message): only clients in the route's
        ``customer_id.trusted_networks`` may name the customer."""
        rule = route.customer_id
        believed = True
        if rule.header:
            value = message_header(root.headers, rule.header).strip()
            if value and _in_networks(envelope.client_addr, rule.trusted_networks):
                return filenames.sanitise_customer(value), True
            believed = not value
        if rule.fallback == "sender" and envelope.mail_from:
            return filenames.sanitise_customer(envelope.mail_from), believed
        return "unknown", believed

    def _trace(self, envelope: Envelope, offloaded: list[Offloaded], note: str = "", refused: int = 0,
               replaced: int = 0, tnef_unpacked: bool = False) -> bytes:
        helo = _clean(envelope.helo) or "unknown"
        client = _clean(envelope.client_name) or "unknown"
        addr = _clean(envelope.client_addr)
        proto = "UTF8SMTP" if envelope.smtputf8 else "ESMTP"
        if envelope.tls:
            proto += "S"
        rcpt = f"\r\n\tfor <{_clean(envelope.rcpt_tos[0])}>" if len(envelope.rcpt_tos) == 1 else ""
        received = (f"Received: from {helo} ({client} [{addr}])\r\n"
                    f"\tby {self.cfg.gateway.hostname} (attachment-gateway) with {proto} id {envelope.queue_id}"
                    f"{rcpt};\r\n\t{_date(envelope.received_at)}\r\n")
        summary = f"offloaded={len(offloaded)} bytes={sum(o.size for o in offloaded)}"
        if refused:
            summary += f" refused={refused}"
        if replaced:
            summary += f" replaced={replaced}"
        if tnef_unpacked:
            summary += " tnef=unpacked"
        if note:
            summary += f"; {note}"
        return (received + f"X-Attachment-Offload: {_clean(summary)}\r\n").encode("utf-8", "replace")

    # -- delivery ---------------------------------------------------------

    async def deliver(self, handle: Handle, envelope: Envelope, route: RouteSettings, content: Content,
                      state: State | None = None) -> None:
        """Try the next hop; then remove, defer or bounce.  ``state`` is the
        message's, when the caller has read it already."""
        if state is None:
            state = await asyncio.to_thread(handle.state)
        rcpts = state.pending or list(envelope.rcpt_tos)
        hop = self.next_hops[route.name]
        started = time.monotonic()
        removed: list[Exception | None] = []

        def remove_if_delivered(result: DeliveryResult) -> None:
            # In a thread the delivery had or shares (no hop of its own): a
            # message every recipient took is removed there; anything else
            # is decided below.
            if result.delivered and not result.deferred and not result.failed:
                try:
                    handle.remove()
                except Exception as e:  # noqa: BLE001 - raised below, as if removed here
                    removed.append(e)
                else:
                    removed.append(None)

        result = await hop.deliver(envelope, rcpts, content, then=remove_if_delivered)
        outcome = "deferred" if result.deferred else "failed" if result.failed else "delivered"
        metrics.DELIVERY_SECONDS.labels(route.name, outcome).observe(time.monotonic() - started)
        qlog = log.bind(queue_id=handle.queue_id, route=route.name, next_hop=hop.name)
        now = time.time()
        for r in result.delivered:
            qlog.info("delivered", rcpt=r, seconds=round(time.monotonic() - started, 4))
        expired = now - envelope.received_at > self.cfg.delivery.queue_lifetime
        failed = dict(result.failed)
        if expired and result.deferred:
            for r, reason in result.deferred.items():
                failed[r] = f"5.4.7 delivery time expired; last error: {reason}"
            result.deferred.clear()
        for r, reason in failed.items():
            qlog.warning("bounced", rcpt=r, reason=reason)
        if failed:
            metrics.BOUNCED.labels(route.name).inc(len(failed))
            await self._bounce(handle, envelope, failed)
        if result.deferred:
            state.attempts += 1
            state.first_attempt = state.first_attempt or now
            delay = min(self.cfg.delivery.max_backoff, self.cfg.delivery.min_backoff * 2 ** (state.attempts - 1))
            state.next_attempt = now + delay
            state.pending = list(result.deferred)
            state.last_error = next(iter(result.deferred.values()))
            for r, reason in result.deferred.items():
                qlog.warning("deferred", rcpt=r, reason=reason, attempts=state.attempts, retry_in=delay)

            def _defer() -> None:
                if not handle.has(REWRITTEN):
                    content.write_to(handle.file(REWRITTEN))
                handle.save_state(state)
                handle.move("deferred")

            await asyncio.to_thread(_defer)
            metrics.DEFERRED.labels(route.name).inc()
            return
        if not removed:
            await asyncio.to_thread(handle.remove)
        elif removed[0] is not None:
            raise removed[0]
        if not failed:
            metrics.DELIVERED.labels(route.name).inc()
        qlog.info("removed")

    async def _bounce(self, handle: Handle, envelope: Envelope, failed: dict[str, str]) -> None:
        if not envelope.mail_from:
            log.info("no DSN to the null sender", queue_id=handle.queue_id)
            return
        with handle.message() as src:
            root = parse(src, self.limits) if src.size else None
            if root is None:
                headers = b""
            elif root.unexamined is not None:
                headers = _salvage_headers(src)  # the header block itself was beyond a bound
            else:
                headers = src.read(0, root.body_start)
        dsn = build_dsn(envelope, failed, headers, self.cfg.gateway.hostname)
        path = handle.file("dsn.eml")
        await asyncio.to_thread(write_atomic, path, dsn)
        dsn_env = Envelope(queue_id=handle.queue_id + "D", mail_from="", rcpt_tos=[envelope.mail_from],
                           route="", received_at=time.time())
        result = await self.bounce_hop.deliver(dsn_env, [envelope.mail_from], Content(path))
        if not result.delivered:
            # A DSN that cannot go now is not worth holding the original
            # message for; it is logged so an administrator can see it.
            log.error("DSN not delivered", queue_id=handle.queue_id,
                      reason=next(iter({**result.deferred, **result.failed}.values()), ""))
        else:
            log.info("DSN sent", queue_id=handle.queue_id, to=envelope.mail_from)


def drop_fields_by_text(segments: list[Segment], drops: list[tuple[int, int]], original: Path,
                        path: Path) -> list[Segment]:
    """``segments`` of ``path`` with the header fields at ``drops`` in
    ``original`` cut out by their text, from the output's header block only
    (the first empty line ends it); the rest of the output stays ranges."""
    with open(original, "rb") as f:
        raws = []
        for start, end in drops:
            f.seek(start)
            raws.append(f.read(end - start))
    content = Content(path, segments)
    head = b""
    for chunk in content.chunks(window=1 << 16):
        head += chunk
        if b"\r\n\r\n" in head or len(head) > (1 << 20):
            break
    cut = head.find(b"\r\n\r\n")
    cut = len(head) if cut < 0 else cut + 4
    new_head = head[:cut]
    for raw in raws:
        new_head = new_head.replace(raw, b"")
    return [new_head, *_skip(segments, cut)]


def _skip(segments: list[Segment], n: int) -> list[Segment]:
    """``segments`` without their first ``n`` bytes."""
    out: list[Segment] = []
    for seg in segments:
        size = len(seg) if isinstance(seg, bytes) else seg[1] - seg[0]
        if n >= size:
            n -= size
            continue
        if n:
            seg = seg[n:] if isinstance(seg, bytes) else (seg[0] + n, seg[1])
            n = 0
        out.append(seg)
    return out


def drop_ranges(segments: list[Segment], drops: list[tuple[int, int]], path: Path) -> list[Segment]:
    """``segments`` without the original's byte ranges in ``drops`` (whole
    header fields) of the file at ``path``."""
    if not drops:
        return segments
    with open(path, "rb") as f:
        raws = []
        for start, end in drops:
            f.seek(start)
            raws.append(f.read(end - start))
    return cut_ranges(segments, drops, raws)


def cut_ranges(segments: list[Segment], drops: list[tuple[int, int]], raws: list[bytes]) -> list[Segment]:
    """``segments`` without the byte ranges in ``drops`` (whole header
    fields, whose text is ``raws``).  A header block the rewrite rebuilt (a
    replaced root part) carries the same fields as new bytes: they are cut
    from it by their text."""
    out: list[Segment] = []
    for seg in segments:
        if isinstance(seg, bytes):
            for raw in raws:
                seg = seg.replace(raw, b"")
            out.append(seg)
            continue
        pieces = [seg]
        for ds, de in drops:
            kept = []
            for s, e in pieces:
                if de <= s or ds >= e:
                    kept.append((s, e))
                    continue
                if s < ds:
                    kept.append((s, ds))
                if de < e:
                    kept.append((de, e))
            pieces = kept
        out.extend(pieces)
    return out



def _measure_and_sniff(src: Source, leaf: Part) -> tuple[Measure, str, float]:
    """A leaf's measure, the type its first bytes show, and the CPU seconds
    that took (one thread call)."""
    cpu = time.thread_time()
    m = measure(src, leaf)
    return m, container.detect_part(src, leaf, m), time.thread_time() - cpu


def _mentions_uuencode(src: Source, leaf: Part) -> bool:
    """Whether a (large) text part has a line that could begin a
    uuencoded file, read in windows."""
    carry = b""
    for chunk in decoded_chunks(src, leaf):
        data = carry + chunk
        if uuencode.BEGIN_LINE.search(data):
            return True
        carry = data[-200:]
    return False


def _find_uuencoded(src: Source, leaf: Part) -> tuple[list[tuple[uuencode.UuBlock, bytes, str]], float]:
    """The uuencoded blocks in a text part's decoded body, each with its
    decoded bytes and detected type, and the CPU seconds that took."""
    cpu = time.thread_time()
    found = []
    for block in uuencode.find_blocks(decoded_bytes(src, leaf)):
        data = b"" if block.unexamined else block.decode(max_bytes=MAX_UU_SCAN)
        detected = container.detect_chunks(data[:HEAD_BYTES], [data]) if data else "application/x-empty"
        found.append((block, data, detected))
    return found, time.thread_time() - cpu


def _parse_timed(src: Source, limits: Limits) -> tuple[Part, float]:
    """The message's tree and the CPU seconds parsing took.  A parser
    failure is a message that cannot be examined, never a held message."""
    cpu = time.thread_time()
    try:
        root = parse(src, limits)
    except Exception as e:  # noqa: BLE001 - fail closed on content: quarantine, never hold
        log.exception("MIME parser failed; the message is treated as unexaminable")
        root = Part(start=0, body_start=0, end=src.size, headers=Message(), depth=0, path="",
                    unexamined=f"the message could not be parsed ({type(e).__name__})")
    return root, time.thread_time() - cpu


class Budget:
    """The CPU time one message may take to examine (worker.max_cpu_seconds):
    the parse, decoding and type detection, summed across threads."""

    def __init__(self, limit: float, spent: float = 0.0) -> None:
        self.limit = limit
        self.spent = spent

    def spend(self, seconds: float) -> None:
        """Count ``seconds`` of CPU against the budget."""
        self.spent += seconds

    @property
    def exhausted(self) -> bool:
        """True once the message has had its time."""
        return self.spent > self.limit


async def _athread_iter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator (reads from the spool) consumed in a thread."""
    done = object()
    while True:
        chunk = await asyncio.to_thread(next, chunks, done)
        if chunk is done:
            return
        yield chunk  # type: ignore[misc]


def _bodies(root: Part) -> tuple[Part | None, Part | None]:
    """The first text/plain and text/html leaves that are the message's body
    (inline, without a filename), in document order."""
    text = html = None
    for leaf in root.leaves():
        if leaf.unexamined is not None or leaf.in_attached_message:
            continue  # an attached email's text is a file's content, not this message's body
        ctype = leaf.content_type
        if ctype not in ("text/plain", "text/html") or _disposition(leaf) == "attachment":
            continue
        if filenames.original_filename(leaf.headers):
            continue
        if leaf.headers.get_content_maintype() == "multipart":
            continue
        if ctype == "text/plain" and text is None:
            text = leaf
        elif ctype == "text/html" and html is None:
            html = leaf
    return text, html


def _disposition(part: Part) -> str:
    value = message_header(part.headers, "Content-Disposition")
    return value.split(";", 1)[0].strip().lower()


def _default_name(part: Part) -> str:
    """The name an agent sees for a part the sender gave none (the policies
    judge a nameless part by the same name: policies.filetypes)."""
    if part.unexamined is not None:
        return f"part-{part.path or '1'}.eml"
    return f"attachment.{DEFAULT_NAME_EXTENSIONS.get(part.content_type, 'bin')}"


def _date(ts: float) -> str:
    """An RFC 5322 date in UTC, as email.utils.format_datetime writes it
    (strftime: this runs for every message, and that builds a datetime;
    day and month names are English, as LC_TIME is never set)."""
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ts))


def _clean(text: str) -> str:
    """Text from the envelope or client, safe inside a header."""
    if text.isprintable():  # the usual case; CR and LF are not printable
        return text[:200]
    return "".join(ch for ch in text if ch.isprintable())[:200]


def _offload_notice(o: Offloaded) -> str:
    return (f"The attachment \"{o.filename}\" ({human_size(o.size)}) was moved to secure storage.\n"
            f"Use the secure attachment link in this message to download it.\n")


def _failed_notice(part: Part) -> str:
    name = filenames.original_filename(part.headers) or _default_name(part)
    return (f"The attachment \"{name}\" could not be stored and was too large to forward.\n"
            f"Please ask the customer to send it again.\n")


def _in_networks(addr: str, networks: list[str]) -> bool:
    """Whether the client address ``addr`` is in one of ``networks``."""
    if not networks or not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def _is_signature(leaf: Part, parents: dict[int, Part]) -> bool:
    """Whether ``leaf`` is the signature of a real multipart/signed: its
    second part, of the type the ``protocol`` parameter names (RFC 1847)."""
    parent = parents.get(id(leaf))
    if parent is None or parent.content_type != "multipart/signed" or len(parent.children) != 2:
        return False
    protocol = str(parent.headers.get_param("protocol") or "").strip().lower()
    return parent.children[1] is leaf and bool(protocol) and protocol == leaf.content_type


def header_field_ranges(src: Source, part: Part, names: set[str]) -> list[tuple[int, int]]:
    """Byte ranges of the header fields of ``part`` named in ``names``
    (lower case), continuation lines included."""
    out: list[tuple[int, int]] = []
    pos = part.start
    for name, raw in split_fields(src.read(part.start, part.body_start)):
        if name in names:
            out.append((pos, pos + len(raw)))
        pos += len(raw)
    return out


def _salvage_headers(src: Source) -> bytes:
    """The fields an agent needs (From, To, Subject, ...) from a message that
    could not be parsed: the first of each, unfolded, bounded, CRLF-clean."""
    keep = {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references"}
    out: list[bytes] = []
    for name, raw in split_fields(src.read(0, min(src.size, 256 << 10))):
        if not name:
            break
        if name in keep:
            keep.discard(name)
            value = re.sub(rb"[\r\n\x00]+[ \t]*", b" ", raw).strip()
            if len(value) <= 998:
                out.append(value + b"\r\n")
    return b"".join(out)
