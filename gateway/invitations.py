"""Upload invitations: signed, expiring links to the customer upload page.

An agent runs ``attachment-gateway invite --customer ID [--message-id ID]``
and sends the customer the link it prints.  The token has the same shape as
a download link's but is signed for the purpose "invite" (so neither kind
verifies as the other); its object id leads to ``invitations/<id>.json`` in
the route's store: the customer, the thread's Message-ID and the address the
completion email goes to.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from gateway.links.tokens import Keyring, new_object_id
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


__all__ = ["Invitation", "PURPOSE", "create", "load", "StorageError"]
