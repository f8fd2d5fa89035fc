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


# Below this size the three counts are cheaper than walking the lines.
_WALK_FROM = 32 << 10
# A run of lines of one length shorter than this is counted, not walked;
# where no run starts, the walk looks again this many bytes further on.
_MIN_RUN = 16
_SKIP = 4096
_NOT_LINE_ENDS = bytes(b for b in range(256) if b not in b"\r\n")


def crlf_only(data: bytes) -> bool:
    """Whether every CR and every LF in ``data`` is part of a CRLF.

    Three counts would do (CR, LF and CRLF alike), but counting the
    two-byte CRLF is three times slower than counting a byte.  A large
    ``data`` has its CRs and LFs counted in one pass.  Base64
    bodies, most of a large message, are runs of lines of one length: there
    the CRLFs are checked by stride, a byte per line, and only the rest is
    counted.  Every CRLF found is a real one, so when they add up to the LF
    count the answer is exact; when they do not, everything is counted."""
    if len(data) < _WALK_FROM:
        lf = data.count(b"\n")
        return data.count(b"\r") == lf and data.count(b"\r\n") == lf
    # The CRs and LFs alone, in one pass (counting each byte is two).
    ends = data.translate(None, _NOT_LINE_ENDS)
    lf = ends.count(b"\n")
    if len(ends) != 2 * lf:
        return False
    if lf == 0:
        return True
    # As many CRs as LFs: when every LF follows a CR, every CR is before one.
    return _strided_crlfs(data) == lf or data.count(b"\r\n") == lf


def _strided_crlfs(data: bytes) -> int:
    """How many CRLFs ``data`` has at least: each run of equal-length CRLF
    lines checked by stride, the bytes between runs counted."""
    n = len(data)
    found = 0
    start = 0  # data[start:] is not yet counted
    pos = data.find(b"\n")
    while pos > 0:
        nxt = data.find(b"\n", pos + 1)
        if nxt < 0:
            break
        stride = nxt - pos
        run = _run(data, pos, stride) if stride > 2 else 0
        if run >= _MIN_RUN:
            # The bytes before the run (a CR at pos - 1 is the run's own).
            found += data.count(b"\r\n", start, pos - 1) + run
            start = pos + (run - 1) * stride + 1
            pos = data.find(b"\n", start)
        else:
            pos = data.find(b"\n", min(pos + _SKIP, n))
    return found + data.count(b"\r\n", start)


def _run(data: bytes, pos: int, stride: int) -> int:
    """How many lines of ``stride`` bytes end in CRLF, the first LF at ``pos``."""
    n = len(data)
    run, step = 0, 256
    while True:
        first = pos + run * stride
        if first >= n:
            return run
        last = min(first + (step - 1) * stride, first + (n - 1 - first) // stride * stride)
        lfs = data[first:last + 1:stride]
        crs = data[first - 1:last:stride]
        if lfs.count(b"\n") == len(lfs) and crs.count(b"\r") == len(crs):
            run += len(lfs)
            step = min(step * 2, 4096)
            continue
        return run + min(len(lfs) - len(lfs.lstrip(b"\n")), len(crs) - len(crs.lstrip(b"\r")))


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
