"""Uuencoded files inside a text body.

Before MIME, files travelled in the body as ``begin 644 name`` ... ``end``
blocks, and several mail clients still show such a block as an attachment.
A text part that carries one is therefore a file in disguise: the worker
finds the blocks in each decoded text body with ``find_blocks`` and judges
each as an attachment.  This module is pure (no I/O) and works on bodies
of a few MB.

What an attacker would do to be skipped, and what is found anyway:
leading blanks before ``begin``; CRLF, LF or bare CR line ends; a mode of
1 to 4 octal digits; a name with spaces; upper-case ``BEGIN``; a missing
``end`` line (the block then runs to the next ``begin`` or to the end of
the text); junk or blank lines between ``begin`` and the data (up to
``_PROBE_LINES`` non-blank lines are looked at); trailing junk after
each data line.  A ``begin`` line counts only when
one of the lines after it is uuencoded data (or the ``end`` line), so prose
such as "begin 2024 planning" is not taken for a file.  The
``begin-base64`` variant (ended by ``====``) is found too.

Thunderbird also shows a yEnc block (``=ybegin line=... name=...`` to
``=yend``) and a BinHex 4.0 block (its ``(This file must be converted with
BinHex 4.0)`` line, then the data between colons) in a text without a
type (no Content-Type, or ``Content-Type: text``, which Python reads as
text/plain) as attachments.  Those are not decoded here: each is returned
as a block with ``unexamined`` set, so the caller quarantines it.
"""
from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

DEFAULT_MAX_BLOCKS = 100
_PROBE_LINES = 4  # non-blank lines after 'begin' looked at for data

_LINE_START = rb"(?:(?<=[\r\n])|\A)"
# Searched for without the line-start condition (a literal prefix is many
# times faster to find), which _line_start then checks.
_BEGIN = re.compile(rb"begin(-base64)?[ \t]+([0-7]{1,4})[ \t]+([^\r\n]*)", re.I)
_UU_END = re.compile(_LINE_START + rb"[ \t]*end[ \t]*(?:\r\n|\n|\r|\Z)", re.I)
# A line that may begin a block, for a cheap look at large texts.
BEGIN_LINE = re.compile(rb"(?:^|[\r\n])[ \t]*begin(-base64)?[ \t]+[0-7]{1,4}[ \t]", re.I)
_B64_END = re.compile(_LINE_START + rb"[ \t]*====[ \t]*(?:\r\n|\n|\r|\Z)")
# yEnc and BinHex, which this module finds but does not decode.
_YENC_BEGIN = re.compile(_LINE_START + rb"[ \t]*=ybegin[ \t][^\r\n]*", re.I)
_YENC_END = re.compile(_LINE_START + rb"[ \t]*=yend\b[^\r\n]*(?:\r\n|\n|\r|\Z)", re.I)
_YENC_NAME = re.compile(rb"\bname=([^\r\n]*)")
_BINHEX_BEGIN = re.compile(_LINE_START + rb"[ \t]*\(This file must be converted with BinHex 4\.0\)[ \t]*", re.I)
_BINHEX_DATA = re.compile(rb"[ \t\r\n]*:[^:]*:?[^\r\n]*(?:\r\n|\n|\r|\Z)")
_YENC_LITERAL = b"=ybegin"
_BINHEX_LITERAL = b"(this file must be converted with binhex 4.0)"
# A line that may begin a block of any kind, for a cheap look at large texts.
ANY_BEGIN_LINE = re.compile(rb"(?:^|[\r\n])[ \t]*(?:begin(-base64)?[ \t]+[0-7]{1,4}[ \t]|=ybegin[ \t]"
                            rb"|\(this file must be converted with binhex)", re.I)
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r|\Z)")
_BLANKS = re.compile(rb"[ \t\r\n]*")
_B64_LINE = re.compile(rb"[A-Za-z0-9+/]+=*")


@dataclass(frozen=True)
class UuBlock:
    """One uuencoded (or ``begin-base64``) file found in a text.

    ``start``/``end`` are offsets into the text given to ``find_blocks``:
    from the first byte of the ``begin`` line (its leading blanks included)
    to one past the line break ending the ``end`` (or ``====``) line, or
    to where the block stops when that line is missing (``complete`` is
    then False).  ``unexamined`` is set on the one synthetic block that
    stands for everything after ``max_blocks`` blocks."""

    start: int
    end: int
    mode: str
    filename: str
    base64: bool = False
    complete: bool = True
    unexamined: str | None = None
    data_start: int = 0  # first byte of the data lines
    data_end: int = 0  # one past the last data line
    _text: bytes = field(default=b"", repr=False, compare=False)

    def decode(self, max_bytes: int | None = None) -> bytes:
        """The file's bytes, decoded tolerantly (see ``decode_uu`` and
        ``decode_base64``); at most ``max_bytes`` when given."""
        data = self._text[self.data_start:self.data_end]
        out = decode_base64(data) if self.base64 else decode_uu(data, max_bytes)
        return out if max_bytes is None else out[:max_bytes]


def find_blocks(text: bytes, max_blocks: int = DEFAULT_MAX_BLOCKS) -> list[UuBlock]:
    """Every uuencoded block in ``text`` (a decoded text body), in order.

    Beyond ``max_blocks`` blocks the rest of the text, from the next
    ``begin`` line on, is returned as one more block with ``unexamined``
    set, so a caller never silently passes over a file."""
    begins = _begins(text)
    blocks: list[UuBlock] = []
    memo: dict[bool, re.Match[bytes] | None] = {}  # the last end line found, per kind
    cur = next(begins, None)
    while cur is not None:
        start, m = cur
        following = next(begins, None)
        if len(blocks) >= max_blocks:
            blocks.append(UuBlock(start=start, end=len(text), mode="", filename="",
                                  unexamined=f"more than {max_blocks} uuencoded blocks in one text",
                                  complete=False, data_start=start, data_end=len(text), _text=text))
            break
        is_b64 = m.group(1) is not None
        line_end = _LINE.match(text, m.end())
        assert line_end is not None  # the pattern matches the empty string
        data_start = line_end.end()
        # The end line, found once per kind and reused while it lies ahead:
        # many 'begin' lines without 'end' cost one scan, not one each.
        found = memo.get(is_b64, False)  # False: not searched yet
        if isinstance(found, bool) or (found is not None and found.start() < data_start):
            found = (_B64_END if is_b64 else _UU_END).search(text, data_start)
            memo[is_b64] = found
        # Begin lines are whole lines, so the next one is after this one.
        nxt = following[0] if following else len(text)
        if found is not None and found.start() < nxt:
            data_end, end, complete = found.start(), found.end(), True
        else:
            data_end, end, complete = nxt, nxt, False
        name = m.group(3).rstrip(b" \t").decode("utf-8", "surrogateescape")
        blocks.append(UuBlock(start=start, end=end, mode=m.group(2).decode("ascii"), filename=name,
                              base64=is_b64, complete=complete, data_start=data_start, data_end=data_end,
                              _text=text))
        cur = following
    return _with_others(text, blocks, max_blocks)


def _with_others(text: bytes, blocks: list[UuBlock], max_blocks: int) -> list[UuBlock]:
    """``blocks`` with the yEnc and BinHex blocks of ``text`` that lie
    outside them, each unexamined, in order; past ``max_blocks`` in all,
    the rest of the text is one unexamined block."""
    # The expressions start with a line-start condition, which keeps the
    # regular expression engine from looking for their literal first:
    # 0.65 ms on a 13 KB reply, for every text body.  The literals, found
    # in the lower-cased text, cost 15 us; most texts stop here.
    low = text.lower()
    if _YENC_LITERAL not in low and _BINHEX_LITERAL not in low:
        return blocks
    others: list[UuBlock] = []
    for m in _YENC_BEGIN.finditer(text):
        end_line = _YENC_END.search(text, m.end())
        end = end_line.end() if end_line is not None else len(text)
        name = _YENC_NAME.search(m.group())
        filename = name.group(1).strip().decode("utf-8", "surrogateescape") if name else ""
        others.append(UuBlock(start=m.start(), end=end, mode="", filename=filename, complete=end_line is not None,
                              unexamined="a yEnc-encoded file in the text", data_start=m.end(), data_end=end,
                              _text=text))
    for m in _BINHEX_BEGIN.finditer(text):
        data = _BINHEX_DATA.match(text, m.end())
        end = data.end() if data is not None and data.group().strip().endswith(b":") else len(text)
        others.append(UuBlock(start=m.start(), end=end, mode="", filename="", complete=end < len(text),
                              unexamined="a BinHex-encoded file in the text", data_start=m.end(), data_end=end,
                              _text=text))
    if not others:
        return blocks
    kept = [o for o in others if not any(b.start < o.end and o.start < b.end for b in blocks)]
    merged = sorted(blocks + kept, key=lambda b: b.start)
    if len(merged) > max_blocks:
        cut = merged[max_blocks].start
        merged = merged[:max_blocks] + [UuBlock(start=cut, end=len(text), mode="", filename="", complete=False,
                                                unexamined=f"more than {max_blocks} encoded files in one text",
                                                data_start=cut, data_end=len(text), _text=text)]
    return merged


def _begins(text: bytes) -> Iterator[tuple[int, re.Match[bytes]]]:
    """(start of line, match) for each ``begin`` line followed by data."""
    for m in _BEGIN.finditer(text):
        start = _line_start(text, m.start())
        if start is not None and _has_data(text, m):
            yield start, m


def _line_start(text: bytes, pos: int) -> int | None:
    """Where the line holding ``pos`` starts, when only blanks precede
    ``pos`` on it; otherwise None."""
    while pos > 0:
        chunk = text[max(0, pos - 256):pos]
        kept = chunk.rstrip(b" \t")
        if kept:
            return pos - len(chunk) + len(kept) if kept[-1:] in (b"\r", b"\n") else None
        pos -= len(chunk)
    return 0


def _has_data(text: bytes, begin: re.Match[bytes]) -> bool:
    """Whether one of the first non-blank lines after a ``begin`` line is
    encoded data (a block with none holds no file)."""
    pos = _LINE.match(text, begin.end()).end()  # type: ignore[union-attr]
    seen = 0
    while pos < len(text) and seen < _PROBE_LINES:
        pos = _BLANKS.match(text, pos).end()  # type: ignore[union-attr]
        m = _LINE.match(text, pos)
        assert m is not None
        line = m.group().rstrip(b"\r\n")
        pos = m.end() if m.end() > pos else len(text)
        if not line.strip():
            continue
        seen += 1
        stripped = line.strip()
        if begin.group(1) is not None:
            if stripped == b"====" or _B64_LINE.fullmatch(stripped):
                return True
        elif _uu_line_ok(line.lstrip(b" \t")):
            return True
    return False


def _uu_line_ok(line: bytes) -> bool:
    """A plausible uuencoded data line: every character in the alphabet
    (space to backquote) and at least as long as its length character
    says.  Longer is accepted: decoders ignore what follows (checksums,
    garbage), so an attacker's trailing junk must not hide the block."""
    if not line or any(c < 0x20 or c > 0x60 for c in line):
        return False
    n = (line[0] - 32) & 63
    if n == 0:
        return True
    need = -(-4 * n // 3)
    return len(line) - 1 >= need


def decode_uu(data: bytes, max_bytes: int | None = None) -> bytes:
    """Decode uuencoded lines the way tolerant decoders do: each line cut
    to the length its first character announces (trailing garbage and
    checksum characters ignored; a short line read as padded), blank lines
    skipped, a line that still will not decode skipped."""
    out = bytearray()
    for raw in data.splitlines():
        # Leading blanks go (an indented block still decodes in lenient
        # clients); trailing ones stay: a space is the digit zero.
        line = raw.lstrip(b" \t")
        if not line.strip():
            continue
        if line.strip().lower() == b"end":
            break
        nbytes = (((line[0] - 32) & 63) * 4 + 5) // 3
        try:
            out += binascii.a2b_uu(line[:nbytes])
        except binascii.Error:
            continue
        if max_bytes is not None and len(out) >= max_bytes:
            break
    return bytes(out)


def decode_base64(data: bytes) -> bytes:
    """Decode ``begin-base64`` data: characters outside the alphabet
    ignored, a missing final padding supplied, nothing read after ``====``."""
    cut = re.search(rb"(?m)^[ \t]*====[ \t]*\r?$", data)
    if cut:
        data = data[:cut.start()]
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data.split(b"=", 1)[0])
    rem = len(clean) % 4
    if rem == 1:  # a lone character carries no whole byte
        clean = clean[:-1]
    elif rem:
        clean += b"=" * (4 - rem)
    return binascii.a2b_base64(clean) if clean else b""
