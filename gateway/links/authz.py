"""Authorisation: may this agent see this customer's files?

Asked after the agent is known and before any storage URL is minted.  Three
policies, one chosen in ``[authorization]``: a static map in the config, a
callout to the contact centre's own service (with a timeout and a short
cache; anything but a clear allow is a deny), or allow-all, which must be
chosen explicitly (or follows from ``agents.auth = "none"``) and is named in
every audit event it lets through.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from gateway import customers, logs
from gateway.config import AuthorizationSettings, CalloutSettings

log = logs.get("authz")


@dataclass(frozen=True)
class Decision:
    """Allow or deny, and why (for the audit event)."""

    allowed: bool
    reason: str


class Authoriser(Protocol):
    """Decides whether ``agent_id`` may see files of ``customer_id``."""

    async def check(self, agent_id: str, customer_id: str) -> Decision: ...

    async def close(self) -> None: ...


class AllowAll:
    """Every agent sees every customer; chosen explicitly, logged as such."""

    async def check(self, agent_id: str, customer_id: str) -> Decision:
        return Decision(True, "allow-all")

    async def close(self) -> None:
        pass


class StaticMap:
    """Agent id -> customer ids, from the config; "*" means every customer.
    Ids are compared as ``match`` says (``[authorization]
    customer_id_match``): the map can be written with the CRM's ids."""

    def __init__(self, agents: dict[str, list[str]], match: customers.Match = "case-insensitive") -> None:
        self._match = match
        self._agents = {a: frozenset(c if c == "*" else customers.comparable(c, match) for c in ids)
                        for a, ids in agents.items()}

    async def check(self, agent_id: str, customer_id: str) -> Decision:
        allowed = self._agents.get(agent_id, frozenset())
        if "*" in allowed or customers.comparable(customer_id, self._match) in allowed:
            return Decision(True, "static map")
        return Decision(False, "static map: customer not assigned to agent")

    async def close(self) -> None:
        pass


class Callout:
    """POST {"agent_id", "customer_id"} to the contact centre's service and
    read {"allow": true|false}; a timeout, an error or any other answer is a
    deny (fail closed: this door guards HIPAA and PCI data).  The customer
    id is sent as given; the service compares it its own way."""

    def __init__(self, settings: CalloutSettings, token: str | None, cache_size: int = 10000) -> None:
        self.url = settings.url
        self.timeout = settings.timeout
        self.cache_ttl = settings.cache_ttl
        self._token = token
        self._cache: OrderedDict[tuple[str, str], tuple[float, Decision]] = OrderedDict()
        self._cache_size = cache_size
        self._session: aiohttp.ClientSession | None = None

    async def check(self, agent_id: str, customer_id: str) -> Decision:
        k = (agent_id, customer_id)
        hit = self._cache.get(k)
        if hit is not None and hit[0] > time.monotonic():
            return Decision(hit[1].allowed, hit[1].reason + " (cached)")
        decision = await self._ask(agent_id, customer_id)
        if not decision.reason.startswith("callout error"):
            # Errors are not cached: the next click asks again.
            self._cache[k] = (time.monotonic() + self.cache_ttl, decision)
            self._cache.move_to_end(k)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return decision

    async def _ask(self, agent_id: str, customer_id: str) -> Decision:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            async with self._session.post(self.url, json={"agent_id": agent_id, "customer_id": customer_id},
                                          headers=headers) as resp:
                if resp.status != 200:
                    return Decision(False, f"callout error: HTTP {resp.status}")
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            log.warning("authorisation callout failed; denying", url=self.url, error=str(e) or type(e).__name__)
            return Decision(False, f"callout error: {type(e).__name__}")
        allow = body.get("allow") if isinstance(body, dict) else None
        if allow is True:
            return Decision(True, "callout")
        if allow is False:
            return Decision(False, "callout: denied")
        return Decision(False, "callout error: no boolean \"allow\" in the answer")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def build(settings: AuthorizationSettings, token: str | None) -> Authoriser:
    """The authoriser ``[authorization]`` asks for (allow-all when no mode is
    set, which validation allows only with ``agents.auth = "none"``)."""
    if settings.mode == "static":
        return StaticMap(settings.agents, settings.customer_id_match)
    if settings.mode == "callout":
        assert settings.callout is not None
        return Callout(settings.callout, token)
    return AllowAll()
