"""Examine and decide: every part that is not the message's body is
measured, its type detected from its bytes (a ZIP by its central
directory), scanned when the route scans, and judged by the route's
policies.  A part the gateway could not examine (the parser's unexamined
leaves, a body readers could decode to different bytes, an HTML part
that carries a file as a data: URL, or any part once
the message's CPU budget is spent) is refused by
the ``unexamined`` pseudo-policy, unless the route insists otherwise."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import policies
from gateway import mailtext, metrics
from gateway.mime import container, sniff, tnef
from gateway.mime.decode import (
    AmbiguousEncoding,
    Measure,
    decoded_chunks,
    encoding_problem,
    html_problem,
    measure,
    message_header,
)
from gateway.mime.parse import Part
from gateway.mime.source import Source
from gateway.partfacts import part_facts
from gateway.pipeline.identify import disposition
from gateway.pipeline.job import MessageJob, PartOutcome
from gateway.pipeline.step import INLINE_BYTES, Step
from policies.next_hop_limits import NOTICE_ALLOWANCE, Kept, extra_offloads


class Examine(Step):
    """Judge each part that is not the body; then fit the next hop's limits."""

    name = "examine"
    always = False

    async def run(self, job: MessageJob) -> None:
        assert job.src is not None and job.root is not None
        route = job.route
        parents = {id(child): p for p in job.root.walk() for child in p.children}
        for n, leaf in enumerate(job.root.leaves(), 1):
            if leaf is job.text_part or leaf is job.html_part:
                continue
            if n % 32 == 0:
                await asyncio.sleep(0)  # small parts are judged on the loop: let the others run
            why_not = leaf.unexamined or encoding_problem(leaf)
            if why_not is None and leaf.content_type == "text/html":
                # Judged as a part, an HTML leaf still reaches the agent as
                # a page: one that carries a file in itself is not examined.
                why_not = html_problem(job.src, leaf) if leaf.encoded_size <= INLINE_BYTES else \
                    await asyncio.to_thread(html_problem, job.src, leaf)
            if why_not is None and job.budget.exhausted:
                why_not = (f"the time for examining one message ({self.services.cfg.worker.max_cpu_seconds:g} s "
                           "of CPU) ran out")
            if why_not is None:
                try:
                    facts, m = await self._facts(job, leaf, signature=is_signature(leaf, parents))
                except AmbiguousEncoding as e:
                    why_not = str(e)
                else:
                    outcome = PartOutcome(leaf, policies.decide(self.services.policies[route.name], facts), m, facts)
            if why_not is not None:
                outcome = unexamined(leaf, job, why_not)
            log_decision(job, outcome)
            job.outcomes.append(outcome)
        fit_next_hop(job)

    async def _facts(self, job: MessageJob, leaf: Part, signature: bool) -> tuple[policies.PartFacts, Measure]:
        """Measure, sniff and (when the route scans) scan one leaf."""
        assert job.src is not None
        src, route = job.src, job.route
        if leaf.encoded_size <= INLINE_BYTES:
            # A small part costs less than the hop to a thread and back
            # (a message of 200 small attachments took 200 hops), unless it
            # is an archive: 48 KiB of ZIP inflates to megabytes of
            # relationship parts to read, which froze every session of the
            # process for 0.75 s a part.
            m, detected, spent = measure_and_detect(src, leaf, archives=False)
            if detected is None:
                detected, more = await asyncio.to_thread(examine_archive, src, leaf, m)
                spent += more
        else:
            m, detected, spent = await asyncio.to_thread(measure_and_detect, src, leaf)
        assert detected is not None
        job.budget.spend(spent)
        name = leaf.filename
        how = disposition(leaf)
        maintype = leaf.content_type.split("/", 1)[0]
        # A file the agent could open: named, or sent as an attachment, or
        # anything but text by its declaration or by its bytes (an "inline
        # text" part that is really a program is judged as a file).
        is_attachment = how == "attachment" or bool(name) or maintype != "text" or not detected.startswith("text/")
        content_id = message_header(leaf.headers, "Content-ID").strip() or None
        scan = None
        if self.services.scanner is not None and any(p.name == "refuse_malware" for p in route.policies) \
                and is_attachment and m.size > 0:
            scan = await self._scan(job, leaf, m.size)
        facts = part_facts(
            path=leaf.path or "1", declared_type=leaf.content_type, filename=name, decoded_size=m.size,
            disposition=how, route=route, detected_type=detected, content_id=content_id,
            head=m.head, is_attachment=is_attachment,
            inline=bool(content_id and content_id.strip("<>").lower() in job.cids), scan=scan,
            packed_tnef=tnef.is_tnef(leaf), signature_of_signed=signature)
        return facts, m

    async def _scan(self, job: MessageJob, leaf: Part, size: int) -> policies.ScanVerdict:
        services = self.services
        assert services.scanner is not None and services.cfg.clamd is not None and job.src is not None
        if size > services.cfg.clamd.max_size:
            verdict = policies.ScanVerdict("error", detail=f"{size} bytes is over clamd.max_size")
        else:
            verdict = await services.scanner.scan(_athread_iter(decoded_chunks(job.src, leaf)))
        metrics.SCANS.labels(job.route.name, verdict.status).inc()
        if verdict.status == "error":
            # Fail open (rule 2): the part goes on to the other policies.
            services.counts["scan_failed"] += 1
            job.log.warning("malware scan failed; failing open", part=leaf.path or "1", reason=verdict.detail,
                            scan_failures_total=services.counts["scan_failed"])
        return verdict


def unexamined(leaf: Part, job: MessageJob, why: str) -> PartOutcome:
    """The decision on a part the gateway did not examine: refused and
    quarantined whole (headers and all) unless the route insists on
    forwarding unexamined parts, which is logged as an error."""
    size = leaf.end - leaf.start
    facts = part_facts(path=leaf.path or "1", declared_type="application/octet-stream", filename="",
                       decoded_size=size, disposition="attachment", route=job.route, is_attachment=True)
    measured = Measure(size=size, head=b"", sha256=None)
    if job.route.unexamined == "forward-unexamined":
        job.log.error("part not examined and forwarded as it is (route.unexamined = forward-unexamined)",
                      part=facts.path, reason=why)
        return PartOutcome(leaf, policies.Decision(policies.Action.KEEP, "unexamined", f"not examined: {why}"),
                           measured, facts)
    return PartOutcome(leaf, policies.Decision(policies.Action.REFUSE, "unexamined",
                                               **policies.explained(mailtext.UNEXAMINED, why=why),
                                               details={"raw": True}),
                       measured, facts)


def log_decision(job: MessageJob, o: PartOutcome) -> None:
    """Count and log one decision."""
    d, f = o.decision, o.facts
    metrics.DECISIONS.labels(job.route.name, d.policy, d.action.value).inc()
    job.log.info("decision", part=f.path, action=d.action.value, policy=d.policy, reason=d.reason,
                 declared_type=f.declared_type, detected_type=f.detected_type, size=f.decoded_size,
                 filename=f.filename, inline=f.inline, scan=f.scan.status if f.scan else None)


def fit_next_hop(job: MessageJob) -> None:
    """Offload the largest kept attachments too while the message is over
    the route's next-hop size or attachment count."""
    assert job.src is not None
    route = job.route
    changed = [o.part for o in job.outcomes if o.decision.action is not policies.Action.KEEP]
    estimate = job.src.size - sum(p.end - p.start for p in changed) + NOTICE_ALLOWANCE * len(changed)
    kept = [Kept(o.facts.path, o.part.end - o.part.start) for o in job.outcomes
            if o.decision.action is policies.Action.KEEP and o.facts.is_attachment]
    extra = set(extra_offloads(kept, estimate, route.next_hop_max_size, route.max_attachments))
    for o in job.outcomes:
        if o.facts.path in extra:
            o.decision = policies.Decision(
                policies.Action.OFFLOAD, "next_hop_limits",
                f"the message is over the next hop's limits ({route.next_hop_max_size} bytes, "
                f"{route.max_attachments or 'any number of'} attachments); largest first")
            log_decision(job, o)


def is_signature(leaf: Part, parents: dict[int, Part]) -> bool:
    """Whether ``leaf`` is the signature of a real multipart/signed: its
    second part, of the type the ``protocol`` parameter names (RFC 1847)."""
    parent = parents.get(id(leaf))
    if parent is None or parent.content_type != "multipart/signed" or len(parent.children) != 2:
        return False
    protocol = str(parent.headers.get_param("protocol") or "").strip().lower()
    return parent.children[1] is leaf and bool(protocol) and protocol == leaf.content_type


def measure_and_detect(src: Source, leaf: Part, archives: bool = True) -> tuple[Measure, str | None, float]:
    """A leaf's measure, its type detected from its bytes, and the CPU
    seconds that took (one thread call).  With ``archives`` false (on the
    event loop) the type of a ZIP whose entries to read would inflate past
    ``container.LOOP_INFLATED`` is None, its examination not finished:
    finish it with ``examine_archive`` in a thread.  (A DOCX's take a few
    KiB: a hop to a thread per DOCX cost the 200-attachment message 30%.)"""
    cpu = time.thread_time()
    m = measure(src, leaf)
    detected = sniff.detect(m.head)
    if container.zip_like(m.head, detected):
        try:
            detected = container.examine_chunks(decoded_chunks(src, leaf), detected,
                                                None if archives else container.LOOP_INFLATED)
        except container.Costly:
            return m, None, time.thread_time() - cpu
    return m, detected, time.thread_time() - cpu


def examine_archive(src: Source, leaf: Part, m: Measure) -> tuple[str, float]:
    """The detected type of a ZIP-like leaf measured as ``m`` and the CPU
    seconds that took (blocking)."""
    cpu = time.thread_time()
    return container.examine_chunks(decoded_chunks(src, leaf), sniff.detect(m.head)), time.thread_time() - cpu


async def _athread_iter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator (reads from the spool) consumed in a thread."""
    done: Any = object()
    while True:
        chunk = await asyncio.to_thread(next, chunks, done)
        if chunk is done:
            return
        yield chunk
