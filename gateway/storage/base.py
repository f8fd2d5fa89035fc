"""The storage protocol: the one small interface every backend implements.

The worker streams a decoded attachment into ``put`` straight from the spool;
the link endpoint asks ``signed_url`` for a short-lived URL at click time, or
streams through ``open`` when the backend has no URLs of its own (the
filesystem).  Keeping the protocol to a few operations keeps each backend a
single module and lets an honest in-memory store serve unit tests.
``create`` (put only if absent) is what lets several gateway nodes sharing
one store agree without talking to each other (gateway/fleet.py).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class StorageError(Exception):
    """A backend could not complete an operation (network, auth, quota, ...)."""


class ObjectNotFound(StorageError):
    """The key does not exist in the store."""


@dataclass(frozen=True)
class ObjectMeta:
    """What the store keeps beside the bytes.

    ``filename`` is the original (unsanitised) name, used only for the
    download's Content-Disposition; ``metadata`` is a small str->str map
    (queue id, customer id, ...) that backends store as object metadata.
    """

    content_type: str = "application/octet-stream"
    filename: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredObject:
    """What a backend reports about an object it holds."""

    key: str
    size: int
    sha256: str
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Backend-specific facts worth asserting on (e.g. encryption in force).
    extra: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Storage(Protocol):
    """An object store the gateway offloads attachments into."""

    name: str

    async def start(self) -> None:
        """Check the store is usable (bucket exists, region matches, ...)."""

    async def close(self) -> None:
        """Release clients and connections."""

    async def put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        """Store the bytes yielded by ``chunks`` under ``key``.

        ``chunks`` is a *blocking* iterator (it reads and decodes the spool
        file); a backend must consume it off the event loop.  The object is
        visible under ``key`` only once complete, and its SHA-256 is returned.
        """

    async def create(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        """Store the small ``data`` under ``key`` only when no object is
        there, atomically (S3 ``If-None-Match: *``, Azure and GCS
        preconditions, ``link(2)`` on a filesystem): True when this call
        created it, False when an object was there.  When a lost answer made
        the backend retry, the object found is compared with ``data``, so
        give ``data`` something unique (a nonce) and a retried create of
        one's own object still answers True."""

    async def signed_url(self, key: str, filename: str, ttl: int) -> str | None:
        """A URL valid for ``ttl`` seconds that downloads the object, or None
        when the backend has no URLs and the gateway must stream via ``open``."""

    def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes; raises ObjectNotFound."""

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    async def stat(self, key: str) -> StoredObject | None:
        """Facts about the object, or None when it does not exist."""
