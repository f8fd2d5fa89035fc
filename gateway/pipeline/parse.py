"""Parse: the message's MIME tree by byte offsets, with the CPU it took
counted against the message's budget.  A message whose structure cannot be
examined at all is quarantined whole here, and the agent gets its From, To,
Subject, Date and Message-ID over a notice."""
from __future__ import annotations

import asyncio
import time
from email.message import Message

import policies
from gateway import logs, mailtext
from gateway.mime.decode import Measure
from gateway.mime.parse import Limits, Part, parse
from gateway.mime.rewrite import notice_part, salvage_headers
from gateway.mime.source import Source
from gateway.pipeline import quarantine
from gateway.pipeline.job import MessageJob
from gateway.pipeline.step import INLINE_BYTES, Step
from gateway.pipeline.trace import trace

log = logs.get("worker")



def parse_timed(src: Source, limits: Limits) -> tuple[Part, float]:
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


class Parse(Step):
    """Parse the message; quarantine it whole when it cannot be examined."""

    name = "parse"
    always = False

    async def run(self, job: MessageJob) -> None:
        assert job.src is not None
        src, limits = job.src, self.services.limits
        # A small message is parsed on the loop: one written a moment ago is
        # in the page cache (every bound of the parser still applies).
        root, spent = parse_timed(src, limits) if src.size <= INLINE_BYTES else \
            await asyncio.to_thread(parse_timed, src, limits)
        job.root = root
        job.budget.spend(spent)
        if job.root.unexamined is not None and job.route.unexamined == "quarantine":
            await self._refuse_whole(job)

    async def _refuse_whole(self, job: MessageJob) -> None:
        assert job.src is not None and job.root is not None
        src, root = job.src, job.root
        from gateway.mime.decode import message_header
        from gateway.pipeline.identify import customer_id

        job.customer, _ = customer_id(root, job.envelope, job.route)
        job.message_id = message_header(root.headers, "Message-ID").strip()
        decision = policies.Decision(policies.Action.REFUSE, "unexamined",
                                     **policies.explained(mailtext.UNEXAMINED, why=root.unexamined),
                                     details={"raw": True})
        texts = self.services.texts[job.route.name]
        whole = Part(start=0, body_start=0, end=src.size, headers=Message(), depth=0, path="1",
                     unexamined=root.unexamined)
        name = "message.eml"
        key, sha = await quarantine.keep(self.services, job, whole, Measure(src.size, b"", None), name, decision,
                                         detected_type="message/rfc822")
        job.log.warning("message could not be examined; quarantined whole, a notice forwarded",
                        reason=root.unexamined, quarantine_key=key)
        facts = policies.PartFacts(path="1", declared_type="message/rfc822", filename=name, decoded_size=src.size,
                                   is_body=False, disposition="attachment",
                                   route=policies.RouteFacts(job.route.name, job.route.offload_threshold,
                                                             job.route.next_hop_max_size))
        quarantine.refusal(self.services, job, facts, decision, name, key, sha, texts.reason(decision))
        notice = texts.text(mailtext.WHOLE_MESSAGE, reason=root.unexamined)
        head = trace(self.services.cfg.gateway.hostname, job.envelope, [], refused=1,
                     note="not examined, quarantined")
        job.segments = [head, salvage_headers(src) + b"MIME-Version: 1.0\r\n" + notice_part(notice)]
        job.changed = True
        job.finished = True
