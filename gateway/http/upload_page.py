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
"""
from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from importlib import resources
from typing import Any, Callable

from aiohttp import web

from gateway import invitations, logs
from gateway.config import Config
from gateway.http.bridge import BadEncoding, BodyTooLarge
from gateway.http.links import page
from gateway.links.tokens import Keyring, TokenError, TokenExpired, new_object_id
from gateway.mime import filenames
from gateway.mime.rewrite import Link, html_links, text_links
from gateway.spool import Envelope, Spool
from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage, StorageError
from gateway.uploads import Refused, Uploads, declared_type

log = logs.get("upload-page")

READ_CHUNK = 1 << 18


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


def _session_key(uid: str) -> str:
    return f"staging/page/{uid}/session.json"


def _chunk_key(uid: str, n: int) -> str:
    return f"staging/page/{uid}/{n:06d}"


class UploadPage:
    """The page, and the small JSON API its script talks to."""

    def __init__(self, cfg: Config, keyring: Keyring, uploads: Uploads, spool: Spool, audit: logs.AuditLog,
                 queued: Callable[[str], None]) -> None:
        self.keyring = keyring
        self.uploads = uploads
        self.spool = spool
        self.audit = audit
        self.queued = queued  # told the queue id of each completion email
        self.html = resources.files("gateway.http").joinpath("upload_page.html").read_text(encoding="utf-8")
        self.cfg = cfg

    def configure(self, cfg: Config) -> None:
        self.cfg = cfg

    # -- the invitation ---------------------------------------------------

    async def _invitation(self, request: web.Request) -> tuple[invitations.Invitation, Storage] | web.Response:
        """The invitation behind the URL, or a readable refusal."""
        try:
            claims = self.keyring.verify(request.match_info["token"], purpose=invitations.PURPOSE)
        except TokenExpired:
            return page(410, "This upload link has expired",
                        "For your security, upload links work for a limited time. Please reply to our email "
                        "or contact us to get a new link.")
        except TokenError:
            return page(403, "This upload link is not valid",
                        "Please check that you copied the whole link from our email, or ask us for a new one.")
        store = self.uploads.stores.get(claims.store)
        if store is None:
            return page(404, "This upload link is no longer available", "Please ask us for a new link.")
        try:
            return await invitations.load(store, claims.object_id), store
        except ObjectNotFound:
            return page(404, "This upload link is no longer available", "Please ask us for a new link.")

    async def show(self, request: web.Request) -> web.Response:
        found = await self._invitation(request)
        if isinstance(found, web.Response):
            self.audit.event("UploadPageOpened", "Failure", EventResultDetails=f"HTTP {found.status}",
                             SrcIpAddr=request.remote)
            return found
        settings = {"chunkSize": self.cfg.upload.chunk_size, "maxFileSize": self.cfg.upload.max_file_size}
        body = self.html.replace("{{CONFIG}}", html.escape(json.dumps(settings), quote=False))
        return web.Response(text=body, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'"})

    # -- the chunk API ------------------------------------------------------

    async def _session(self, request: web.Request) -> tuple[invitations.Invitation, Storage, dict[str, Any]] | web.Response:
        found = await self._invitation(request)
        if isinstance(found, web.Response):
            return _json({"error": "invitation not valid"}, found.status)
        inv, store = found
        uid = request.match_info["uid"]
        if not uid.replace("-", "").replace("_", "").isalnum() or len(uid) > 32:
            return _json({"error": "no such upload"}, 404)
        try:
            raw = b"".join([c async for c in store.open(_session_key(uid))])
            session = json.loads(raw)
        except (ObjectNotFound, ValueError):
            return _json({"error": "no such upload"}, 404)
        if session.get("invitation") != inv.object_id:
            return _json({"error": "no such upload"}, 404)
        return inv, store, session

    def _chunks(self, session: dict[str, Any]) -> list[int]:
        """The expected length of each chunk."""
        size, step = session["size"], session["chunk_size"]
        return [min(step, size - off) for off in range(0, size, step)]

    async def _received(self, store: Storage, session: dict[str, Any]) -> list[int]:
        lengths = self._chunks(session)
        stats = await asyncio.gather(*(store.stat(_chunk_key(session["uid"], i)) for i in range(len(lengths))))
        return [i for i, (st, n) in enumerate(zip(stats, lengths)) if st is not None and st.size == n]

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
        if size <= 0:
            return _json({"error": "Empty file"}, 400)
        if size > self.cfg.upload.max_file_size:
            return _json({"error": f"File larger than {self.cfg.upload.max_file_size} bytes"}, 413)
        session = {"uid": new_object_id(), "invitation": inv.object_id, "name": filenames.display_name(name)[:255],
                   "size": size, "type": str(req.get("type") or "")[:100], "chunk_size": self.cfg.upload.chunk_size,
                   "created": time.time(), "done": None}
        await store.put(_session_key(session["uid"]), [json.dumps(session).encode()],
                        ObjectMeta(content_type="application/json"))
        log.info("upload started", upload_id=session["uid"], customer_id=inv.customer_id, size=size)
        return _json({"uploadId": session["uid"], "chunkSize": session["chunk_size"],
                      "chunks": len(self._chunks(session)), "received": []}, 201)

    async def status(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        if isinstance(found, web.Response):
            return found
        _, store, session = found
        return _json({"uploadId": session["uid"], "chunkSize": session["chunk_size"],
                      "chunks": len(self._chunks(session)), "received": await self._received(store, session),
                      "done": session["done"]})

    async def put_chunk(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        if isinstance(found, web.Response):
            return found
        _, store, session = found
        lengths = self._chunks(session)
        try:
            n = int(request.match_info["n"])
            expected = lengths[n]
        except (ValueError, IndexError):
            return _json({"error": "no such chunk"}, 404)
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

    async def complete(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        if isinstance(found, web.Response):
            return found
        inv, store, session = found
        if session["done"]:
            return _json(session["done"])  # a retried complete: same answer
        lengths = self._chunks(session)
        missing = sorted(set(range(len(lengths))) - set(await self._received(store, session)))
        if missing:
            return _json({"error": "chunks missing", "missing": missing}, 409)
        keys = [_chunk_key(session["uid"], i) for i in range(len(lengths))]
        head = b""
        async for c in store.open(keys[0]):
            head = c[:8192]
            break
        fields = dict(QueueId=session["uid"], CustomerId=inv.customer_id, TargetFileName=session["name"],
                      ActorUsername=f"customer:{inv.customer_id}", SrcIpAddr=request.remote)
        try:
            stored = await self.uploads.finish(
                staging=keys, filename=session["name"], customer=inv.customer_id,
                ctype=declared_type(session["name"], session["type"]), size=session["size"], sha256=None, head=head,
                reference=session["uid"], message_id=inv.message_id, route_name=inv.route, cleanup=False)
        except Refused as e:
            self.audit.event("FileCreated", "Failure", EventSubType="UploadPage", EventResultDetails=f"refused: {e}",
                             **fields)
            await asyncio.gather(*(store.delete(k) for k in keys))
            return _json({"error": f"This file cannot be accepted: {e}"}, 415)
        except StorageError as e:
            log.error("upload not completed", upload_id=session["uid"], error=str(e))
            return _json({"error": "storage unavailable, try again"}, 503)
        qid = await asyncio.to_thread(self._queue_email, inv, stored.filename, stored.size, stored.url)
        session["done"] = {"fileName": stored.filename, "fileSize": stored.size}
        await store.put(_session_key(session["uid"]), [json.dumps(session).encode()],
                        ObjectMeta(content_type="application/json"))
        await asyncio.gather(*(store.delete(k) for k in keys))
        self.queued(qid)
        self.audit.event("FileCreated", "Success", EventSubType="UploadPage", EventResultDetails="stored",
                         TargetFilePath=stored.key, TargetFileSize=stored.size, TargetFileSHA256=stored.sha256,
                         NotificationQueueId=qid, **fields)
        log.info("upload complete", upload_id=session["uid"], key=stored.key, queue_id=qid)
        return _json(session["done"])

    # -- the email to the contact centre -----------------------------------

    def _queue_email(self, inv: invitations.Invitation, filename: str, size: int, url: str) -> str:
        """Put the completion email in the spool (blocking); the worker
        delivers it to the route's next hop like any inbound message."""
        cfg = self.cfg
        sender = cfg.upload.from_address or f"upload@{cfg.gateway.hostname}"
        route = next((r for r in cfg.routes if r.name == inv.route), cfg.api_route())
        template = route.link_text or cfg.links.text
        link = Link(filename, size, url)
        msg = EmailMessage(policy=SMTP)
        msg["From"] = f"Customer upload page <{sender}>"
        msg["To"] = inv.notify
        msg["Subject"] = f"Files uploaded by customer {inv.customer_id}"
        msg["Date"] = format_datetime(dt.datetime.now(dt.timezone.utc))
        msg["Message-ID"] = make_msgid(domain=cfg.gateway.hostname)
        if inv.message_id:
            msg["In-Reply-To"] = inv.message_id
            msg["References"] = inv.message_id
        msg["X-CustomerId"] = inv.customer_id
        msg.set_content(f"The customer {inv.customer_id} uploaded a file through the upload page.\n\n"
                        f"{text_links([link], template)}\n")
        msg.add_alternative(f"<html><body><p>The customer {html.escape(inv.customer_id)} uploaded a file "
                            f"through the upload page.</p>{html_links([link], template)}</body></html>\n",
                            subtype="html")
        data = msg.as_bytes()
        reception = self.spool.receive()
        try:
            reception.write(data)
            reception.commit(Envelope(queue_id=reception.queue_id, mail_from=sender, rcpt_tos=[inv.notify],
                                      route=route.name, received_at=time.time(), client_addr="127.0.0.1",
                                      client_name="localhost", helo="upload-page", size=len(data)))
        except BaseException:
            reception.abort()
            raise
        return reception.queue_id
