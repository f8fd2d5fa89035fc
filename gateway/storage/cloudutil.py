"""Pieces the cloud backends (S3, Azure Blob, GCS) share.

Object keys under a prefix, RFC 6266 Content-Disposition values, metadata
that survives HTTP headers, regrouping a chunk stream into fixed-size parts
without ever holding the whole object, secrets read from a file or the
environment, and a private thread pool for blocking SDK calls.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

# ascii_filename and content_disposition are re-exported: the backends and tests import them from here.
from gateway.mime.filenames import MAX_DISPOSITION_NAME, ascii_filename, content_disposition, visible_basename  # noqa: F401
from gateway.storage.base import ObjectMeta, StorageError

T = TypeVar("T")

# Metadata keys the gateway writes beside the caller's own.
META_SHA256 = "gateway-sha256"
META_FILENAME = "filename"
# Written on objects copied from staging: the staging object's ETag, so that
# recovery can tell a finished copy from an interrupted one.
META_STAGING_ETAG = "gateway-staging-etag"
INTERNAL_META = frozenset({META_SHA256, META_STAGING_ETAG})

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 8187 attr-char, the characters left as they are in filename*.


class Cancelled(Exception):
    """The put was cancelled by its caller; the thread stops and cleans up."""


def store_key(prefix: str, key: str) -> str:
    """The store's key for a gateway key: ``prefix`` + ``key``, after checking
    the key is relative, has no empty, "." or ".." segment and no control
    character (keys are built from sanitised parts, but a backend checks)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or _CONTROL.search(key) or "\\" in key:
        raise StorageError(f"invalid object key {key!r}")
    return prefix + key


def encode_meta_value(value: str) -> str:
    """A metadata value that is safe in an HTTP header: printable ASCII as it
    is, anything else as an RFC 2047 encoded word (what S3 itself returns for
    non-ASCII metadata)."""
    value = str(value)
    if re.fullmatch(r"[\x20-\x7e]*", value) and not value.startswith("=?"):
        return value.strip()
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def decode_meta_value(value: str) -> str:
    """The inverse of ``encode_meta_value``."""
    m = re.fullmatch(r"=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=", value, re.IGNORECASE)
    if m:
        try:
            return base64.b64decode(m.group(1)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return value
    return value


def meta_key(key: str, separator: str = "-") -> str:
    """A metadata key every store accepts: lowercase letters, digits and
    ``separator`` (Azure needs "_", as its keys are C# identifiers)."""
    k = re.sub(r"[^a-z0-9]+", separator, key.lower()).strip(separator)
    if not k or k[0].isdigit():
        k = "m" + separator + k
    return k


def object_metadata(meta: ObjectMeta, extra: Mapping[str, str] | None = None,
                    separator: str = "-") -> dict[str, str]:
    """The metadata map written to the store: the caller's metadata, the
    original filename, and the gateway's own ``extra`` entries, all encoded."""
    out: dict[str, str] = {}
    for k, v in meta.metadata.items():
        out[meta_key(k, separator)] = encode_meta_value(v)
    if meta.filename:
        # Capped like the Content-Disposition name: S3 allows 2 KB of user metadata.
        name = visible_basename(meta.filename)[:MAX_DISPOSITION_NAME]
        out[meta_key(META_FILENAME, separator)] = encode_meta_value(name)
    for k, v in (extra or {}).items():
        out[meta_key(k, separator)] = encode_meta_value(v)
    return out


def read_metadata(raw: Mapping[str, str] | None, separator: str = "-") -> tuple[dict[str, str], dict[str, str]]:
    """Split stored metadata into (caller's metadata incl. filename, gateway's
    internal entries), decoding values."""
    internal_keys = {meta_key(k, separator): k for k in INTERNAL_META}
    user: dict[str, str] = {}
    internal: dict[str, str] = {}
    for k, v in (raw or {}).items():
        lk = k.lower()
        if lk in internal_keys:
            internal[internal_keys[lk]] = decode_meta_value(v)
        else:
            user[lk] = decode_meta_value(v)
    return user, internal


def iter_parts(chunks: Iterable[bytes], part_size: int, cancel: threading.Event | None = None) -> Iterator[bytes]:
    """Regroup a stream of chunks into parts of exactly ``part_size`` bytes
    (the last one shorter; one empty part for an empty stream).

    At most one part plus one chunk is held at a time: the stream is never
    joined whole.  Raises Cancelled between chunks once ``cancel`` is set."""
    buf = bytearray()
    emitted = False
    for chunk in chunks:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if not chunk:
            continue
        buf += chunk
        while len(buf) >= part_size:
            part = bytes(memoryview(buf)[:part_size])
            del buf[:part_size]
            emitted = True
            yield part
    if buf or not emitted:
        yield bytes(buf)


def read_secret(what: str, file: str | None, env: str | None, base_dir: Path) -> str | None:
    """A secret from a file (relative to ``base_dir``) or an environment
    variable; None when neither is configured.  Errors (StorageError) name
    the source, never the value."""
    from gateway.secrets import SecretError, read_secret as read

    try:
        return read(file=file, env=env, base_dir=base_dir, what=what)
    except SecretError as e:
        raise StorageError(str(e)) from None


def resolve_path(file: str, base_dir: Path) -> Path:
    """A configured path, relative paths taken from ``base_dir``."""
    path = Path(file)
    return path if path.is_absolute() else base_dir / path


class BlockingRunner:
    """A backend's own threads for blocking SDK calls and chunk reads.

    A private pool (rather than the loop's default executor that
    ``asyncio.to_thread`` uses) means a store that hangs until its timeouts
    cannot starve the rest of the gateway, which needs threads for the spool
    and for the fail-open path exactly then.  Context variables (the bound
    log context) are carried into the thread, as ``asyncio.to_thread`` does."""

    def __init__(self, threads: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"storage-{name}")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the pool and await its result."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, functools.partial(ctx.run, fn, *args, **kwargs))

    async def run_cancellable(self, fn: Callable[[threading.Event], T]) -> T:
        """Run ``fn(cancel)``; when the awaiting task is cancelled, set
        ``cancel`` so that ``fn`` stops at its next check and cleans up (it
        aborts its upload) while the cancellation goes on without waiting."""
        cancel = threading.Event()
        try:
            return await self.run(fn, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise

    def close(self) -> None:
        """Stop taking work; calls already running finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
