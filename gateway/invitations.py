"""Upload invitations: signed, expiring links to the customer upload page.

An agent runs ``attachment-gateway invite --customer ID [--message-id ID]``
and sends the customer the link it prints.  The token has the same shape as
a download link's but is signed for the purpose "invite" (so neither kind
verifies as the other); its object id leads to ``invitations/<id>.json`` in
the route's store: the customer, the thread's Message-ID and the address the
completion email goes to.

What an invitation has been used for (``invitations/<id>.usage.json``: each
upload started, with its size) is what ``upload.max_files_per_invitation``
and ``upload.max_bytes_per_invitation`` are checked against.  It is read,
changed and written under a lock per invitation in this process, which the
upload page takes inside a lock file every process of the node shares
(gateway/http/upload_page.py); two nodes starting uploads for one invitation
at the same instant could each pass the check once.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from weakref import WeakValueDictionary

from gateway.links.tokens import Keyring, new_object_id
from gateway.mime.rewrite import human_size
from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage, StorageError

PURPOSE = "invite"


@dataclass(frozen=True)
class Invitation:
    """What an invitation link stands for."""

    object_id: str
    customer_id: str
    message_id: str
    notify: str  # the contact-centre address told when files arrive
    route: str
    created: float
    expires: int


def record_key(object_id: str) -> str:
    return f"invitations/{object_id}.json"


async def create(store: Storage, keyring: Keyring, base_url: str, *, customer_id: str, message_id: str, notify: str,
                 route: str, ttl: int) -> tuple[Invitation, str]:
    """Save an invitation; return it and its link."""
    inv = Invitation(object_id=new_object_id(), customer_id=customer_id, message_id=message_id, notify=notify,
                     route=route, created=time.time(), expires=int(time.time()) + ttl)
    await store.put(record_key(inv.object_id), [json.dumps(asdict(inv)).encode()],
                    ObjectMeta(content_type="application/json"))
    return inv, f"{base_url}/upload/{keyring.sign(store.name, inv.object_id, inv.expires, PURPOSE)}"


async def load(store: Storage, object_id: str) -> Invitation:
    """The invitation record; raises ObjectNotFound."""
    raw = b"".join([c async for c in store.open(record_key(object_id))])
    try:
        return Invitation(**json.loads(raw))
    except (ValueError, TypeError) as e:
        raise ObjectNotFound(f"unreadable invitation {object_id}: {e}") from None


class OverLimit(Exception):
    """Starting this upload would pass the invitation's limit (413); ``str()``
    is the message the page shows, ``kind`` which limit ("files", "bytes")."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def usage_key(object_id: str) -> str:
    return f"invitations/{object_id}.usage.json"


_locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()


def _lock(object_id: str) -> asyncio.Lock:
    lock = _locks.get(object_id)
    if lock is None:
        lock = _locks[object_id] = asyncio.Lock()
    return lock


async def _usage(store: Storage, object_id: str) -> dict[str, int]:
    try:
        raw = b"".join([c async for c in store.open(usage_key(object_id))])
    except ObjectNotFound:
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(raw)["uploads"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StorageError(f"unreadable invitation usage {object_id}: {e}") from None


async def _save_usage(store: Storage, object_id: str, uploads: dict[str, int]) -> None:
    await store.put(usage_key(object_id), [json.dumps({"uploads": uploads}).encode()],
                    ObjectMeta(content_type="application/json"))


async def reserve(store: Storage, object_id: str, upload_id: str, size: int, *, max_files: int | None,
                  max_bytes: int | None) -> None:
    """Count an upload of ``size`` bytes against the invitation; raises
    OverLimit (nothing counted) when it would pass a limit."""
    async with _lock(object_id):
        uploads = await _usage(store, object_id)
        if max_files is not None and len(uploads) + 1 > max_files:
            raise OverLimit(f"This upload link takes at most {max_files} file(s), and {len(uploads)} "
                            "have been sent with it already. Please ask us for a new link.", "files")
        used = sum(uploads.values())
        if max_bytes is not None and used + size > max_bytes:
            raise OverLimit(f"This upload link takes at most {human_size(max_bytes)} in all; "
                            f"{human_size(used)} have been sent with it already, so this file "
                            f"({human_size(size)}) does not fit. Please ask us for a new link.", "bytes")
        uploads[upload_id] = size
        await _save_usage(store, object_id, uploads)


async def used(store: Storage, object_id: str) -> tuple[int, int]:
    """How many files and bytes have been started with the invitation (for
    the page's own checks before a file is sent)."""
    uploads = await _usage(store, object_id)
    return len(uploads), sum(uploads.values())


async def release(store: Storage, object_id: str, upload_id: str) -> None:
    """Stop counting an upload that was refused or abandoned."""
    async with _lock(object_id):
        uploads = await _usage(store, object_id)
        if uploads.pop(upload_id, None) is not None:
            await _save_usage(store, object_id, uploads)


__all__ = ["Invitation", "OverLimit", "PURPOSE", "create", "load", "release", "reserve", "StorageError"]
