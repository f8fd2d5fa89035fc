"""The HTTP listener: agent links, the sign-in callback, the API, health, metrics.

Plain HTTP on loopback for the embedded default; with ``http.tls_cert`` and
``http.tls_key`` it serves TLS 1.2+ only (gateway.http.tls) and sends HSTS.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from gateway import logs, metrics
from gateway.config import Config, read_secret
from gateway.http.api import LinkApi
from gateway.http.links import LinkEndpoint
from gateway.http.tls import TlsListener, server_context
from gateway.links import agents, authz
from gateway.links.tokens import Keyring
from gateway.spool import Spool
from gateway.storage.base import Storage

log = logs.get("http")


def build_links(cfg: Config, keyring: Keyring, stores: dict[str, Storage], audit: logs.AuditLog) -> LinkEndpoint:
    """The link endpoint with its sign-in and authorisation, secrets read now
    (so a missing key file stops start-up, not the first click)."""
    base = Path(cfg.base_dir)
    secrets: dict[str, str] = {}
    if cfg.agents.auth == "oidc":
        assert cfg.agents.oidc is not None and cfg.agents.session_key is not None
        secrets["client_secret"] = read_secret(cfg.agents.oidc.client_secret, base, "agents.oidc.client_secret")
        secrets["session_key"] = read_secret(cfg.agents.session_key, base, "agents.session_key", min_length=32)
    proxies = agents.Proxies(cfg.http.trusted_proxies)
    authenticator = agents.build(cfg.agents, proxies, cfg.http.base_url, secrets)
    callout = cfg.authorization.callout
    token = read_secret(callout.token, base, "authorization.callout.token") if callout and callout.token else None
    authoriser = authz.build(cfg.authorization, token)
    return LinkEndpoint(keyring, stores, audit, url_ttl=cfg.http.url_ttl, link_ttl=cfg.links.ttl,
                        base_url=cfg.http.base_url, authenticator=authenticator, authoriser=authoriser,
                        proxies=proxies, contact=cfg.authorization.contact)


def api_keys(cfg: Config) -> dict[str, str]:
    """API key id -> key, read from their files or variables."""
    return {k.id: read_secret(k, Path(cfg.base_dir), f"api.keys[{i}]", min_length=16)
            for i, k in enumerate(cfg.api.keys)}


def build_app(links: LinkEndpoint, spool: Spool, hsts_max_age: int, tls: bool,
              keys: dict[str, str] | None = None) -> web.Application:
    """The aiohttp application with every route the gateway serves."""
    app = web.Application(client_max_size=64 * 1024)
    api = LinkApi(links, keys or {})
    app.router.add_get("/a/{token}", links.get)
    app.router.add_post("/a/{token}/refresh", links.refresh)
    app.router.add_get("/p/{token}", links.landing)
    app.router.add_get(agents.CALLBACK_PATH, links.callback)
    app.router.add_post("/api/v1/links/refresh", api.refresh)
    app.router.add_post("/api/v1/links/revoke", api.revoke)
    app.router.add_get("/healthz", _health)
    app["audit"] = links.audit

    async def _hsts(request: web.Request, response: web.StreamResponse) -> None:
        # HSTS on HTTPS only (RFC 6797 section 7.2): ours, or a trusted
        # proxy's that says so in X-Forwarded-Proto.
        if tls or links.proxies.scheme(request) == "https":
            response.headers["Strict-Transport-Security"] = f"max-age={hsts_max_age}; includeSubDomains"
    app.on_response_prepare.append(_hsts)

    async def _close(app: web.Application) -> None:
        await links.authenticator.close()
        await links.authoriser.close()
    app.on_cleanup.append(_close)

    async def _metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, spool)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/metrics", _metrics)
    return app


async def _health(request: web.Request) -> web.Response:
    # Audit events lost by the network sinks: a number to alert on.
    return web.json_response({"status": "ok", "audit_dropped": request.app["audit"].dropped})


class Listener:
    """A running HTTP listener, plain or TLS; ``cleanup`` stops it."""

    def __init__(self, runner: web.AppRunner, tls: TlsListener | None) -> None:
        self.runner = runner
        self.tls = tls

    async def cleanup(self) -> None:
        if self.tls is not None:
            await self.tls.stop()
        await self.runner.cleanup()


async def start(cfg: Config, links: LinkEndpoint, audit: logs.AuditLog, keys: dict[str, str], spool: Spool,
                reuse_port: bool = False) -> Listener:
    """Serve the app on ``http.listen``; TLS when a certificate is configured."""
    host, port = cfg.http.address
    tls = cfg.http.tls_cert is not None
    app = build_app(links, spool, cfg.http.hsts_max_age, tls, keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if not tls:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        return Listener(runner, None)
    ctx = server_context(str(cfg.path(cfg.http.tls_cert or "")), str(cfg.path(cfg.http.tls_key or "")))

    def refused(address: str, version: str) -> None:
        audit.event("LinkAccess", "Failure", EventOriginalType="tls", SrcIpAddr=address,
                    EventResultDetails=f"{version} client hello refused (minimum TLS 1.2)")
        log.info("old TLS refused", src=address, version=version)

    listener = TlsListener(runner.server, ctx, refused)  # type: ignore[arg-type]
    await listener.start(host, port, reuse_port)
    return Listener(runner, listener)


