"""The HTTP listener: agent links, health."""
from __future__ import annotations

import asyncio
from typing import Mapping

from aiohttp import web

from gateway import logs, metrics
from gateway.http.links import LinkEndpoint
from gateway.links.tokens import Keyring
from gateway.spool import Spool
from gateway.storage.base import Storage


def build_app(keyring: Keyring, stores: dict[str, Storage], audit: logs.AuditLog, spool: Spool,
              url_ttls: Mapping[str, int]) -> web.Application:
    """The aiohttp application with every route the gateway serves.

    ``url_ttls`` is, per store name, how long a storage URL minted at a
    click lives (the backend's ``url_ttl``); stores without URLs of their
    own (the filesystem) need no entry."""
    app = web.Application()
    links = LinkEndpoint(keyring, stores, audit, url_ttls)
    app.router.add_get("/a/{token}", links.get)
    app.router.add_get("/healthz", _health)

    async def _metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, spool)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/metrics", _metrics)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def start(app: web.Application, host: str, port: int, reuse_port: bool = False) -> web.AppRunner:
    """Serve ``app`` on host:port; return the runner to clean up with."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    return runner
