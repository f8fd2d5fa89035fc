"""Notify: one automatic reply to the sender whose files were refused, or
could not be stored and were too large to forward (RFC 3834 rules, a rate
per sender shared by every process, and by every node through a cloud
store); a failure is logged, never fatal."""
from __future__ import annotations

import asyncio
import time
from email.header import make_header

from gateway import autoreply, invitations, mailtext, metrics
from gateway.branding import Branding
from gateway.delivery import Content
from gateway.mime import filenames
from gateway.mime.decode import message_header
from gateway.mime.params import decode_header
from gateway.pipeline.job import MessageJob
from gateway.pipeline.step import Step
from gateway.spool.durable import write_atomic
from gateway.spool.envelope import Envelope
from gateway.storage.base import StorageError

# Seconds the auto-reply waits for its upload invitation to be saved: the
# message it is about waits too (the store may be the one failing).
INVITATION_TIMEOUT = 5.0


class Notify(Step):
    """Answer the sender when a file was refused or not stored."""

    name = "notify"
    always = True

    def enabled(self, job: MessageJob) -> bool:
        """On routes with an auto-reply, when there is something to say."""
        return job.route.autoreply is not None and bool(job.refused or job.unstored)

    async def run(self, job: MessageJob) -> None:
        services, route, envelope = self.services, job.route, job.envelope
        settings = route.autoreply
        assert settings is not None and job.root is not None
        why_not = autoreply.skip_reason(envelope.mail_from, job.root.headers, job.auth)
        if why_not is not None:
            metrics.AUTOREPLIES.labels(route.name, "skipped").inc()
            job.log.info("no auto-reply", reason=why_not)
            return
        claim = await services.rates.claim(route.storage, envelope.mail_from, settings.interval)
        if claim is None:
            metrics.AUTOREPLIES.labels(route.name, "skipped").inc()
            job.log.info("no auto-reply", reason=f"one went to this sender within {settings.interval}s")
            return
        subject = filenames.display_name(decoded_words(message_header(job.root.headers, "Subject")).strip())
        message_id = message_header(job.root.headers, "Message-ID").strip()
        # The route's own texts when it sets them, else the catalogue's in its language.
        texts = services.texts[route.name]
        template = settings.template if job.refused else settings.storage_failed_template
        upload_url = await self._upload_url(job, message_id, template)
        if job.refused:
            text = autoreply.render(
                settings.template if settings.template is not None else texts.template(mailtext.AUTOREPLY),
                subject=subject, upload_url=upload_url,
                refusals=[(r["filename"], reason) for r, reason in zip(job.refused, job.refused_reasons, strict=True)]
                + [(name, texts.text(mailtext.STORAGE_FAILED_REASON)) for name in job.unstored])
            reply_subject = settings.subject or texts.text(mailtext.AUTOREPLY_SUBJECT)
        else:
            own = settings.storage_failed_template
            text = autoreply.render_storage_failed(
                own if own is not None else texts.template(mailtext.STORAGE_FAILED if upload_url
                                                           else mailtext.STORAGE_FAILED_NO_PAGE),
                files=job.unstored, subject=subject, upload_url=upload_url)
            reply_subject = settings.storage_failed_subject or texts.text(mailtext.STORAGE_FAILED_SUBJECT)
        text = autoreply.sign(text, Branding.from_config(services.cfg).contact_lines())
        try:
            data = autoreply.build(sender=settings.sender, to=envelope.mail_from, subject=reply_subject,
                                   text=text, in_reply_to=message_id, hostname=services.cfg.gateway.hostname)
        except (ValueError, TypeError) as e:
            await services.rates.release(claim)
            job.log.error("auto-reply not built", error=str(e))
            return
        path = job.work("autoreply.eml")
        await asyncio.to_thread(write_atomic, path, data)
        reply_env = Envelope(queue_id=envelope.queue_id + "R", mail_from="", rcpt_tos=[envelope.mail_from],
                             route=route.name, received_at=time.time())
        async with services.leases.using(services.autoreply_hops[route.name]) as hop:
            result = await hop.deliver(reply_env, [envelope.mail_from], Content(path))
        if result.delivered:
            metrics.AUTOREPLIES.labels(route.name, "sent").inc()
            job.log.info("auto-reply sent", to=envelope.mail_from, next_hop=hop.name)
        else:
            await services.rates.release(claim)
            metrics.AUTOREPLIES.labels(route.name, "failed").inc()
            job.log.error("auto-reply not delivered", to=envelope.mail_from,
                          reason=next(iter({**result.deferred, **result.failed}.values()), ""))

    async def _upload_url(self, job: MessageJob, message_id: str, template: str | None) -> str:
        """A fresh upload-page invitation for the auto-reply (this customer,
        this thread; files announced to the address the message was for)
        when ``template`` shows one, or the route's fixed ``upload_url`` when
        the page is off or the invitation cannot be saved (logged, the reply
        still goes: when storage failed, saving it may fail too)."""
        services, route = self.services, job.route
        settings = route.autoreply
        assert settings is not None
        if not services.cfg.upload.enabled or not autoreply.wants_upload_url(template):
            return settings.upload_url
        try:
            inv, url = await asyncio.wait_for(invitations.create(
                services.stores[route.storage], services.keyring, services.cfg.http.base_url,
                customer_id=job.customer, message_id=autoreply.thread_id(message_id),
                notify=job.envelope.rcpt_tos[0], route=route.name, ttl=services.cfg.upload.invitation_ttl),
                INVITATION_TIMEOUT)
        except (TimeoutError, StorageError, OSError) as e:
            job.log.error("no upload invitation for the auto-reply", error=str(e) or type(e).__name__)
            return settings.upload_url
        job.log.info("upload invitation for the auto-reply", invitation=inv.object_id, customer_id=job.customer)
        return url


def decoded_words(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded (the customer's
    subject, quoted in the reply as they wrote it); as it is when it cannot be."""
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - a malformed encoded word: the raw value still reads
        return value
