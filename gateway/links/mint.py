"""Minting a link: the record in the store, then the signed token and URL.

One place for the worker (offloaded parts) and the upload paths (API and
upload page), so every link is made the same way.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from gateway.links import records
from gateway.links.tokens import Keyring, new_object_id
from gateway.storage.base import Storage


class Minted(NamedTuple):
    """A new link: its URL, and the record's id and expiry (a message's
    landing page lists its files by these)."""

    url: str
    object_id: str
    expires: int


async def mint(store: Storage, keyring: Keyring, base_url: str, ttl: int, *, key: str, filename: str, size: int,
               sha256: str, content_type: str, customer_id: str, queue_id: str, message_id: str) -> Minted:
    """Save a link record for the object ``key`` and return the link (raises StorageError)."""
    oid = new_object_id()
    expires = int(time.time()) + ttl
    await records.save(store, records.LinkRecord(
        object_id=oid, key=key, filename=filename, size=size, sha256=sha256, content_type=content_type,
        customer_id=customer_id, queue_id=queue_id, message_id=message_id, created=time.time(), expires=expires))
    return Minted(f"{base_url}/a/{keyring.sign(store.name, oid, expires)}", oid, expires)
