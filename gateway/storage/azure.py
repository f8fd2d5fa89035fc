"""Azure Blob Storage through azure-storage-blob's async client (aiohttp).

Uploads are block blobs streamed in ``block_size`` blocks: each block is
staged with ``stage_block`` carrying a transactional MD5 that the service
checks, and the block list is committed last with the content settings, the
metadata (including the SHA-256 of the whole object, known by then) and the
encryption scope.  Nothing is visible under the name before the commit; on
an error the staged blocks are simply never committed (the service discards
uncommitted blocks after 7 days).  Objects up to 1 MiB go up in one Put
Blob with a Content-MD5.  The
blocking chunk iterator is pulled with ``asyncio.to_thread``, the next block
while the current one travels; blocks are handed to aiohttp as BytesIO.

Storage URLs are SAS URLs for one blob, read-only, valid ``url_ttl`` seconds
at most, with the original filename in ``rscd`` (Content-Disposition):
user-delegation SAS when the credential is a token credential (Microsoft
Entra ID), account-key SAS otherwise.

Metadata keys on Azure must be C# identifiers, so the gateway's keys are
stored with "_" for "-" (``queue-id`` becomes ``queue_id``) and read back so.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import ipaddress
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.storage.base import ObjectMeta, ObjectNotFound, StorageError, StoredObject
from gateway.storage.cloudutil import (
    META_SHA256,
    content_disposition,
    iter_parts,
    object_metadata,
    read_metadata,
    read_secret,
    resolve_path,
    store_key,
)
from gateway.storage.settings import AzureStorageSettings

_SEP = "_"
# An object is at most 50,000 blocks.
MAX_BLOCKS = 50_000
# Objects up to this size go up in one Put Blob.  (The SDK hands a validated
# Put Blob body to aiohttp as bytes, and aiohttp warns above 1 MiB of bytes
# that it blocks the loop; staged blocks stay streams.)
_PUT_BLOB_MAX = 1024 * 1024
# SAS validity starts a little in the past, against clock skew between us and Azure.
_CLOCK_SKEW = dt.timedelta(minutes=5)
# User-delegation keys are fetched for this long and reused until close to expiry.
_DELEGATION_KEY_LIFETIME = dt.timedelta(hours=12)


def account_name_from_url(url: str) -> str:
    """The storage account in an account URL: the first label of
    ``ACCOUNT.blob.core.windows.net``, or the first path segment of an
    IP-style URL such as Azurite's ``http://127.0.0.1:10000/ACCOUNT``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = host == "localhost"
    if is_ip:
        return parts.path.strip("/").split("/")[0]
    return host.split(".")[0]


class AzureBlobStorage:
    """Offloaded attachments as block blobs in one container under a prefix."""

    def __init__(self, name: str, settings: AzureStorageSettings, base_dir: Path, *,
                 token_credential: Any = None) -> None:
        """``token_credential`` (an async TokenCredential) replaces
        DefaultAzureCredential when no key is configured (embedding, tests)."""
        self.name = name
        self.settings = settings
        self._base_dir = base_dir
        self._service: Any = None
        self._container: Any = None
        self._token_credential: Any = token_credential
        self._owns_credential = False
        self._account_name = ""
        self._account_key: str | None = None
        self._delegation_key: Any = None
        self._delegation_key_expiry = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._delegation_lock = asyncio.Lock()

    # -- life cycle -------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        from azure.storage.blob.aio import ExponentialRetry

        s = self.settings
        kwargs: dict[str, Any] = {
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=s.max_attempts - 1,
                                             random_jitter_range=1),
            "connection_timeout": s.connect_timeout,
            "read_timeout": s.read_timeout,
            "user_agent": "attachment-gateway",
        }
        if s.ca_file is not None:
            kwargs["connection_verify"] = str(resolve_path(s.ca_file, self._base_dir))
        return kwargs

    async def start(self) -> None:
        """Build the client from the configured credentials and check the
        container is reachable (and, with a token credential, that a
        user-delegation key can be had for SAS)."""
        from azure.storage.blob.aio import BlobServiceClient

        s = self.settings
        conn = read_secret(f"storage {self.name}: connection string", s.connection_string_file,
                           s.connection_string_env, self._base_dir)
        try:
            if conn is not None:
                self._service = BlobServiceClient.from_connection_string(conn, **self._client_kwargs())
                self._account_name = self._service.account_name
                cred = self._service.credential
                self._account_key = getattr(cred, "account_key", None)
                if self._account_key is None:
                    raise StorageError(f"storage {self.name}: the connection string has no AccountKey; "
                                       "SAS URLs need an account key or a token credential")
            else:
                assert s.account_url is not None
                key = read_secret(f"storage {self.name}: account key", s.account_key_file, s.account_key_env,
                                  self._base_dir)
                self._account_name = account_name_from_url(s.account_url)
                if key is not None:
                    self._account_key = key
                    credential: Any = {"account_name": self._account_name, "account_key": key}
                elif self._token_credential is not None:
                    credential = self._token_credential
                else:
                    try:
                        from azure.identity.aio import DefaultAzureCredential
                    except ImportError:
                        raise StorageError(f"storage {self.name}: no account key or connection string is "
                                           "configured, and azure-identity (for DefaultAzureCredential) is "
                                           "not installed") from None
                    self._token_credential = credential = DefaultAzureCredential()
                    self._owns_credential = True
                self._service = BlobServiceClient(s.account_url, credential=credential, **self._client_kwargs())
        except StorageError:
            raise
        except ValueError as e:
            raise StorageError(f"storage {self.name}: invalid Azure settings: {e}") from None
        self._container = self._service.get_container_client(s.container)
        try:
            await self._container.get_container_properties()
        except Exception as e:
            raise self._error("GetContainerProperties", "", e) from None
        if self._account_key is None:
            await self._user_delegation_key(0)

    async def close(self) -> None:
        """Close the HTTP session and the token credential."""
        if self._service is not None:
            service, self._service = self._service, None
            await service.close()
        if self._owns_credential and self._token_credential is not None:
            cred, self._token_credential = self._token_credential, None
            await cred.close()

    # -- helpers ----------------------------------------------------------

    def _error(self, op: str, blob: str, e: Exception) -> StorageError:
        """A StorageError naming the operation and blob, never credentials."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        where = f"{self.settings.container}/{blob}" if blob else self.settings.container
        if isinstance(e, StorageError):
            return e
        if isinstance(e, ResourceNotFoundError) and blob:
            return ObjectNotFound(f"azure blob {where}: no such blob")
        if isinstance(e, HttpResponseError):
            code = getattr(e, "error_code", None) or (e.response.reason if e.response is not None else "") or ""
            detail = f"{e.status_code} {code}".strip()
            if code == "ContainerNotFound":
                detail = "the container does not exist"
            elif e.status_code == 403:
                detail += " (check the credentials and the role assignment)"
            return StorageError(f"storage {self.name}: Azure {op} {where} failed: {detail}")
        if isinstance(e, AzureError):
            return StorageError(f"storage {self.name}: Azure {op} {where} failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}")
        return StorageError(f"storage {self.name}: Azure {op} {where} failed: {type(e).__name__}: {e}")

    @property
    def _c(self) -> Any:
        if self._container is None:
            raise StorageError(f"storage {self.name}: not started")
        return self._container

    def _scope(self) -> dict[str, str]:
        return {"encryption_scope": self.settings.encryption_scope} if self.settings.encryption_scope else {}

    # -- put --------------------------------------------------------------

    async def put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        """Stream ``chunks`` into a block blob and return what was stored;
        raises StorageError (nothing is committed then)."""
        from azure.storage.blob import ContentSettings

        full = store_key(self.settings.prefix, key)
        blob = self._c.get_blob_client(full)
        parts = iter_parts(chunks, self.settings.block_size)

        def pull() -> bytes | None:
            return next(parts, None)

        async def pull_async() -> bytes | None:
            try:
                return await asyncio.to_thread(pull)
            except Exception as e:
                raise StorageError(f"storage {self.name}: reading the attachment for {full} failed: "
                                   f"{type(e).__name__}: {e}") from e

        whole = hashlib.sha256()
        size = 0
        settings = ContentSettings(content_type=meta.content_type or "application/octet-stream",
                                   content_disposition=content_disposition(meta.filename) if meta.filename else None)
        first = await pull_async()
        second = await pull_async() if first is not None else None
        try:
            if second is None and len(first or b"") <= _PUT_BLOB_MAX:
                data = first or b""
                whole.update(data)
                size = len(data)
                await blob.upload_blob(io.BytesIO(data), length=len(data), overwrite=True, content_settings=settings,
                                       metadata=object_metadata(meta, {META_SHA256: whole.hexdigest()}, _SEP),
                                       validate_content="md5", max_concurrency=1, **self._scope())
            else:
                nonce = uuid.uuid4().hex[:16]
                block_ids: list[str] = []
                part: bytes | None = first or b""
                pending = second
                while part is not None:
                    if len(block_ids) >= MAX_BLOCKS:
                        raise StorageError(f"storage {self.name}: {full} needs more than {MAX_BLOCKS} blocks; "
                                           "raise block_size")
                    block_id = base64.b64encode(f"{nonce}-{len(block_ids):06d}".encode()).decode()
                    whole.update(part)
                    size += len(part)
                    # Read the next part while this block travels.
                    upload = asyncio.ensure_future(blob.stage_block(block_id, io.BytesIO(part), length=len(part),
                                                                    validate_content="md5", **self._scope()))
                    try:
                        nxt = pending if pending is not None else await pull_async()
                    except BaseException:
                        upload.cancel()
                        await asyncio.gather(upload, return_exceptions=True)
                        raise
                    await upload
                    block_ids.append(block_id)
                    part, pending = nxt, None
                await blob.commit_block_list(block_ids, content_settings=settings,
                                             metadata=object_metadata(meta, {META_SHA256: whole.hexdigest()}, _SEP),
                                             **self._scope())
            props = await blob.get_blob_properties()
        except Exception as e:
            raise self._error("upload", full, e) from None
        if props.size != size:
            await self._delete_quietly(full)
            raise StorageError(f"storage {self.name}: {full} has {props.size} bytes after upload, "
                               f"expected {size}; deleted")
        stored = self._stored(key, props)
        return StoredObject(key=key, size=size, sha256=whole.hexdigest(), content_type=stored.content_type,
                            metadata=stored.metadata, extra={**stored.extra, "verified": "content-md5"})

    async def create(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        """One Put Blob with ``If-None-Match: *`` (the SDK's
        ``overwrite=False``): 409 BlobAlreadyExists when the blob exists."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        full = store_key(self.settings.prefix, key)
        blob = self._c.get_blob_client(full)
        try:
            await blob.upload_blob(io.BytesIO(data), length=len(data), overwrite=False,
                                   content_settings=ContentSettings(content_type=meta.content_type),
                                   metadata=object_metadata(meta, {META_SHA256: hashlib.sha256(data).hexdigest()},
                                                            _SEP),
                                   validate_content="md5", max_concurrency=1, **self._scope())
            return True
        except ResourceExistsError:
            pass
        except Exception as e:
            raise self._error("create", full, e) from None
        # A retry after a lost answer finds its own first attempt.
        try:
            found = b"".join([c async for c in self.open(key)])
        except ObjectNotFound:
            return False
        return found == data

    async def _delete_quietly(self, full: str) -> None:
        try:
            await self._c.delete_blob(full)
        except Exception:
            pass

    # -- administration (storage check, storage apply-retention) ---------------

    async def inspect(self) -> list[Any]:
        """``start`` (which only reads), then report the container's
        default encryption scope (``storage check``)."""
        from gateway.storage.admin import FAIL, NOTE, OK, Finding

        try:
            await self.start()
            props = await self._c.get_container_properties()
        except Exception as e:
            # start() has already turned the SDK's error into our words.
            if getattr(e, "error_code", None) == "ContainerNotFound" or "the container does not exist" in str(e):
                return [Finding("bucket", FAIL, f"container {self.settings.container!r} does not exist: expected "
                                                f"the container the config names (container = "
                                                f"{self.settings.container!r})")]
            return [Finding("credentials", FAIL, str(self._error("GetContainerProperties", "", e)))]
        scope = getattr(props, "encryption_scope", None)
        default = getattr(scope, "default_encryption_scope", None) or "none (the account's encryption)"
        return [Finding("credentials", OK, f"container {self.settings.container!r} read"),
                Finding("bucket", OK, f"container {self.settings.container!r} exists"),
                Finding("region", NOTE, "not checked: the Blob data plane does not report the account's region"),
                Finding("encryption", NOTE, f"container default encryption scope: {default}")]

    def encryption_problem(self, extra: Any) -> str:
        """Why a blob's reported encryption is not the configured one, or ""."""
        want = self.settings.encryption_scope
        if want and extra.get("encryption_scope") != want:
            return (f"the service reports encryption scope {extra.get('encryption_scope') or 'none'!r}, "
                    f"the config asks for {want!r}")
        if extra.get("server_encrypted") != "true":
            return "the service does not report the blob as encrypted at rest"
        return ""

    def management_policy(self, plan: list[Any]) -> dict[str, Any]:
        """The lifecycle management policy to set on the account by hand
        (``retention.azure_management_policy`` of the plan)."""
        from gateway.storage.retention import azure_management_policy

        return azure_management_policy(self.settings, plan)

    async def list(self, prefix: str) -> list[str]:
        """The keys (without the store's prefix) of every blob under ``prefix``."""
        full = self.settings.prefix + prefix
        try:
            return [b.name[len(self.settings.prefix):] async for b in self._c.list_blobs(name_starts_with=full)]
        except Exception as e:
            raise self._error("ListBlobs", full, e) from None

    # -- reads ------------------------------------------------------------

    async def _user_delegation_key(self, ttl: int) -> Any:
        """A user-delegation key valid at least ``ttl`` more seconds, cached."""
        now = dt.datetime.now(dt.UTC)
        async with self._delegation_lock:
            if self._delegation_key is None or self._delegation_key_expiry - now < dt.timedelta(seconds=ttl + 60):
                expiry = now + max(_DELEGATION_KEY_LIFETIME, dt.timedelta(seconds=ttl + 120))
                try:
                    self._delegation_key = await self._service.get_user_delegation_key(now - _CLOCK_SKEW, expiry)
                except Exception as e:
                    raise self._error("GetUserDelegationKey", "", e) from None
                self._delegation_key_expiry = expiry
            return self._delegation_key

    async def signed_url(self, key: str, filename: str, ttl: int) -> str | None:
        """A read-only SAS URL for the blob valid ``ttl`` seconds (capped at
        ``url_ttl``) whose response carries ``filename`` in its
        Content-Disposition."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        full = store_key(self.settings.prefix, key)
        seconds = max(1, min(ttl, self.settings.url_ttl)) if ttl > 0 else self.settings.url_ttl
        now = dt.datetime.now(dt.UTC)
        signing: dict[str, Any]
        if self._account_key is not None:
            signing = {"account_key": self._account_key}
        else:
            signing = {"user_delegation_key": await self._user_delegation_key(seconds)}
        https = (self.settings.account_url or self._c.url).startswith("https:")
        sas = generate_blob_sas(
            self._account_name, self.settings.container, full,
            permission=BlobSasPermissions(read=True),
            start=now - _CLOCK_SKEW, expiry=now + dt.timedelta(seconds=seconds),
            content_disposition=content_disposition(filename or key.rsplit("/", 1)[-1]),
            protocol="https" if https else None,
            **signing,
        )
        return f"{self._c.get_blob_client(full).url}?{sas}"

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the blob's bytes; raises ObjectNotFound."""
        full = store_key(self.settings.prefix, key)
        try:
            downloader = await self._c.get_blob_client(full).download_blob(max_concurrency=1)
        except Exception as e:
            raise self._error("download", full, e) from None
        try:
            async for chunk in downloader.chunks():
                yield chunk
        except StorageError:
            raise
        except Exception as e:
            raise self._error("download", full, e) from None

    async def delete(self, key: str) -> None:
        """Remove the blob (and its snapshots); a missing blob is not an error."""
        from azure.core.exceptions import ResourceNotFoundError

        full = store_key(self.settings.prefix, key)
        try:
            await self._c.delete_blob(full, delete_snapshots="include")
        except ResourceNotFoundError:
            return
        except Exception as e:
            raise self._error("delete", full, e) from None

    async def stat(self, key: str) -> StoredObject | None:
        """Size, type, metadata and the encryption in force (``extra``:
        ``encryption`` is the encryption scope, or "Microsoft-managed" when
        the service reports server encryption without one, or "" when it
        reports none), or None when the blob is missing."""
        full = store_key(self.settings.prefix, key)
        try:
            props = await self._c.get_blob_client(full).get_blob_properties()
        except ObjectNotFound:
            return None
        except Exception as e:
            err = self._error("get properties", full, e)
            if isinstance(err, ObjectNotFound):
                return None
            raise err from None
        return self._stored(key, props)

    def _stored(self, key: str, props: Any) -> StoredObject:
        user, internal = read_metadata(props.metadata, _SEP)
        cs = props.content_settings
        scope = props.encryption_scope or ""
        extra = {
            "encryption": scope or ("Microsoft-managed" if props.server_encrypted else ""),
            "server_encrypted": str(bool(props.server_encrypted)).lower(),
            "etag": (props.etag or "").strip('"'),
            "container": self.settings.container,
        }
        if scope:
            extra["encryption_scope"] = scope
        if cs.content_disposition:
            extra["content_disposition"] = cs.content_disposition
        return StoredObject(key=key, size=props.size, sha256=internal.get(META_SHA256, ""),
                            content_type=cs.content_type or "application/octet-stream",
                            metadata=user, extra=extra)
