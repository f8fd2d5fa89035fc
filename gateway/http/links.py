"""``GET /a/<token>`` and ``POST /a/<token>/refresh``: the link in a
forwarded message, and a fresh one when it has expired.

Order of checks, cheapest and least revealing first: the token (403 when it
is not ours, a refresh page with 410 when it has expired), the link record
and the revocation markers (410 when revoked), the agent (sign-in, or 403
for an identity that is not believed), the authorisation of that agent for
that customer (403 naming whom to ask), and only then a storage URL minted
now with a short lifetime (a redirect), or the object streamed when the
backend has no URLs (the filesystem).  Every answer but a sign-in redirect
is one audit event; the storage URL itself is never logged in full.

Every answer is a page (gateway/http/pages.py, templates/agent.html and
landing.html) that says what happened and what the agent can do, in the
agent's language, with the request id as a reference: the same id is the
audit event's ``RequestId`` and the access log's ``request_id``.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import ClientConnectionResetError, web

from gateway import logs, metrics
from gateway.http.health import request_id
from gateway.http.pages import Pages
from gateway.links import records, revocations
from gateway.links.agents import Agent, Authenticator, IdentityRefused, Oidc, Proxies, SignInRequired
from gateway.links.authz import Authoriser
from gateway.links.tokens import Claims, Keyring, TokenError, TokenExpired, key_id, object_id
from gateway.mime.filenames import content_disposition, display_name
from gateway.storage.base import ObjectNotFound, Storage, StorageError

log = logs.get("http")

# Seconds a storage URL lives when the store's settings name no url_ttl (a
# backend without one has no URLs either: the filesystem streams).
DEFAULT_URL_TTL = 900

def _record_fields(record: records.LinkRecord) -> dict[str, Any]:
    return dict(QueueId=record.queue_id, CustomerId=record.customer_id, TargetFilePath=record.key,
                TargetFilePathType="URL", TargetFileName=record.filename, TargetFileSize=record.size,
                TargetFileSHA256=record.sha256, InternetMessageId=record.message_id)


class _Refused(Exception):
    """An answer that ends the request after its audit event was written."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


class LinkEndpoint:
    """Answers clicks on links, refreshes, and the sign-in callback."""

    def __init__(self, keyring: Keyring, stores: dict[str, Storage], audit: logs.AuditLog, *,
                 url_ttls: Mapping[str, int], link_ttl: int, base_url: str, authenticator: Authenticator,
                 authoriser: Authoriser, proxies: Proxies, contact: str, pages: Pages) -> None:
        self.keyring = keyring
        self.pages = pages
        self.stores = stores
        self.audit = audit
        self.cache = records.RecordCache()
        self.configure(url_ttls=url_ttls, link_ttl=link_ttl, base_url=base_url, authenticator=authenticator,
                       authoriser=authoriser, proxies=proxies, contact=contact)

    def configure(self, *, url_ttls: Mapping[str, int], link_ttl: int, base_url: str,
                  authenticator: Authenticator, authoriser: Authoriser, proxies: Proxies, contact: str) -> None:
        """Take the settings a config gives (at start, and on SIGHUP)."""
        # Per store: seconds a storage URL minted at a click lives (rule 5:
        # minted per click, short-lived); from each backend's url_ttl.
        self.url_ttls = dict(url_ttls)
        self.link_ttl = link_ttl
        self.base_url = base_url
        self.authenticator = authenticator
        self.authoriser = authoriser
        self.proxies = proxies
        self.contact = contact

    def _audit(self, request: web.Request, event: str, result: str, details: str, agent: Agent | None = None,
               kid: str | None = None, **fields: Any) -> None:
        # A bounded label: the reason up to its first detail.
        metrics.LINK_REQUESTS.labels(details.split(":")[0].split(" (")[0]).inc()
        event_type = {"click": "FileAccessed", "refresh": "FileAccessed", "page": "FileAccessed"}.get(event,
                                                                                                   "LinkAccess")
        self.audit.event(event_type, result, EventOriginalType=event,
                         EventSubType={"click": "Download", "refresh": "LinkRefresh",
                                       "page": "LandingPage"}.get(event),
                         EventResultDetails=details, SrcIpAddr=self.proxies.client_address(request),
                         HttpUserAgent=request.headers.get("User-Agent"),
                         ActorUsername=agent.id if agent else None,
                         ActorUserIdType=agent.method if agent else None,
                         TokenKeyId=kid, RequestId=request_id(request), **fields)
        # The log's names, as on mail lines (the audit event keeps ASIM's).
        log.info("link", action=event, result=result, details=details, request_id=request_id(request),
                 client=self.proxies.client_address(request), agent=agent.id if agent else None,
                 **logs.log_fields({k: v for k, v in fields.items()
                                    if k in ("QueueId", "InternetMessageId", "CustomerId", "TargetFilePath")}))

    async def _checked(self, request: web.Request, event: str, *, allow_expired: bool, token: str | None = None
                       ) -> tuple[Claims, Storage, records.LinkRecord, bool]:
        """Token, store, record and revocation; raise _Refused with the answer."""
        token = request.match_info["token"] if token is None else token
        kid = key_id(token)
        expired = False
        try:
            claims = self.keyring.verify(token)
        except TokenExpired as e:
            claims, expired = e.claims, True
        except TokenError as e:
            self._audit(request, event, "Failure", f"invalid token: {e}", kid=kid, TokenObjectId=object_id(token))
            raise _Refused(self._page(request, 403, "invalid")) from None
        store = self.stores.get(claims.store)
        if store is None:
            self._audit(request, event, "Failure", f"unknown store {claims.store}", kid=kid)
            raise _Refused(self._page(request, 404, "not_found"))
        try:
            # Read fresh at every click: a revoked record must answer 410 at once on every node.
            record = await self.cache.load(store, claims.object_id, fresh=True)
        except ObjectNotFound:
            self._audit(request, event, "Failure", "no link record", kid=kid, TokenObjectId=claims.object_id)
            raise _Refused(self._page(request, 404, "not_found")) from None
        except StorageError as e:
            self._audit(request, event, "Failure", f"storage error: {e}", kid=kid)
            raise _Refused(self._page(request, 503, "storage_unavailable")) from None
        fields = _record_fields(record)
        try:
            revoked = await revocations.revoked_by(store, record)
        except StorageError as e:
            self._audit(request, event, "Failure", f"storage error: {e}", kid=kid, **fields)
            raise _Refused(self._page(request, 503, "storage_unavailable")) from None
        if revoked is not None:
            self._audit(request, event, "Failure", f"revoked ({revoked})", kid=kid, **fields)
            raise _Refused(self._page(request, 410, "revoked"))
        if expired and not allow_expired:
            self._audit(request, event, "Failure", "expired token", kid=kid, **fields)
            raise _Refused(self._page(request, 410, "expired", action=f"{request.path}/refresh"))
        return claims, store, record, expired

    def _page(self, request: web.Request, status: int, kind: str, **context: Any) -> web.Response:
        """The agent's page for ``kind`` (templates/agent.html)."""
        return self.pages.render(request, "agent.html", status, kind=kind, **context)

    async def _agent(self, request: web.Request, event: str, record: records.LinkRecord, kid: str) -> Agent:
        """The signed-in agent, authorised for the record's customer."""
        fields = _record_fields(record)
        return_to = request.path if request.method == "GET" else request.path.removesuffix("/refresh")
        try:
            agent = await self.authenticator.identify(request, return_to)
        except SignInRequired as e:
            raise _Refused(e.response) from None
        except IdentityRefused as e:
            self._audit(request, event, "Failure", f"identity refused: {e}", kid=kid, **fields)
            raise _Refused(self._page(request, 403, "not_signed_in")) from None
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as e:
            # The identity provider is down or answers nonsense: nobody can sign in.
            self._audit(request, event, "Failure", f"sign-in provider unavailable: {type(e).__name__}", kid=kid,
                        **fields)
            raise _Refused(self._page(request, 503, "sign_in_unavailable")) from None
        return await self._authorised(request, event, record, kid, agent)

    async def _authorised(self, request: web.Request, event: str, record: records.LinkRecord, kid: str,
                          agent: Agent) -> Agent:
        """``agent``, when allowed to see the record's customer; else _Refused (audited)."""
        fields = _record_fields(record)
        decision = await self.authoriser.check(agent.id, record.customer_id)
        if not decision.allowed:
            self._audit(request, event, "Failure", f"denied: {decision.reason}", agent=agent, kid=kid, **fields)
            raise _Refused(self._page(request, 403, "denied", agent=agent.id, contact=self.contact))
        request["authz"] = decision.reason
        return agent

    async def get(self, request: web.Request) -> web.StreamResponse:
        """A click: sign in, authorise, then redirect or stream."""
        try:
            claims, store, record, _ = await self._checked(request, "click", allow_expired=False)
            agent = await self._agent(request, "click", record, claims.kid)
        except _Refused as r:
            return r.response
        fields = _record_fields(record)
        why = request["authz"]
        ttl = self.url_ttls.get(claims.store, DEFAULT_URL_TTL)
        try:
            url = await store.signed_url(record.key, record.filename, ttl)
        except StorageError as e:
            self._audit(request, "click", "Failure", f"storage error: {e}", agent=agent, kid=claims.kid, **fields)
            return self._page(request, 503, "storage_unavailable")
        if url is not None:
            self._audit(request, "click", "Success", f"redirected ({why}; URL valid {ttl}s)",
                        agent=agent, kid=claims.kid, **fields)
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
                self._audit(request, "click", "Failure", "object missing", agent=agent, kid=claims.kid, **fields)
                return self._page(request, 404, "not_found")
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
            self._audit(request, "click", "Failure", "client went away during the download", agent=agent,
                        kid=claims.kid, **fields)
            return response
        self._audit(request, "click", "Success", f"streamed ({why})", agent=agent, kid=claims.kid, **fields)
        return response

    async def refresh(self, request: web.Request) -> web.StreamResponse:
        """A fresh link (and token) for the same object, expired or not:
        HTML for the Refresh Link button, JSON for an agent desktop."""
        try:
            claims, store, record, expired = await self._checked(request, "refresh", allow_expired=True)
            agent = await self._agent(request, "refresh", record, claims.kid)
        except _Refused as r:
            if isinstance(r.response, web.HTTPFound):
                # A POST cannot be replayed through the provider; the agent
                # comes back to the link's page and presses the button again.
                r.response.set_status(303)
            return r.response
        url, token, expires = self._fresh(request, claims, record, agent)
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"url": url, "token": token, "expires": expires},
                                     headers={"Cache-Control": "no-store"})
        return self._page(request, 200, "refreshed", url=url, filename=display_name(record.filename), until=expires)

    def _fresh(self, request: web.Request, claims: Claims, record: records.LinkRecord, agent: Agent
               ) -> tuple[str, str, int]:
        """Sign a new token for the same object; audit it; (url, token, expires)."""
        expires = int(time.time()) + self.link_ttl
        token = self.keyring.sign(claims.store, claims.object_id, expires)
        self._audit(request, "refresh", "Success", f"refreshed ({request['authz']}; valid until {expires})",
                    agent=agent, kid=self.keyring.current, **_record_fields(record))
        return f"{self.base_url}/a/{token}", token, expires

    async def api_refresh(self, request: web.Request, agent_id: str, via: str, token: str) -> web.Response:
        """``POST /api/v1/links/refresh`` after its API key was checked: the
        agent is the one the calling system names; authorised as any other."""
        try:
            claims, _, record, _ = await self._checked(request, "refresh", allow_expired=True, token=token)
            agent = await self._authorised(request, "refresh", record, claims.kid, Agent(agent_id, via))
        except _Refused as r:
            return web.json_response({"error": r.response.reason, "status": r.response.status},
                                     status=r.response.status)
        url, token, expires = self._fresh(request, claims, record, agent)
        return web.json_response({"url": url, "token": token, "expires": expires},
                                 headers={"Cache-Control": "no-store"})

    async def landing(self, request: web.Request) -> web.StreamResponse:
        """``GET /p/<token>``: the one page for a message's files, each with
        its own download link (a fresh file token, audited when clicked).
        The same sign-in and authorisation as a click; the page view itself
        is one audit event."""
        token = request.match_info["token"]
        kid = key_id(token)
        try:
            claims = self.keyring.verify(token, purpose="page")
        except TokenExpired as e:
            self._audit(request, "page", "Failure", "expired token", kid=kid, TokenObjectId=e.claims.object_id)
            return self._page(request, 410, "page_expired")
        except TokenError as e:
            self._audit(request, "page", "Failure", f"invalid token: {e}", kid=kid, TokenObjectId=object_id(token))
            return self._page(request, 403, "invalid")
        store = self.stores.get(claims.store)
        try:
            if store is None:
                raise ObjectNotFound(claims.store)
            pg = await records.load_page(store, claims.object_id)
            files = [await self.cache.load(store, oid, fresh=True) for oid in pg.object_ids]
        except ObjectNotFound:
            self._audit(request, "page", "Failure", "no page record", kid=kid, TokenObjectId=claims.object_id)
            return self._page(request, 404, "not_found")
        except StorageError as e:
            self._audit(request, "page", "Failure", f"storage error: {e}", kid=kid)
            return self._page(request, 503, "storage_unavailable")
        fields: dict[str, Any] = dict(QueueId=pg.queue_id, CustomerId=pg.customer_id, InternetMessageId=pg.message_id,
                                      TargetFilePath=records.page_key(pg.page_id))
        try:
            live = [(f, await revocations.revoked_by(store, f)) for f in files]
        except StorageError as e:
            self._audit(request, "page", "Failure", f"storage error: {e}", kid=kid, **fields)
            return self._page(request, 503, "storage_unavailable")
        if all(why is not None for _, why in live):
            self._audit(request, "page", "Failure", "revoked (every file)", kid=kid, **fields)
            return self._page(request, 410, "revoked")
        try:
            agent = await self._agent(request, "page", files[0], claims.kid)
        except _Refused as r:
            return r.response
        rows = []
        for f, why in live:
            url = None if why is not None else \
                f"{self.base_url}/a/{self.keyring.sign(claims.store, f.object_id, claims.expires)}"
            rows.append({"name": display_name(f.filename), "size": f.size, "kind": f.content_type, "url": url})
        self._audit(request, "page", "Success", f"listed {len(files)} files ({request['authz']})", agent=agent,
                    kid=claims.kid, **fields)
        return self.pages.render(request, "landing.html", files=rows, message_id=pg.message_id)

    async def callback(self, request: web.Request) -> web.StreamResponse:
        """The OpenID Connect provider sends the agent back here."""
        if not isinstance(self.authenticator, Oidc):
            raise web.HTTPNotFound()
        try:
            agent, return_to, response = await self.authenticator.finish_sign_in(request)
        except IdentityRefused as e:
            self._audit(request, "sign-in", "Failure", str(e))
            return self._page(request, 403, "not_signed_in")
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as e:
            self._audit(request, "sign-in", "Failure", f"sign-in provider unavailable: {type(e).__name__}")
            return self._page(request, 503, "sign_in_unavailable")
        self._audit(request, "sign-in", "Success", "signed in", agent=agent)
        return response
