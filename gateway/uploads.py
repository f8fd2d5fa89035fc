"""Files that arrive over HTTP (the API and the upload page) become stored
objects with links, under the same policies as attachments in mail.

An upload is streamed into a staging key of the route's store first; then
``finish`` copies it to its secure key, checks the copy's size and SHA-256
against what was received, asks the route's policies about the copy (the
same ``PartFacts`` the worker builds for a part), deletes it when they
refuse it (REPLACE) and otherwise mints the link and removes the staging
object.  The copy is what is judged, not the staging object: the upload
page's chunks can be written again by the customer while a completion runs,
so bytes judged in staging need not be the bytes copied from it.  The API
does this inline (200) or in a job (202); the upload page does it when the
last chunk is in.

A PDF or Office file is disarmed as the same file in mail is, by the route's
``disarm`` settings and the same rules (gateway/disarming.py), in a child
process (``disarm.Session``): in ``disarm`` mode the cleaned file takes the
copy's place (its own key, name, size, type and SHA-256, judged again), the
original goes to the route's quarantine (never linked) with what was taken
out of it, and the answer says what was removed; ``refuse`` refuses a file
with active content; ``allow`` stores it as it is (logged).  A file disarm
cannot check, or over ``disarm.max_size`` (it is held whole in memory for
the child), is refused.
"""
from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import policies
from gateway import disarm, disarming, logs, mailtext, metrics
from gateway.config import Config, RouteSettings
from gateway.links.mint import mint
from gateway.links.tokens import Keyring
from gateway.mime import container, filenames
from gateway.partfacts import HEAD_BYTES, part_facts, safe_type
from gateway.pipeline import quarantine
from gateway.scan import Clamd
from gateway.storage.base import ObjectMeta, Storage, StorageError
from gateway.storage.bridge import StreamBridge, blocking_chunks
from gateway.storage.keys import file_key

log = logs.get("uploads")


class Refused(Exception):
    """A policy refused the file (answered 415); ``str()`` is the reason,
    ``policy`` the name of the policy that refused it."""

    def __init__(self, reason: str, policy: str = "") -> None:
        super().__init__(reason)
        self.policy = policy


@dataclass(frozen=True)
class Staged:
    """A file received into staging."""

    key: str
    size: int
    sha256: str
    head: bytes


@dataclass(frozen=True)
class Stored:
    """A file in its secure place, with its link."""

    key: str
    filename: str
    size: int
    sha256: str
    url: str
    #: What disarming removed, in the route's language ("scripts removed"),
    #: when the file stored is the cleaned one; None when it is the upload.
    cleaned: str | None = None

    def answer(self) -> dict[str, object]:
        """The API's answer (``s3Key`` keeps its name on every backend;
        ``cleaned`` only for a file that was disarmed)."""
        out: dict[str, object] = {"downloadUrl": self.url, "fileName": self.filename, "fileSize": self.size,
                                  "s3Key": self.key}
        if self.cleaned is not None:
            out["cleaned"] = self.cleaned
        return out


@dataclass(frozen=True)
class _Cleaned:
    """A disarmed upload in its place: the cleaned file's key and facts."""

    key: str
    filename: str
    detected_type: str
    size: int
    sha256: str
    head: bytes
    summary: str


def declared_type(filename: str, header: str | None) -> str:
    """The type the sender claims: a specific Content-Type, else the filename's."""
    if header and header.split(";")[0].strip().lower() not in ("", "application/octet-stream"):
        return safe_type(header.split(";")[0])
    return safe_type(mimetypes.guess_type(filename)[0] or "application/octet-stream")


class Uploads:
    """Stage, decide, store and link files that came over HTTP."""

    def __init__(self, cfg: Config, stores: dict[str, Storage], keyring: Keyring, audit: logs.AuditLog) -> None:
        self.stores = stores
        self.keyring = keyring
        self.audit = audit
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded config."""
        self.cfg = cfg
        self.route = cfg.api_route()
        # The same clamd the worker asks, for routes that run refuse_malware.
        self.scanner = Clamd(cfg.clamd.address, cfg.clamd.timeout) if cfg.clamd is not None else None
        self.policies = {r.name: [policies.build(p.name, p.settings) for p in r.policies] for r in cfg.routes}
        # The words of mail's notices, for what disarming removed.
        catalogues = mailtext.catalogues(cfg.path(cfg.i18n.directory) if cfg.i18n.directory else None)
        self.texts = {r.name: mailtext.for_language(catalogues, r.language) for r in cfg.routes}

    def store_for(self, route_name: str | None = None) -> Storage:
        route = self._route(route_name)
        return self.stores[route.storage]

    def _route(self, name: str | None) -> RouteSettings:
        return next((r for r in self.cfg.routes if r.name == name), self.route)

    async def stage(self, store: Storage, key: str, body: AsyncIterator[bytes], limit: int,
                    base64: bool = False) -> Staged:
        """Stream ``body`` into ``key``; raises what stopped the body
        (BodyTooLarge, BadEncoding, a dropped client) or StorageError."""
        bridge = StreamBridge(body, limit, base64)
        try:
            stored = await store.put(key, bridge.chunks(), ObjectMeta(content_type="application/octet-stream"))
        except BaseException:
            await bridge.close()
            await store.delete(key)
            if bridge.failure is not None:
                raise bridge.failure from None
            raise
        await bridge.close()
        if stored.sha256 and stored.sha256 != bridge.sha256:
            await store.delete(key)
            raise StorageError(f"staged object {key} has SHA-256 {stored.sha256}, received {bridge.sha256}")
        return Staged(key=key, size=bridge.size, sha256=bridge.sha256, head=bridge.head)

    async def finish(self, *, staging: list[str], filename: str, customer: str, ctype: str, size: int,
                     sha256: str | None, reference: str, message_id: str = "", route_name: str | None = None,
                     cleanup: bool = True, source: str = "Upload", actor: str | None = None,
                     client: str | None = None) -> Stored:
        """Move a staged file to its secure key, decide on the copy, disarm
        it when it is a PDF or Office file (the route's ``disarm``: the
        cleaned file then takes its place) and mint its link; raises Refused
        (copy and staging removed) or StorageError.
        A stored file is a ``FileStored`` audit event (``source``: "Upload"
        for the API and its jobs, "UploadPage"; ``actor`` and ``client`` as
        the caller knows them)."""
        route = self._route(route_name)
        store = self.stores[route.storage]
        display = filenames.display_name(filename) or "attachment.bin"
        loop = asyncio.get_running_loop()
        key = file_key(customer, display)
        meta = ObjectMeta(content_type=ctype, filename=filename,
                          metadata={"queue-id": reference, "customer-id": customer})
        # Copied first, judged as copied: the copy is written by the gateway
        # alone, so what the policies see is what a link will serve, even if
        # a staged chunk is written again meanwhile.  No link record exists
        # until the policies have spoken, so no token leads to the copy before.
        stored = await store.put(key, blocking_chunks(loop, (store.open(k) for k in staging)), meta)
        # The upload page's file arrives in chunks and has no hash of the
        # whole before the copy (sha256 None): the size is checked, and the
        # copy's hash is the one recorded.
        if stored.size != size or (sha256 and stored.sha256 and stored.sha256 != sha256):
            await store.delete(key)
            raise StorageError(f"copy of {reference} to {key} has {stored.size} bytes / {stored.sha256}, "
                               f"expected {size} / {sha256}")
        try:
            head = await _head(store.open(key))
            # Type detection (libmagic, and for a ZIP its central directory,
            # read back from the copy) blocks: off the event loop.  The bytes
            # are read only when the head looks like a ZIP.
            detected = await asyncio.to_thread(container.detect_chunks, head, blocking_chunks(loop, [store.open(key)]))
            scan = await self._scan(store, key, size, reference, route)
        except BaseException:
            await store.delete(key)
            raise
        facts = part_facts(path="upload", declared_type=ctype, filename=filename, decoded_size=size,
                           disposition="attachment", route=route, head=head, detected_type=detected, scan=scan)
        decision = policies.decide(self.policies[route.name], facts)
        log.info("decision", ref=reference, action=decision.action.value, policy=decision.policy,
                 reason=decision.reason, declared_type=ctype, size=size, filename=display)
        sha256 = sha256 or stored.sha256
        cleaned: _Cleaned | None = None
        kind = disarming.looked_at(detected, decision)
        if kind is not None and disarming.mode(route.disarm, kind) == "allow":
            if decision.action is not policies.Action.REFUSE:
                log.warning("active content not checked (route disarm: allow)", ref=reference, filename=display,
                            detected_type=detected)
        elif kind is not None:
            try:
                done = await self._disarm(store, route, disarming.mode(route.disarm, kind), key=key,
                                          display=display, detected=detected, size=size, sha256=sha256,
                                          customer=customer, reference=reference, message_id=message_id,
                                          source=source)
            except BaseException:
                await store.delete(key)
                raise
            if isinstance(done, policies.Decision):
                decision = done
            elif done is not None:
                # The cleaned file in the upload's place, judged again as
                # what it now is (under its own name and type), as in mail.
                cleaned, key, display, detected = done, done.key, done.filename, done.detected_type
                ctype, size, sha256 = detected, done.size, done.sha256
                facts = part_facts(path="upload", declared_type=ctype, filename=display, decoded_size=size,
                                   disposition="attachment", route=route, head=done.head,
                                   detected_type=detected)
                decision = policies.decide(self.policies[route.name], facts)
                log.info("decision", ref=reference, action=decision.action.value, policy=decision.policy,
                         reason=decision.reason, declared_type=ctype, size=size, filename=display)
        # Keep and offload both mean "store it" for a file that came on its
        # own; any other verdict (replace, refuse) means it must not be kept.
        if decision.action not in (policies.Action.KEEP, policies.Action.OFFLOAD):
            await asyncio.gather(store.delete(key), *(store.delete(k) for k in staging))
            raise Refused(decision.reason, decision.policy)
        try:
            link = await mint(store, self.keyring, self.cfg.http.base_url, self.cfg.links.ttl, key=key,
                              filename=display if cleaned else filename, size=size, sha256=sha256,
                              content_type=ctype, customer_id=customer, queue_id=reference, message_id=message_id)
        except BaseException:
            # No link, no FileStored event: a copy left here would be a
            # customer's file kept where nothing leads to it or records it.
            await store.delete(key)
            raise
        if cleanup:
            await asyncio.gather(*(store.delete(k) for k in staging))
        log.info("stored", ref=reference, key=key, size=size, sha256=sha256)
        self.audit.event("FileStored", "Success", EventSubType=source, EventResultDetails="stored",
                         QueueId=reference, InternetMessageId=message_id or None, CustomerId=customer,
                         TargetFilePath=key, TargetFileName=display, TargetFileSize=size,
                         TargetFileSHA256=sha256 or None, TargetFileMimeType=detected or None,
                         DeclaredMimeType=ctype, StoreName=store.name, ActorUsername=actor, SrcIpAddr=client)
        return Stored(key=key, filename=display, size=size, sha256=sha256, url=link.url,
                      cleaned=cleaned.summary if cleaned else None)

    async def _disarm(self, store: Storage, route: RouteSettings, mode: str, *, key: str, display: str,
                      detected: str, size: int, sha256: str, customer: str, reference: str, message_id: str,
                      source: str) -> policies.Decision | _Cleaned | None:
        """Disarm the copy at ``key`` as mail's disarm step does a part
        (gateway/pipeline/disarm.py, the rules in gateway/disarming.py):
        None when it is clean (it stays as it is), a refusal, or the cleaned
        file stored under its own key, the copy deleted and the original
        kept in the route's quarantine (never linked) with the files taken
        out of it.  The file is held whole (at most ``disarm.max_size``)
        and disarmed in a child forked from the fork server, in a thread."""
        settings = route.disarm
        refused = disarming.too_large(settings, size)
        if refused is not None:
            return refused
        data = b"".join([chunk async for chunk in store.open(key)])
        if len(data) != size:
            raise StorageError(f"the copy {key} has {len(data)} bytes, expected {size}")
        result = await asyncio.to_thread(disarm.disarm_forked, data, detected, budget=disarming.budget(settings))
        metrics.DISARMED.labels(route.name, result.status).inc()
        refused = await disarming.verdict(result, mode, detected)
        if refused is not None or result.status != "disarmed":
            return refused
        assert result.data is not None and result.sha256 is not None
        name = disarming.cleaned_name(display, result)
        new_type = result.new_type or detected
        original_key: str | None = None
        if route.quarantine.enabled:
            kept = policies.Decision(policies.Action.REFUSE, "disarm", "the original of a disarmed file")
            taken = policies.Decision(policies.Action.REFUSE, "disarm", "a file taken out of a disarmed file")
            try:
                original_key, _ = await quarantine.put(
                    store, self.audit, log, [data], route=route, customer=customer, name=display, decision=kept,
                    reference=reference, message_id=message_id, size=size, sha256=sha256, detected_type=detected,
                    source=source)
                for n, e in enumerate(result.extracted, 1):
                    await quarantine.put(
                        store, self.audit, log, [e.data], route=route, customer=customer,
                        name=filenames.display_name(e.filename) or f"embedded-{n}.bin", decision=taken,
                        reference=reference, message_id=message_id, size=len(e.data), sha256=None,
                        detected_type=None, source=source)
            except quarantine.QuarantineError as e:
                raise StorageError(str(e)) from e
        del data
        new_key = file_key(customer, name)
        meta = ObjectMeta(content_type=new_type, filename=name,
                          metadata={"queue-id": reference, "customer-id": customer})
        put = await store.put(new_key, [result.data], meta)
        if put.size != len(result.data) or (put.sha256 and put.sha256 != result.sha256):
            await store.delete(new_key)
            raise StorageError(f"the disarmed copy {new_key} has {put.size} bytes / {put.sha256}, "
                               f"expected {len(result.data)} / {result.sha256}")
        await store.delete(key)
        summary = disarm.summary(result)
        self.audit.event("FileDisarmed", "Success", EventSubType=source, EventResultDetails=summary,
                         QueueId=reference, CustomerId=customer, TargetFilePath=new_key, TargetFileName=name,
                         TargetFileSize=len(result.data), TargetFileSHA256=result.sha256,
                         OriginalFileSHA256=result.original_sha256, OriginalFilePath=original_key,
                         TargetFileMimeType=new_type, InternetMessageId=message_id or None)
        log.info("disarmed", ref=reference, filename=name, removed=list(result.removed), sha256=result.sha256,
                 original_sha256=result.original_sha256, quarantine_key=original_key)
        return _Cleaned(key=new_key, filename=name, detected_type=new_type, size=len(result.data),
                        sha256=result.sha256, head=result.data[:HEAD_BYTES],
                        summary=self.texts[route.name].disarmed(result.removed))

    async def _scan(self, store: Storage, key: str, size: int, reference: str,
                    route: RouteSettings) -> policies.ScanVerdict | None:
        """clamd's verdict on the stored copy when the route runs
        refuse_malware, as the worker asks for a part in mail (None when it
        does not); a scan that fails is an "error" verdict: fail open, logged
        and counted, as for mail."""
        if self.scanner is None or self.cfg.clamd is None or size == 0 \
                or not any(p.name == "refuse_malware" for p in route.policies):
            return None
        if size > self.cfg.clamd.max_size:
            verdict = policies.ScanVerdict("error", detail=f"{size} bytes is over clamd.max_size")
        else:
            verdict = await self.scanner.scan(store.open(key))
        metrics.SCANS.labels(route.name, verdict.status).inc()
        if verdict.status == "error":
            log.warning("malware scan failed; failing open", ref=reference, reason=verdict.detail)
        return verdict


async def _head(chunks: AsyncIterator[bytes]) -> bytes:
    """The first HEAD_BYTES of an object's stream (the rest is not read)."""
    head = b""
    try:
        async for chunk in chunks:
            head += chunk[:HEAD_BYTES - len(head)]
            if len(head) >= HEAD_BYTES:
                break
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()  # the store's file or connection, now rather than at collection
    return head
