"""Decoding a part's body straight from the spool, in bounded memory.

Offload streams ``decoded_chunks`` into the storage upload, and policies get
the decoded size and first bytes from ``measure`` without holding the part.
Sizes are always decoded sizes (rule 4).  Small bodies are decoded the way
Python's email package decodes them, so the two agree byte for byte.
"""
from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

import pybase64

from gateway.mime.htmlfiles import embedded_file
from gateway.mime.parse import Part
from gateway.mime.source import WINDOW, Source

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_DELETE = bytes(b for b in range(256) if b not in _B64_ALPHABET)
SMALL = 1 << 20  # bodies up to this many encoded bytes are decoded in memory
HEAD = 8192  # bytes kept for type sniffing
# The transfer encodings every reader decodes alike (RFC 2045 section 6.1),
# and the uuencode names Python's email package (and many clients) decode.
ENCODINGS = frozenset({"7bit", "8bit", "binary", "base64", "quoted-printable"})
_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
# Words that make an unknown encoding's name look like a known one to a
# lenient reader ("quoted printable", "base64;", "x-base64").
_ENCODING_WORDS = ("64", "quoted", "printable", "uu")


class AmbiguousEncoding(ValueError):
    """A body that readers could decode to different bytes: what the
    gateway would examine is not what every client would open."""


def encoding_problem(part: Part) -> str | None:
    """Why readers could take different bytes from the part's body by its
    Content-Transfer-Encoding, or None.

    The gateway decodes by the value stripped and lower-cased, as clients
    do.  An unknown value is read as 7bit by the gateway and by Python, but
    a lenient client may decode ``quoted printable`` or ``base64;``; a
    uuencoded part is decoded in memory when small and would be examined
    encoded when large."""
    if part.headers.get("Content-Transfer-Encoding") is None:
        return None
    cte = part.cte
    if cte in ENCODINGS:
        return None
    if cte in _UUENCODE:
        return None if part.encoded_size <= SMALL else f"a uuencoded part over {SMALL} bytes"
    if any(word in cte for word in _ENCODING_WORDS):
        return f"an ambiguous Content-Transfer-Encoding ({cte[:40]!r})"
    return None


def _b64_problem(data: bytes) -> str | None:
    """Why base64 ``data`` (line ends and other characters outside the
    alphabet may be in it) decodes differently in different readers, or
    None: data after its first padding character (Python carries on after
    a group of padding alone, others stop), or one character left over at
    the end (Python's email package then gives the text still encoded,
    other decoders drop the character and open the file)."""
    kept = data.translate(None, _B64_DELETE)
    pad = kept.find(b"=")
    if pad >= 0 and kept[pad:].strip(b"="):
        return "base64 data after its padding"
    if (len(kept) if pad < 0 else pad) % 4 == 1:
        return "base64 with one character too many"
    return None


def _b64_groups(chunks: Iterator[bytes], strict: bool = False) -> Iterator[bytes]:
    """The encoded data as runs of whole 4-character groups: line breaks and
    other characters outside the alphabet dropped, a partial last group
    padded, and nothing after the first padding character (RFC 4648 section
    3.3: padding ends the data; decoders conventionally ignore what follows).

    ``strict``: data after the padding raises ``AmbiguousEncoding``.  Readers
    differ there (Python's decoder carries on after a group of padding
    alone, others stop at the first one), so what is examined would not be
    what every client opens."""
    carry = b""
    lines = _whole_lines(chunks)
    for chunk in lines:
        data = carry + _strip(chunk)
        pad = data.find(b"=")
        if pad >= 0:
            if strict and (data[pad:].strip(b"=") or any(_strip(rest).strip(b"=") for rest in lines)):
                raise AmbiguousEncoding("base64 data after its padding")
            if strict and pad % 4 == 1:
                raise AmbiguousEncoding("base64 with one character too many")
            data = data[:pad]
            usable = len(data) - len(data) % 4
            if usable:
                yield data[:usable]
            rest = data[usable:]
            if len(rest) >= 2:
                yield rest + b"=" * (4 - len(rest))
            return
        usable = len(data) - len(data) % 4
        if usable:
            yield data[:usable]
        carry = data[usable:]
    if strict and len(carry) == 1:
        raise AmbiguousEncoding("base64 with one character too many")
    if len(carry) >= 2:
        yield carry + b"=" * (4 - len(carry))


def _whole_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The same bytes, re-cut after a LF where there is one."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut] if cut < len(data) else data
        carry = data[cut:]
    if carry:
        yield carry


def _strip(data: bytes) -> bytes:
    """``data`` without line breaks and other characters outside the
    alphabet.  Lines of one length (a multiple of 4) ending in CRLF, which
    is what mailers write, have their line ends cut out by stride, several
    times faster than ``translate``; the result must then decode as base64
    (alphabet only, no padding inside), or ``translate`` does it all."""
    first = data.find(b"\r\n")
    if first > 0 and first % 4 == 0 and len(data) >= 2 * (first + 2):
        cut = _cut_line_ends(data, first)
        if cut is not None:
            kept, end = cut
            try:
                pybase64.b64decode(kept, validate=True)
            except ValueError:
                pass
            else:
                return bytes(kept) + data[end:].translate(None, _B64_DELETE)
    return data.translate(None, _B64_DELETE)


def _cut_line_ends(data: bytes | memoryview, first: int) -> tuple[bytearray, int] | None:
    """The whole lines at the start of ``data`` with their CRLFs cut out by
    stride, and the offset where those lines end; None unless every one of
    them is as long as the first (whose CRLF is at ``first``)."""
    stride = first + 2
    lines = len(data) // stride
    end = lines * stride
    view = memoryview(data)[:end]
    if view[first::stride] != b"\r" * lines or view[first + 1::stride] != b"\n" * lines:
        return None
    kept = bytearray(view)
    del kept[first::stride]
    del kept[first::stride - 1]
    return kept, end


def _b64_stream(chunks: Iterator[bytes], strict: bool = False) -> Iterator[bytes]:
    # pybase64 decodes with SIMD, several times faster than binascii; the
    # input is clean whole groups, so its validating fast path applies.
    for group in _b64_groups(chunks, strict):
        yield pybase64.b64decode(group, validate=True)


def _b64_range(src: Source, start: int, end: int, window: int = WINDOW, strict: bool = False) -> Iterator[bytes]:
    """``_b64_stream`` of the bytes ``[start, end)`` of ``src``, in fewer
    passes over them.

    Mailers write base64 as lines of one length ending in CRLF.  Each window
    read here is cut after its last line end, so the next window starts on a
    line; a window made only of whole lines of one length, a multiple of 4,
    each ending in CRLF, whose data is base64 alphabet with no padding, is
    decoded at once: its line ends cut out by stride, and the decoder's
    validation is the check of the alphabet.  From the first window that is
    anything else (the short last line, padding, a stray character), the
    rest goes to ``_b64_stream``, which then starts on a whole group with
    nothing carried, as it would have reached that point.  ``strict`` as
    for ``_b64_groups``."""
    pos = start
    while pos < end:
        data = src.read(pos, min(pos + window, end))
        cut = data.rfind(b"\n") + 1
        decoded = _b64_lines(data, cut) if cut else None
        if decoded is None:
            break
        yield decoded
        pos += cut
    if pos < end:
        yield from _b64_stream(src.iter_range(pos, end, window), strict)


def _b64_lines(data: bytes, cut: int) -> bytes | None:
    """The decoded ``data[:cut]`` when it is whole base64 lines of one
    length ending in CRLF, with no padding; otherwise None."""
    first = data.find(b"\r\n", 0, cut)
    stride = first + 2
    if first <= 0 or first % 4 or cut % stride:
        return None
    kept = _cut_line_ends(memoryview(data)[:cut], first)
    if kept is None or kept[0][-1:] == b"=":
        return None
    try:
        return pybase64.b64decode(kept[0], validate=True)
    except ValueError:
        return None


def _qp_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        yield binascii.a2b_qp(data[: cut + 1])
        carry = data[cut + 1:]
    if carry:
        yield binascii.a2b_qp(carry)


def _python_decode(src: Source, part: Part) -> bytes:
    """Decode a small body as email.message.Message does, the encoding's
    name read as ``Part.cte`` reads it (stripped: Python compares the field
    as it is, so ``base64 `` would be examined undecoded where a client that
    strips it opens what it decodes to)."""
    cte = part.cte
    body = src.read(part.body_start, part.end)
    if cte == "base64":
        plain = _b64_plain(body)
        if plain is not None:
            return plain
    msg = Message()
    if part.headers.get("Content-Transfer-Encoding") is not None:
        msg["Content-Transfer-Encoding"] = cte
    msg.set_payload(body)
    decoded = msg.get_payload(decode=True)
    return decoded if isinstance(decoded, bytes) else body


def _b64_plain(body: bytes) -> bytes | None:
    """Base64 as mailers write it (alphabet only, CRLF line ends, padding
    only at the end), decoded; None for anything else.

    Python's email package joins the lines (``splitlines``) and decodes
    strictly first, falling back to a lenient decode only when that fails:
    for such a body its answer is the strict decode of the joined lines,
    which this gives several times faster (line ends cut by stride, SIMD
    decode).  Anything else is left to Python's own code."""
    first = body.find(b"\r\n")
    if first > 0:
        cut = _cut_line_ends(body, first)
        if cut is None:
            return None
        kept, end = cut
        kept += body[end:].replace(b"\r\n", b"")
    else:
        kept = bytearray(body)
    pad = kept.find(b"=")
    if len(kept) % 4 or (pad >= 0 and kept[pad:] not in (b"=", b"==")):
        return None
    try:
        return pybase64.b64decode(kept, validate=True)
    except ValueError:
        return None


def base64_problem(src: Source, part: Part) -> str | None:
    """Why readers could decode the part's base64 body to different bytes,
    or None (also when it is not base64).  Blocking: a large body is
    decoded once to find out."""
    if part.cte != "base64":
        return None
    if part.encoded_size <= SMALL:
        return _b64_problem(src.read(part.body_start, part.end))
    try:
        for _ in _b64_range(src, part.body_start, part.end, strict=True):
            pass
    except AmbiguousEncoding as e:
        return str(e)
    return None


def html_problem(src: Source, part: Part) -> str | None:
    """Why an HTML part cannot be forwarded as examined text (it carries
    a file of its own as a ``data:`` URL), or None (also when it is not
    HTML).  Blocking: the body is decoded and read once."""
    if part.content_type != "text/html":
        return None
    if part.html_read is None:
        try:
            charset = part.headers.get_content_charset()
        except Exception:  # noqa: BLE001 - CPython raises on some real-world parameters
            charset = None
        part.html_read = (embedded_file(decoded_chunks(src, part), charset),)
    return part.html_read[0]


def decoded_chunks(src: Source, part: Part) -> Iterator[bytes]:
    """The part's decoded body, in chunks (blocking reads)."""
    if part.encoded_size <= SMALL:
        yield _python_decode(src, part)
        return
    raw = src.iter_range(part.body_start, part.end)
    cte = part.cte
    if cte == "base64":
        yield from _b64_range(src, part.body_start, part.end)
    elif cte == "quoted-printable":
        yield from _qp_stream(raw)
    else:
        yield from raw


def decoded_bytes(src: Source, part: Part) -> bytes:
    """The whole decoded body; only for parts known to be small."""
    return b"".join(decoded_chunks(src, part))


@dataclass(frozen=True)
class Measure:
    """A part's decoded size and first bytes (for type sniffing), and its
    digest when it was cheap to have (small parts, decoded whole)."""

    size: int
    head: bytes
    sha256: str | None


def measure(src: Source, part: Part) -> Measure:
    """What policies need to know about a part, in one cheap pass.

    A large base64 part is decoded window by window and only counted: the
    decoder's validation is what checks the alphabet, so a count without
    decoding would cost as much.  Its first bytes are kept.  Other large
    parts are decoded once (quoted-printable) or counted (identity
    encodings).  The upload hashes what it stores.

    Raises ``AmbiguousEncoding`` for base64 that readers decode differently.
    """
    if part.encoded_size <= SMALL:
        data = None
        if part.cte == "base64":
            # Base64 as mailers write it decodes in one step and is read
            # alike by every reader; only another shape is looked at for
            # ambiguity.
            body = src.read(part.body_start, part.end)
            data = _b64_plain(body)
            problem = _b64_problem(body) if data is None else None
            if problem is not None:
                raise AmbiguousEncoding(problem)
        if data is None:
            data = _python_decode(src, part)
        return Measure(size=len(data), head=data[:HEAD], sha256=hashlib.sha256(data).hexdigest())
    cte = part.cte
    head_bytes = src.read(part.body_start, min(part.end, part.body_start + HEAD * 2))
    if cte == "base64":
        head = b"".join(_b64_stream(iter([head_bytes])))[:HEAD] if head_bytes else b""
        size = sum(len(chunk) for chunk in _b64_range(src, part.body_start, part.end, strict=True))
        return Measure(size=size, head=head, sha256=None)
    if cte == "quoted-printable":
        size = 0
        head = b""
        for chunk in _qp_stream(src.iter_range(part.body_start, part.end)):
            if len(head) < HEAD:
                head += chunk[: HEAD - len(head)]
            size += len(chunk)
        return Measure(size=size, head=head, sha256=None)
    return Measure(size=part.encoded_size, head=head_bytes[:HEAD], sha256=None)


def message_header(msg: Message, name: str) -> str:
    """A header's value as text, tolerating undecodable or malformed values."""
    try:
        value = msg.get(name)
    except Exception:  # noqa: BLE001 - CPython raises on some real-world headers
        return ""
    return "" if value is None else str(value)
