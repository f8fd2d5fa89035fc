"""Agent sign-in: who is clicking a link.

Three modes, chosen by ``agents.auth``:

- ``none``: nobody is asked; the agent is "anonymous".  Config validation
  allows it only while the HTTP listener is on loopback.
- ``trusted-header``: a reverse proxy (oauth2-proxy and the like) signs the
  agent in and names them in a header; the header is believed only from the
  addresses in ``http.trusted_proxies`` and refused (and audited) from
  anyone else.
- ``oidc``: the gateway itself is an OpenID Connect relying party
  (authorisation code flow with PKCE and a client secret); the agent is
  the ID token's ``agents.oidc.agent_claim``, and an ``email`` the token
  says is not verified never names one.  A signed-in agent
  carries a session cookie the gateway signs with HMAC-SHA256 (HttpOnly,
  Secure, SameSite=Lax: Lax, because a click in a mail client is a
  cross-site top-level navigation that must carry it, while cross-site POSTs
  do not).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import jwt
from aiohttp import web

from gateway import ipnets, logs
from gateway.config import AgentSettings, OidcSettings

log = logs.get("agents")

SESSION_COOKIE = "agw_session"
LOGIN_COOKIE = "agw_login"
CALLBACK_PATH = "/auth/callback"
_LOGIN_TTL = 600  # seconds an agent has to finish signing in at the provider


@dataclass(frozen=True)
class Agent:
    """A known agent: the id audited and authorised, and how it was learnt."""

    id: str
    method: str


class SignInRequired(Exception):
    """The agent must sign in first; ``response`` starts that (a redirect)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("sign-in required")
        self.response = response


class IdentityRefused(Exception):
    """A claimed identity that is not believed (audited, answered 403)."""


class Authenticator(Protocol):
    """Finds the agent behind a request."""

    async def identify(self, request: web.Request, return_to: str) -> Agent: ...

    async def close(self) -> None: ...


class Proxies:
    """The reverse proxies whose forwarding headers are believed."""

    def __init__(self, networks: list[str]) -> None:
        self._nets = [ipnets.network(n) for n in networks]

    def trusted(self, address: str | None) -> bool:
        """Whether ``address`` (a peer, or a hop of X-Forwarded-For) is one
        of the proxies; an IPv4-mapped address is the IPv4 one it carries."""
        if not address:
            return False
        try:
            ip = ipnets.address(address)
        except ValueError:
            return False
        return any(ip in n for n in self._nets)

    def client_address(self, request: web.Request) -> str | None:
        """The client's address: X-Forwarded-For's nearest untrusted hop when
        the peer is a trusted proxy, else the peer itself."""
        peer = request.remote
        if not self.trusted(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop
        return hops[0] if hops else peer

    def scheme(self, request: web.Request) -> str:
        """https or http, believing X-Forwarded-Proto only from a trusted proxy."""
        if self.trusted(request.remote):
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                return proto
        return request.scheme


class NoAuth:
    """``none``: every click is by "anonymous" (loopback only)."""

    async def identify(self, request: web.Request, return_to: str) -> Agent:
        return Agent("anonymous", "none")

    async def close(self) -> None:
        pass


class TrustedHeader:
    """``trusted-header``: the identity a trusted reverse proxy sets."""

    def __init__(self, header: str, proxies: Proxies) -> None:
        self.header = header
        self.proxies = proxies

    async def identify(self, request: web.Request, return_to: str) -> Agent:
        value = request.headers.get(self.header, "").strip()
        if not self.proxies.trusted(request.remote):
            if value:
                raise IdentityRefused(f"{self.header} header from untrusted address {request.remote}")
            raise IdentityRefused(f"request did not come through a trusted proxy ({request.remote})")
        if not value:
            raise IdentityRefused(f"trusted proxy sent no {self.header} header")
        count = len(request.headers.getall(self.header, []))
        if count > 1:
            # A proxy that adds its header rather than replacing the client's
            # passes both, the client's first: which one it vouches for
            # cannot be told, so neither is believed.
            raise IdentityRefused(f"{self.header} header sent {count} times")
        return Agent(value[:256], "trusted-header")

    async def close(self) -> None:
        pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SignedCookie:
    """A small JSON payload with an expiry, HMAC-signed; the value of the
    session and login cookies (nothing secret inside, but nothing forgeable)."""

    def __init__(self, key: bytes, purpose: str) -> None:
        # One key, separate purposes: a login cookie is never a session.
        self._key = hmac.new(key, purpose.encode(), hashlib.sha256).digest()

    def dump(self, payload: dict[str, Any], ttl: int) -> str:
        body = _b64(json.dumps({**payload, "exp": int(time.time()) + ttl}, separators=(",", ":")).encode())
        return body + "." + _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def load(self, value: str | None) -> dict[str, Any] | None:
        if not value or value.count(".") != 1:
            return None
        body, sig = value.split(".")
        expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, sig):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("exp", 0) <= time.time():
            return None
        return payload


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, secure=True, samesite="Lax")


class Oidc:
    """``oidc``: authorisation code flow with PKCE against any standard provider."""

    def __init__(self, settings: OidcSettings, client_secret: str, session_key: str, session_ttl: int,
                 base_url: str) -> None:
        self.settings = settings
        self._client_secret = client_secret
        self.session = SignedCookie(session_key.encode(), "session")
        self.login = SignedCookie(session_key.encode(), "login")
        self.session_ttl = session_ttl
        self.redirect_uri = base_url + CALLBACK_PATH
        self._meta: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self._http

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, fetched once."""
        async with self._lock:
            if self._meta is None:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                async with self._client().get(url) as resp:
                    resp.raise_for_status()
                    meta = await resp.json(content_type=None)
                if meta.get("issuer") != self.settings.issuer:
                    raise ValueError(f"discovery issuer {meta.get('issuer')!r} is not {self.settings.issuer!r}")
                self._meta = meta
            return self._meta

    async def _keys(self, refresh: bool) -> jwt.PyJWKSet:
        if self._jwks is None or refresh:
            meta = await self.metadata()
            async with self._client().get(meta["jwks_uri"]) as resp:
                resp.raise_for_status()
                self._jwks = jwt.PyJWKSet.from_dict(await resp.json(content_type=None))
        return self._jwks

    async def identify(self, request: web.Request, return_to: str) -> Agent:
        payload = self.session.load(request.cookies.get(SESSION_COOKIE))
        if payload is not None and isinstance(payload.get("agent"), str):
            return Agent(payload["agent"], "oidc")
        raise SignInRequired(await self.start_sign_in(return_to))

    async def start_sign_in(self, return_to: str) -> web.StreamResponse:
        """Redirect to the provider, keeping state, nonce and the PKCE
        verifier in a signed login cookie (no server-side state: any node
        can finish the sign-in another started)."""
        meta = await self.metadata()
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        query = urlencode({"response_type": "code", "client_id": self.settings.client_id,
                           "redirect_uri": self.redirect_uri, "scope": self.settings.scopes, "state": state,
                           "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"})
        response = web.HTTPFound(meta["authorization_endpoint"] + "?" + query,
                                 headers={"Cache-Control": "no-store"})
        set_cookie(response, LOGIN_COOKIE, self.login.dump({"s": state, "n": nonce, "v": verifier, "r": return_to},
                                                           _LOGIN_TTL), _LOGIN_TTL, path=CALLBACK_PATH)
        return response

    async def finish_sign_in(self, request: web.Request) -> tuple[Agent, str, web.StreamResponse]:
        """The provider sent the agent back: check state, swap the code for
        tokens, check the ID token; return the agent, where they were going
        and the redirect that sets the session cookie.  Raise IdentityRefused."""
        login = self.login.load(request.cookies.get(LOGIN_COOKIE))
        if login is None:
            raise IdentityRefused("sign-in callback without a valid login cookie")
        if "error" in request.query:
            raise IdentityRefused(f"provider refused sign-in: {request.query.get('error')}")
        if not hmac.compare_digest(request.query.get("state", ""), login["s"]):
            raise IdentityRefused("sign-in callback with a wrong state")
        code = request.query.get("code")
        if not code:
            raise IdentityRefused("sign-in callback without a code")
        meta = await self.metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": login["v"]}
        auth = aiohttp.BasicAuth(self.settings.client_id, self._client_secret)
        async with self._client().post(meta["token_endpoint"], data=form, auth=auth) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200 or "id_token" not in body:
                raise IdentityRefused(f"token endpoint answered {resp.status}: {str(body.get('error'))[:100]}")
        claims = await self._verify_id_token(body["id_token"], login["n"])
        agent_id = claims.get(self.settings.agent_claim)
        if not isinstance(agent_id, str) or not agent_id:
            raise IdentityRefused(f"ID token has no {self.settings.agent_claim!r} claim")
        if self.settings.agent_claim == "email" and claims.get("email_verified") in (False, "false"):
            # An address the account's owner typed and never proved (providers
            # that let users set their own): anyone could name themselves as
            # an agent.  Cognito writes the flag as a string.
            # The address after the colon: the metric's label stops there.
            raise IdentityRefused(f"ID token's email is not verified (email_verified false): {agent_id!r}")
        r = login.get("r")
        return_to = r if isinstance(r, str) and r.startswith(("/a/", "/p/")) else "/"
        response = web.HTTPFound(return_to, headers={"Cache-Control": "no-store"})
        set_cookie(response, SESSION_COOKIE, self.session.dump({"agent": agent_id}, self.session_ttl),
                   self.session_ttl)
        response.del_cookie(LOGIN_COOKIE, path=CALLBACK_PATH)
        return Agent(agent_id, "oidc"), return_to, response

    async def _verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            keys = await self._keys(refresh=False)
            kid = header.get("kid")
            if kid not in {k.key_id for k in keys.keys}:
                keys = await self._keys(refresh=True)  # the provider rotated its keys
            # No kid finds the set's key without one, if any (PyJWKSet compares key_id == kid).
            key = keys[kid]  # type: ignore[index]
            alg = header.get("alg")
            if alg in (None, "none") or alg.startswith("HS"):
                raise IdentityRefused(f"ID token signed with {alg!r}")
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=self.settings.client_id,
                                issuer=self.settings.issuer, leeway=30,
                                options={"require": ["exp", "iat", "sub"]})
        except (jwt.PyJWTError, KeyError) as e:
            raise IdentityRefused(f"ID token not valid: {e}") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise IdentityRefused("ID token nonce does not match")
        return claims

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def build(settings: AgentSettings, proxies: Proxies, base_url: str, secrets_: dict[str, str]) -> Authenticator:
    """The authenticator ``agents.auth`` names; ``secrets_`` holds the
    session key and client secret already read."""
    if settings.auth == "trusted-header":
        return TrustedHeader(settings.header, proxies)
    if settings.auth == "oidc":
        assert settings.oidc is not None
        return Oidc(settings.oidc, secrets_["client_secret"], secrets_["session_key"], settings.session_ttl,
                    base_url)
    return NoAuth()
