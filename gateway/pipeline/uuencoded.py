"""Files inside the text: uuencoded blocks in a text body (several mail
clients show them as attachments) are judged like any file; a refused one
is cut out of the text and quarantined, the text around it kept.  A PDF
or Office file there is checked by disarm (unless the route's disarm
allows its kind) and cut out too when it has active content: disarm
rewrites parts, not files inside a text."""
from __future__ import annotations

import asyncio
import time

import policies
from gateway import disarming, mailtext
from gateway.mime import container, filenames, sniff, uuencode
from gateway.mime.decode import Measure, decoded_bytes, decoded_chunks
from gateway.mime.parse import Part
from gateway.mime.source import Source
from gateway.partfacts import HEAD_BYTES, part_facts
from gateway.pipeline import quarantine
from gateway.pipeline.examine import log_decision
from gateway.pipeline.job import MessageJob, PartOutcome
from gateway.pipeline.step import INLINE_BYTES, Step

# Text parts up to this size are searched for uuencoded files (in memory,
# as a rewrite of the text would hold it anyway); larger ones that have a
# "begin" line are not examined and quarantined whole.
MAX_UU_SCAN = 64 << 20


class Uuencoded(Step):
    """Judge the uuencoded files in the body and the kept inline texts."""

    name = "uuencoded"
    always = False

    async def run(self, job: MessageJob) -> None:
        leaves = [job.text_part] if job.text_part is not None else []
        leaves += [o.part for o in job.outcomes if o.decision.action is policies.Action.KEEP
                  and o.part.content_type == "text/plain" and not o.facts.is_attachment]
        texts = self.services.texts[job.route.name]
        for leaf in leaves:
            for block, outcome, data in await self._judge(job, leaf):
                if outcome.decision.action is not policies.Action.REFUSE:
                    continue
                d, facts = outcome.decision, outcome.facts
                name = filenames.display_name(facts.filename) or "attachment.bin"
                # A block that was not examined is kept with the text around it.
                whole = bool(d.details.get("raw", False))
                kept = Measure(leaf.end - leaf.start if whole else len(data), b"", None)
                key, sha = await quarantine.keep(self.services, job, leaf, kept, name, d,
                                                 data=None if whole else data, detected_type=facts.detected_type)
                # What stands in the text where the refused file was.
                job.cuts.setdefault(leaf.start, []).append((block.start, block.end, texts.text(mailtext.CUT) + "\n"))
                quarantine.refusal(self.services, job, facts, d, name, key, sha,
                                   texts.text(mailtext.REMOVED_UUENCODED, filename=name, reason=texts.reason(d)))

    async def _judge(self, job: MessageJob, leaf: Part) -> list[tuple[uuencode.UuBlock, PartOutcome, bytes]]:
        """The uuencoded files in one text part, each with its decision."""
        assert job.src is not None
        if leaf.encoded_size > MAX_UU_SCAN:
            # Too large to search block by block: a text this size that has
            # a "begin" line at all is not examined, whole.
            if not await asyncio.to_thread(mentions_uuencode, job.src, leaf):
                return []
            block = uuencode.UuBlock(start=0, end=leaf.end - leaf.body_start + 1, mode="", filename="",
                                     unexamined=f"a text of over {MAX_UU_SCAN >> 20} MiB with a "
                                                "uuencoded file in it")
            found, spent = [(block, b"", "application/octet-stream")], 0.0
        else:
            small = None
            if leaf.encoded_size <= INLINE_BYTES:
                # Small: cheaper than the hop to a thread, unless it holds
                # an archive, whose examination is never done on the loop.
                small = find_uuencoded(job.src, leaf, archives=False)
            if small is None:
                small = await asyncio.to_thread(find_uuencoded, job.src, leaf)
            assert small is not None
            found, spent = small
        job.budget.spend(spent)
        out: list[tuple[uuencode.UuBlock, PartOutcome, bytes]] = []
        check: list[int] = []  # the PDFs and Office files to check where they stand
        for n, (block, data, detected) in enumerate(found, 1):
            path = f"{leaf.path or '1'}.uu{n}"
            if block.unexamined or job.budget.exhausted:
                why = block.unexamined or policies.Phrase(mailtext.OUT_OF_TIME)
                facts = part_facts(path=path, declared_type="application/octet-stream", filename=block.filename,
                                   decoded_size=len(data), disposition="attachment", route=job.route,
                                   is_attachment=True)
                decision = policies.Decision(policies.Action.REFUSE, "unexamined",
                                             **policies.explained(mailtext.UNEXAMINED, why=why), details={"raw": True})
            else:
                facts = part_facts(path=path, declared_type="application/octet-stream", filename=block.filename,
                                   decoded_size=len(data), disposition="attachment", route=job.route,
                                   head=data[:HEAD_BYTES], detected_type=detected, is_attachment=True)
                decision = policies.decide(self.services.policies[job.route.name], facts)
                if disarming.needs_check(job.route.disarm, detected, decision):
                    check.append(len(out))
            out.append((block, PartOutcome(leaf, decision, Measure(len(data), b"", None), facts), data))
        if check:
            # Disarm rewrites parts, not files inside a text: a clean PDF or
            # Office file stays, one with active content is cut out.
            refusals = await disarming.check_in_place(
                job.route.disarm, [(out[i][2], out[i][1].facts.detected_type or "") for i in check])
            for i, refused in zip(check, refusals, strict=True):
                if refused is not None:
                    out[i][1].decision = refused
        for _, outcome, _ in out:
            log_decision(job, outcome)
        return out


def mentions_uuencode(src: Source, leaf: Part) -> bool:
    """Whether a (large) text part has a line that could begin a uuencoded
    file, read in windows."""
    carry = b""
    for chunk in decoded_chunks(src, leaf):
        data = carry + chunk
        if uuencode.ANY_BEGIN_LINE.search(data):
            return True
        carry = data[-200:]
    return False


def find_uuencoded(src: Source, leaf: Part, archives: bool = True
                   ) -> tuple[list[tuple[uuencode.UuBlock, bytes, str]], float] | None:
    """The uuencoded blocks in a text part's decoded body, each with its
    decoded bytes and detected type, and the CPU seconds that took.  With
    ``archives`` false (on the event loop), None as soon as a block is a
    ZIP: call again in a thread."""
    cpu = time.thread_time()
    found = []
    for block in uuencode.find_blocks(decoded_bytes(src, leaf)):
        data = b"" if block.unexamined else block.decode(max_bytes=MAX_UU_SCAN)
        if not data:
            detected = "application/x-empty"
        else:
            head = data[:HEAD_BYTES]
            detected = sniff.detect(head)
            if container.zip_like(head, detected):
                if not archives:
                    return None
                detected = container.examine_chunks([data], detected)
        found.append((block, data, detected))
    return found, time.thread_time() - cpu
