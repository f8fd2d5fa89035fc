"""Offload: each part the policies send to storage is streamed there from
the spool, checked against what was measured, and given a link (and, on
routes with ``landing_page``, one link to a page listing them all).  Any
storage failure fails open: the part stays in the message where it fits."""
from __future__ import annotations

import asyncio
import time

import policies
from gateway import mailtext, metrics
from gateway.links import records
from gateway.links.mint import mint
from gateway.links.tokens import new_object_id
from gateway.mime import filenames
from gateway.mime.decode import decoded_chunks
from gateway.mime.rewrite import Link, Replacement
from gateway.partfacts import safe_type
from gateway.pipeline.job import MessageJob, Offloaded, PartOutcome
from gateway.pipeline.quarantine import default_name
from gateway.pipeline.services import Services
from gateway.pipeline.step import Step
from gateway.storage.base import ObjectMeta, StorageError
from gateway.storage.keys import file_key


class Offload(Step):
    """Store the parts the policies decided to offload, in parallel."""

    name = "offload"
    always = False

    async def run(self, job: MessageJob) -> None:
        todo = [o for o in job.outcomes if o.decision.action is policies.Action.OFFLOAD]
        results = await asyncio.gather(*(self._offload(job, o) for o in todo))
        for o, r in zip(todo, results, strict=True):
            if r is None and o.extracted:
                # A file taken out of a document has nowhere else to go.
                job.unstored.append(o.facts.filename)
                job.log.warning("a file taken out of a document could not be stored", part=o.facts.path,
                                filename=o.facts.filename)
            elif r is None:
                job.failed.append(o.part)
            else:
                job.offloaded.append(r)
                if not o.extracted:
                    job.replacements.append(Replacement(r.part, notice(self.services.texts[job.route.name], r,
                                                                       o.cleaned_text)))

    async def _offload(self, job: MessageJob, o: PartOutcome) -> Offloaded | None:
        assert job.src is not None
        services, route, envelope = self.services, job.route, job.envelope
        part, measured = o.part, o.measure
        store = services.stores[route.storage]
        if o.data is not None:  # disarmed, or taken out of a document: named by the facts
            original = o.facts.filename or default_name(part)
        else:
            original = part.filename or default_name(part)
        display = filenames.display_name(original) or default_name(part)
        key = file_key(job.customer, display)
        ctype = o.facts.detected_type if o.data is not None and o.facts.detected_type else part.content_type
        meta = ObjectMeta(content_type=safe_type(ctype), filename=original,
                          metadata={"queue-id": envelope.queue_id, "customer-id": job.customer})
        async with services.offload_slots:
            started = time.monotonic()
            try:
                chunks = iter([o.data]) if o.data is not None else decoded_chunks(job.src, part)
                stored = await store.put(key, chunks, meta)
                metrics.STORAGE_SECONDS.labels(store.name).observe(time.monotonic() - started)
                # The store's own count and hash of what it took, against what
                # the policies were told: a short or altered upload fails here.
                if stored.size != measured.size:
                    raise StorageError(f"stored object {key} has {stored.size} bytes, expected {measured.size}")
                if measured.sha256 and stored.sha256 and stored.sha256 != measured.sha256:
                    raise StorageError(f"stored object {key} has SHA-256 {stored.sha256}, "
                                       f"expected {measured.sha256}")
                sha256 = stored.sha256 or measured.sha256 or ""
                link = await mint(store, services.keyring, services.cfg.http.base_url, services.cfg.links.ttl,
                                  key=key, filename=original, size=stored.size, sha256=sha256,
                                  content_type=meta.content_type, customer_id=job.customer,
                                  queue_id=envelope.queue_id, message_id=job.message_id)
            except Exception as e:  # noqa: BLE001 - rule 2: any storage failure fails open
                # StorageError and OSError are the expected ones; anything else
                # from a backend (an SDK's own exception) must not hold the
                # message either.
                metrics.OFFLOAD_FAILURES.labels(store.name).inc()
                error = str(e) if isinstance(e, (StorageError, OSError)) else f"{type(e).__name__}: {e}"
                job.log.error("offload failed; failing open", part=part.path, key=key, error=error)
                return None
        metrics.OFFLOADED_PARTS.labels(route.name, store.name).inc()
        metrics.OFFLOADED_BYTES.labels(route.name, store.name).inc(stored.size)
        job.log.info("offloaded", part=part.path, key=key, size=stored.size, sha256=sha256)
        # What was stored, whether or not anyone ever clicks (the SIEM lists
        # files stored and never opened from these and the FileAccessed events).
        services.audit.event("FileStored", "Success", EventSubType="Mail", EventResultDetails="offloaded",
                             QueueId=envelope.queue_id, InternetMessageId=job.message_id or None,
                             CustomerId=job.customer, TargetFilePath=key, TargetFileName=display,
                             TargetFileSize=stored.size, TargetFileSHA256=sha256 or None,
                             TargetFileMimeType=o.facts.detected_type or None,
                             DeclaredMimeType=o.facts.declared_type or None, StoreName=store.name)
        return Offloaded(part=part, filename=display, key=key, size=stored.size, sha256=sha256, url=link.url,
                         object_id=link.object_id, expires=link.expires)


async def landing_page(services: Services, job: MessageJob) -> Link | None:
    """One link to a page listing every offloaded file (route.landing_page);
    None, and per-file links stay, when the page record cannot be stored."""
    store = services.stores[job.route.storage]
    page_id = new_object_id()
    expires = min(o.expires for o in job.offloaded)
    try:
        await records.save_page(store, records.PageRecord(
            page_id=page_id, object_ids=[o.object_id for o in job.offloaded], customer_id=job.customer,
            queue_id=job.envelope.queue_id, message_id=job.message_id, created=time.time(), expires=expires))
    except (StorageError, OSError) as e:
        job.log.error("landing page not stored; one link per file instead", error=str(e))
        return None
    token = services.keyring.sign(store.name, page_id, expires, purpose="page")
    total = sum(o.size for o in job.offloaded)
    texts = services.texts[job.route.name]
    label = texts.landing_label(job.route.landing_page_text, len(job.offloaded), total)
    return Link(label, total, f"{services.cfg.http.base_url}/p/{token}", label=label, size_text=texts.size(total))


def notice(texts: mailtext.MailTexts, o: Offloaded, cleaned: str = "") -> str:
    """The text in place of an offloaded part (``cleaned``: what disarm removed)."""
    if cleaned:
        return texts.text(mailtext.OFFLOADED_CLEANED, filename=o.filename, size=texts.size(o.size), cleaned=cleaned)
    return texts.text(mailtext.OFFLOADED, filename=o.filename, size=texts.size(o.size))
