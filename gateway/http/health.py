"""Health, readiness, the HTTP access log, and who may read the metrics.

``/healthz`` is liveness: it answers when the process's event loop turns
(it runs on it), with how late the loop's last tick was.  ``/readyz`` is
readiness: the spool takes a probe file and has space above
``gateway.spool_min_free``, every store answers a cheap stat, and the
process's listeners are up; otherwise 503 with the reasons, for a load
balancer to stop sending traffic and an administrator to read.

The access log is one JSON line per request on the operational log
(component ``access``): method, path with the tokens of links and upload
invitations replaced by ``…``, status, bytes, duration, the request id
(the caller's ``X-Request-Id`` when it is sensible, else a new one, echoed
in the response) and the client.  The query string is never logged: the
sign-in callback carries an authorization code there.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import stat
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway import logs
from gateway.config import Config
from gateway.spool import Spool, SpoolError
from gateway.storage.base import Storage

log = logs.get("http")
access = logs.get("access")

# Each readiness check gets this long before it counts as failed.
CHECK_SECONDS = 5.0
# The probe's name in the spool's tmp/ (names with a dot are never messages).
PROBE = ".readyz-probe"
# A key no object has: its stat is the cheapest question a store answers.
PROBE_KEY = "readyz/probe"
# The loop's heartbeat, for the lateness /healthz reports.
TICK = 0.5

REQUEST_ID = "X-Request-Id"
_SENSIBLE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Path segments that are bearer secrets: /a/<token>, /p/<token>,
# /upload/<invitation>/...
_TOKEN_PATH = re.compile(r"^/(a|p|upload)/[^/]+")
# A token wherever else it stands (a path no route answers, such as the
# 404 of //a/<token> from a mangled link, is logged too): its shape.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,16}\.[A-Za-z0-9_-]{1,32}\.[0-9a-z]{1,13}\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{22}")


def redact(path: str) -> str:
    """``path`` with the token in it replaced by ``…``."""
    return _TOKEN.sub("…", _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/…", path))


def request_id(request: web.BaseRequest) -> str:
    """This request's id: the caller's, when sensible, else a new one."""
    rid = request.get("request_id")
    if rid is None:
        given = request.headers.get(REQUEST_ID, "")
        rid = given if _SENSIBLE_ID.fullmatch(given) else uuid.uuid4().hex
        request["request_id"] = rid
    return str(rid)


def client_address(request: web.BaseRequest) -> str | None:
    """The client a log line or audit event names: behind a trusted proxy,
    the one it forwards for (the app's ``client_address``), else the peer."""
    address = request.app.get("client_address") if isinstance(request, web.Request) else None
    return address(request) if address is not None else request.remote


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer names its request."""
    response.headers[REQUEST_ID] = request_id(request)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log hook, writing the gateway's JSON lines."""

    def __init__(self, logger: Any, log_format: str) -> None:
        super().__init__(logger, log_format)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        client = client_address(request) or ""
        access.info("request", method=request.method, path=redact(request.path), status=response.status,
                    bytes=response.body_length, seconds=round(time, 4), request_id=request_id(request),
                    client=client, user_agent=request.headers.get("User-Agent"))


class Health:
    """The answers of /healthz and /readyz for one process."""

    def __init__(self, cfg: Callable[[], Config], spool: Spool | None, stores: Mapping[str, Storage],
                 listeners: Callable[[], dict[str, bool]]) -> None:
        self.cfg = cfg
        self.spool = spool
        self.stores = stores
        self.listeners = listeners
        self.lateness = 0.0
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring how late the event loop runs what it is given."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="loop-lateness")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.lateness = max(0.0, loop.time() - due)

    async def live(self, request: web.Request) -> web.Response:
        """GET /healthz: the loop turns (this runs on it)."""
        audit = request.app.get("audit")
        return web.json_response({"status": "ok", "loop_lateness_seconds": round(self.lateness, 4),
                                  "audit_dropped": audit.dropped if audit is not None else 0},
                                 headers={"Cache-Control": "no-store"})

    async def ready(self, request: web.Request) -> web.Response:
        """GET /readyz: 200 when every check passes, else 503; the reasons in JSON."""
        checks: dict[str, Any] = {}
        names = []
        waits = []
        if self.spool is not None:
            names.append("spool")
            waits.append(asyncio.to_thread(self._spool_check))
        for name, store in self.stores.items():
            names.append(f"storage.{name}")
            waits.append(_store_check(store))
        results = await asyncio.gather(*(_bounded(w) for w in waits))
        for name, error in zip(names, results, strict=True):
            checks[name] = {"ok": error is None, **({"reason": error} if error else {})}
        for name, up in self.listeners().items():
            checks[f"listener.{name}"] = {"ok": up, **({} if up else {"reason": "not listening"})}
        reasons = [f"{name}: {c['reason']}" for name, c in checks.items() if not c["ok"]]
        if reasons:
            log.warning("not ready", reasons=reasons)
        body = {"status": "unready" if reasons else "ready", "reasons": reasons, "checks": checks}
        return web.json_response(body, status=503 if reasons else 200, headers={"Cache-Control": "no-store"})

    def _spool_check(self) -> str | None:
        """Why the spool cannot take a message now, or None (blocking)."""
        assert self.spool is not None
        try:
            self.spool.check_writable(self.cfg().gateway.spool_min_free)
        except SpoolError as e:
            return str(e)
        # statvfs says nothing of a directory that cannot be written to:
        # write a probe where receptions start.
        probe = self.spool.root / "tmp" / f"{PROBE}.{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as e:
            return f"cannot write in {probe.parent}: {e.strerror}"
        return None


async def _bounded(check: Any) -> str | None:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            result: str | None = await check
            return result
    except TimeoutError:
        return f"no answer within {CHECK_SECONDS:g}s"
    except Exception as e:  # noqa: BLE001 - a check that fails says why, it never fails the answer
        return f"{type(e).__name__}: {e}"


async def _store_check(store: Storage) -> str | None:
    """Why a store does not answer, or None."""
    root = getattr(store, "root", None)
    if isinstance(root, Path):
        # The filesystem store: its directory must be one (a stat under a
        # missing root would just say "no such object").
        def _is_dir() -> str | None:
            try:
                mode = os.stat(root).st_mode
            except OSError as e:
                return f"{root}: {e.strerror}"
            if not stat.S_ISDIR(mode):
                return f"{root}: not a directory"
            if not os.access(root, os.W_OK | os.X_OK):
                return f"{root}: not writable"
            return None

        error = await asyncio.to_thread(_is_dir)
        if error is not None:
            return error
    await store.stat(PROBE_KEY)
    return None


def is_local(request: web.Request) -> bool:
    """A client on this machine, not one a proxy on it forwards."""
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def admin_guard(mode: Callable[[], str], caller: Callable[[web.Request], str | web.Response]
                ) -> Callable[[web.Request], web.Response | None]:
    """The check in front of /metrics and the OpenAPI document on the agents'
    listener (``metrics.on_http``): None to serve, else the answer."""

    def check(request: web.Request) -> web.Response | None:
        m = mode()
        if m == "open" or (m == "local" and is_local(request)):
            return None
        if m == "api-key":
            found = caller(request)
            return found if isinstance(found, web.Response) else None
        return web.Response(status=404, text="404: Not Found")

    return check
