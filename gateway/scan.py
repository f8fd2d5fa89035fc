"""Malware scanning with clamd (ClamAV's daemon) over its socket.

The worker streams each attachment's decoded bytes to clamd with the
INSTREAM command and hands the verdict to the ``refuse_malware`` policy as a
fact.  Anything that goes wrong (clamd down, a timeout, a part over clamd's
StreamMaxLength) is an "error" verdict, never an exception: scanning fails
open (rule 2), and the worker logs and counts it.
"""
from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

from policies import ScanVerdict

CHUNK = 1 << 16


def parse_address(address: str) -> tuple[str, str, int]:
    """``unix:/path`` or ``tcp:HOST:PORT`` -> (kind, path or host, port)."""
    if address.startswith("unix:") and len(address) > 5:
        return "unix", address[5:], 0
    if address.startswith("tcp:"):
        host, sep, port = address[4:].rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", host.strip("[]"), int(port)
    raise ValueError("expected \"unix:/PATH\" or \"tcp:HOST:PORT\"")


class Clamd:
    """A clamd client; one connection per scan (clamd's own model)."""

    def __init__(self, address: str, timeout: float) -> None:
        self.kind, self.host, self.port = parse_address(address)
        self.address = address
        self.timeout = timeout

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.kind == "unix":
            return await asyncio.open_unix_connection(self.host)
        return await asyncio.open_connection(self.host, self.port)

    async def scan(self, chunks: AsyncIterator[bytes]) -> ScanVerdict:
        """Stream the bytes to clamd; the verdict (never raises)."""
        try:
            return await asyncio.wait_for(self._scan(chunks), self.timeout)
        except TimeoutError:
            return ScanVerdict("error", detail=f"clamd at {self.address} did not answer within {self.timeout}s")
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
            return ScanVerdict("error", detail=f"clamd at {self.address}: {type(e).__name__}: {e}")

    async def _scan(self, chunks: AsyncIterator[bytes]) -> ScanVerdict:
        reader, writer = await self._connect()
        try:
            writer.write(b"zINSTREAM\0")
            async for chunk in chunks:
                for i in range(0, len(chunk), CHUNK):
                    piece = chunk[i:i + CHUNK]
                    writer.write(struct.pack(">I", len(piece)) + piece)
                    await writer.drain()
            writer.write(struct.pack(">I", 0))
            await writer.drain()
            reply = (await reader.readuntil(b"\0")).rstrip(b"\0").decode("utf-8", "replace")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        return parse_reply(reply)


def parse_reply(reply: str) -> ScanVerdict:
    """clamd's answer to INSTREAM: ``stream: OK``, ``stream: NAME FOUND``,
    or an error such as ``INSTREAM size limit exceeded. ERROR``."""
    text = reply.removeprefix("stream:").strip()
    if text == "OK":
        return ScanVerdict("clean")
    if text.endswith(" FOUND"):
        return ScanVerdict("infected", signature=text[: -len(" FOUND")].strip())
    return ScanVerdict("error", detail=f"clamd: {reply}")
