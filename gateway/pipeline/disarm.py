"""Disarm: an allowed PDF or Office file with active content (scripts,
launch actions, embedded programs, macros, remote templates, DDE) reaches
the agent rewritten without it (gateway/disarm/), the original kept in
quarantine, never linked.  Each file taken out of a document is judged as
a part of its own: stored and linked when allowed, quarantined if not (a
PDF or Office file taken out is checked in turn, and quarantined when it
has active content of its own).  A
file that cannot be checked is not examined, and refused.  Per route and
kind of file (``disarm.pdf``, ``disarm.office``): ``disarm``, ``refuse``,
or ``allow`` (logged).  The rules (which files, the budget, what a result
means) are gateway/disarming.py's, which uploads over HTTP follow too."""
from __future__ import annotations

import asyncio
import base64
import hashlib

import policies
from gateway import disarm, disarming, mailtext, metrics
from gateway.config import DisarmSettings
from gateway.mime import container, filenames
from gateway.mime.decode import HEAD, Measure, decoded_bytes
from gateway.mime.rewrite import Replacement
from gateway.mime.source import Source
from gateway.partfacts import part_facts, safe_type
from gateway.pipeline import quarantine
from gateway.pipeline.examine import log_decision
from gateway.pipeline.job import MessageJob, PartOutcome
from gateway.pipeline.step import Step


class Disarm(Step):
    """Rewrite allowed PDFs and Office files without their active content."""

    name = "disarm"
    always = False

    def enabled(self, job: MessageJob) -> bool:
        """When the message has a PDF or an Office file to look at."""
        return any(_kind(o) is not None for o in job.outcomes)

    async def run(self, job: MessageJob) -> None:
        assert job.src is not None
        settings = job.route.disarm
        budget = disarming.budget(settings)
        todo: list[tuple[PartOutcome, str]] = []
        for o in list(job.outcomes):
            mode = self._mode(job, o, settings)
            if mode is not None:
                todo.append((o, mode))
        # One child for the message's files, started at the first file that
        # needs it (gateway/disarm: a fork per message, not per file), and
        # small files sent in batches: one thread call for several files.
        session = disarm.Session(budget)
        try:
            for batch in _batches(todo):
                results = await asyncio.to_thread(_disarm_batch, session, job.src, [o for o, _ in batch])
                for (o, mode), result in zip(batch, results, strict=True):
                    await self._apply(job, o, mode, result)
        finally:
            if session.children:
                await asyncio.to_thread(session.close)

    def _mode(self, job: MessageJob, o: PartOutcome, settings: DisarmSettings) -> str | None:
        """"disarm" or "refuse" for a part to disarm; None for one that
        needs nothing (or was refused here: too large to examine)."""
        kind = _kind(o)
        if kind is None:
            return None
        mode = disarming.mode(settings, kind)
        if mode == "allow":
            if o.decision.action is not policies.Action.REFUSE:
                job.log.warning("active content not checked (route disarm: allow)", part=o.facts.path,
                                filename=o.facts.filename, detected_type=o.facts.detected_type)
            return None
        refused = disarming.too_large(settings, o.measure.size)
        if refused is not None:
            self._refuse(job, o, refused)
            return None
        return mode

    async def _apply(self, job: MessageJob, o: PartOutcome, mode: str, result: disarm.DisarmResult) -> None:
        """Act on one file's disarm result as the route's mode says."""
        metrics.DISARMED.labels(job.route.name, result.status).inc()
        refused = await disarming.verdict(result, mode, o.facts.detected_type)
        if refused is not None:
            self._refuse(job, o, refused)
        elif result.status == "disarmed":
            await self._substitute(job, o, result)

    def _refuse(self, job: MessageJob, o: PartOutcome, decision: policies.Decision) -> None:
        o.decision = decision
        log_decision(job, o)

    async def _substitute(self, job: MessageJob, o: PartOutcome, result: disarm.DisarmResult) -> None:
        """Put the disarmed file in the original's place; keep the original."""
        assert result.data is not None
        services, route = self.services, job.route
        original = filenames.display_name(o.facts.filename) or quarantine.default_name(o.part)
        name = disarming.cleaned_name(original, result)
        kept = policies.Decision(policies.Action.REFUSE, "disarm", "the original of a disarmed file")
        key, _ = await quarantine.keep(services, job, o.part, o.measure, original, kept,
                                       detected_type=o.facts.detected_type)
        cleaned, summary = result.data, disarm.summary(result)
        detected = result.new_type or o.facts.detected_type or "application/octet-stream"
        # Judged again as what it now is: the entity the gateway writes
        # declares the cleaned file's own type under its corrected name.
        o.facts = part_facts(path=o.facts.path, declared_type=detected, filename=name,
                             decoded_size=len(cleaned), disposition=o.facts.disposition, route=route,
                             head=cleaned[:HEAD], detected_type=detected, content_id=o.facts.content_id,
                             is_attachment=True, inline=o.facts.inline)
        o.measure = Measure(len(cleaned), cleaned[:HEAD], result.sha256)
        o.decision = policies.decide(services.policies[route.name], o.facts)
        o.data, o.cleaned = cleaned, summary
        log_decision(job, o)
        services.audit.event("FileDisarmed", "Success", EventResultDetails=summary, QueueId=job.envelope.queue_id,
                             CustomerId=job.customer, TargetFileName=name, TargetFileSize=len(cleaned),
                             TargetFileSHA256=result.sha256, OriginalFileSHA256=result.original_sha256,
                             OriginalFilePath=key, TargetFileMimeType=detected,
                             InternetMessageId=job.message_id or None)
        job.log.info("disarmed", part=o.facts.path, filename=name, removed=list(result.removed),
                     sha256=result.sha256, original_sha256=result.original_sha256, quarantine_key=key)
        if o.decision.action is policies.Action.KEEP:
            job.replacements.append(Replacement(o.part, "", raw=entity(name, detected, cleaned)))
        if o.decision.action in (policies.Action.KEEP, policies.Action.OFFLOAD):
            texts = services.texts[route.name]
            o.cleaned_text = texts.disarmed(result.removed)
            job.notices.append(texts.text(mailtext.CLEANED, filename=name, summary=texts.disarmed(result.removed)))
        for n, e in enumerate(result.extracted, 1):
            job.outcomes.append(await self._extracted(job, o, n, e))

    async def _extracted(self, job: MessageJob, o: PartOutcome, n: int, e: disarm.Extracted) -> PartOutcome:
        """A file taken out of a document, judged as a part of its own; kept
        ones are stored and linked (they are no longer in the document).
        Its type is detected in a thread: a ZIP's examination is never done
        on the event loop."""
        head = e.data[:HEAD]
        detected = await asyncio.to_thread(container.detect_chunks, head, [e.data])
        facts = part_facts(path=f"{o.facts.path}.x{n}", declared_type="application/octet-stream",
                           filename=filenames.display_name(e.filename) or f"embedded-{n}.bin",
                           decoded_size=len(e.data), disposition="attachment", route=job.route, head=head,
                           detected_type=detected, is_attachment=True)
        decision = policies.decide(self.services.policies[job.route.name], facts)
        if disarming.needs_check(job.route.disarm, detected, decision):
            # A PDF or Office file inside a document: it is linked as it is,
            # so it passes only when it has no active content of its own.
            [refused] = await disarming.check_in_place(job.route.disarm, [(e.data, detected)])
            decision = refused or decision
        if decision.action is policies.Action.KEEP:
            decision = policies.Decision(policies.Action.OFFLOAD, "disarm",
                                         "a file taken out of a document is stored and linked")
        outcome = PartOutcome(o.part, decision, Measure(len(e.data), head, hashlib.sha256(e.data).hexdigest()),
                              facts, data=e.data, extracted=True)
        log_decision(job, outcome)
        return outcome


# A batch: files sent to the disarm child in one thread call, up to this
# many decoded bytes in all (a larger file goes alone) or this many files.
BATCH_BYTES = 8 << 20
BATCH_FILES = 64


def _batches(todo: list[tuple[PartOutcome, str]]) -> list[list[tuple[PartOutcome, str]]]:
    """``todo`` in order, cut into batches of at most BATCH_FILES files and
    BATCH_BYTES decoded bytes (a file above that alone)."""
    out: list[list[tuple[PartOutcome, str]]] = []
    size = 0
    for item in todo:
        n = item[0].measure.size
        if not out or len(out[-1]) >= BATCH_FILES or size + n > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += n
    return out


def _disarm_batch(session: disarm.Session, src: Source, outcomes: list[PartOutcome]) -> list[disarm.DisarmResult]:
    """Decode the batch's parts and disarm them, in the calling thread: the
    child takes the whole batch at once (``_batches`` bounds what is in
    hand)."""
    files = []
    for o in outcomes:
        assert o.facts.detected_type is not None
        files.append((decoded_bytes(src, o.part), o.facts.detected_type))
    return session.disarm_all(files)


def _kind(o: PartOutcome) -> str | None:
    """"pdf" or "office" for a part disarm looks at, else None."""
    if o.extracted or o.data is not None:
        return None
    return disarming.looked_at(o.facts.detected_type, o.decision)


def entity(filename: str, ctype: str, data: bytes) -> bytes:
    """A MIME entity carrying ``data`` as the attachment ``filename``."""
    body = base64.b64encode(data)
    lines = b"\r\n".join(body[i:i + 76] for i in range(0, len(body), 76))
    head = (f"Content-Type: {safe_type(ctype)}\r\n"
            f"Content-Disposition: {filenames.content_disposition(filename)}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n")
    return head.encode("ascii") + lines
