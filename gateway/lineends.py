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
# What a run's checked line ends are overwritten with: neither CR nor LF.
_BLANK = b" "


def crlf_only(data: bytes) -> bool:
    """Whether every CR and every LF in ``data`` is part of a CRLF.

    Three counts would do (CR, LF and CRLF alike), but counting the
    two-byte CRLF is three times slower than counting a byte.  Base64
    bodies, most of a large message, are runs of lines of one length
    ending in CRLF: the walk finds them (``_runs``).  When runs are most of
    ``data``, each run's line ends are blanked by stride in one copy of it
    and a search for CR and for LF (memchr) must then find nothing in the
    run; the bytes between runs are counted.  Otherwise the CRs and LFs are
    counted in one pass, the runs' CRLFs found by stride and the rest
    counted: every CRLF found is a real one, so when they add up to the LF
    count the answer is exact; when they do not, everything is counted."""
    if len(data) < _WALK_FROM:
        lf = data.count(b"\n")
        return data.count(b"\r") == lf and data.count(b"\r\n") == lf
    runs = _runs(data)
    if sum((run - 1) * stride for _, stride, run in runs) >= len(data) * 3 // 4:
        return _runs_clean(data, runs)
    # The CRs and LFs alone, in one pass (counting each byte is two).
    ends = data.translate(None, _NOT_LINE_ENDS)
    lf = ends.count(b"\n")
    if len(ends) != 2 * lf:
        return False
    if lf == 0:
        return True
    # As many CRs as LFs: when every LF follows a CR, every CR is before one.
    return _strided_crlfs(data, runs) == lf or data.count(b"\r\n") == lf


def _runs(data: bytes) -> list[tuple[int, int, int]]:
    """Runs of at least ``_MIN_RUN`` equal-length lines ending in CRLF, in
    order, as (offset of the first line end's LF, line length, lines): the
    CR before each of those LFs and the LFs themselves are checked, the
    bytes inside the lines are not."""
    n = len(data)
    out = []
    pos = data.find(b"\n")
    while pos > 0:
        nxt = data.find(b"\n", pos + 1)
        if nxt < 0:
            break
        stride = nxt - pos
        run = _run(data, pos, stride) if stride > 2 else 0
        if run >= _MIN_RUN:
            out.append((pos, stride, run))
            pos = data.find(b"\n", pos + (run - 1) * stride + 1)
        else:
            pos = data.find(b"\n", min(pos + _SKIP, n))
    return out


def _runs_clean(data: bytes, runs: list[tuple[int, int, int]]) -> bool:
    """``crlf_only`` of ``data`` made mostly of ``runs``: in a copy, each
    run's CRLFs (from the CR before its first LF to its last LF) are
    overwritten, and a run with a CR or LF left in it is counted; the
    bytes between runs are counted."""
    buf = bytearray(data)
    start = 0  # data[start:] is not yet checked
    for pos, stride, run in runs:
        first, stop = pos - 1, pos + (run - 1) * stride + 1
        if not _counted_clean(data, start, first):
            return False
        buf[first:stop:stride] = _BLANK * run
        buf[pos:stop:stride] = _BLANK * run
        if (buf.find(b"\r", first, stop) >= 0 or buf.find(b"\n", first, stop) >= 0) \
                and not _counted_clean(data, first, stop):
            # Something else ends a line in the run: a fault, or lines whose
            # lengths add up to the stride (counted, it may still be clean).
            return False
        start = stop
    return _counted_clean(data, start, len(data))


def _counted_clean(data: bytes, start: int, end: int) -> bool:
    """``crlf_only`` of ``data[start:end]``, by the three counts."""
    lf = data.count(b"\n", start, end)
    return data.count(b"\r", start, end) == lf and data.count(b"\r\n", start, end) == lf


def _strided_crlfs(data: bytes, runs: list[tuple[int, int, int]]) -> int:
    """How many CRLFs ``data`` has at least: each of ``runs`` counted by
    its lines, the bytes between runs counted."""
    found = 0
    start = 0  # data[start:] is not yet counted
    for pos, stride, run in runs:
        # The bytes before the run (a CR at pos - 1 is the run's own).
        found += data.count(b"\r\n", start, pos - 1) + run
        start = pos + (run - 1) * stride + 1
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
