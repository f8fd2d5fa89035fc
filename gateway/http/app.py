"""The HTTP listener: agent links, the upload API, the upload page, health."""
from __future__ import annotations

import asyncio
from typing import Mapping

from aiohttp import web

from gateway import logs, metrics
from gateway.http import openapi
from gateway.http.api import UploadApi
from gateway.http.links import LinkEndpoint
from gateway.http.upload_page import UploadPage
from gateway.links.tokens import Keyring
from gateway.spool import Spool
from gateway.storage.base import Storage


def build_app(keyring: Keyring, stores: dict[str, Storage], audit: logs.AuditLog,
              spool: Spool, url_ttls: Mapping[str, int], api: UploadApi | None = None,
              upload_page: UploadPage | None = None) -> web.Application:
    """The aiohttp application with every route the gateway serves.

    ``url_ttls`` is, per store name, how long a storage URL minted at a
    click lives (the backend's ``url_ttl``); stores without URLs of their
    own (the filesystem) need no entry."""
    # No body-size cap here: uploads stream and the API enforces its own limit.
    app = web.Application(client_max_size=1 << 20)
    links = LinkEndpoint(keyring, stores, audit, url_ttls)
    app.router.add_get("/a/{token}", links.get)
    app.router.add_get("/healthz", _health)

    async def _metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, spool)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/metrics", _metrics)
    if api is not None:
        app.router.add_post("/api/v1/upload/attachment", api.upload, expect_handler=api.expect)
        app.router.add_get("/api/v1/jobs/{job_id}", api.job)
        app.router.add_get("/api/v1/openapi.json", _openapi)
    if upload_page is not None:
        app.router.add_get("/upload/{token}", upload_page.show)
        app.router.add_post("/upload/{token}/files", upload_page.create)
        app.router.add_get("/upload/{token}/files/{uid}", upload_page.status)
        app.router.add_put("/upload/{token}/files/{uid}/chunks/{n}", upload_page.put_chunk)
        app.router.add_post("/upload/{token}/files/{uid}/chunks/{n}/url", upload_page.part_url)
        app.router.add_post("/upload/{token}/files/{uid}/complete", upload_page.complete)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(text=openapi.text(), content_type="application/json")


async def start(app: web.Application, host: str, port: int, reuse_port: bool = False) -> web.AppRunner:
    """Serve ``app`` on host:port; return the runner to clean up with."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    return runner
