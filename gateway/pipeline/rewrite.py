"""Rewrite: the output message as segments of the file read and new bytes.
Offloaded and refused parts become notices, the bodies get the links and
the notices, trace headers go on top, and the headers only the gateway may
write (inbound copies of its trace, a customer id from a client not
trusted to name one) are cut out.  A part that could not be stored and
would push the message past the next hop's limit gives way to a notice."""
from __future__ import annotations

import asyncio
import time

from gateway import mailtext
from gateway.mime import filenames
from gateway.mime.decode import message_header
from gateway.mime.parse import Part
from gateway.mime.rewrite import Link, Replacement, Segment, cut_ranges, header_field_ranges, plan, segments_size
from gateway.pipeline.job import MessageJob, Offloaded
from gateway.pipeline.offload import landing_page
from gateway.pipeline.quarantine import default_name
from gateway.pipeline.step import INLINE_BYTES, Step
from gateway.pipeline.trace import trace


class Rewrite(Step):
    """Plan the output message."""

    name = "rewrite"
    always = False

    async def run(self, job: MessageJob) -> None:
        assert job.src is not None and job.root is not None
        src, route = job.src, job.route
        texts = self.services.texts[route.name]
        # The route's link text, else the config's, else the catalogue's in the route's language.
        template = route.link_text or self.services.cfg.links.text

        def link(o: Offloaded) -> Link:
            return Link(o.filename, o.size, o.url, size_text=texts.size(o.size),
                        label=texts.link_label(template, filenames.display_name(o.filename)
                                               or texts.text(mailtext.ATTACHMENT), o.size))

        links = [link(o) for o in job.offloaded]
        inline = {}
        for o in job.offloaded:
            cid = message_header(o.part.headers, "Content-ID").strip().strip("<>").lower()
            if cid and cid in job.cids:
                inline[cid] = link(o)
        if route.landing_page and len(job.offloaded) >= 2:
            page_link = await landing_page(self.services, job)
            if page_link is not None:
                links = [page_link]
        note = f"{len(job.failed)} not stored, forwarded as is" if job.failed else ""
        segments = await self._planned(job, links, inline, note)
        if job.failed and segments_size(segments) > route.next_hop_max_size:
            # Fail open, but never past the next hop's limit: the parts that
            # could not be stored give way to a notice.
            job.replacements += [Replacement(p, failed_notice(texts, p)) for p in job.failed]
            segments = await self._planned(job, links, inline,
                                           f"{len(job.failed)} not stored, replaced by a notice")
            for p in job.failed:
                name = p.filename
                job.unstored.append(filenames.display_name(name) or default_name(p))
                job.log.warning("storage failed and the message would exceed the next hop's limit; "
                                "attachment replaced by a notice", part=p.path, filename=name,
                                next_hop_max_size=route.next_hop_max_size)
                self.services.audit.event("FileRefused", "Failure",
                                          EventResultDetails="storage unavailable, too large to forward",
                                          QueueId=job.envelope.queue_id, CustomerId=job.customer,
                                          TargetFileName=name)
        elif job.failed:
            for p in job.failed:
                job.log.warning("storage failed; attachment forwarded as is (fits the next hop's limit)",
                                part=p.path, filename=p.filename,
                                next_hop_max_size=route.next_hop_max_size)
        # Headers only the gateway may write: inbound copies of its trace,
        # and a customer id from a client not trusted to name one.
        drop = {"x-attachment-offload"}
        if not job.customer_believed and route.customer_id.header:
            drop.add(route.customer_id.header.lower())
        drops = header_field_ranges(src, job.root, drop)
        if drops:
            segments = [segments[0], *cut_ranges(segments[1:], drops, [src.read(a, b) for a, b in drops])]
        job.segments = segments
        job.changed = bool(job.offloaded or job.failed or job.replacements or job.notices or job.unpacked or drops)

    async def _planned(self, job: MessageJob, links: list[Link], inline: dict[str, Link], note: str
                       ) -> list[Segment]:
        """The plan, in a thread when a body it adds to or cuts is large:
        each is read whole and the HTML walked (gateway/mime/htmlpoint.py),
        at a cost in proportion (4 MiB of HTML held the event loop 7 s)."""
        bodies = [p for p in (job.text_part, job.html_part) if p is not None]
        if job.cuts or any(p.encoded_size > INLINE_BYTES for p in bodies):
            return await asyncio.to_thread(self._plan, job, links, inline, note)
        return self._plan(job, links, inline, note)

    def _plan(self, job: MessageJob, links: list[Link], inline: dict[str, Link], note: str) -> list[Segment]:
        assert job.src is not None and job.root is not None
        head = trace(self.services.cfg.gateway.hostname, job.envelope, job.offloaded, refused=len(job.refused),
                     replaced=job.replaced, tnef_unpacked=job.unpacked, note=note,
                     disarmed=sum(1 for o in job.outcomes if o.cleaned and not o.extracted))
        return plan(job.src, job.root, replacements=job.replacements, links=links, text_part=job.text_part,
                    html_part=job.html_part, link_template="", trace=head, notices=job.notices,
                    inline=inline, cuts=job.cuts)


def failed_notice(texts: mailtext.MailTexts, part: Part) -> str:
    """The text in place of a part that could not be stored or forwarded."""
    name = part.filename or default_name(part)
    return texts.text(mailtext.NOT_STORED, filename=name)


def result(job: MessageJob) -> dict[str, object]:
    """What processing did, as ``result.json`` records it."""
    return {
        "offloaded": [{"key": o.key, "size": o.size, "sha256": o.sha256, "filename": o.filename,
                       "part": o.part.path} for o in job.offloaded],
        "failed": [p.path for p in job.failed],
        "refused": job.refused,
        "decisions": [{"part": o.facts.path, "action": o.decision.action.value, "policy": o.decision.policy,
                       "reason": o.decision.reason, "declared_type": o.facts.declared_type,
                       "detected_type": o.facts.detected_type, "filename": o.facts.filename,
                       "size": o.facts.decoded_size} for o in job.outcomes],
        "tnef_unpacked": job.unpacked,
        "seconds": round(time.monotonic() - job.started, 4),
    }
