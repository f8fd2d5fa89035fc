"""MIME structure by byte offsets, found without loading bodies into memory.

The parser reads each part's header block (bounded in size) and finds
multipart delimiters by scanning the spool file in windows, so a message of
any size is parsed in constant memory.  The result is a tree of ``Part``
objects that say where each part's headers and body lie in the file; the
rewriter replaces some of those ranges and copies every other byte unchanged,
which is how untouched parts stay byte-identical (and DKIM body hashes of
untouched messages survive).  Attached messages (``message/rfc822``,
``message/global``, ``message/news``, the parts of a ``multipart/digest``)
are parsed too:
such a part has one child, the attached message's root, and every part
inside an attached message has ``in_attached_message`` set.

``parse`` never raises for what a message holds.  A part the parser will
not or cannot look into is an *unexamined leaf*: ``Part.unexamined`` says
why in a few words, it has no children, and its ``headers`` are safe to
use (empty when the header block itself is the problem).  That covers
every configured bound (nesting depth, part count, header line length,
header field count, header block size, parameters per field) and every
ambiguity where another reader could see a different structure or file
than the gateway: duplicate Content-Type, Content-Transfer-Encoding or
Content-Disposition fields, a comment or a blank in the Content-Type's
type, a file name in a Content-Name or X-Sun-Data-Name field that the
parameters do not give, duplicate ``boundary`` parameters, a multipart
without a usable boundary, a transfer-encoded multipart or attached
message, a message fragment, duplicate or disagreeing file names, a
delimiter line that some readers see and others do not.  The
worker must quarantine such parts, never forward them as files.  When the
part count runs out inside a multipart, the remaining siblings become one
synthetic unexamined part spanning their bytes; so does the text after a
close delimiter when the boundary appears in it again.

Other malformed input is read the way Python's email package reads it: a
missing close delimiter ends the last part at the end of the enclosing
part, and a header block ends at the first line that cannot be a header.
``Content-Type`` and ``Content-Disposition`` parameters are read with the
linear-time ``gateway.mime.params`` (Python's own parser is quadratic in
the number of ``;``), and over ``Limits.max_params`` the field is cut back
to its bare value in ``headers``, so later ``get_param`` calls stay cheap.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from gateway.lineends import crlf_only
from gateway.mime.params import ENCODED_WORD, Structured, TooManyParams, decode_2047, parse_params
from gateway.mime.source import WINDOW, Source

_HEADER_PARSER = BytesHeaderParser(policy=compat32)
_LINE_END = re.compile(rb"\r\n|\n|\r")
MAX_BOUNDARY = 70  # RFC 2046 section 5.1.1
# message/news too: Thunderbird opens it as an attached message (its
# files listed as attachments), where a leaf of it would be one text.
ATTACHED_MESSAGE_TYPES = ("message/rfc822", "message/global", "message/news")
# The names an attached message may have: none, or a message file's.
_MESSAGE_EXTENSIONS = ("", "eml", "msg", "txt")
_IDENTITY_CTES = ("7bit", "8bit", "binary")


# The reason given for an attached message in base64 or quoted-printable:
# it cannot be parsed by offsets, but it can be decoded (and kept so).
ENCODED_MESSAGE = "an encoded attached message"


class MimeLimitError(Exception):
    """Kept for importers; ``parse`` no longer raises it (a part beyond a
    bound is an unexamined leaf instead)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one message may hold (rule 4: every limit configured)."""

    max_header_bytes: int = 1 << 20
    max_depth: int = 20
    max_parts: int = 1000
    max_header_fields: int = 1000
    max_header_line: int = 65536
    max_params: int = 64  # ';' in one Content-Type or Content-Disposition


@dataclass
class Part:
    """One MIME entity: where it is in the file and what its headers say."""

    start: int  # first byte of the header block
    body_start: int  # first byte of the body (== start when the headers could not be read)
    end: int  # one past the last body byte (the CRLF before a delimiter excluded)
    headers: Message
    depth: int
    path: str  # "1.2.1", as IMAP numbers parts; the root is ""; an attached message's root is "<part>.1"
    children: list[Part] = field(default_factory=list)
    boundary: str | None = None
    defects: list[str] = field(default_factory=list)
    # Why the gateway did not look into this part (it then has no children
    # and must never reach an agent as a file); None when examined.
    unexamined: str | None = None
    # Inside a message/rfc822 (or message/global) part, at any depth.
    in_attached_message: bool = False
    # Content-Type and Content-Disposition as read by gateway.mime.params.
    type_params: Structured = field(default_factory=lambda: Structured(""))
    disposition_params: Structured = field(default_factory=lambda: Structured(""))
    # Whether the two above were read from these headers (by _check_fields).
    params_read: bool = False
    # What gateway.mime.decode.html_problem found in this HTML part, once it
    # has read it (the body steps and examine both ask): a one-tuple.
    html_read: tuple[str | None] | None = None

    # Cached: the steps ask each part for these several times, and its
    # headers do not change once the parser has read them.
    @functools.cached_property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    @functools.cached_property
    def filename(self) -> str:
        """The filename the sender gave, decoded for display ('' when none):
        ``filenames.original_filename`` of the headers, from the parameters
        the parser has already read when it has."""
        from gateway.mime.filenames import filename_from, original_filename

        if self.params_read:
            return filename_from(self.type_params, self.disposition_params)
        return original_filename(self.headers)

    @property
    def is_multipart(self) -> bool:
        return self.boundary is not None

    @property
    def cte(self) -> str:
        value = self.headers.get("Content-Transfer-Encoding", "7bit")
        return str(value).strip().lower() or "7bit"

    @property
    def encoded_size(self) -> int:
        return self.end - self.body_start

    def leaves(self, attached: bool = True) -> list[Part]:
        """Leaf parts in document order; unexamined parts are leaves.  With
        ``attached=False`` an attached message's part is a leaf itself (its
        inner parts are left out), as before attached messages were parsed."""
        if not self.children or (not attached and self.content_type in ATTACHED_MESSAGE_TYPES):
            return [self]
        out: list[Part] = []
        for c in self.children:
            out.extend(c.leaves(attached))
        return out

    def walk(self) -> list[Part]:
        """Every part, parents before children."""
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out

    def unexamined_parts(self) -> list[Part]:
        """The parts the parser did not look into, in document order."""
        return [p for p in self.leaves() if p.unexamined is not None]


_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")  # as Python's feedparser
# A line a lenient reader takes for a Content- or MIME-Version field
# ("Content-Disposition : attachment", RFC 5322's obsolete syntax, too).
_LENIENT_CONTENT_FIELD = re.compile(rb"[\t ]*(?:content-[^\s:]*|mime-version)[\t ]*:", re.I)


def _hides_fields(data: bytes, pos: int) -> bool:
    """Whether, from the line at ``pos`` (one that cannot be a header field,
    where Python's parser ends the header block) to the next empty line, a
    line reads as a Content- or MIME-Version field to a lenient reader.
    Mozilla's parser, for one, takes every line up to the empty one as the
    header block and skips those without a colon: which part is a file, and
    its name, or the whole message's structure, would then differ."""
    for m in _LINE_END.finditer(data, pos):
        line = data[pos:m.start()]
        if not line:
            return False
        if _LENIENT_CONTENT_FIELD.match(line):
            return True
        pos = m.end()
    return bool(_LENIENT_CONTENT_FIELD.match(data, pos))


class _HeaderProblem(Exception):
    """A header block beyond a bound; the part becomes unexamined."""


def _header_end(src: Source, start: int, end: int, limits: Limits) -> tuple[int, int]:
    """Return (end of header block, start of body) for a part starting at ``start``.

    The block ends at the first empty line, or, as in Python's parser, at
    the first line that cannot be a header field (that line then starts the
    body, so no byte of a malformed part is taken for a header and dropped).
    Raises ``_HeaderProblem`` when the block passes a bound.
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
                if _hides_fields(data, pos):
                    raise _HeaderProblem("a line that is not a header field, before Content- or MIME-Version fields")
                return start + pos, start + pos
            if len(line) > limits.max_header_line:
                raise _HeaderProblem(f"a header line of {len(line)} bytes (limit {limits.max_header_line})")
            if line[:1] not in (b" ", b"\t"):
                fields += 1
                if fields > limits.max_header_fields:
                    raise _HeaderProblem(f"more than {limits.max_header_fields} header fields")
            pos = m.end()
        if complete:
            tail = data[pos:]
            if tail and not _HEADER_LINE.match(tail):
                if _hides_fields(data, pos):
                    raise _HeaderProblem("a line that is not a header field, before Content- or MIME-Version fields")
                return start + pos, start + pos
            if len(tail) > limits.max_header_line:
                raise _HeaderProblem(f"a header line of {len(tail)} bytes (limit {limits.max_header_line})")
            if tail and tail[:1] not in (b" ", b"\t") and fields + 1 > limits.max_header_fields:
                raise _HeaderProblem(f"more than {limits.max_header_fields} header fields")
            return end, end  # headers only, no body
        if window_end >= start + limit + 2:
            raise _HeaderProblem(f"a header block over {limit} bytes")
        size *= 4


def _parse_headers(raw: bytes) -> Message:
    plain = _plain_headers(raw)
    return plain if plain is not None else _HEADER_PARSER.parsebytes(raw)


# A field name as Python's feedparser takes one (its headerRE, without ':').
_FIELD_NAME = re.compile(r"[\041-\071\073-\176]+")
# A Content-Type or Content-Disposition value (before its parameters): a
# token, or type/subtype, or nothing; comments in parentheses are allowed
# here (a Content-Disposition is then refused unless it is a bare inline
# or attachment, which a comment is not).
_FIELD_VALUE = re.compile(r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]*(?:\s*/\s*[!#$%&'*+.^_`{|}~0-9A-Za-z-]*)?(?:\s*\([^()]*\))*")
# A comment or a blank in a Content-Type's type/subtype: the type the
# gateway (as Python) reads is not the one an RFC 2045 reader takes.
_SPLIT_TYPE = re.compile(r"[()\s]")
# C0 and C1 controls and DEL: in a file name, read differently by each reader.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _plain_headers(raw: bytes) -> Message | None:
    """The Message Python's header parser makes of a plain header block
    (CRLF lines, each a field or a continuation of one, no Unix "From "
    line), built directly; None for any other block, which Python's parser
    then reads itself.

    Python's feedparser was two fifths of parsing a small reply.  For a
    plain block what it does is short: each field is its first line's
    value with leading blanks cut, its continuation lines appended with
    their line ends, and the last line end cut (compat32's
    ``header_source_parse``); the payload is empty."""
    if not raw.endswith(b"\r\n") or not crlf_only(raw):
        return None
    msg = Message(policy=compat32)
    name: str | None = None
    value: list[str] = []
    for line in raw[:-2].decode("ascii", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t"):
            if name is None:
                return None  # a continuation first: Python notes a defect
            value.append(line)
            continue
        if name is not None:
            msg.set_raw(name, "\r\n".join(value).rstrip("\r\n"))
        colon = line.find(":")
        if colon <= 0 or line.startswith("From ") or not _FIELD_NAME.fullmatch(line, 0, colon):
            return None
        name, value = line[:colon], [line[colon + 1:].lstrip(" \t")]
    if name is not None:
        msg.set_raw(name, "\r\n".join(value).rstrip("\r\n"))
    msg.set_payload("")
    return msg


class _Reader:
    """Finds in ``src`` through one cached window, so that scanning a body
    for thousands of delimiters costs one ``pread`` per window, not one
    per delimiter."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.wstart = 0
        self.buf = b""

    def read(self, start: int, end: int) -> bytes:
        if self.wstart <= start and end <= self.wstart + len(self.buf):
            return self.buf[start - self.wstart:end - self.wstart]
        return self.src.read(start, end)

    def find(self, needle: bytes, start: int, end: int) -> int:
        """Offset of the first ``needle`` wholly inside ``[start, end)``, or -1."""
        end = min(end, self.src.size)
        n = len(needle)
        pos = start
        while pos + n <= end:
            wend = self.wstart + len(self.buf)
            if not (self.wstart <= pos and pos + n <= wend):
                self.wstart = pos
                self.buf = self.src.read(pos, min(pos + WINDOW, self.src.size))
                wend = self.wstart + len(self.buf)
                if pos + n > wend:
                    return -1
            i = self.buf.find(needle, pos - self.wstart, min(end, wend) - self.wstart)
            if i >= 0:
                return self.wstart + i
            if wend >= end:
                return -1
            pos = wend - n + 1
        return -1


# What follows ``--boundary`` on a line that a lenient reader takes for a
# delimiter: ``--`` or not, then white space or other control characters
# (NUL aside: refused on arrival), then the line end.
_LENIENT_DELIMITER_TAIL = re.compile(rb"(--)?[\x01-\x09\x0b\x0c\x0e-\x20]*(\r\n|\n|\r|$)")


def _delimiters(reader: _Reader, boundary: bytes, start: int, end: int,
                keep: int) -> tuple[list[tuple[int, int, bool]], bool, int | None]:
    """Find delimiter lines of ``boundary`` in ``[start, end)``.

    Returns (delimiters, cut, odd): (line start, next line start, is_close)
    for each, in order, up to and including the close delimiter.  A
    delimiter is ``--boundary``, optionally ``--``, optionally trailing
    blanks, then a line end, at the start of a line (as Python's parser
    says; a line may end in CRLF, LF or a bare CR).  Only the first
    ``keep`` delimiters and the last one are returned; ``cut`` says whether
    any between were left out (the part count has run out by then, and the
    caller only needs where the rest ends).

    ``odd`` is where the first line starts, up to the close delimiter, that
    other readers take for a delimiter where this one does not, or None:
    ``--boundary``, optionally ``--``, then white space other than blanks
    before the line end (Thunderbird strips every ``isspace`` character,
    form feed and vertical tab too, before it compares a line with the
    boundary; a reader that trims a line as Java's ``trim`` does strips
    every control character).
    """
    dash = b"--" + boundary
    out: list[tuple[int, int, bool]] = []
    cut = False
    odd: int | None = None
    pos = start
    finder = _LineStartFinder(reader, dash, end)
    while pos < end:
        if pos == start and reader.read(pos, pos + len(dash)) == dash:
            i = pos
        else:
            # From pos - 1: the previous delimiter's own line end may be the
            # newline in front of the next one (an empty part).
            i = finder.find(max(start, pos - 1))
            if i < 0:
                break
        tail = reader.read(i + len(dash), min(end, i + len(dash) + 200))
        m = re.match(rb"(--)?[ \t]*(\r\n|\n|\r|$)", tail)
        if m is None or (m.group(2) == b"" and i + len(dash) + m.end() < end):
            if odd is None and _LENIENT_DELIMITER_TAIL.match(tail):
                odd = i
            pos = i + 1
            continue
        line_end = i + len(dash) + m.end()
        is_close = m.group(1) is not None
        if len(out) > keep:
            out[-1] = (i, line_end, is_close)
            cut = True
        else:
            out.append((i, line_end, is_close))
        if is_close:
            break
        pos = line_end
        if pos == i:  # pragma: no cover - defensive
            pos += 1
    return out, cut, odd


class _LineStartFinder:
    """The next ``dash`` that follows a LF or a CR, for one increasing
    ``look``: the first ``dash`` of all when a line end is before it, else
    the next "\\n" + dash and "\\r" + dash, each found by a
    search in C and reused while they lie ahead, so the rarer form is not
    searched again at every delimiter of the common one, and a body full of
    ``dash`` that is not at a line start costs no Python step per hit."""

    def __init__(self, reader: _Reader, dash: bytes, end: int) -> None:
        self.reader, self.dash, self.end = reader, dash, end
        self.ahead: dict[bytes, int] = {}
        self.searched: dict[bytes, int] = {}

    def find(self, look: int) -> int:
        """Where the first ``dash`` that follows a LF or a CR at or after
        ``look`` starts (the line end and ``dash`` wholly inside
        ``[look, end)``), or -1."""
        # The first ``dash`` of all, when a line end is before it, is the
        # answer: one search, and the body is scanned once, not once for
        # each form.  Otherwise the two forms are searched for, so a body
        # full of ``dash`` off line starts costs no Python step per hit.
        i = self.reader.find(self.dash, look + 1, self.end)
        if i < 0:
            return -1
        if self.reader.read(i - 1, i) in (b"\n", b"\r"):
            return i
        hits = []
        for nl in (b"\n", b"\r"):
            j = self.ahead.get(nl, -1)
            if nl not in self.searched or (j >= 0 and j < look) or (j < 0 and self.searched[nl] > look):
                j = self.reader.find(nl + self.dash, look, self.end)
                self.ahead[nl], self.searched[nl] = j, look
            if j >= 0:
                hits.append(j)
        return min(hits) + 1 if hits else -1


def _before_line_end(src: Source | _Reader, i: int, floor: int) -> int:
    """The offset where the line ending that precedes offset ``i`` starts."""
    if i <= floor:
        return i
    prev = src.read(max(floor, i - 2), i)
    if prev.endswith(b"\r\n"):
        return i - 2
    if prev.endswith(b"\n") or prev.endswith(b"\r"):
        return i - 1
    return i


@dataclass
class _State:
    src: Source
    reader: _Reader
    limits: Limits
    count: int = 0  # parts parsed so far


def parse(src: Source, limits: Limits = Limits()) -> Part:
    """Parse the message in ``src`` into a tree of parts by offsets; never
    raises for what the message holds (see the module docstring)."""
    state = _State(src, _Reader(src), limits)
    return _parse_part(state, 0, src.size, 0, "", "text/plain", attached=False)


def _parse_part(st: _State, start: int, end: int, depth: int, path: str, default_type: str,
                attached: bool) -> Part:
    limits = st.limits
    st.count += 1
    if st.count > limits.max_parts:
        return _unexamined(start, end, depth, path, attached, f"more than {limits.max_parts} MIME parts")
    try:
        hdr_end, body_start = _header_end(st.src, start, end, limits)
    except _HeaderProblem as e:
        return _unexamined(start, end, depth, path, attached, str(e))
    headers = _parse_headers(st.src.read(start, hdr_end))
    if default_type != "text/plain":
        headers.set_default_type(default_type)
    part = Part(start=start, body_start=body_start, end=end, headers=headers, depth=depth, path=path,
                in_attached_message=attached)
    part.unexamined = _check_fields(part, limits)
    if part.unexamined is not None:
        return part
    if depth > limits.max_depth:
        part.unexamined = f"MIME nesting deeper than {limits.max_depth}"
        return part
    ctype = headers.get_content_type()
    if headers.get_content_maintype() == "multipart":
        _parse_multipart(st, part)
    elif ctype in ATTACHED_MESSAGE_TYPES:
        # Saved under its name, an attached message is a file like any
        # other: as invoice.hta or run.bat, mshta or cmd skips its header
        # lines and runs the rest.  Only a message's own names pass.
        if _extension(part.filename) not in _MESSAGE_EXTENSIONS:
            part.unexamined = f"an attached message named {_short(ascii(part.filename))}"
            return part
        _parse_attached(st, part)
    elif ctype == "message/partial":
        part.unexamined = "a message fragment cannot be examined"
    return part


def _unexamined(start: int, end: int, depth: int, path: str, attached: bool, reason: str) -> Part:
    """A part whose header block was not read: all of it is body to the
    worker, and its headers are empty."""
    return Part(start=start, body_start=start, end=end, headers=Message(), depth=depth, path=path,
                unexamined=reason, in_attached_message=attached)


def _check_fields(part: Part, limits: Limits) -> str | None:
    """Read Content-Type and Content-Disposition with the linear parser and
    refuse what is ambiguous; the reason, or None when all is clear."""
    headers = part.headers
    for name in ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition"):
        n = len(headers.get_all(name) or [])
        if n > 1:
            return f"{n} {name} header fields"
    for name in ("Content-Type", "Content-Disposition"):
        value = headers.get(name)
        if value is not None and str(value).replace("\\\\", "").replace('\\"', "").count('"') % 2:
            # Where the quoted string ends is each reader's guess:
            # 'charset="utf-8; name=run.html' names a file to some.
            return f"an unbalanced quote in {name}"
        try:
            parsed = parse_params(None if value is None else str(value), limits.max_params)
        except TooManyParams as e:
            # Cut the field back to its bare value: the worker may still
            # call get_param/get_content_type on these headers, and Python's
            # parameter code is quadratic in the number of ';'.
            bare = str(value).split(";", 1)[0].strip()
            del headers[name]
            headers[name] = bare
            return f"a {name} field with {e.count} ';' (limit {e.limit})"
        if any("(" in n or ")" in n for n in parsed.names()):
            # "attachment; (c) filename=x.js": an RFC reader skips the
            # comment and finds the name, a simple one does not.
            return f"a comment among the {name} parameters"
        if any(n == "boundary" for n, _ in parsed.alternates):
            # 'boundary="b1"X': b1X here, b1 to Python and Mozilla.
            return "ambiguous multipart boundary (text after its quoted value, or blanks in it)"
        if name == "Content-Disposition" and value is not None \
                and parsed.value.strip().lower() not in ("", "inline", "attachment"):
            # "attachment (c)", "attachment.": an attachment to an RFC reader
            # (comments dropped; an unknown type is one, RFC 2183 section 2.8),
            # message text to a reader that compares the word.
            return f"a Content-Disposition neither inline nor attachment ({_short(ascii(parsed.value.strip()))})"
        if value is not None and not _FIELD_VALUE.fullmatch(parsed.value.strip()):
            # "attachment filename=run.js" (no ';'): a file's name to a
            # lenient reader, a disposition type nobody knows to Python.
            return f"a {name} value that is not one word ({_short(ascii(parsed.value.strip()))})"
        if name == "Content-Type" and value is not None and _SPLIT_TYPE.search(parsed.value.strip()):
            # "message/rfc822 (x)", "application/javascript (x)": an RFC
            # reader drops the comment (Mozilla stops at the blank) and
            # opens an attached message, a digest or a script; Python's
            # get_content_type keeps it all, a type nobody knows.
            return f"a Content-Type read two ways ({_short(ascii(parsed.value.strip()))})"
        if name == "Content-Type":
            part.type_params = parsed
        else:
            part.disposition_params = parsed
    part.params_read = True
    return _name_problem(part.type_params, part.disposition_params) or _field_name_problem(part)


# Fields Thunderbird names a file by when its parameters name none (after
# filename and name: "no RFC, but seen to occur", and Sun's MailTool).
_NAME_FIELDS = ("Content-Name", "X-Sun-Data-Name")


def _field_name_problem(part: Part) -> str | None:
    """Whether a name in a Content-Name or X-Sun-Data-Name field could make
    a client name the file otherwise than the gateway: such a name must
    agree with the parameters' and cannot be the only one (the gateway
    would judge a nameless part that Thunderbird saves as run.js)."""
    values = [" ".join(str(v).split()) for name in _NAME_FIELDS for v in part.headers.get_all(name) or []]
    names = [decode_2047(v).strip() for v in values if v]
    if not names:
        return None
    if not part.filename:
        return f"a file name only in a {'/'.join(_NAME_FIELDS)} field ({_short(ascii(names[0]))})"
    for name in names:
        if _CONTROL.search(name) or ENCODED_WORD.search(name) or not _names_agree(part.filename, name):
            return f"ambiguous file name ({_short(part.filename)!r} or {_short(name)!r})"
    return None


def _name_problem(ctype: Structured, disposition: Structured) -> str | None:
    """Whether readers could take different file names from this part.

    Refused: a name parameter given twice (``filename`` twice, or twice
    through RFC 2231 sections); names in ``filename*``, ``filename``,
    ``name*`` and ``name`` (the forms that different clients prefer) that
    disagree.  Two names agree when equal (after RFC 2047 decoding of the
    plain forms) or, as when a client writes an ASCII fallback beside the
    real name (RFC 6266 section 4.3), when they end in the same extension
    and one of them is not pure ASCII.  Also refused: a name with a control
    character in it (NUL, a line end, a tab, DEL or C1), which readers cut,
    drop or keep each their own way: ``run.vbs<NUL>.txt`` is ``run.vbs`` to
    one and ``run.vbs.txt`` to another.  And a name that still holds an
    encoded word once decoded (an unknown charset, or ``=?...?=`` inside an
    RFC 2231 value), which a client may decode to ``a.js``.
    """
    found: list[str] = []
    # A "name" on Content-Disposition is no standard's, but some clients
    # name the file by it: it must agree too, and cannot be the only name
    # (the gateway would judge a nameless part that a client saves as x.js).
    for params, key in ((disposition, "filename*"), (disposition, "filename"),
                        (ctype, "name*"), (ctype, "name"), (disposition, "name*"), (disposition, "name")):
        values = params.get_all(key)
        if len(values) > 1:
            return f"ambiguous file name ({len(values)} {key} parameters)"
        if values and values[0].strip():
            if not found and params is disposition and key.startswith("name"):
                return "a file name only in the Content-Disposition's name parameter"
            found.append(values[0].strip() if key.endswith("*") else decode_2047(values[0]).strip())
    for params in (disposition, ctype):
        for key, alternate in params.alternates:
            # 'filename="notes.js".txt' or 'filename=notes.js .txt': notes.js
            # to readers that stop at the quote or the blank.  A reading
            # with no extension at all names nothing runnable.
            alternate = decode_2047(alternate).strip()
            if key in ("filename", "name") and found and _extension(alternate) \
                    and not _names_agree(found[0], alternate):
                return f"ambiguous file name ({_short(found[0])!r} or {_short(alternate)!r})"
    for name in found:
        if _CONTROL.search(name):
            return f"ambiguous file name (a control character in {_short(ascii(name))})"
        # Still an encoded word after decoding: a charset Python does not
        # know, or one inside an RFC 2231 value.  A client that decodes it
        # may find "a.js" where the gateway saw a name with no extension.
        if ENCODED_WORD.search(name):
            return f"ambiguous file name (an encoded word read one way here, another by a client: {_short(name)!r})"
    for other in found[1:]:
        if not _names_agree(found[0], other):
            return f"ambiguous file name ({_short(found[0])!r} or {_short(other)!r})"
    return None


def _names_agree(a: str, b: str) -> bool:
    if a == b:
        return True
    return _extension(a) == _extension(b) and not (a.isascii() and b.isascii())


def _extension(name: str) -> str:
    """The extension a file manager would use: after the last dot, with the
    trailing dots and blanks Windows drops removed."""
    name = name.strip().rstrip(". ").replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[1].lower() if "." in name else ""


def _short(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def _boundary(part: Part) -> tuple[str | None, str | None]:
    """(boundary, problem) from the Content-Type read by the linear parser."""
    values = part.type_params.get_all("boundary") + part.type_params.get_all("boundary*")
    if len(values) > 1:
        return None, f"ambiguous multipart boundary ({len(values)} boundary parameters)"
    if not values or not values[0].rstrip():  # rstrip: as Python's get_boundary
        return None, "a multipart without a boundary"
    boundary = values[0].rstrip()
    if len(boundary) > MAX_BOUNDARY:
        return None, f"a multipart boundary of {len(boundary)} characters (limit {MAX_BOUNDARY})"
    return boundary, None


def _parse_multipart(st: _State, part: Part) -> None:
    if part.cte not in _IDENTITY_CTES:
        # RFC 2045 forbids it; a reader that decodes it sees other parts.
        part.unexamined = f"a multipart with Content-Transfer-Encoding {part.cte[:40]}"
        return
    boundary, problem = _boundary(part)
    if problem is not None:
        part.defects.append(problem)
        part.unexamined = problem
        return
    assert boundary is not None
    try:
        bnd = boundary.encode("ascii")
    except UnicodeEncodeError:
        bnd = boundary.encode("utf-8", "surrogateescape")
    limits = st.limits
    remaining = max(0, limits.max_parts - st.count)
    delims, _cut, odd = _delimiters(st.reader, bnd, part.body_start, part.end, keep=remaining + 1)
    if odd is not None:
        # Readers would split this multipart differently: which parts there
        # are, and which of them is a file, is each reader's own.
        part.defects.append("a line other readers take for a delimiter")
        part.unexamined = "a line that some readers take for a multipart delimiter and others do not"
        return
    if not delims:
        part.defects.append("no delimiter found for boundary")
        if not _blank(st.src, part.body_start, part.end):
            # Readers differ on what such a body is (one text part, nothing,
            # or parts found by guessing the boundary).
            part.unexamined = "no delimiter line for the multipart boundary"
        return
    part.boundary = boundary
    child_default = "message/rfc822" if part.headers.get_content_subtype() == "digest" else "text/plain"
    for n, (_line_start, line_end, is_close) in enumerate(delims):
        if is_close:
            break
        nxt = delims[n + 1][0] if n + 1 < len(delims) else None
        child_path = f"{part.path}.{len(part.children) + 1}" if part.path else str(len(part.children) + 1)
        if st.count >= limits.max_parts:
            # The count has run out: the rest of the siblings, up to just
            # before the close delimiter, are one unexamined range.
            last_start, _, last_close = delims[-1]
            rest_end = _before_line_end(st.reader, last_start, line_end) if last_close else part.end
            part.children.append(_unexamined(line_end, max(line_end, rest_end), part.depth + 1, child_path,
                                             part.in_attached_message,
                                             f"more than {limits.max_parts} MIME parts"))
            break
        child_end = _before_line_end(st.reader, nxt, line_end) if nxt is not None else part.end
        if nxt is None:
            part.defects.append("missing close delimiter")
        part.children.append(_parse_part(st, line_end, child_end, part.depth + 1, child_path, child_default,
                                         part.in_attached_message))
    _, close_end, closed = delims[-1]
    if closed and close_end < part.end and _LineStartFinder(st.reader, b"--" + bnd, part.end).find(close_end - 1) >= 0:
        # The boundary again after the close delimiter.  Thunderbird asks a
        # nested multipart about a line before its parent, so with a child
        # of the same boundary the close delimiter here is the child's to
        # it, and what follows is more parts, which Python's parser (and
        # this one) leave unread in the epilogue: the epilogue is kept as
        # a part that was not examined.
        child_path = f"{part.path}.{len(part.children) + 1}" if part.path else str(len(part.children) + 1)
        part.children.append(_unexamined(close_end, part.end, part.depth + 1, child_path, part.in_attached_message,
                                         "text after the multipart's close delimiter that readers take for parts"))
    if not part.children:
        part.defects.append("multipart with no parts")


def _parse_attached(st: _State, part: Part) -> None:
    """Parse the message in a message/rfc822 (or message/global) body as
    the part's one child."""
    if part.cte not in _IDENTITY_CTES:
        # RFC 2046 forbids encoding it; its structure is not at any offset.
        part.unexamined = ENCODED_MESSAGE
        return
    if _blank(st.src, part.body_start, part.end):
        return  # an empty attached message holds nothing to examine
    child_path = f"{part.path}.1" if part.path else "1"
    part.children.append(_parse_part(st, part.body_start, part.end, part.depth + 1, child_path,
                                     "text/plain", attached=True))


def _blank(src: Source, start: int, end: int) -> bool:
    """Whether ``[start, end)`` holds only blanks and line ends (looked at
    only when short: a long body is taken as not blank)."""
    return end - start <= 65536 and not src.read(start, end).strip()
