"""Honest stand-ins for the fast layer: an in-memory store that keeps what
it is given (and checks keys as the real backends do), and a next hop that
records what it is handed.  The pipeline runs against them in-process, in
milliseconds; the real stores and SMTP servers are exercised by the suite's
other tests."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable

from gateway.delivery import After, Content, DeliveryResult
from gateway.spool.envelope import Envelope
from gateway.storage.base import ObjectMeta, ObjectNotFound, StoredObject
from gateway.storage.cloudutil import store_key


class MemoryStore:
    """The storage protocol over a dict (keys checked like a backend's)."""

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.meta: dict[str, ObjectMeta] = {}

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to close."""

    async def put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        """Keep the bytes under ``key``."""
        data = b"".join(chunks)
        self.objects[store_key("", key)] = data
        self.meta[key] = meta
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest(), meta.content_type,
                            dict(meta.metadata))

    async def create(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        """Keep the bytes under ``key`` unless something is there already."""
        if store_key("", key) in self.objects:
            return self.objects[key] == data
        await self.put(key, [data], meta)
        return True

    async def signed_url(self, key: str, filename: str, ttl: int) -> str | None:
        """No URLs: the link endpoint streams through ``open``."""
        return None

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes."""
        if key not in self.objects:
            raise ObjectNotFound(key)
        yield self.objects[key]

    async def delete(self, key: str) -> None:
        """Forget the object."""
        self.objects.pop(key, None)

    async def stat(self, key: str) -> StoredObject | None:
        """What is kept under ``key``, or None."""
        data = self.objects.get(key)
        if data is None:
            return None
        meta = self.meta.get(key, ObjectMeta())
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest(), meta.content_type,
                            dict(meta.metadata))

    def under(self, prefix: str) -> dict[str, bytes]:
        """The objects whose keys start with ``prefix``."""
        return {k: v for k, v in self.objects.items() if k.startswith(prefix)}


@dataclass
class Delivered:
    """One message a RecordingHop was handed."""

    envelope: Envelope
    rcpts: list[str]
    data: bytes


@dataclass
class RecordingHop:
    """A next hop that takes everything and keeps the bytes it was given."""

    name: str = "recording"
    delivered: list[Delivered] = field(default_factory=list)

    async def deliver(self, envelope: Envelope, rcpts: list[str], message: Content,
                      then: After | None = None) -> DeliveryResult:
        """Record the message; every recipient accepted."""
        self.delivered.append(Delivered(envelope, list(rcpts), b"".join(message.chunks())))
        result = DeliveryResult(delivered=list(rcpts))
        if then is not None:
            then(result)
        return result

    async def close(self) -> None:
        """Nothing pooled."""
