"""Revocation: markers in the object store that every node reads at a click.

A revocation is one small object under ``revoked/`` in the store the link's
object lives in, named by a hash of what it revokes (an object key, a
customer id or a Message-ID).  The store is what all nodes share, so a link
answers 410 on every node as soon as the marker is written; clicks read the
markers fresh every time (no cache) for that reason.  Markers are separate
objects rather than one list so that two administrators revoking at once
never overwrite each other.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Literal

from gateway import customers
from gateway.links.records import LinkRecord
from gateway.storage.base import ObjectMeta, Storage

Kind = Literal["object", "customer", "message"]
KINDS: tuple[Kind, ...] = ("object", "customer", "message")


def normalise(kind: Kind, value: str) -> str:
    """The form a value is compared in: Message-IDs without angle brackets."""
    value = value.strip()
    if kind == "message":
        value = value.strip("<>").strip()
    return value


def marker_key(kind: Kind, value: str) -> str:
    """The marker's key: a hash of the value; a customer id's case-folded,
    so revoking ``CUST-1`` also revokes links recorded for ``cust-1``
    whatever ``customer_id_match`` says (a revocation errs towards more)."""
    value = normalise(kind, value)
    if kind == "customer":
        value = customers.fold(value)
    digest = hashlib.sha256(value.encode()).hexdigest()[:40]
    return f"revoked/{kind}/{digest}"


async def revoke(store: Storage, kind: Kind, value: str, reason: str, by: str) -> str:
    """Write the marker that revokes every link for ``value``; return its key."""
    key = marker_key(kind, value)
    body = json.dumps({"kind": kind, "value": normalise(kind, value), "reason": reason, "by": by,
                       "revoked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
    await store.put(key, [body], ObjectMeta(content_type="application/json"))
    return key


async def revoked_by(store: Storage, record: LinkRecord) -> str | None:
    """What revoked this link ("object", "customer", "message", "record"), or None."""
    if record.revoked:
        return "record"
    values: list[tuple[Kind, str]] = [("object", record.key), ("customer", record.customer_id),
                                      ("message", record.message_id)]
    found = await asyncio.gather(*(store.stat(marker_key(k, v)) for k, v in values if v))
    for (kind, _), hit in zip([x for x in values if x[1]], found, strict=True):
        if hit is not None:
            return kind
    return None
