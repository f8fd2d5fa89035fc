"""DKIM body hashes computed while streaming the body from the spool.

dkimpy hashes a body it holds whole in memory (and a canonicalised copy
besides); for a 100 MB message that is a few hundred MB per message in
flight.  Here the body is read in windows and canonicalised line by line
(RFC 6376 section 3.4), feeding one hasher per (canonicalisation, hash,
l=) combination the signatures ask for, so memory stays at one window plus
a carried partial line.  The results are handed to dkimpy in place of its
own body hash (see ``verify.py``); ``tests/test_authn_units.py`` checks
them against dkimpy's canonicalisation on arbitrary bodies.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_WSP_RUN = re.compile(rb"[ \t]+")
# A line longer than this is hashed in pieces so memory stays bounded.
MAX_CARRY = 1 << 20

HASHES = {b"rsa-sha256": hashlib.sha256, b"rsa-sha1": hashlib.sha1, b"ed25519-sha256": hashlib.sha256}

BodyKey = tuple[bytes, bytes, int | None]  # (b"simple" | b"relaxed", a= value, l= or None)


def body_canon(c_value: bytes) -> bytes:
    """The body half of a c= value (default simple)."""
    parts = c_value.strip().lower().split(b"/")
    return parts[1] if len(parts) > 1 else b"simple"


@dataclass
class _Sink:
    hasher: hashlib._Hash
    limit: int | None
    fed: int = 0

    def feed(self, data: bytes) -> None:
        if self.limit is not None:
            data = data[: max(0, self.limit - self.fed)]
        self.fed += len(data)
        self.hasher.update(data)


@dataclass
class _Canon:
    """One canonicalisation of the body, fanned out to its hashers."""

    relaxed: bool
    sinks: list[_Sink] = field(default_factory=list)
    empty_lines: int = 0  # CRLFs held back: empty lines at the end are dropped
    carry: bytes = b""
    emitted: bool = False
    in_line: bool = False  # a long line is being passed on in pieces
    length: int = 0  # bytes of canonical body passed on so far (what l= is compared with)

    def _emit(self, data: bytes) -> None:
        if self.empty_lines:
            pending = b"\r\n" * self.empty_lines
            self.empty_lines = 0
            self._out(pending)
        self._out(data)

    def _out(self, data: bytes) -> None:
        if data:
            self.emitted = True
            self.length += len(data)
            for s in self.sinks:
                s.feed(data)

    def _lines(self, block: bytes) -> None:
        """Whole lines, each ending in CRLF (canonicalised already): passed
        on, except the empty lines at the end, which are held back until
        something follows them."""
        if self.in_line:
            # The first line continues a long line already partly passed on.
            i = block.find(b"\r\n") + 2
            self.in_line = False
            self._out(block[:i])
            block = block[i:]
        text = block.rstrip(b"\r\n")
        trailing = (len(block) - len(text)) // 2
        if not text:
            self.empty_lines += trailing
            return
        self._emit(text + b"\r\n")
        self.empty_lines = trailing - 1

    def update(self, data: bytes) -> None:
        buf = self.carry + data
        cut = buf.rfind(b"\r\n") + 2
        if cut >= 2:
            block, buf = buf[:cut], buf[cut:]
            if self.relaxed:
                # Whole lines at once: WSP runs to one space, none before CRLF.
                block = _WSP_RUN.sub(b" ", block).replace(b" \r\n", b"\r\n")
            self._lines(block)
        self.carry = buf
        if len(self.carry) > MAX_CARRY:
            self._piece()

    def _piece(self) -> None:
        """Pass on most of a very long line, keeping what the next bytes
        could still change (trailing white space, a CR of a CRLF)."""
        c = self.carry
        if self.relaxed:
            keep = len(c) - len(c.rstrip(b" \t\r"))
            head, self.carry = c[: len(c) - keep], c[len(c) - keep:]
            head = _WSP_RUN.sub(b" ", head)
        else:
            keep = 1 if c.endswith(b"\r") else 0
            head, self.carry = c[: len(c) - keep], c[len(c) - keep:]
        if not head:
            return
        if self.in_line:
            self._out(head)
        else:
            self._emit(head)
        self.in_line = True

    def finish(self) -> None:
        c = self.carry
        self.carry = b""
        if c or self.in_line:
            # A last line without CRLF: dkimpy compresses its white space but
            # keeps a trailing space (its strip only looks before CRLF), then
            # adds the CRLF.
            if self.relaxed:
                c = _WSP_RUN.sub(b" ", c)
            if self.in_line:
                self._out(c + b"\r\n")
            else:
                self._emit(c + b"\r\n")
        elif not self.emitted and not self.relaxed:
            # simple: an empty body is one CRLF; relaxed: nothing at all.
            self._out(b"\r\n")


def body_hashes(keys: Iterable[BodyKey], chunks: Iterable[bytes]) -> dict[BodyKey, bytes]:
    """The digest of the canonical body for each key, in one pass over ``chunks``."""
    return body_digests(keys, chunks)[0]


def body_digests(keys: Iterable[BodyKey], chunks: Iterable[bytes]) -> tuple[dict[BodyKey, bytes], dict[bytes, int]]:
    """The digest of the canonical body for each key, and the length of
    each canonical body (by canonicalisation), in one pass over ``chunks``:
    the length says whether an l= left part of the body unsigned."""
    canons: dict[bytes, _Canon] = {}
    sinks: dict[BodyKey, _Sink] = {}
    for key in set(keys):
        canon, algo, limit = key
        if algo not in HASHES or canon not in (b"simple", b"relaxed"):
            continue
        c = canons.setdefault(canon, _Canon(relaxed=canon == b"relaxed"))
        sink = _Sink(HASHES[algo](), limit)
        c.sinks.append(sink)
        sinks[key] = sink
    if canons:
        for chunk in chunks:
            for c in canons.values():
                c.update(chunk)
        for c in canons.values():
            c.finish()
    return {k: s.hasher.digest() for k, s in sinks.items()}, {k: c.length for k, c in canons.items()}
