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
"""
from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import policies
from gateway import logs, metrics
from gateway.config import Config, RouteSettings
from gateway.links.mint import mint
from gateway.links.tokens import Keyring
from gateway.mime import container, filenames
from gateway.partfacts import HEAD_BYTES, part_facts, safe_type
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

    def answer(self) -> dict[str, object]:
        """The API's answer (``s3Key`` keeps its name on every backend)."""
        return {"downloadUrl": self.url, "fileName": self.filename, "fileSize": self.size, "s3Key": self.key}


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
        """Move a staged file to its secure key, decide on the copy and mint
        its link; raises Refused (copy and staging removed) or StorageError.
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
        # Keep and offload both mean "store it" for a file that came on its
        # own; any other verdict (replace, refuse) means it must not be kept.
        if decision.action not in (policies.Action.KEEP, policies.Action.OFFLOAD):
            await asyncio.gather(store.delete(key), *(store.delete(k) for k in staging))
            raise Refused(decision.reason, decision.policy)
        sha256 = sha256 or stored.sha256
        link = await mint(store, self.keyring, self.cfg.http.base_url, self.cfg.links.ttl, key=key,
                          filename=filename, size=size, sha256=sha256, content_type=ctype, customer_id=customer,
                          queue_id=reference, message_id=message_id)
        if cleanup:
            await asyncio.gather(*(store.delete(k) for k in staging))
        log.info("stored", ref=reference, key=key, size=size, sha256=sha256)
        self.audit.event("FileStored", "Success", EventSubType=source, EventResultDetails="stored",
                         QueueId=reference, InternetMessageId=message_id or None, CustomerId=customer,
                         TargetFilePath=key, TargetFileName=display, TargetFileSize=size,
                         TargetFileSHA256=sha256 or None, TargetFileMimeType=detected or None,
                         DeclaredMimeType=ctype, StoreName=store.name, ActorUsername=actor, SrcIpAddr=client)
        return Stored(key=key, filename=display, size=size, sha256=sha256, url=link.url)

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
