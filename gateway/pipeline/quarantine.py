"""Refusals: a refused file is kept in quarantine, replaced by a notice,
named to the agent and the sender, and audited; an emptied one is replaced.

``put`` is the one place bytes go into quarantine: ``keep`` for mail
(parts, uuencoded files, whole messages), and gateway/uploads.py for the
original of an upload it disarmed; ``refusal`` records one in the job, the
log, the metrics and the audit stream.  A quarantine that fails raises and the message is
held: a refused file is never forwarded and never dropped.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import policies
from gateway import logs, mailtext, metrics
from gateway.config import RouteSettings
from gateway.mime import filenames
from gateway.mime.decode import Measure, decoded_chunks
from gateway.mime.parse import ENCODED_MESSAGE, Part
from gateway.mime.rewrite import Replacement
from gateway.pipeline.job import MessageJob
from gateway.pipeline.services import Services
from gateway.pipeline.step import Step
from gateway.storage.base import ObjectMeta, Storage, StorageError
from gateway.storage.keys import file_key


class QuarantineError(Exception):
    """A refused file could not be kept in the quarantine; the message is held."""


def default_name(part: Part) -> str:
    """The name an agent sees for a part the sender gave none (the policies
    judge a nameless part by the same name: policies.filetypes)."""
    from policies.filetypes import DEFAULT_NAME_EXTENSIONS

    if part.unexamined is not None:
        return f"part-{part.path or '1'}.eml"
    return f"attachment.{DEFAULT_NAME_EXTENSIONS.get(part.content_type, 'bin')}"


async def keep(services: Services, job: MessageJob, part: Part, measured: Measure, name: str,
               decision: policies.Decision, data: bytes | None = None, *,
               detected_type: str | None = None) -> tuple[str | None, str | None]:
    """Keep a refused part (or ``data`` found inside it) under the route's
    quarantine prefix, with no link record: no token can lead there.
    Returns its key and SHA-256, or no key when the route keeps nothing.
    Each file kept is a ``FileQuarantined`` audit event."""
    route = job.route
    if not route.quarantine.enabled:
        return None, measured.sha256
    assert job.src is not None
    src = job.src
    # A part that was not examined is kept whole, headers and all, as it
    # came: its headers may be what could not be read.  An attached message
    # in base64 or quoted-printable is kept decoded: an email an
    # administrator can open.
    raw = bool(decision.details.get("raw")) and data is None
    decoded_whole = raw and part.unexamined == ENCODED_MESSAGE
    async with services.offload_slots:
        if data is not None:
            chunks: Iterator[bytes] = iter([data])
        elif raw and not decoded_whole:
            chunks = src.iter_range(part.start, part.end)
        else:
            chunks = decoded_chunks(src, part)
        key, sha256 = await put(services.stores[route.storage], services.audit, job.log, chunks, route=route,
                                customer=job.customer, name=name, decision=decision,
                                reference=job.envelope.queue_id, message_id=job.message_id, size=measured.size,
                                sha256=measured.sha256, detected_type=detected_type, source="Mail",
                                exact_size=not decoded_whole)
    return key, sha256


async def put(store: Storage, audit: logs.AuditLog, log: Any, chunks: Iterable[bytes], *, route: RouteSettings,
              customer: str, name: str, decision: policies.Decision, reference: str, message_id: str, size: int,
              sha256: str | None, detected_type: str | None, source: str,
              exact_size: bool = True) -> tuple[str, str | None]:
    """Keep ``chunks`` (a file of ``size`` bytes and ``sha256``, when known)
    under the route's quarantine prefix in ``store`` (the caller has checked
    that the route keeps refused files), with no link record: no token can
    lead there.  Returns its key and SHA-256; a ``FileQuarantined`` audit
    event (``source``: "Mail", "Upload", "UploadPage").  Raises
    QuarantineError when the store fails, StorageError when what it kept
    is not the file (``exact_size=False``: the size is not checked)."""
    key = file_key(customer, name, prefix=route.quarantine.prefix)
    meta = ObjectMeta(content_type="application/octet-stream", filename=name,
                      metadata={"queue-id": reference, "customer-id": customer, "policy": decision.policy})
    try:
        stored = await store.put(key, chunks, meta)
    except (StorageError, OSError) as e:
        raise QuarantineError(f"refused file {name!r} could not be quarantined as {key} "
                              f"({type(e).__name__}: {e}); held, neither forwarded nor dropped") from e
    if stored.size != size and exact_size:
        raise StorageError(f"quarantined object {key} has {stored.size} bytes, expected {size}")
    if sha256 and stored.sha256 and stored.sha256 != sha256:
        raise StorageError(f"quarantined object {key} has SHA-256 {stored.sha256}, expected {sha256}")
    kept = stored.sha256 or sha256
    log.info("quarantined", key=key, size=stored.size, sha256=kept)
    audit.event("FileQuarantined", "Success", EventSubType=source, EventResultDetails=decision.reason,
                Policy=decision.policy, QueueId=reference, InternetMessageId=message_id or None,
                CustomerId=customer, TargetFilePath=key, TargetFileName=name,
                TargetFileSize=stored.size, TargetFileSHA256=kept or None,
                TargetFileMimeType=detected_type or None, StoreName=store.name)
    return key, kept


def refusal(services: Services, job: MessageJob, facts: policies.PartFacts, decision: policies.Decision,
            name: str, key: str | None, sha: str | None, notice: str) -> None:
    """Record one refused file: the notice for the bodies, the entry for
    result.json and the auto-reply, the metric and the audit event."""
    metrics.REFUSED_PARTS.labels(job.route.name, decision.policy).inc()
    job.notices.append(notice)
    job.refused_reasons.append(services.texts[job.route.name].reason(decision))
    job.refused.append({"part": facts.path, "filename": name, "policy": decision.policy, "reason": decision.reason,
                        "declared_type": facts.declared_type, "detected_type": facts.detected_type,
                        "size": facts.decoded_size, "sha256": sha, "quarantine_key": key})
    services.audit.event("FileRefused", "Failure", EventResultDetails=decision.reason,
                         QueueId=job.envelope.queue_id, CustomerId=job.customer, TargetFileName=name,
                         TargetFileSize=facts.decoded_size, TargetFileSHA256=sha,
                         TargetFileMimeType=facts.detected_type, DeclaredMimeType=facts.declared_type,
                         Policy=decision.policy, TargetFilePath=key, InternetMessageId=job.message_id or None)


class Quarantine(Step):
    """Carry out the REFUSE and REPLACE decisions on the message's parts."""

    name = "quarantine"
    always = False

    async def run(self, job: MessageJob) -> None:
        texts = self.services.texts[job.route.name]
        for o in job.outcomes:
            d, facts, p = o.decision, o.facts, o.part
            name = filenames.display_name(facts.filename) or default_name(p)
            if d.action is policies.Action.REPLACE:
                said = texts.text(d.notice) if d.notice else texts.reason(d)
                if not o.extracted:
                    job.replacements.append(Replacement(
                        p, texts.text(d.notice) if d.notice else texts.text(mailtext.REPLACED, reason=said) + "\n"))
                job.notices.append(texts.text(mailtext.REPLACED_LINE, filename=name, notice=said))
                job.log.info("attachment replaced", part=facts.path, filename=name, reason=d.reason)
            elif d.action is policies.Action.REFUSE:
                key, sha = await keep(self.services, job, p, o.measure, name, d, data=o.data,
                                      detected_type=facts.detected_type)
                text = texts.text(mailtext.REMOVED, filename=name, reason=texts.reason(d))
                if not o.extracted:  # a file taken out of a document has no place of its own
                    job.replacements.append(Replacement(p, text + "\n"))
                refusal(self.services, job, facts, d, name, key, sha, text)
