"""Shared pieces of the storage tests: a deterministic attachment streamed in
chunks, and plain HTTP GETs against loopback URLs."""
from __future__ import annotations

import asyncio
import hashlib
import random
import re
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from email.message import Message
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

SIZE_30MB = 30 * 1000 * 1000
CHUNK = 64 * 1024
# A filename that needs both RFC 6266 parameters: non-ASCII, a quote, spaces.
FILENAME = 'Rechnung März "2026" ✓.pdf'


@dataclass
class Attachment:
    """A deterministic pseudo-random attachment of ``size`` bytes, produced
    chunk by chunk as the spool's decoder does, never whole.

    ``chunks()`` is the blocking iterator handed to ``put``; it records the
    threads it ran on and calls ``before_last`` (if set) just before its last
    chunk, which the tests use to look at the server while the upload is still
    under way."""

    size: int = SIZE_30MB
    seed: int = 2026
    chunk: int = CHUNK
    before_last: Callable[[], None] | None = None
    threads: set[int] = field(default_factory=set)
    pulled: int = 0
    exhausted: bool = False

    def chunks(self, fail_after: int | None = None) -> Iterator[bytes]:
        rnd = random.Random(self.seed)
        left = self.size
        while left:
            self.threads.add(threading.get_ident())
            n = min(self.chunk, left)
            if left - n == 0 and self.before_last is not None:
                self.before_last()
            if fail_after is not None and self.pulled >= fail_after:
                raise OSError("spool file vanished (simulated)")
            data = rnd.randbytes(n)
            left -= n
            self.pulled += n
            yield data
        self.exhausted = True

    def sha256(self) -> str:
        h = hashlib.sha256()
        for c in Attachment(self.size, self.seed, self.chunk).chunks():
            h.update(c)
        return h.hexdigest()


@dataclass
class Response:
    """What an HTTP GET answered."""

    status: int
    headers: Message
    body: bytes


def http_get(url: str, timeout: float = 30.0, cafile: str | None = None) -> Response:
    """GET a loopback URL (refusing anything else) and return status, headers
    and body, also for 4xx/5xx answers; ``cafile`` trusts a test CA for HTTPS."""
    host = urlsplit(url).hostname
    assert host in ("127.0.0.1", "localhost", "::1"), f"test tried to reach {host}"
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.headers, e.read())


def disposition_filename(value: str) -> str:
    """The filename a browser takes from a Content-Disposition value:
    RFC 8187 ``filename*`` (UTF-8) when present, else the quoted ``filename``.
    (Python's email package prefers the plain ``filename``, so not that.)"""
    m = re.search(r"filename\*=UTF-8''([^;\s]+)", value, re.IGNORECASE)
    if m:
        return unquote(m.group(1), encoding="utf-8", errors="strict")
    m = re.search(r'filename="((?:[^"\\]|\\.)*)"', value)
    assert m is not None, value
    return m.group(1)


def fallback_filename(value: str) -> str:
    """The plain ``filename`` parameter of a Content-Disposition value."""
    m = re.search(r'filename="((?:[^"\\]|\\.)*)"', value)
    assert m is not None, value
    return m.group(1)


def secret_file(folder: Path, name: str, value: str) -> str:
    """Write a secret to a 0600 file, as an administrator would; return its path."""
    path = folder / name
    path.write_text(value)
    path.chmod(0o600)
    return str(path)


async def check_create(store: Any) -> None:
    """Create-if-absent on a started backend, as gateway/fleet.py and the
    auto-reply claims rely on it: one winner among concurrent creates, the
    losers' bytes never stored, a retried create of one's own object True,
    and the key free again once deleted."""
    from gateway.storage.base import ObjectMeta

    key, meta = "leases/test/1", ObjectMeta(content_type="application/json")
    results = await asyncio.gather(*(store.create(key, f"node {i}".encode(), meta) for i in range(8)))
    assert results.count(True) == 1, results
    mine = f"node {results.index(True)}".encode()
    assert b"".join([c async for c in store.open(key)]) == mine
    assert await store.create(key, mine, meta) is True
    assert await store.create(key, b"another node", meta) is False
    assert b"".join([c async for c in store.open(key)]) == mine
    await store.delete(key)
    assert await store.create(key, b"again", meta) is True
