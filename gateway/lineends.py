"""Line ends of bytes the gateway writes: CRLF only, no NUL.

SMTP and Internet Message Format end lines with CRLF; a bare CR or a bare
LF is read differently by different servers (the root of SMTP smuggling),
and NUL is refused by many.  Ingress normalises what it receives, the
rewriter emits only clean bytes, and delivery checks once more (``Normaliser``)
so that a bug upstream cannot put an ambiguous byte on the wire.
"""
from __future__ import annotations

import re

CRLF = b"\r\n"
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def crlf_only(data: bytes) -> bool:
    """Whether every CR and every LF in ``data`` is part of a CRLF.

    Three counts would do (CR, LF and CRLF alike); counting the two-byte
    CRLF is the slowest pass over the data, so where the lines have one
    length (base64 bodies) their ends are checked by stride and only the
    rest is counted."""
    lf = data.count(b"\n")
    if data.count(b"\r") != lf:
        return False
    first = data.find(b"\n")
    if first <= 0:
        return lf == 0
    stride = first + 1
    lines = min(lf, len(data) // stride)
    view = memoryview(data)[: lines * stride]
    if lines > 1 and view[first::stride] == b"\n" * lines and view[first - 1::stride] == b"\r" * lines:
        # Those ``lines`` LFs are CRLFs; every LF is one when the rest adds up.
        if lines + data.count(b"\r\n", lines * stride) == lf:
            return True
    return data.count(b"\r\n") == lf


def is_clean(data: bytes) -> bool:
    """Whether ``data`` has no NUL and no CR or LF outside a CRLF."""
    return b"\x00" not in data and crlf_only(data)


def clean_lines(data: bytes) -> bytes:
    """``data`` with NUL removed and every bare CR or bare LF made a CRLF
    (unchanged, and not copied, when it is clean already)."""
    if is_clean(data):
        return data
    return _LINE_ENDS.sub(CRLF, data.replace(b"\x00", b""))


class Normaliser:
    """``clean_lines`` over a stream of chunks: a CR at the end of one chunk
    and a LF at the start of the next are one CRLF, so a chunk's last CR is
    held back until the next chunk (or ``end``) says what it was.

    ``changed`` tells whether any byte had to be changed: upstream should
    never need this, so the caller logs it."""

    def __init__(self) -> None:
        self._held = b""
        self.changed = False

    def feed(self, chunk: bytes) -> bytes:
        """The clean bytes of ``chunk`` that can be passed on now."""
        if self._held:
            chunk = self._held + chunk
            self._held = b""
        if chunk.endswith(b"\r"):
            chunk, self._held = chunk[:-1], b"\r"
        if is_clean(chunk):
            return chunk
        self.changed = True
        return _LINE_ENDS.sub(CRLF, chunk.replace(b"\x00", b""))

    def end(self) -> bytes:
        """What is left at the end of the stream (a held CR becomes CRLF)."""
        if self._held:
            self._held = b""
            self.changed = True
            return CRLF
        return b""
