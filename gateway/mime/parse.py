"""MIME structure by byte offsets, found without loading bodies into memory.

The parser reads each part's header block (bounded in size) and finds
multipart delimiters by scanning the spool file in windows, so a message of
any size is parsed in constant memory.  The result is a tree of ``Part``
objects that say where each part's headers and body lie in the file; the
rewriter replaces some of those ranges and copies every other byte unchanged,
which is how untouched parts stay byte-identical (and DKIM body hashes of
untouched messages survive).

Malformed input is expected, not exceptional: a multipart without a
boundary, or whose closing delimiter is missing, is read the way Python's
email package reads it (the missing delimiter ends at the end of the
enclosing part); only exceeding a configured bound raises ``MimeLimitError``,
which makes the worker forward the message untouched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from gateway.mime.source import Source

_HEADER_PARSER = BytesHeaderParser(policy=compat32)
_LINE_END = re.compile(rb"\r\n|\n|\r")


class MimeLimitError(Exception):
    """The message exceeds a configured bound (header size, depth, part count)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one message may hold (rule 4: every limit configured)."""

    max_header_bytes: int = 1 << 20
    max_depth: int = 20
    max_parts: int = 1000
    max_header_fields: int = 1000
    max_header_line: int = 65536


@dataclass
class Part:
    """One MIME entity: where it is in the file and what its headers say."""

    start: int  # first byte of the header block
    body_start: int  # first byte of the body
    end: int  # one past the last body byte (the CRLF before a delimiter excluded)
    headers: Message
    depth: int
    path: str  # "1.2.1", as IMAP numbers parts; the root is ""
    children: list["Part"] = field(default_factory=list)
    boundary: str | None = None
    defects: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    @property
    def is_multipart(self) -> bool:
        return bool(self.children) or (self.boundary is not None)

    @property
    def cte(self) -> str:
        value = self.headers.get("Content-Transfer-Encoding", "7bit")
        return str(value).strip().lower() or "7bit"

    @property
    def encoded_size(self) -> int:
        return self.end - self.body_start

    def leaves(self) -> list["Part"]:
        """Leaf parts in document order."""
        if not self.children:
            return [self]
        out: list[Part] = []
        for c in self.children:
            out.extend(c.leaves())
        return out

    def walk(self) -> list["Part"]:
        """Every part, parents before children."""
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")  # as Python's feedparser


def _header_end(src: Source, start: int, end: int, limits: Limits) -> tuple[int, int]:
    """Return (end of header block, start of body) for a part starting at ``start``.

    The block ends at the first empty line, or, as in Python's parser, at
    the first line that cannot be a header field (that line then starts the
    body, so no byte of a malformed part is taken for a header and dropped).
    """
    limit = limits.max_header_bytes
    size = 16384
    while True:
        window_end = min(end, start + size, start + limit + 2)
        data = src.read(start, window_end)
        complete = window_end >= end
        pos = 0
        fields = 0
        for m in _LINE_END.finditer(data):
            if m.end() == len(data) and not complete and data.endswith(b"\r"):
                break  # a CR at the window's edge may be half of a CRLF
            line = data[pos:m.start()]
            if not line:
                return start + pos, start + m.end()
            if not _HEADER_LINE.match(line):
                return start + pos, start + pos
            if len(line) > limits.max_header_line:
                raise MimeLimitError(f"header line of {len(line)} bytes at offset {start + pos} "
                                     f"(limit {limits.max_header_line})")
            if line[:1] not in (b" ", b"\t"):
                fields += 1
                if fields > limits.max_header_fields:
                    raise MimeLimitError(f"more than {limits.max_header_fields} header fields at offset {start}")
            pos = m.end()
        if complete:
            tail = data[pos:]
            if tail and not _HEADER_LINE.match(tail):
                return start + pos, start + pos
            return end, end  # headers only, no body
        if window_end >= start + limit + 2:
            raise MimeLimitError(f"header block at offset {start} exceeds {limit} bytes")
        size *= 4


def _parse_headers(raw: bytes) -> Message:
    return _HEADER_PARSER.parsebytes(raw)


def _delimiters(src: Source, boundary: bytes, start: int, end: int) -> list[tuple[int, int, bool]]:
    """Find delimiter lines of ``boundary`` in ``[start, end)``.

    Returns (line start, next line start, is_close) for each, in order, up to
    and including the close delimiter.  A delimiter is ``--boundary``,
    optionally ``--``, optionally trailing blanks, then a line end, at the
    start of a line (as RFC 2046 section 5.1.1 and Python's parser say).
    """
    dash = b"--" + boundary
    out: list[tuple[int, int, bool]] = []
    pos = start
    while pos < end:
        if pos == start and src.read(pos, pos + len(dash)) == dash:
            i = pos
        else:
            # From pos - 1: the previous delimiter's own line end may be the
            # newline in front of the next one (an empty part).
            look = max(start, pos - 1)
            j = src.find(b"\n" + dash, look, end)
            if j < 0:
                j2 = src.find(b"\r" + dash, look, end)  # bare-CR line ends
                if j2 < 0:
                    break
                j = j2
            i = j + 1
        tail = src.read(i + len(dash), min(end, i + len(dash) + 200))
        m = re.match(rb"(--)?[ \t]*(\r\n|\n|\r|$)", tail)
        if m is None or (m.group(2) == b"" and i + len(dash) + m.end() < end):
            pos = i + 1
            continue
        line_end = i + len(dash) + m.end()
        is_close = m.group(1) is not None
        out.append((i, line_end, is_close))
        if is_close:
            break
        pos = line_end
        if pos == i:  # pragma: no cover - defensive
            pos += 1
    return out


def _before_line_end(src: Source, i: int, floor: int) -> int:
    """The offset where the line ending that precedes offset ``i`` starts."""
    if i <= floor:
        return i
    prev = src.read(max(floor, i - 2), i)
    if prev.endswith(b"\r\n"):
        return i - 2
    if prev.endswith(b"\n") or prev.endswith(b"\r"):
        return i - 1
    return i


def parse(src: Source, limits: Limits = Limits()) -> Part:
    """Parse the message in ``src`` into a tree of parts by offsets."""
    counter = [0]
    return _parse_part(src, 0, src.size, 0, "", limits, counter, default_type="text/plain")


def _parse_part(src: Source, start: int, end: int, depth: int, path: str, limits: Limits,
                counter: list[int], default_type: str) -> Part:
    counter[0] += 1
    if counter[0] > limits.max_parts:
        raise MimeLimitError(f"more than {limits.max_parts} MIME parts")
    if depth > limits.max_depth:
        raise MimeLimitError(f"MIME nesting deeper than {limits.max_depth}")
    hdr_end, body_start = _header_end(src, start, end, limits)
    headers = _parse_headers(src.read(start, hdr_end))
    if default_type != "text/plain":
        headers.set_default_type(default_type)
    part = Part(start=start, body_start=body_start, end=end, headers=headers, depth=depth, path=path)
    if headers.get_content_maintype() != "multipart":
        return part
    boundary = headers.get_boundary()
    if not boundary:
        part.defects.append("multipart without boundary")
        return part
    part.boundary = boundary
    try:
        bnd = boundary.encode("ascii")
    except UnicodeEncodeError:
        bnd = boundary.encode("utf-8", "surrogateescape")
    delims = _delimiters(src, bnd, body_start, end)
    if not delims:
        part.defects.append("no delimiter found for boundary")
        part.boundary = None
        return part
    child_default = "message/rfc822" if headers.get_content_subtype() == "digest" else "text/plain"
    for n, (line_start, line_end, is_close) in enumerate(delims):
        if is_close:
            break
        nxt = delims[n + 1][0] if n + 1 < len(delims) else None
        child_end = _before_line_end(src, nxt, line_end) if nxt is not None else end
        if nxt is None:
            part.defects.append("missing close delimiter")
        child_path = f"{path}.{len(part.children) + 1}" if path else str(len(part.children) + 1)
        part.children.append(
            _parse_part(src, line_end, child_end, depth + 1, child_path, limits, counter, child_default))
    if not part.children:
        part.defects.append("multipart with no parts")
    return part
