"""Link records: what a link's object id stands for, kept in the object store.

The token in a message names only a random object id; the record under
``links/<id>.json`` in the same store says which object, filename, customer
and message it belongs to.  Keeping records in the store (not on one node's
disk) lets any gateway node answer any link.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass

from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage


@dataclass(frozen=True)
class LinkRecord:
    """The facts behind one link."""

    object_id: str
    key: str
    filename: str
    size: int
    sha256: str
    content_type: str
    customer_id: str
    queue_id: str
    message_id: str
    created: float
    expires: int
    revoked: bool = False


def record_key(object_id: str) -> str:
    return f"links/{object_id}.json"


async def save(storage: Storage, record: LinkRecord) -> None:
    """Store the record next to the object it describes."""
    data = json.dumps(asdict(record), ensure_ascii=False).encode()
    await storage.put(record_key(record.object_id), [data], ObjectMeta(content_type="application/json"))


class RecordCache:
    """Recently used records, so a burst of clicks does not re-read the store."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], LinkRecord] = OrderedDict()

    async def load(self, storage: Storage, object_id: str, fresh: bool = False) -> LinkRecord:
        """The record for ``object_id``; raises ObjectNotFound.  ``fresh``
        reads the store even when the record is cached (a record may have
        been revoked by another node)."""
        k = (storage.name, object_id)
        rec = None if fresh else self._items.get(k)
        if rec is not None:
            self._items.move_to_end(k)
            return rec
        chunks = [c async for c in storage.open(record_key(object_id))]
        try:
            raw = json.loads(b"".join(chunks))
            rec = LinkRecord(**raw)
        except (ValueError, TypeError) as e:
            raise ObjectNotFound(f"unreadable link record {object_id}: {e}") from None
        self._items[k] = rec
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return rec


@dataclass(frozen=True)
class PageRecord:
    """The facts behind a message's landing page: its files' link records."""

    page_id: str
    object_ids: list[str]
    customer_id: str
    queue_id: str
    message_id: str
    created: float
    expires: int


def page_key(page_id: str) -> str:
    return f"pages/{page_id}.json"


async def save_page(storage: Storage, page: PageRecord) -> None:
    """Store the landing page's record beside the link records."""
    data = json.dumps(asdict(page), ensure_ascii=False).encode()
    await storage.put(page_key(page.page_id), [data], ObjectMeta(content_type="application/json"))


async def load_page(storage: Storage, page_id: str) -> PageRecord:
    """The landing page's record; raises ObjectNotFound."""
    chunks = [c async for c in storage.open(page_key(page_id))]
    try:
        return PageRecord(**json.loads(b"".join(chunks)))
    except (ValueError, TypeError) as e:
        raise ObjectNotFound(f"unreadable page record {page_id}: {e}") from None
