"""Google Cloud Storage through google-cloud-storage (blocking, so on threads).

Uploads: objects smaller than ``upload_chunk_size`` go up in one request
with their MD5 (GCS checks it); bigger ones as a resumable upload fed
``upload_chunk_size`` bytes at a time from the chunk iterator through a
read-only stream (``_ChunkStream``), never whole in memory, with a CRC32C
computed on the way that the client library checks against the server's at
the end (a mismatch deletes the object and raises).  The metadata of a
resumable upload is sent before its bytes, so the SHA-256 of the whole object
is added afterwards with a metadata PATCH (no data is rewritten).  With
``kms_key_name`` the object is encrypted with that Cloud KMS key (CMEK).

Storage URLs are V4 signed GETs with ``response-content-disposition``
carrying the original filename.  A service-account key signs offline; other
credentials (Compute Engine, workload identity) sign through the IAM
signBlob API with their access token.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from gateway.storage.base import ObjectMeta, ObjectNotFound, StorageError, StoredObject
from gateway.storage.cloudutil import (
    META_SHA256,
    BlockingRunner,
    Cancelled,
    content_disposition,
    object_metadata,
    read_metadata,
    resolve_path,
    store_key,
)
from gateway.storage.settings import GcsStorageSettings

_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_READ_CHUNK = 1 << 20


class _ChunkStream(io.RawIOBase):
    """A read-only, forward-only file over a chunk iterator, for resumable
    uploads: ``read(n)`` returns exactly ``n`` bytes until the end, ``tell()``
    the position; the SHA-256 and size of what was read are kept."""

    def __init__(self, chunks: Iterable[bytes], cancel: threading.Event) -> None:
        super().__init__()
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self._cancel = cancel
        self._eof = False
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def fill(self, size: int) -> int:
        """Buffer up to ``size`` bytes ahead without consuming them; return
        how many are buffered (fewer only at the end of the stream)."""
        while not self._eof and (size < 0 or len(self._buf) < size):
            if self._cancel.is_set():
                raise Cancelled()
            chunk = next(self._it, None)
            if chunk is None:
                self._eof = True
            else:
                self._buf += chunk
        return len(self._buf)

    def read(self, size: int = -1) -> bytes:
        self.fill(size)
        n = len(self._buf) if size < 0 else min(size, len(self._buf))
        out = bytes(memoryview(self._buf)[:n])
        del self._buf[:n]
        self._pos += n
        self.sha256.update(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class GcsStorage:
    """Offloaded attachments as objects in one GCS bucket under a prefix."""

    def __init__(self, name: str, settings: GcsStorageSettings, base_dir: Path) -> None:
        self.name = name
        self.settings = settings
        self._base_dir = base_dir
        self._client: Any = None
        self._bucket: Any = None
        self._signer: Any = None
        self._runner = BlockingRunner(8, name)

    # -- life cycle -------------------------------------------------------

    def _make_client(self) -> None:
        import google.auth
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        from google.oauth2 import service_account

        s = self.settings
        creds: Any = None
        project = s.project
        try:
            if s.credentials_file is not None:
                path = resolve_path(s.credentials_file, self._base_dir)
                creds = service_account.Credentials.from_service_account_file(str(path), scopes=_SCOPES)
                project = project or creds.project_id
            elif not s.anonymous:
                creds, default_project = google.auth.default(scopes=_SCOPES)
                project = project or default_project
        except (OSError, ValueError) as e:
            raise StorageError(f"storage {self.name}: cannot load Google credentials: {e}") from None
        except google.auth.exceptions.DefaultCredentialsError as e:
            raise StorageError(f"storage {self.name}: no Google credentials found: {e}") from None
        self._signer = creds
        options = {"api_endpoint": s.endpoint_url} if s.endpoint_url else None
        api_creds = AnonymousCredentials() if s.anonymous else creds
        self._client = storage.Client(project=project or "-", credentials=api_creds, client_options=options)
        self._bucket = self._client.bucket(s.bucket)

    def _check_bucket(self) -> None:
        try:
            self._bucket.reload(**self._call())
        except Exception as e:
            raise self._error("get bucket", "", e) from None
        want = self.settings.location
        have = self._bucket.location or ""
        if want is not None and have.upper() != want.upper():
            raise StorageError(f"storage {self.name}: bucket {self.settings.bucket!r} is in location {have!r}, "
                               f"but the config says location = {want!r}; refusing to start (data residency)")

    async def start(self) -> None:
        """Load credentials, build the client and check the bucket exists
        (and is in ``location`` when that is set)."""
        await self._runner.run(self._make_client)
        await self._runner.run(self._check_bucket)

    async def close(self) -> None:
        """Close the HTTP session and the thread pool."""
        if self._client is not None:
            client, self._client = self._client, None
            await self._runner.run(client.close)
        self._runner.close()

    # -- helpers ----------------------------------------------------------

    def _error(self, op: str, name: str, e: Exception) -> StorageError:
        """A StorageError naming the operation and object, never credentials."""
        from google.api_core import exceptions as gexc

        where = f"gs://{self.settings.bucket}/{name}" if name else f"gs://{self.settings.bucket}"
        if isinstance(e, StorageError):
            return e
        if isinstance(e, gexc.NotFound):
            if name:
                return ObjectNotFound(f"{where}: no such object")
            return StorageError(f"storage {self.name}: GCS {op} {where} failed: the bucket does not exist")
        if isinstance(e, gexc.GoogleAPICallError):
            detail = f"{e.code} {e.message}".strip() if e.code else str(e.message)
            if e.code == 403:
                detail += " (check the credentials and the IAM role)"
            return StorageError(f"storage {self.name}: GCS {op} {where} failed: {detail}")
        first_line = str(e).splitlines()[0] if str(e) else ""
        return StorageError(f"storage {self.name}: GCS {op} {where} failed: {type(e).__name__}: {first_line}")

    @property
    def _b(self) -> Any:
        if self._bucket is None:
            raise StorageError(f"storage {self.name}: not started")
        return self._bucket

    def _call(self) -> dict[str, Any]:
        """Per-request timeout and retry: transient errors (timeouts, 429,
        5xx) are retried with exponential backoff for at most twice the
        timeout in all, then the call fails (and the gateway fails open)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        t = self.settings.timeout
        return {"timeout": t, "retry": DEFAULT_RETRY.with_timeout(2 * t)}

    def _blob(self, full: str, **kwargs: Any) -> Any:
        kms = self.settings.kms_key_name
        return self._b.blob(full, kms_key_name=kms, **kwargs) if kms else self._b.blob(full, **kwargs)

    # -- put --------------------------------------------------------------

    async def put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        """Stream ``chunks`` into the bucket and return what was stored;
        raises StorageError, leaving nothing behind."""
        full = store_key(self.settings.prefix, key)
        self._b  # noqa: B018 - raises when not started
        return await self._runner.run_cancellable(lambda cancel: self._put(key, full, chunks, meta, cancel))

    def _put(self, key: str, full: str, chunks: Iterable[bytes], meta: ObjectMeta,
             cancel: threading.Event) -> StoredObject:
        s = self.settings
        stream = _ChunkStream(chunks, cancel)
        try:
            small = stream.fill(s.upload_chunk_size) < s.upload_chunk_size
        except Cancelled:
            raise StorageError(f"storage {self.name}: upload of {full} cancelled") from None
        except Exception as e:
            raise StorageError(f"storage {self.name}: reading the attachment for {full} failed: "
                               f"{type(e).__name__}: {e}") from e
        disposition = content_disposition(meta.filename) if meta.filename else None
        try:
            if small:
                data = stream.read()
                sha, size = stream.sha256.hexdigest(), len(data)
                blob = self._blob(full)
                blob.content_disposition = disposition
                blob.metadata = object_metadata(meta, {META_SHA256: sha})
                blob.upload_from_file(io.BytesIO(data), size=size, content_type=meta.content_type,
                                      checksum="md5", **self._call())
            else:
                blob = self._blob(full, chunk_size=s.upload_chunk_size)
                blob.content_disposition = disposition
                blob.metadata = object_metadata(meta)
                blob.upload_from_file(stream, size=None, content_type=meta.content_type, checksum="crc32c",
                                      **self._call())
                sha, size = stream.sha256.hexdigest(), stream.tell()
                blob.metadata = object_metadata(meta, {META_SHA256: sha})
                blob.patch(if_metageneration_match=blob.metageneration, **self._call())
        except Cancelled:
            raise StorageError(f"storage {self.name}: upload of {full} cancelled") from None
        except Exception as e:
            raise self._error("upload", full, e) from None
        if blob.size != size:
            self._delete_quietly(full)
            raise StorageError(f"storage {self.name}: gs://{s.bucket}/{full} has {blob.size} bytes after upload, "
                               f"expected {size}; deleted")
        stored = self._stored(key, blob)
        return StoredObject(key=key, size=size, sha256=sha, content_type=stored.content_type,
                            metadata=stored.metadata,
                            extra={**stored.extra, "verified": "md5" if small else "crc32c"})

    async def create(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        """One upload with ``if_generation_match=0`` (412 when any
        generation of the object exists)."""
        full = store_key(self.settings.prefix, key)
        self._b  # noqa: B018 - raises when not started
        return await self._runner.run(self._create, full, data, meta)

    def _create(self, full: str, data: bytes, meta: ObjectMeta) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self._blob(full)
        blob.metadata = object_metadata(meta, {META_SHA256: hashlib.sha256(data).hexdigest()})
        try:
            blob.upload_from_file(io.BytesIO(data), size=len(data), content_type=meta.content_type,
                                  checksum="md5", if_generation_match=0, **self._call())
            return True
        except PreconditionFailed:
            pass
        except Exception as e:
            raise self._error("create", full, e) from None
        # A retry after a lost answer finds its own first attempt.
        try:
            return bool(self._b.blob(full).download_as_bytes(**self._call()) == data)
        except NotFound:
            return False
        except Exception as e:
            raise self._error("download", full, e) from None

    def _delete_quietly(self, full: str) -> None:
        try:
            self._b.blob(full).delete(**self._call())
        except Exception:
            pass

    # -- administration (storage check, storage apply-retention) ---------------

    async def inspect(self) -> list[Any]:
        """Load credentials and read the bucket (without ``start``'s
        refusal) and report credentials, location and the bucket's default
        key (``storage check``); a credentials failure ends the list."""
        from google.api_core.exceptions import NotFound

        from gateway.storage.admin import FAIL, NOTE, OK, Finding

        try:
            await self._runner.run(self._make_client)
            await self._runner.run(lambda: self._b.reload(**self._call()))
        except NotFound:
            return [Finding("bucket", FAIL, f"gs://{self.settings.bucket} does not exist: expected the bucket "
                                            f"the config names (bucket = {self.settings.bucket!r})")]
        except Exception as e:
            return [Finding("credentials", FAIL, str(self._error("get bucket", "", e)))]
        b, want = self._bucket, self.settings.location
        have = b.location or ""
        findings = [Finding("credentials", OK, f"bucket gs://{b.name} read"),
                    Finding("bucket", OK, f"gs://{b.name} exists")]
        if want is None:
            findings.append(Finding("region", NOTE, f"bucket is in location {have!r}; no location configured"))
        elif have.upper() != want.upper():
            return [*findings, Finding("region", FAIL, f"bucket is in location {have!r}, the config says {want!r} "
                                                       "(start-up would refuse: data residency)")]
        else:
            findings.append(Finding("region", OK, f"bucket is in location {have!r}, the config says {want!r}"))
        findings.append(Finding("encryption", NOTE, f"bucket default key: {b.default_kms_key_name or 'none'} "
                                "(Google-managed encryption unless a key is set)"))
        return findings

    def encryption_problem(self, extra: Any) -> str:
        """Why an object's reported encryption is not the configured one, or ""."""
        want = self.settings.kms_key_name
        have = extra.get("encryption", "")
        if want and have != want:
            return f"the store reports {have or 'no key'!r}, the config asks for CMEK {want!r}"
        return ""

    async def apply_retention(self, plan: list[Any], dry_run: bool) -> dict[str, Any]:
        """Set the store's lifecycle rules (``retention.gcs_lifecycle_rules``
        of the plan) on the bucket, keeping its other rules, and read them
        back; with ``dry_run`` only show what would be set."""
        from gateway.storage.retention import gcs_lifecycle_rules, is_gateway_gcs_rule

        if self._bucket is None:
            await self._runner.run(self._make_client)

        def _apply() -> list[dict[str, Any]]:
            b = self._bucket
            b.reload(**self._call())
            rules = [dict(r) for r in b.lifecycle_rules if not is_gateway_gcs_rule(dict(r), self.settings, plan)]
            rules += gcs_lifecycle_rules(self.settings, plan)
            if dry_run:
                return rules
            b.lifecycle_rules = rules
            b.patch(**self._call())
            b.reload(**self._call())
            return [dict(r) for r in b.lifecycle_rules]

        try:
            rules = await self._runner.run(_apply)
        except Exception as e:
            raise self._error("set lifecycle", "", e) from None
        return {self.settings.bucket: {"lifecycle": {"rule": rules}}}

    async def retention_problems(self, plan: list[Any]) -> list[str]:
        """What the bucket's lifecycle lacks of the rules the config asks for."""
        from gateway.storage.retention import gcs_lifecycle_rules, gcs_rule_problems

        def _read() -> list[dict[str, Any]]:
            self._b.reload(**self._call())
            return [dict(r) for r in self._b.lifecycle_rules]

        try:
            existing = await self._runner.run(_read)
        except Exception as e:
            raise self._error("get lifecycle", "", e) from None
        return gcs_rule_problems(self.settings.bucket, existing, gcs_lifecycle_rules(self.settings, plan))

    async def list(self, prefix: str) -> list[str]:
        """The keys (without the store's prefix) of every object under ``prefix``."""
        full = self.settings.prefix + prefix

        def _list() -> list[str]:
            return [b.name[len(self.settings.prefix):]
                    for b in self._client.list_blobs(self._b, prefix=full, **self._call())]

        try:
            return await self._runner.run(_list)
        except Exception as e:
            raise self._error("list", full, e) from None

    # -- reads ------------------------------------------------------------

    async def signed_url(self, key: str, filename: str, ttl: int) -> str | None:
        """A V4 signed GET valid ``ttl`` seconds (capped at ``url_ttl``) whose
        response carries ``filename`` in its Content-Disposition."""
        full = store_key(self.settings.prefix, key)
        seconds = max(1, min(ttl, self.settings.url_ttl)) if ttl > 0 else self.settings.url_ttl
        return await self._runner.run(self._sign, full, filename or key.rsplit("/", 1)[-1], seconds)

    def _sign(self, full: str, filename: str, seconds: int) -> str:
        from google.auth import credentials as gcreds
        from google.auth.transport.requests import Request

        creds = self._signer
        if creds is None:
            raise StorageError(f"storage {self.name}: no credentials to sign URLs with; "
                               "set credentials_file to a service-account key")
        kwargs: dict[str, Any] = {}
        if not isinstance(creds, gcreds.Signing):
            # No private key here (Compute Engine, workload identity): sign
            # through IAM signBlob with the credentials' access token.
            try:
                if not creds.valid:
                    creds.refresh(Request())
            except Exception as e:
                raise StorageError(f"storage {self.name}: cannot refresh Google credentials to sign a URL: "
                                   f"{type(e).__name__}") from None
            kwargs = {"service_account_email": getattr(creds, "service_account_email", None),
                      "access_token": creds.token}
        endpoint = self.settings.endpoint_url or "https://storage.googleapis.com"
        try:
            return str(self._b.blob(full).generate_signed_url(
                version="v4", expiration=dt.timedelta(seconds=seconds), method="GET",
                response_disposition=content_disposition(filename), api_access_endpoint=endpoint,
                credentials=creds if not kwargs else None, **kwargs))
        except Exception as e:
            raise self._error("sign URL", full, e) from None

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes; raises ObjectNotFound."""
        full = store_key(self.settings.prefix, key)

        def _open() -> Any:
            blob = self._b.blob(full)
            return blob.open("rb", chunk_size=_READ_CHUNK, **self._call())

        try:
            f = await self._runner.run(_open)
        except Exception as e:
            raise self._error("download", full, e) from None
        try:
            while True:
                try:
                    chunk = await self._runner.run(f.read, _READ_CHUNK)
                except Exception as e:
                    raise self._error("download", full, e) from None
                if not chunk:
                    break
                yield chunk
        finally:
            await self._runner.run(f.close)

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        from google.api_core.exceptions import NotFound

        full = store_key(self.settings.prefix, key)

        def _delete() -> None:
            try:
                self._b.blob(full).delete(**self._call())
            except NotFound:
                pass

        try:
            await self._runner.run(_delete)
        except Exception as e:
            raise self._error("delete", full, e) from None

    async def stat(self, key: str) -> StoredObject | None:
        """Size, type, metadata and the encryption in force (``extra``:
        ``encryption`` is the KMS key name for CMEK objects, else
        "Google-managed"), or None when the object is missing."""
        full = store_key(self.settings.prefix, key)

        def _stat() -> Any:
            return self._b.get_blob(full, **self._call())

        try:
            blob = await self._runner.run(_stat)
        except Exception as e:
            raise self._error("get object", full, e) from None
        return None if blob is None else self._stored(key, blob)

    def _stored(self, key: str, blob: Any) -> StoredObject:
        user, internal = read_metadata(blob.metadata)
        kms = blob.kms_key_name or ""
        extra = {
            # GCS reports the key version used: ".../cryptoKeys/K/cryptoKeyVersions/N".
            "encryption": kms.split("/cryptoKeyVersions/")[0] if kms else "Google-managed",
            "bucket": self.settings.bucket,
            "generation": str(blob.generation or ""),
        }
        if kms:
            extra["kms_key_name"] = kms
        if blob.md5_hash:
            extra["md5"] = base64.b64decode(blob.md5_hash).hex()
        if blob.crc32c:
            extra["crc32c"] = blob.crc32c
        if blob.content_disposition:
            extra["content_disposition"] = blob.content_disposition
        return StoredObject(key=key, size=int(blob.size or 0), sha256=internal.get(META_SHA256, ""),
                            content_type=blob.content_type or "application/octet-stream",
                            metadata=user, extra=extra)

