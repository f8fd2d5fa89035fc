"""``/api/v1/links/...``: refresh and revoke for a CRM or an agent desktop.

Callers authenticate with an API key from ``[api].keys``, checked as for
every ``/api/v1`` route (gateway.http.apikeys), and, for a refresh, name the
agent they act for; that agent is authorised for the customer exactly as a
click would be.  Every call, allowed or refused, is an audit event, with the
key named ``api-key:ID`` as in the upload API's events.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.http.apikeys import ApiKeys, error
from gateway.http.links import LinkEndpoint
from gateway.links import revocations
from gateway.storage.base import StorageError

_REVOKE_FIELDS = {"object": "TargetFilePath", "customer": "CustomerId", "message_id": "InternetMessageId"}


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _text(body: dict[str, Any], name: str) -> str | None:
    """``body[name]`` when present: a string with something in it, else 400."""
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, str) or not value.strip():
        raise _Refused(error(400, f'"{name}" must be a non-empty string'))
    return value


class LinkApi:
    """The links API routes, sharing the link endpoint's checks and audit."""

    def __init__(self, links: LinkEndpoint, keys: ApiKeys) -> None:
        self.links = links
        self.keys = keys

    def _caller(self, request: web.Request, event: str) -> str:
        """The id of the API key presented; raise _Refused (audited) otherwise."""
        who = self.keys.caller(request)
        if isinstance(who, web.Response):
            self.links._audit(request, event, "Failure", "API key refused")
            raise _Refused(who)
        return who

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _Refused(error(400, "expected a JSON object"))
        return body

    async def refresh(self, request: web.Request) -> web.Response:
        """{"token", "agent_id"} -> {"url", "token", "expires"}."""
        try:
            key_id = self._caller(request, "refresh")
            body = await self._json(request)
            token, agent_id = _text(body, "token"), _text(body, "agent_id")
            if token is None or agent_id is None:
                raise _Refused(error(400, 'expected {"token": "...", "agent_id": "..."}'))
        except _Refused as r:
            return r.response
        return await self.links.api_refresh(request, agent_id.strip()[:256], f"api-key:{key_id}", token)

    async def revoke(self, request: web.Request) -> web.Response:
        """One of {"object"|"customer"|"message_id": value}, optional "reason":
        a revocation marker in every store, as ``links revoke`` writes."""
        try:
            key_id = self._caller(request, "revoke")
            body = await self._json(request)
            given = [(k, v) for k in _REVOKE_FIELDS if (v := _text(body, k)) is not None]
            reason = body.get("reason", "")
            if len(given) != 1 or not isinstance(reason, str):
                raise _Refused(error(400, 'expected exactly one of "object", "customer", "message_id" '
                                          '(and an optional string "reason")'))
        except _Refused as r:
            return r.response
        field, value = given[0]
        kind = "message" if field == "message_id" else field
        reason = reason[:500]
        actor = f"api-key:{key_id}"
        out = []
        audited = dict(EventOriginalType="revoke", ActorUsername=actor,
                       SrcIpAddr=self.links.proxies.client_address(request),
                       HttpUserAgent=request.headers.get("User-Agent"),
                       **{_REVOKE_FIELDS[field]: revocations.normalise(kind, value)})  # type: ignore[arg-type]
        for name, store in self.links.stores.items():
            try:
                marker = await revocations.revoke(store, kind, value, reason, actor)  # type: ignore[arg-type]
            except StorageError as e:
                self.links.audit.event("LinkRevoked", "Failure", EventResultDetails=f"store {name}: {e}", **audited)
                # Markers are named by what they revoke: trying again is harmless.
                return error(503, f"Storage {name} is unavailable; try again", **{"Retry-After": "30"})
            self.links.audit.event("LinkRevoked", "Success", **audited, EventResultDetails=(
                f"{kind} revoked in store {name}" + (f": {reason}" if reason else "")))
            out.append({"store": name, "revoked": kind, "marker": marker})
        return web.json_response({"revoked": out}, headers={"Cache-Control": "no-store"})
