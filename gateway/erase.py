"""Erasing everything a store holds for one customer
(``attachment-gateway erase --customer ID``).

Per store, in an order that never leaves a working link to a deleted file:

1. link records (``links/``) and landing pages (``pages/``) of the customer
   are replaced by tombstones: the same object id, ``revoked`` set, and no
   customer, file, message or key left in them.  A link already in an
   agent's mail then answers the revoked page (410) on every node, and
   the tombstone expires with the other link records
   (``link_retention_days``).  A revocation marker for the customer is *not*
   written: it would also refuse every link minted for them afterwards;
2. invitations (``invitations/<id>.json`` and its usage), and the upload
   page's unfinished uploads made with them (``staging/page/<uid>/``; on
   S3 a direct upload's multipart upload is aborted);
3. asynchronous upload jobs (``jobs/``) and what they staged;
4. the files: ``uploads/<customer>/`` and each quarantine prefix's
   ``<prefix><customer>/``.

A record is the customer's when the key form of its customer id
(``storage.keys.customer_key``) equals the key form of the id given, the same test that
groups their files under one key prefix.  Records are found by listing the
prefix and reading each one (bounded concurrency): the cost grows with the
number of records in the store, not with the customer's.  A second run finds
nothing (tombstones name no customer) and says so.

Messages still in the local spool are not touched (they are mail in transit:
the gateway never drops one); ``spooled`` lists those whose envelope names the
customer (customer id or sender), so the administrator can wait for them to
go and erase again, or remove them with ``queue delete``.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway import invitations
from gateway.links import records
from gateway.spool.queue import QUEUES, read_envelope
from gateway.storage.base import ObjectNotFound, Storage, StorageError
from gateway.storage.keys import UPLOADS, customer_key
from gateway.storage.retention import INVITATIONS, JOBS, LINKS, PAGES, STAGING
from gateway.storage.s3_direct import direct_uploads

# What erase counts, in the order it reports them.
KINDS = ("links", "pages", "invitations", "uploads_in_progress", "jobs", "files", "quarantined")
_READERS = 16


async def _read_json(store: Storage, key: str) -> dict[str, Any] | None:
    try:
        raw = b"".join([c async for c in store.open(key)])
        value = json.loads(raw)
    except ObjectNotFound:
        return None
    except ValueError:
        return None  # unreadable: not provably the customer's; left to retention
    return value if isinstance(value, dict) else None


async def _bounded(items: Iterable[str], fn: Callable[[str], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(_READERS)

    async def one(item: str) -> None:
        async with gate:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


async def erase_store(store: Storage, customer: str, quarantine: Iterable[str]) -> dict[str, int]:
    """Erase ``customer`` from one (started) store; the count of each kind
    erased.  Raises StorageError (what was done so far stays done: run it
    again)."""
    lister: Any = store
    if not hasattr(lister, "list"):
        raise StorageError(f"storage {store.name}: this backend cannot list its keys, so erase cannot find "
                           "the customer's records")
    mine = customer_key(customer)
    counts = dict.fromkeys(KINDS, 0)

    def is_mine(value: object) -> bool:
        return isinstance(value, str) and value != "" and customer_key(value) == mine

    async def link(key: str) -> None:
        raw = await _read_json(store, key)
        if raw is None or not is_mine(raw.get("customer_id")):
            return
        try:
            rec = records.LinkRecord(**raw)
        except TypeError:
            return  # a record of another version: left to retention, counted nowhere
        await records.save(store, replace(rec, key="", filename="", size=0, sha256="", content_type="",
                                          customer_id="", queue_id="", message_id="", revoked=True))
        counts["links"] += 1

    async def page(key: str) -> None:
        raw = await _read_json(store, key)
        if raw is None or not is_mine(raw.get("customer_id")):
            return
        try:
            pg = records.PageRecord(**raw)
        except TypeError:
            return
        await records.save_page(store, replace(pg, customer_id="", queue_id="", message_id=""))
        counts["pages"] += 1

    await _bounded([k for k in await lister.list(LINKS) if k.endswith(".json")], link)
    await _bounded([k for k in await lister.list(PAGES) if k.endswith(".json")], page)

    erased_invitations: set[str] = set()

    async def invitation(key: str) -> None:
        raw = await _read_json(store, key)
        if raw is None or not is_mine(raw.get("customer_id")):
            return
        oid = str(raw.get("object_id", ""))
        await store.delete(invitations.usage_key(oid))
        await store.delete(key)
        erased_invitations.add(oid)
        counts["invitations"] += 1

    await _bounded([k for k in await lister.list(INVITATIONS)
                    if k.endswith(".json") and not k.endswith(".usage.json")], invitation)

    async def session(key: str) -> None:
        raw = await _read_json(store, key)
        if raw is None or raw.get("invitation") not in erased_invitations:
            return
        folder = key.rsplit("/", 1)[0] + "/"
        direct = direct_uploads(store)
        if raw.get("s3_upload_id") and direct is not None:
            # A direct upload's parts are no object yet: abort the upload itself.
            await direct.abort(folder + "file", str(raw["s3_upload_id"]))
        await _bounded(await lister.list(folder), store.delete)
        await _prune(store, folder)
        counts["uploads_in_progress"] += 1

    if erased_invitations:
        await _bounded([k for k in await lister.list(STAGING + "page/") if k.endswith("/session.json")], session)

    async def job(key: str) -> None:
        raw = await _read_json(store, key)
        if raw is None or not is_mine(raw.get("customer_id")):
            return
        if raw.get("staging_key"):
            await store.delete(str(raw["staging_key"]))
        await store.delete(key)
        counts["jobs"] += 1

    await _bounded([k for k in await lister.list(JOBS) if k.endswith(".json")], job)

    for prefix, kind in [(UPLOADS, "files"), *((q, "quarantined") for q in sorted(set(quarantine)))]:
        keys = await lister.list(f"{prefix}{mine}/")
        await _bounded(keys, store.delete)
        await _prune(store, f"{prefix}{mine}/")
        counts[kind] += len(keys)
    return counts


async def _prune(store: Storage, prefix: str) -> None:
    """Empty directories named after the customer go too (filesystem)."""
    prune = getattr(store, "prune", None)
    if prune is not None:
        await prune(prefix)


def spooled(spool_root: Path, customer: str) -> list[dict[str, str]]:
    """Messages in the local spool whose envelope names the customer (its
    customer id, or the sender the id is taken from by default): queue id
    and queue.  Blocking: call in a thread."""
    mine = customer_key(customer)
    out = []
    for queue in QUEUES:
        folder = spool_root / queue
        try:
            ids = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            continue
        for qid in ids:
            try:
                env, _ = read_envelope(folder / qid)
            except (OSError, ValueError, TypeError):
                continue
            if (env.customer_id and customer_key(env.customer_id) == mine) or \
                    (env.mail_from and customer_key(env.mail_from) == mine):
                out.append({"queue_id": qid, "queue": queue})
    return out


def summary(counts: dict[str, int]) -> str:
    """The counts in words, for the command's output and the audit event."""
    done = [f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items() if n]
    return ", ".join(done) if done else "nothing"


__all__ = ["KINDS", "erase_store", "spooled", "summary"]
