"""``/upload/<invitation>``: the customer upload page and its chunk API.

A customer reaches the page from an invitation link (signed, expiring,
bound to a customer and a thread).  The page sends each file in chunks of
``upload.chunk_size`` through the gateway into staging keys of the route's
store, one PUT a chunk, so a dropped connection costs at most one chunk:
the page asks which chunks arrived and sends the rest (it keeps the upload
id in localStorage, so even a reload resumes).  When the last chunk is in,
``complete`` runs the same policies as mail, copies the chunks into one
object at its secure key, mints the link, and queues an email to the
contact centre in the customer's thread (In-Reply-To/References), which the
worker delivers through the route like inbound mail.  Chunk and session
state live in the store, so any node can take any request.

With an S3 store (and ``upload.direct_to_store``) the bytes do not pass
through the gateway: the upload is an S3 multipart upload at the staging
key, the page asks for a presigned URL per part and PUTs the part straight
to the store, "which chunks arrived" is ListParts, and ``complete`` finishes
the multipart upload, checks every part's size and the whole size, and goes
on as above
(gateway/storage/s3_direct.py).

Each upload started is counted against its invitation's limits
(``invitations.reserve``, under a lock the node's processes share) and
leaves a marker in ``<spool>/page-uploads``;
the serving process's sweeper (``sweep``) aborts uploads not completed
within ``upload.abandon_after`` and removes their pieces.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import fcntl
import html
import json
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import invitations, logs, mailtext
from gateway.config import Config
from gateway.http.accepted import accepted
from gateway.http.health import client_address, request_id
from gateway.http.pages import Pages
from gateway.links.tokens import Keyring, TokenError, TokenExpired, new_object_id
from gateway.mime import filenames
from gateway.mime.rewrite import Link, html_links, text_links
from gateway.spool import Envelope, Spool, write_atomic
from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage, StorageError
from gateway.storage.bridge import BadEncoding, BodyTooLarge
from gateway.storage.s3_direct import S3DirectUploads, direct_uploads, part_size
from gateway.uploads import Refused, Uploads, declared_type

log = logs.get("upload-page")

READ_CHUNK = 1 << 18


def _json(data: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store", **headers})


# Invitations' counts are changed under one of this many lock files, which
# every process of a node takes (an asyncio lock covers one process only).
_INVITATION_LOCKS = 16


def _flock(path: Path, wait: bool) -> int | None:
    """An exclusive flock on ``path`` (blocking): its descriptor, or None
    when ``wait`` is false and another holder has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _finished(session: dict[str, Any]) -> web.Response | None:
    """The answer a completed or refused upload gives again, or None."""
    if session["done"]:
        return _json(session["done"])  # a retried complete: same answer
    if session.get("refused"):
        return _json(session["refused"], 415)
    return None


def _session_key(uid: str) -> str:
    return f"staging/page/{uid}/session.json"


def _chunk_key(uid: str, n: int) -> str:
    return f"staging/page/{uid}/{n:06d}"


def _direct_key(uid: str) -> str:
    """The staging key of a direct (presigned multipart) upload."""
    return f"staging/page/{uid}/file"


def _chunk_lengths(session: dict[str, Any]) -> list[int]:
    """The expected length of each chunk (or part)."""
    size, step = session["size"], session["chunk_size"]
    return [min(step, size - off) for off in range(0, size, step)]


async def _load_session(store: Storage, uid: str) -> dict[str, Any] | None:
    try:
        return json.loads(b"".join([c async for c in store.open(_session_key(uid))]))
    except (ObjectNotFound, ValueError):
        return None


async def _save_session(store: Storage, session: dict[str, Any]) -> None:
    await store.put(_session_key(session["uid"]), [json.dumps(session).encode()],
                    ObjectMeta(content_type="application/json"))


def _chunk_number(request: web.Request, session: dict[str, Any]) -> int | None:
    """The chunk number in the URL when the upload has such a chunk."""
    try:
        n = int(request.match_info["n"])
    except ValueError:
        return None
    return n if 0 <= n < len(_chunk_lengths(session)) else None


def _is_digest(value: str, length: int) -> bool:
    """Whether ``value`` is the base64 of ``length`` bytes."""
    try:
        return len(base64.b64decode(value, validate=True)) == length
    except (ValueError, binascii.Error):
        return False


def _old_markers(directory: Path, cutoff: float) -> list[Path]:
    """Upload markers written before ``cutoff`` (blocking)."""
    out = []
    for p in directory.iterdir():
        try:
            if not p.name.startswith(".") and p.stat().st_mtime < cutoff:
                out.append(p)
        except FileNotFoundError:
            pass
    return out


def _unclaim(path: Path, fd: int) -> None:
    """Give up a completion's claim (blocking).  Removed before it is
    unlocked: a request that opened the old file meanwhile finds the upload
    finished when it reads the session again."""
    path.unlink(missing_ok=True)
    os.close(fd)


# The policy that refused a file -> the reason the page gives, in the same
# words as its own checks before sending.
_REFUSALS = {"refuse_executables": "program", "allowed_types": "type", "refuse_spoofed": "type",
             "refuse_malware": "malware", "empty_attachment": "empty"}


def refusal_code(policy: str) -> str:
    """The page's word for a refusal by ``policy`` ("refused": any other)."""
    return _REFUSALS.get(policy, "refused")


class UploadPage:
    """The page, and the small JSON API its script talks to."""

    def __init__(self, cfg: Config, keyring: Keyring, uploads: Uploads, spool: Spool, audit: logs.AuditLog,
                 queued: Callable[[str], None], pages: Pages) -> None:
        self.keyring = keyring
        self.uploads = uploads
        self.spool = spool
        self.audit = audit
        self.queued = queued  # told the queue id of each completion email
        self.pages = pages
        self.markers = spool.root / "page-uploads"
        self._sweeper: asyncio.Task[None] | None = None
        self.cfg = cfg

    def configure(self, cfg: Config) -> None:
        self.cfg = cfg

    @asynccontextmanager
    async def _counting(self, invitation: str) -> AsyncIterator[None]:
        """Hold the node-wide lock under which an invitation's count changes."""
        path = self.markers / f".invitations-{zlib.crc32(invitation.encode()) % _INVITATION_LOCKS}.lock"
        fd = await asyncio.to_thread(_flock, path, True)
        assert fd is not None
        try:
            yield
        finally:
            os.close(fd)

    def _direct(self, store: Storage) -> S3DirectUploads | None:
        """Presigned part uploads for this store, when configured and possible."""
        return direct_uploads(store) if self.cfg.upload.direct_to_store else None

    # -- the invitation ---------------------------------------------------

    async def _invitation(self, request: web.Request) -> tuple[invitations.Invitation, Storage] | web.Response:
        """The invitation behind the URL, or a readable refusal."""
        try:
            claims = self.keyring.verify(request.match_info["token"], purpose=invitations.PURPOSE)
        except TokenExpired:
            return self.pages.render(request, "upload_closed.html", 410, kind="expired")
        except TokenError:
            return self.pages.render(request, "upload_closed.html", 403, kind="invalid")
        store = self.uploads.stores.get(claims.store)
        if store is None:
            return self.pages.render(request, "upload_closed.html", 404, kind="gone")
        try:
            return await invitations.load(store, claims.object_id), store
        except ObjectNotFound:
            return self.pages.render(request, "upload_closed.html", 404, kind="gone")

    async def show(self, request: web.Request) -> web.Response:
        """The page: what it takes (types, sizes, count, until when, for whom), then the picker."""
        found = await self._invitation(request)
        if isinstance(found, web.Response):
            self.audit.event("UploadPageOpened", "Failure", EventResultDetails=f"HTTP {found.status}",
                             SrcIpAddr=client_address(request), RequestId=request_id(request))
            return found
        inv, store = found
        direct = self._direct(store)
        # The page PUTs parts to the store's origin: the CSP must allow it.
        connect = "'self'" + (f" {await direct.origin()}" if direct is not None else "")
        up = self.cfg.upload
        route = next((r for r in self.cfg.routes if r.name == inv.route), self.cfg.api_route())
        takes = accepted(route)
        try:
            used_files, used_bytes = await invitations.used(store, inv.object_id)
        except StorageError:
            used_files, used_bytes = 0, 0  # the server counts again at each upload
        settings = {"chunkSize": up.chunk_size, "maxFileSize": up.max_file_size,
                    "maxFiles": up.max_files_per_invitation, "maxBytes": up.max_bytes_per_invitation,
                    "usedFiles": used_files, "usedBytes": used_bytes, "extensions": list(takes.extensions)}
        return self.pages.render(
            request, "upload.html", settings=settings, accepted=takes, max_file_size=up.max_file_size,
            max_files=up.max_files_per_invitation, max_bytes=up.max_bytes_per_invitation, expires=inv.expires,
            notify=inv.notify, csp={"script-src": "'self'", "connect-src": connect, "form-action": "'none'"})

    # -- the chunk API ------------------------------------------------------

    async def _session(self, request: web.Request
                       ) -> tuple[invitations.Invitation, Storage, dict[str, Any]] | web.Response:
        found = await self._invitation(request)
        if isinstance(found, web.Response):
            return _json({"error": "invitation not valid"}, found.status)
        inv, store = found
        uid = request.match_info["uid"]
        if not uid.replace("-", "").replace("_", "").isalnum() or len(uid) > 32:
            return _json({"error": "no such upload"}, 404)
        session = await _load_session(store, uid)
        if session is None or session.get("invitation") != inv.object_id:
            return _json({"error": "no such upload"}, 404)
        return inv, store, session

    async def _received(self, store: Storage, session: dict[str, Any]) -> list[int]:
        """The chunks (0-based) the store holds whole."""
        lengths = _chunk_lengths(session)
        if session.get("mode") == "direct":
            direct = direct_uploads(store)
            assert direct is not None
            parts = await direct.parts(_direct_key(session["uid"]), session["s3_upload_id"])
            return sorted(p.number - 1 for p in parts if 0 < p.number <= len(lengths)
                          and p.size == lengths[p.number - 1])
        stats = await asyncio.gather(*(store.stat(_chunk_key(session["uid"], i)) for i in range(len(lengths))))
        return [i for i, (st, n) in enumerate(zip(stats, lengths, strict=True)) if st is not None and st.size == n]

    def _answer(self, session: dict[str, Any], received: list[int]) -> dict[str, Any]:
        return {"uploadId": session["uid"], "chunkSize": session["chunk_size"],
                "chunks": len(_chunk_lengths(session)), "received": received,
                "direct": session.get("mode") == "direct", "done": session["done"]}

    async def create(self, request: web.Request) -> web.Response:
        found = await self._invitation(request)
        if isinstance(found, web.Response):
            return _json({"error": "invitation not valid"}, found.status)
        inv, store = found
        try:
            req = await request.json()
            name, size = str(req["name"]), int(req["size"])
        except (ValueError, KeyError, TypeError):
            return _json({"error": "expected {\"name\": ..., \"size\": ...}"}, 400)
        up = self.cfg.upload
        if size <= 0:
            return _json({"error": "Empty file", "code": "empty"}, 400)
        if size > up.max_file_size:
            return _json({"error": f"File larger than {up.max_file_size} bytes", "code": "size"}, 413)
        uid = new_object_id()
        try:
            async with self._counting(inv.object_id):
                await invitations.reserve(store, inv.object_id, uid, size, max_files=up.max_files_per_invitation,
                                          max_bytes=up.max_bytes_per_invitation)
        except invitations.OverLimit as e:
            log.info("upload refused: invitation limit", customer_id=inv.customer_id, size=size, reason=str(e))
            self.audit.event("FileCreated", "Failure", EventSubType="UploadPage", CustomerId=inv.customer_id,
                             EventResultDetails=f"invitation limit: {e}", TargetFileSize=size,
                             SrcIpAddr=client_address(request), RequestId=request_id(request))
            return _json({"error": str(e), "code": f"limit-{e.kind}"}, 413)
        session = {"uid": uid, "invitation": inv.object_id, "name": filenames.display_name(name)[:255],
                   "size": size, "type": str(req.get("type") or "")[:100], "chunk_size": up.chunk_size,
                   "created": time.time(), "done": None, "mode": "chunks"}
        direct = self._direct(store)
        try:
            if direct is not None:
                session["mode"], session["chunk_size"] = "direct", part_size(up.chunk_size, size)
                session["s3_upload_id"] = await direct.create(_direct_key(uid), ObjectMeta())
            await asyncio.to_thread(self._mark, uid, store.name)
            await _save_session(store, session)
        except StorageError as e:
            log.error("upload not started", upload_id=uid, error=str(e))
            async with self._counting(inv.object_id):
                await invitations.release(store, inv.object_id, uid)
            return _json({"error": "storage unavailable, try again"}, 503)
        log.info("upload started", upload_id=uid, customer_id=inv.customer_id, size=size, mode=session["mode"])
        return _json(self._answer(session, []), 201)

    async def status(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        if isinstance(found, web.Response):
            return found
        _, store, session = found
        received = [] if session["done"] else await self._received(store, session)
        return _json(self._answer(session, received))

    async def part_url(self, request: web.Request) -> web.Response:
        """A presigned URL for one part of a direct upload (asked for just
        before each PUT, so it need only live for minutes)."""
        found = await self._session(request)
        if isinstance(found, web.Response):
            return found
        _, store, session = found
        direct = direct_uploads(store)
        if session.get("mode") != "direct" or direct is None or session["done"] or session.get("refused"):
            return _json({"error": "this upload does not take part URLs"}, 409)
        n = _chunk_number(request, session)
        if n is None:
            return _json({"error": "no such chunk"}, 404)
        try:
            req = await request.json() if request.can_read_body else {}
            sums = {k: str(req.get(k) or "") for k in ("md5", "sha256")}
        except (ValueError, AttributeError):
            return _json({"error": "expected {\"md5\": ..., \"sha256\": ...} (base64), or no body"}, 400)
        for name, length in (("md5", 16), ("sha256", 32)):
            if sums[name] and not _is_digest(sums[name], length):
                return _json({"error": f"{name}: expected the base64 of a {length}-byte digest"}, 400)
        ttl = self.cfg.upload.part_url_ttl
        try:
            url, headers = await direct.part_url(_direct_key(session["uid"]), session["s3_upload_id"], n + 1, ttl,
                                                 md5_b64=sums["md5"], sha256_b64=sums["sha256"])
        except StorageError as e:
            log.error("part URL not made", upload_id=session["uid"], chunk=n, error=str(e))
            return _json({"error": "storage unavailable"}, 503)
        log.info("part url issued", upload_id=session["uid"], chunk=n,
                 checksums=[k for k, v in sums.items() if v])
        return _json({"chunk": n, "url": url, "headers": headers, "expiresIn": ttl})

    async def put_chunk(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        if isinstance(found, web.Response):
            return found
        _, store, session = found
        if session.get("mode") == "direct":
            return _json({"error": "this upload sends its parts to the store; ask for a part URL"}, 409)
        if session["done"] or session.get("refused"):
            # Completed or refused: a chunk now would never be judged, only left behind.
            return _json({"error": "this upload is finished; it takes no more chunks"}, 409)
        n = _chunk_number(request, session)
        if n is None:
            return _json({"error": "no such chunk"}, 404)
        expected = _chunk_lengths(session)[n]
        key = _chunk_key(session["uid"], n)
        try:
            staged = await self.uploads.stage(store, key, request.content.iter_chunked(READ_CHUNK), expected)
        except (BodyTooLarge, BadEncoding) as e:
            return _json({"error": str(e)}, 413)
        except StorageError as e:
            log.error("chunk not stored", upload_id=session["uid"], chunk=n, error=str(e))
            return _json({"error": "storage unavailable"}, 503)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("chunk interrupted", upload_id=session["uid"], chunk=n, error=str(e))
            return _json({"error": "interrupted"}, 400)
        if staged.size != expected:
            await store.delete(key)
            log.info("chunk incomplete", upload_id=session["uid"], chunk=n, got=staged.size, expected=expected)
            return _json({"error": f"chunk {n} has {staged.size} bytes, expected {expected}"}, 400)
        log.info("chunk stored", upload_id=session["uid"], chunk=n, size=staged.size)
        return _json({"chunk": n, "size": staged.size})

    async def _assemble(self, store: Storage, session: dict[str, Any]) -> list[str] | web.Response:
        """The staging keys of a whole upload, or the 409 naming the chunks
        still missing."""
        lengths = _chunk_lengths(session)
        uid = session["uid"]
        if session.get("mode") != "direct":
            missing = sorted(set(range(len(lengths))) - set(await self._received(store, session)))
            if missing:
                return _json({"error": "chunks missing", "missing": missing}, 409)
            return [_chunk_key(uid, i) for i in range(len(lengths))]
        direct = direct_uploads(store)
        assert direct is not None
        key = _direct_key(uid)
        if session.get("assembled"):  # completed by an earlier try that failed later
            return [key]
        # The store's list of parts, not the page's word: each must be there whole.
        parts = {p.number: p for p in await direct.parts(key, session["s3_upload_id"])}
        missing = [i for i, n in enumerate(lengths) if i + 1 not in parts or parts[i + 1].size != n]
        if missing:
            return _json({"error": "chunks missing", "missing": missing}, 409)
        size = await direct.complete(key, session["s3_upload_id"], [parts[i + 1] for i in range(len(lengths))])
        if size != session["size"]:
            await store.delete(key)
            raise StorageError(f"upload {uid} completed with {size} bytes, expected {session['size']}")
        session["assembled"] = True
        await _save_session(store, session)
        log.info("parts assembled", upload_id=uid, parts=len(lengths), size=size)
        return [key]

    async def complete(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        if isinstance(found, web.Response):
            return found
        inv, store, session = found
        answer = _finished(session)
        if answer is not None:
            return answer
        # One completion of an upload at a time on this node, whichever
        # process the request reaches: two at once would store the file
        # twice, for one count against the invitation.
        claim = self.markers / f".complete-{session['uid']}"
        fd = await asyncio.to_thread(_flock, claim, False)
        if fd is None:
            return _json({"error": "this upload is being completed; ask again shortly"}, 503, **{"Retry-After": "2"})
        try:
            # Read again under the claim: another request may have finished it.
            fresh = await _load_session(store, session["uid"])
            if fresh is None:
                return _json({"error": "no such upload"}, 404)
            return _finished(fresh) or await self._complete(request, inv, store, fresh)
        finally:
            await asyncio.to_thread(_unclaim, claim, fd)

    async def _complete(self, request: web.Request, inv: invitations.Invitation, store: Storage,
                        session: dict[str, Any]) -> web.Response:
        """Assemble, judge, store and announce an upload (under its claim)."""
        try:
            assembled = await self._assemble(store, session)
        except StorageError as e:
            log.error("upload not assembled", upload_id=session["uid"], error=str(e))
            return _json({"error": "storage unavailable, try again"}, 503)
        if isinstance(assembled, web.Response):
            return assembled
        keys = assembled
        fields = dict(QueueId=session["uid"], CustomerId=inv.customer_id, TargetFileName=session["name"],
                      ActorUsername=f"customer:{inv.customer_id}", SrcIpAddr=client_address(request),
                      RequestId=request_id(request))
        try:
            stored = await self.uploads.finish(
                staging=keys, filename=session["name"], customer=inv.customer_id,
                ctype=declared_type(session["name"], session["type"]), size=session["size"], sha256=None,
                reference=session["uid"], message_id=inv.message_id, route_name=inv.route, cleanup=False,
                source="UploadPage", actor=f"customer:{inv.customer_id}", client=client_address(request))
        except Refused as e:
            self.audit.event("FileCreated", "Failure", EventSubType="UploadPage", EventResultDetails=f"refused: {e}",
                             **fields)
            # Closed for good: chunks written again and completed once more
            # would be stored without counting against the invitation.
            session["refused"] = {"error": f"This file cannot be accepted: {e}", "code": refusal_code(e.policy)}
            await _save_session(store, session)
            await asyncio.gather(*(store.delete(k) for k in keys))
            async with self._counting(inv.object_id):
                await invitations.release(store, inv.object_id, session["uid"])
            return _json(session["refused"], 415)
        except StorageError as e:
            log.error("upload not completed", upload_id=session["uid"], error=str(e))
            return _json({"error": "storage unavailable, try again"}, 503)
        qid = await asyncio.to_thread(self._queue_email, inv, stored.filename, stored.size, stored.url,
                                      stored.cleaned)
        session["done"] = {"fileName": stored.filename, "fileSize": stored.size}
        if stored.cleaned is not None:
            session["done"]["cleaned"] = stored.cleaned  # what disarming removed
        await _save_session(store, session)
        await asyncio.gather(*(store.delete(k) for k in keys))
        self.queued(qid)
        self.audit.event("FileCreated", "Success", EventSubType="UploadPage", EventResultDetails="stored",
                         TargetFilePath=stored.key, TargetFileSize=stored.size, TargetFileSHA256=stored.sha256,
                         NotificationQueueId=qid, **fields)
        log.info("upload complete", upload_id=session["uid"], key=stored.key, queue_id=qid)
        return _json(session["done"])

    # -- abandoned uploads ---------------------------------------------------

    def _mark(self, uid: str, store: str) -> None:
        """Record (blocking) that an upload was started, for the sweeper."""
        self.markers.mkdir(parents=True, exist_ok=True)
        write_atomic(self.markers / uid, json.dumps({"store": store}).encode())

    def start_sweeper(self) -> None:
        """Run ``sweep`` every ``upload.cleanup_interval`` in this process."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="upload-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.upload.cleanup_interval)
            try:
                await self.sweep()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                log.error("sweep of abandoned uploads failed", error=f"{type(e).__name__}: {e}")

    async def sweep(self) -> int:
        """Abort uploads started more than ``upload.abandon_after`` ago and
        not completed: the S3 multipart upload is aborted, chunks are
        deleted, the session and its count against the invitation go (the
        record of a completed upload goes then too).
        Processes sharing the spool take turns (an flock); returns how many
        uploads were removed."""
        await asyncio.to_thread(self.markers.mkdir, parents=True, exist_ok=True)
        lock = await asyncio.to_thread(os.open, self.markers / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            cutoff = time.time() - self.cfg.upload.abandon_after
            removed = 0
            for path in await asyncio.to_thread(_old_markers, self.markers, cutoff):
                if await self._sweep_one(path, cutoff):
                    removed += 1
            return removed
        finally:
            os.close(lock)

    async def _sweep_one(self, path: Path, cutoff: float) -> bool:
        uid = path.name
        try:
            store = self.uploads.stores[json.loads(await asyncio.to_thread(path.read_bytes))["store"]]
        except (OSError, ValueError, KeyError, TypeError):
            await asyncio.to_thread(path.unlink, missing_ok=True)
            return False
        session = await _load_session(store, uid)
        if session is not None and session["created"] > cutoff:
            return False
        if session is None or session["done"]:
            # Completed (its record kept a while for a retried "complete"), or
            # gone; with any chunk a late PUT left behind.
            if session is not None and session.get("mode") != "direct":
                await asyncio.gather(*(store.delete(_chunk_key(uid, i))
                                       for i in range(len(_chunk_lengths(session)))))
            await store.delete(_session_key(uid))
            await asyncio.to_thread(path.unlink, missing_ok=True)
            return False
        if session.get("mode") == "direct":
            direct = direct_uploads(store)
            if direct is not None:
                await direct.abort(_direct_key(uid), session["s3_upload_id"])
            await store.delete(_direct_key(uid))
        else:
            await asyncio.gather(*(store.delete(_chunk_key(uid, i)) for i in range(len(_chunk_lengths(session)))))
        async with self._counting(session["invitation"]):
            await invitations.release(store, session["invitation"], uid)
        await store.delete(_session_key(uid))
        await asyncio.to_thread(path.unlink, missing_ok=True)
        log.info("abandoned upload removed", upload_id=uid, mode=session.get("mode"), size=session["size"],
                 age=round(time.time() - session["created"]))
        return True

    # -- the email to the contact centre -----------------------------------

    def _queue_email(self, inv: invitations.Invitation, filename: str, size: int, url: str,
                     cleaned: str | None = None) -> str:
        """Put the completion email in the spool (blocking); the worker
        delivers it to the route's next hop like any inbound message.  A
        file that was disarmed (``cleaned``: what was removed) is said to
        be, in the words of mail's notice."""
        cfg = self.cfg
        sender = cfg.upload.from_address or f"upload@{cfg.gateway.hostname}"
        route = next((r for r in cfg.routes if r.name == inv.route), cfg.api_route())
        # Written in the route's language (gateway/mailtext.py), as its other mail.
        texts = mailtext.for_language(
            mailtext.catalogues(cfg.path(cfg.i18n.directory) if cfg.i18n.directory else None), route.language)
        shown = filenames.display_name(filename) or texts.text(mailtext.ATTACHMENT)
        link = Link(filename, size, url, label=texts.link_label(route.link_text or cfg.links.text, shown, size),
                    size_text=texts.size(size))
        said = texts.text(mailtext.UPLOADED, customer=inv.customer_id)
        if cleaned is not None:
            said += " " + texts.text(mailtext.CLEANED, filename=shown, summary=cleaned)
        msg = EmailMessage(policy=SMTP)
        msg["From"] = f"{texts.text(mailtext.UPLOAD_PAGE_SENDER)} <{sender}>"
        msg["To"] = inv.notify
        msg["Subject"] = texts.text(mailtext.UPLOADED_SUBJECT, customer=inv.customer_id)
        msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
        msg["Message-ID"] = make_msgid(domain=cfg.gateway.hostname)
        if inv.message_id:
            msg["In-Reply-To"] = inv.message_id
            msg["References"] = inv.message_id
        msg["X-CustomerId"] = inv.customer_id
        text = f"{said}\n\n{text_links([link], '')}\n"
        msg.set_content(text, cte=None if text.isascii() else "quoted-printable")
        page_html = f"<html><body><p>{html.escape(said)}</p>{html_links([link], '')}</body></html>\n"
        msg.add_alternative(page_html, subtype="html", cte=None if page_html.isascii() else "quoted-printable")
        data = msg.as_bytes()
        reception = self.spool.receive()
        try:
            reception.write(data)
            reception.commit(Envelope(queue_id=reception.queue_id, mail_from=sender, rcpt_tos=[inv.notify],
                                      route=route.name, received_at=time.time(), client_addr="127.0.0.1",
                                      client_name="localhost", helo="upload-page", size=len(data),
                                      customer_id=inv.customer_id))
        except BaseException:
            reception.abort()
            raise
        return reception.queue_id
