"""How many HTTP connections a process holds, in all and from one client.

Every connection holds a file descriptor, and a process's descriptors are
shared by its SMTP listener, its spool and its stores.  Without a bound, a
client that opens connections and never finishes a request (slowloris)
took every descriptor: SMTP could accept no session, the spool could open
no file, and asyncio logged thousands of accept failures a second.  Over
either bound a connection is answered 503 and closed at once.  A trusted
proxy is not bound per client: every agent behind it shares its address.
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway import logs
from gateway.links.agents import Proxies

log = logs.get("http")

# Written before any request is read: a client that sends one reads it.
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n"
        b"Retry-After: 5\r\nConnection: close\r\n\r\nToo many connections, try again.\r\n")


class Admission:
    """The connections of one process: counted in when made, out when lost."""

    def __init__(self, max_connections: int, per_client: int, proxies: Proxies) -> None:
        self.max_connections = max_connections
        self.per_client = per_client
        self.proxies = proxies
        self.count = 0
        self.by_client: dict[str, int] = {}
        # The connections counted in, with the client each was counted for.
        self._held: dict[object, str] = {}

    def enter(self, conn: object, client: str) -> str | None:
        """Count ``conn`` in, or say why it is refused."""
        if self.count >= self.max_connections:
            return "too many connections"
        if self.by_client.get(client, 0) >= self.per_client and not self.proxies.trusted(client):
            return "too many connections from the client"
        self.count += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        self._held[conn] = client
        return None

    def leave(self, conn: object) -> None:
        """Count ``conn`` out (once; one never counted in is ignored)."""
        client = self._held.pop(conn, None)
        if client is None:
            return
        self.count -= 1
        left = self.by_client.get(client, 1) - 1
        if left:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


def _client(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class AdmittingServer(web.Server):
    """aiohttp's server, with each connection admitted or refused as it is
    made (after the TLS handshake, for TLS; gateway.http.tls bounds the
    handshakes)."""

    def __init__(self, admission: Admission, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission = admission

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        client = _client(transport)
        refusal = self.admission.enter(handler, client)
        if refusal is not None:
            log.warning("connection refused", reason=refusal, client=client, connections=self.admission.count)
            transport.write(BUSY)
            transport.close()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.admission.leave(handler)
        super().connection_lost(handler, exc)


class AdmittingRunner(web.AppRunner):
    """An AppRunner whose server admits connections (``Admission``)."""

    def __init__(self, app: web.Application, admission: Admission, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.admission = admission

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        # The same handler, request factory and options as aiohttp's own
        # (its options live only in the private ``_kwargs``).
        return AdmittingServer(self.admission, made.request_handler, request_factory=made.request_factory,
                               handler_cancellation=made.handler_cancellation, loop=asyncio.get_running_loop(),
                               **made._kwargs)
