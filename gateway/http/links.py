"""``GET /a/<token>``: the link in a forwarded message.

Verify the token (403 when it is not ours, 410 when it has expired), find
the link record, then redirect to a storage URL minted now with a short
lifetime, or stream the object when the backend has no URLs (the
filesystem).  Every answer is one audit event and one log line; the storage
URL itself is never logged in full.
"""
from __future__ import annotations

from typing import Any, Mapping

from aiohttp import ClientConnectionResetError, web

from gateway import logs, metrics
from gateway.links.records import RecordCache
from gateway.links.tokens import Keyring, TokenError, TokenExpired
from gateway.mime.filenames import content_disposition
from gateway.storage.base import ObjectNotFound, Storage, StorageError

log = logs.get("http")

# Seconds a storage URL lives when the store's settings name no url_ttl (a
# backend without one has no URLs either: the filesystem streams).
DEFAULT_URL_TTL = 900

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>{text}</p></body></html>
"""


def page(status: int, title: str, text: str) -> web.Response:
    """A small HTML answer an agent can read in the browser."""
    return web.Response(status=status, text=_PAGE.format(title=title, text=text), content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


class LinkEndpoint:
    """Answers clicks on links."""

    def __init__(self, keyring: Keyring, stores: dict[str, Storage], audit: logs.AuditLog,
                 url_ttls: Mapping[str, int]) -> None:
        self.keyring = keyring
        self.stores = stores
        self.audit = audit
        # Per store: seconds a storage URL minted at a click lives (rule 5:
        # minted per click, short-lived); from each backend's url_ttl.
        self.url_ttls = dict(url_ttls)
        self.cache = RecordCache()

    def _audit(self, request: web.Request, result: str, details: str, **fields: Any) -> None:
        metrics.LINK_REQUESTS.labels(details.split(":")[0]).inc()
        self.audit.event("FileAccessed", result, EventSubType="Download", EventResultDetails=details,
                         SrcIpAddr=request.remote, HttpUserAgent=request.headers.get("User-Agent"),
                         ActorUsername=None, **fields)
        log.info("link", result=result, details=details, src=request.remote,
                 **{k: v for k, v in fields.items() if k in ("QueueId", "CustomerId", "TargetFilePath")})

    async def get(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        try:
            claims = self.keyring.verify(token)
        except TokenExpired:
            self._audit(request, "Failure", "expired token")
            return page(410, "Link expired", "This link has expired. Ask for the attachment to be sent again.")
        except TokenError as e:
            self._audit(request, "Failure", f"invalid token: {e}")
            return page(403, "Invalid link", "This link is not valid.")
        store = self.stores.get(claims.store)
        if store is None:
            self._audit(request, "Failure", f"unknown store {claims.store}")
            return page(404, "Not found", "The attachment is no longer available.")
        try:
            record = await self.cache.load(store, claims.object_id)
        except ObjectNotFound:
            self._audit(request, "Failure", "no link record")
            return page(404, "Not found", "The attachment is no longer available.")
        fields = dict(QueueId=record.queue_id, CustomerId=record.customer_id, TargetFilePath=record.key,
                      TargetFilePathType="URL", TargetFileName=record.filename, TargetFileSize=record.size,
                      TargetFileSHA256=record.sha256, InternetMessageId=record.message_id)
        if record.revoked:
            self._audit(request, "Failure", "revoked", **fields)
            return page(410, "Link revoked", "This attachment has been withdrawn.")
        try:
            url = await store.signed_url(record.key, record.filename,
                                         self.url_ttls.get(claims.store, DEFAULT_URL_TTL))
        except StorageError as e:
            self._audit(request, "Failure", f"storage error: {e}", **fields)
            return page(503, "Temporarily unavailable", "The attachment cannot be fetched right now; try again.")
        if url is not None:
            self._audit(request, "Success", "redirected", **fields)
            raise web.HTTPFound(url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        response = web.StreamResponse(headers={
            "Content-Type": record.content_type if "/" in record.content_type else "application/octet-stream",
            "Content-Disposition": content_disposition(record.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
            "Content-Security-Policy": "sandbox",
        })
        response.content_length = record.size
        try:
            stream = store.open(record.key)
            first = await stream.__anext__()
        except (ObjectNotFound, StopAsyncIteration):
            first = b""
            stream = None
            if record.size:
                self._audit(request, "Failure", "object missing", **fields)
                return page(404, "Not found", "The attachment is no longer available.")
        try:
            await response.prepare(request)
            await response.write(first)
            if stream is not None:
                async for chunk in stream:
                    await response.write(chunk)
            await response.write_eof()
        except (ConnectionError, ClientConnectionResetError):
            # The agent closed the tab or the connection broke mid-download:
            # an outcome to audit, not an error to log with a traceback.
            self._audit(request, "Failure", "client went away during the download", **fields)
            return response
        self._audit(request, "Success", "streamed", **fields)
        return response
