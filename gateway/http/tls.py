"""TLS for the HTTP listener: TLS 1.2 or later, and every older client
hello refused and audited.

OpenSSL refuses an old hello by itself, but inside asyncio's handshake the
refusal is invisible (an OSError logged only in debug mode).  So the
listener accepts the TCP connection itself, peeks at the ClientHello
(MSG_PEEK, nothing consumed), and either answers a fatal
``protocol_version`` alert and closes (one audit event with the client's
address), or hands the untouched socket to asyncio's TLS and aiohttp.  The
SSL context's own minimum (TLS 1.2) stays as the second lock on the door.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from gateway import logs

log = logs.get("http")

TLS12 = 0x0303
# TLS alert record: fatal (2), protocol_version (70), in a TLS 1.0 record.
_PROTOCOL_VERSION_ALERT = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70])
_NAMES = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context that speaks TLS 1.2 and 1.3 only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def offered_version(data: bytes) -> int | None:
    """The highest TLS version a ClientHello offers, or None when ``data``
    does not (yet) hold a whole first handshake record.  Raises ValueError
    for bytes that are not a TLS ClientHello at all."""
    if len(data) < 5:
        return None
    if data[0] != 0x16:
        raise ValueError("not a TLS handshake record")
    length = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + length:
        return None
    hs = data[5:5 + length]
    if len(hs) < 4 or hs[0] != 0x01:
        raise ValueError("not a ClientHello")
    body = hs[4:]
    try:
        best = int.from_bytes(body[0:2], "big")
        p = 2 + 32
        p += 1 + body[p]
        p += 2 + int.from_bytes(body[p:p + 2], "big")
        p += 1 + body[p]
        if p + 2 > len(body):
            return best
        end = p + 2 + int.from_bytes(body[p:p + 2], "big")
        p += 2
        while p + 4 <= min(end, len(body)):
            ext_type = int.from_bytes(body[p:p + 2], "big")
            ext_len = int.from_bytes(body[p + 2:p + 4], "big")
            ext = body[p + 4:p + 4 + ext_len]
            if ext_type == 0x002B and ext:  # supported_versions
                versions = [int.from_bytes(ext[i:i + 2], "big") for i in range(1, 1 + ext[0], 2)]
                # GREASE values (0x?A?A) are not versions.
                real = [v for v in versions if (v & 0x0F0F) != 0x0A0A]
                if real:
                    return max(real)
            p += 4 + ext_len
    except IndexError:
        raise ValueError("truncated ClientHello") from None
    return best


def version_name(v: int) -> str:
    return _NAMES.get(v, f"0x{v:04x}")


def _wake(ready: asyncio.Future[None]) -> None:
    """The reader callback of ``_peek_version``: the socket has bytes (or EOF)."""
    if not ready.done():
        ready.set_result(None)


class _Closed(Exception):
    """The client closed before sending a ClientHello."""


class TlsListener:
    """Accepts connections, refuses pre-1.2 hellos, serves the rest with TLS."""

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol], ctx: ssl.SSLContext,
                 on_refused: Callable[[str, str], Any], max_pending: int = 2000) -> None:
        self.protocol_factory = protocol_factory
        self.ctx = ctx
        self.on_refused = on_refused
        # Connections still in the peek or the handshake (each holds a file
        # descriptor for up to 25 s before the server's own bound sees it).
        self.max_pending = max_pending
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(info[4])
        sock.listen(512)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.create_task(self._accept(), name="https-accept")

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as e:
                # Out of file descriptors (or memory): the listener must
                # outlive it, as asyncio's own accept loop does.
                log.error("accept failed; retrying in 1 s", error=str(e))
                await asyncio.sleep(1)
                continue
            if len(self._conns) >= self.max_pending:
                log.warning("connection refused", reason="too many TLS handshakes", client=addr[0])
                conn.close()
                continue
            task = asyncio.create_task(self._handle(conn, addr[0]))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _handle(self, conn: socket.socket, address: str) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            version = await self._peek_version(conn)
        except _Closed:
            conn.close()  # a port probe, or a client that gave up
            return
        except (TimeoutError, ValueError, OSError):
            version = None  # not a hello we can read: the TLS handshake will refuse it
        if version is not None and version < TLS12:
            with contextlib.suppress(OSError):
                conn.send(_PROTOCOL_VERSION_ALERT)
            conn.close()
            self.on_refused(address, version_name(version))
            return
        try:
            await loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ctx, ssl_handshake_timeout=15)
        except (TimeoutError, OSError, ssl.SSLError) as e:
            log.info("TLS handshake failed", client=address, error=str(e))
            conn.close()

    async def _peek_version(self, conn: socket.socket) -> int | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline:
            ready = loop.create_future()
            loop.add_reader(conn.fileno(), _wake, ready)
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
            finally:
                loop.remove_reader(conn.fileno())
            data = conn.recv(16384, socket.MSG_PEEK)
            if not data:
                raise _Closed()
            version = offered_version(data)
            if version is not None:
                return version
            # The hello is still arriving; peeked bytes stay readable, so wait a little.
            await asyncio.sleep(0.02)
        raise TimeoutError()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
        for t in list(self._conns):
            t.cancel()
