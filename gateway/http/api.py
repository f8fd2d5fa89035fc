"""``/api/v1/links/...``: refresh and revoke for a CRM or an agent desktop.

Callers authenticate with an API key (``Authorization: Bearer KEY``; keys
from ``[api].keys``, compared in constant time) and, for a refresh, name
the agent they act for; that agent is authorised for the customer exactly
as a click would be.  With no keys configured these routes answer 404.
Every call, allowed or refused, is an audit event.
"""
from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from gateway.http.links import LinkEndpoint
from gateway.links import revocations

_REVOKE_FIELDS = {"object": "TargetFilePath", "customer": "CustomerId", "message_id": "InternetMessageId"}


class LinkApi:
    """The API routes, sharing the link endpoint's checks and audit."""

    def __init__(self, links: LinkEndpoint, keys: dict[str, str]) -> None:
        self.links = links
        self._keys = keys

    def _caller(self, request: web.Request, event: str) -> str:
        """The id of the API key presented; raise 401 (audited) otherwise."""
        if not self._keys:
            raise web.HTTPNotFound()
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        found = None
        for key_id, secret in self._keys.items():
            # Compare with every key (no early exit), in constant time.
            if hmac.compare_digest(presented.encode(), secret.encode()):
                found = key_id
        if found is None:
            self.links._audit(request, event, "Failure", "API key refused")
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"})
        return found

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return body

    async def refresh(self, request: web.Request) -> web.Response:
        """{"token", "agent_id"} -> {"url", "token", "expires"}."""
        key_id = self._caller(request, "refresh")
        body = await self._json(request)
        token, agent_id = body.get("token"), body.get("agent_id")
        if not isinstance(token, str) or not isinstance(agent_id, str) or not agent_id.strip():
            raise web.HTTPBadRequest(text='expected {"token": "...", "agent_id": "..."}')
        return await self.links.api_refresh(request, agent_id.strip()[:256], f"api:{key_id}", token)

    async def revoke(self, request: web.Request) -> web.Response:
        """One of {"object"|"customer"|"message_id": value}, optional "reason":
        a revocation marker in every store, as ``links revoke`` writes."""
        key_id = self._caller(request, "revoke")
        body = await self._json(request)
        given = [(k, v) for k, v in body.items() if k in _REVOKE_FIELDS and isinstance(v, str) and v.strip()]
        if len(given) != 1:
            raise web.HTTPBadRequest(text='expected exactly one of "object", "customer", "message_id"')
        field, value = given[0]
        kind = "message" if field == "message_id" else field
        reason = str(body.get("reason", ""))[:500]
        out = []
        for name, store in self.links.stores.items():
            marker = await revocations.revoke(store, kind, value, reason, f"api:{key_id}")  # type: ignore[arg-type]
            self.links.audit.event("LinkRevoked", "Success", EventOriginalType="revoke",
                                   ActorUsername=f"api:{key_id}", SrcIpAddr=self.links.proxies.client_address(request),
                                   HttpUserAgent=request.headers.get("User-Agent"),
                                   EventResultDetails=f"{kind} revoked in store {name}" + (f": {reason}" if reason else ""),
                                   **{_REVOKE_FIELDS[field]: revocations.normalise(kind, value)})  # type: ignore[arg-type]
            out.append({"store": name, "revoked": kind, "marker": marker})
        return web.json_response({"revoked": out})
