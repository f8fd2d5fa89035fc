"""The HTTP listener: agent links, the sign-in callback, the API (uploads,
jobs, link refresh and revoke), the customer upload page, health, metrics.

Plain HTTP on loopback for the embedded default; with ``http.tls_cert`` and
``http.tls_key`` it serves TLS 1.2+ only (gateway.http.tls) and sends HSTS.

``/metrics`` and the OpenAPI document are for administrators and API
clients, not agents: on the agents' listener they answer only as
``metrics.on_http`` says (by default to clients on this machine), and
``metrics.listen`` gives them a listener of their own (``build_admin_app``).
Every request is written to the access log (gateway.http.health).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import logs, metrics
from gateway.config import Config, read_secret
from gateway.http import openapi
from gateway.http.admission import Admission, AdmittingRunner
from gateway.http.api import UploadApi
from gateway.http.apikeys import ApiKeys
from gateway.http.health import AccessLogger, Health, admin_guard, echo_request_id
from gateway.http.links import LinkEndpoint
from gateway.http.links_api import LinkApi
from gateway.http.pages import Pages
from gateway.http.tls import TlsListener, server_context
from gateway.http.upload_page import UploadPage
from gateway.links import agents, authz
from gateway.links.tokens import Keyring
from gateway.spool import Spool
from gateway.storage.base import Storage

log = logs.get("http")


def url_ttls(cfg: Config) -> dict[str, int]:
    """Per store, how long a storage URL minted at a click lives (the
    backend's ``url_ttl``); stores without URLs (the filesystem) have none."""
    return {name: s.url_ttl for name, s in cfg.storage.items() if hasattr(s, "url_ttl")}


@dataclass
class Access:
    """Who an agent is and what they may see: sign-in, authorisation and the
    proxies whose forwarding headers are believed."""

    authenticator: agents.Authenticator
    authoriser: authz.Authoriser
    proxies: agents.Proxies


def build_access(cfg: Config) -> Access:
    """Sign-in and authorisation from the config, secrets read now (so a
    missing one stops start-up, or refuses a reload, not the first click)."""
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
    return Access(authenticator, authz.build(cfg.authorization, token), proxies)


def _link_settings(cfg: Config, access: Access) -> dict[str, Any]:
    """What the link endpoint takes from a config (LinkEndpoint.configure)."""
    return {"url_ttls": url_ttls(cfg), "link_ttl": cfg.links.ttl, "base_url": cfg.http.base_url,
            "authenticator": access.authenticator, "authoriser": access.authoriser, "proxies": access.proxies,
            "contact": cfg.authorization.contact}


def build_links(cfg: Config, keyring: Keyring, stores: dict[str, Storage], audit: logs.AuditLog) -> LinkEndpoint:
    """The link endpoint with its sign-in and authorisation."""
    return LinkEndpoint(keyring, stores, audit, pages=Pages(cfg), **_link_settings(cfg, build_access(cfg)))


# Requests in flight when a reload swaps sign-in and authorisation may still
# be using the old ones (an identity provider or callout round trip): their
# HTTP clients are closed this much later.
RETIRE_AFTER = 120.0


def reconfigure_links(links: LinkEndpoint, cfg: Config, access: Access) -> None:
    """SIGHUP: the reloaded config's sign-in, authorisation, proxies and
    lifetimes for the next click (``access`` from ``build_access``)."""
    old = (links.authenticator, links.authoriser)
    links.configure(**_link_settings(cfg, access))
    links.pages.configure(cfg)
    loop = asyncio.get_running_loop()
    loop.call_later(RETIRE_AFTER, lambda: [loop.create_task(o.close()) for o in old])


def build_app(cfg: Config, links: LinkEndpoint, spool: Spool, keys: ApiKeys, api: UploadApi | None = None,
              upload_page: UploadPage | None = None, health: Health | None = None,
              settings: Callable[[], Config] | None = None) -> web.Application:
    """The aiohttp application with every route the gateway serves;
    ``settings`` gives the config in force (it changes on SIGHUP)."""
    # No body-size cap here: uploads stream and the API enforces its own limit.
    app = web.Application(client_max_size=1 << 20)
    current = settings or (lambda: cfg)
    tls = cfg.http.tls_cert is not None
    hsts_max_age = cfg.http.hsts_max_age
    links_api = LinkApi(links, keys)
    health = health or Health(current, None, {}, dict)
    app.router.add_get("/a/{token}", links.get)
    app.router.add_post("/a/{token}/refresh", links.refresh)
    app.router.add_get("/p/{token}", links.landing)
    app.router.add_get(agents.CALLBACK_PATH, links.callback)
    app.router.add_post("/api/v1/links/refresh", links_api.refresh)
    app.router.add_post("/api/v1/links/revoke", links_api.revoke)
    app.router.add_get("/healthz", health.live)
    app.router.add_get("/readyz", health.ready)
    # The pages' styles, script and logo: served here, so no page loads
    # anything from elsewhere (their CSP says 'self').
    app.router.add_get("/assets/pages.css", links.pages.style)
    app.router.add_get("/assets/upload.js", links.pages.upload_script)
    app.router.add_get("/assets/logo", links.pages.logo_file)
    app["audit"] = links.audit
    # The client an access log line names: behind a trusted proxy, the one
    # it forwards for.
    app["client_address"] = lambda request: links.proxies.client_address(request)
    app.on_response_prepare.append(echo_request_id)
    guard = admin_guard(lambda: current().metrics.on_http, keys.caller)

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

    metrics_handler = _metrics(spool)

    async def _guarded_metrics(request: web.Request) -> web.Response:
        return guard(request) or await metrics_handler(request)

    async def _guarded_openapi(request: web.Request) -> web.Response:
        return guard(request) or await _openapi(request)

    app.router.add_get("/metrics", _guarded_metrics)
    if api is not None:
        app.router.add_post("/api/v1/upload/attachment", api.upload, expect_handler=api.expect)
        app.router.add_get("/api/v1/jobs/{job_id}", api.job)
        app.router.add_get("/api/v1/openapi.json", _guarded_openapi)
    if upload_page is not None:
        app.router.add_get("/upload/{token}", upload_page.show)
        app.router.add_post("/upload/{token}/files", upload_page.create)
        app.router.add_get("/upload/{token}/files/{uid}", upload_page.status)
        app.router.add_put("/upload/{token}/files/{uid}/chunks/{n}", upload_page.put_chunk)
        app.router.add_post("/upload/{token}/files/{uid}/chunks/{n}/url", upload_page.part_url)
        app.router.add_post("/upload/{token}/files/{uid}/complete", upload_page.complete)
    return app


def _metrics(spool: Spool) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, spool)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
    return handler


def build_admin_app(spool: Spool, health: Health, audit: logs.AuditLog) -> web.Application:
    """The ``metrics.listen`` listener's application: /metrics, /healthz,
    /readyz and the OpenAPI document, for administrators and monitoring."""
    app = web.Application()
    app["audit"] = audit
    app.on_response_prepare.append(echo_request_id)
    app.router.add_get("/metrics", _metrics(spool))
    app.router.add_get("/healthz", health.live)
    app.router.add_get("/readyz", health.ready)
    app.router.add_get("/api/v1/openapi.json", _openapi)
    return app


async def start_admin(cfg: Config, app: web.Application, reuse_port: bool = False) -> web.AppRunner:
    """Serve ``app`` on ``metrics.listen`` (plain HTTP: bind it to a
    monitoring network or loopback)."""
    host, port = cfg.metrics.address
    runner = _runner(cfg, app)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    return runner


def _runner(cfg: Config, app: web.Application) -> web.AppRunner:
    # Bounded connections, and aiohttp's keep-alive timer (armed when a
    # connection is made and after each answer, not moved by bytes that
    # trickle in) as the bound on a request's arrival.
    admission = Admission(cfg.http.max_connections, cfg.http.max_connections_per_client,
                          agents.Proxies(cfg.http.trusted_proxies))
    if not cfg.http.access_log:
        return AdmittingRunner(app, admission, access_log=None, keepalive_timeout=cfg.http.idle_timeout)
    # aiohttp wants a logger to call the access logger at all; ours writes
    # through structlog and ignores it.
    return AdmittingRunner(app, admission, access_log_class=AccessLogger,
                           access_log=logging.getLogger("gateway.access"), keepalive_timeout=cfg.http.idle_timeout)


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(text=openapi.text(), content_type="application/json")


class Listener:
    """A running HTTP listener, plain or TLS; ``cleanup`` stops it."""

    def __init__(self, runner: web.AppRunner, tls: TlsListener | None) -> None:
        self.runner = runner
        self.tls = tls

    async def cleanup(self) -> None:
        if self.tls is not None:
            await self.tls.stop()
        await self.runner.cleanup()


async def start(cfg: Config, app: web.Application, audit: logs.AuditLog, reuse_port: bool = False) -> Listener:
    """Serve ``app`` on ``http.listen``; TLS when a certificate is configured."""
    host, port = cfg.http.address
    tls = cfg.http.tls_cert is not None
    runner = _runner(cfg, app)
    await runner.setup()
    if not tls:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        return Listener(runner, None)
    ctx = server_context(str(cfg.path(cfg.http.tls_cert or "")), str(cfg.path(cfg.http.tls_key or "")))

    def refused(address: str, version: str) -> None:
        audit.event("LinkAccess", "Failure", EventOriginalType="tls", SrcIpAddr=address,
                    EventResultDetails=f"{version} client hello refused (minimum TLS 1.2)")
        log.info("old TLS refused", client=address, version=version)

    listener = TlsListener(runner.server, ctx, refused, cfg.http.max_connections)  # type: ignore[arg-type]
    await listener.start(host, port, reuse_port)
    return Listener(runner, listener)


