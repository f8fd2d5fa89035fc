"""Parameters of a structured header field, parsed in linear time.

``Content-Type`` and ``Content-Disposition`` carry ``; name=value``
parameters.  Python's ``Message.get_params``/``get_param`` split them with
``email.message._parseparam``, which copies the rest of the string once per
``;`` (and counts quotes from the start of the string once per ``;`` inside
a quoted string): a few hundred KB of ``;`` keeps a worker busy for minutes.
This module reads the value in one pass and refuses more than a configured
number of ``;`` (``TooManyParams``), so the parser can mark such a part
unexamined before anything hands the field to Python's code.

What it understands: ``token`` and ``"quoted string"`` values (inside
quotes only ``\\"`` and ``\\\\`` are escapes, as in Python's compat32
``unquote``, so a Windows path keeps its backslashes); RFC 2231 extended
values ``name*=charset'lang'%XX``, continuations ``name*0``, ``name*1``
and extended continuations ``name*0*``.  Names come back lower-cased; a
value that was given in the extended (charset-encoded) form is named with a
trailing ``*`` (``filename*``) so callers can tell the two forms apart.
RFC 2047 encoded words are left as they are (that is the caller's choice).
"""
from __future__ import annotations

import binascii
import email.base64mime
import email.quoprimime
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import make_header
from urllib.parse import unquote_to_bytes

DEFAULT_MAX_PARAMS = 64

# A quoted string's content, then its closing quote when there is one;
# possessive, so it never backtracks.
_QUOTED = re.compile(r'((?:[^"\\]++|\\["\\]|\\(?!["\\]))*+)"?')
_ESCAPE = re.compile(r'\\(["\\])')
_SKIP = re.compile(r"[ \t\r\n;]*")
_BLANKS = re.compile(r"[ \t\r\n]*")
_SECTION = re.compile(r"^(?P<base>[^*]+)\*(?P<num>[0-9]+)(?P<ext>\*)?$")


class TooManyParams(ValueError):
    """The field holds more ``;``-separated items than allowed."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} header parameters (limit {limit})")
        self.count = count
        self.limit = limit


@dataclass
class Structured:
    """A parsed structured field: its value (``text/plain``, ``attachment``)
    and its parameters in order, names lower-cased, RFC 2231 collapsed."""

    value: str
    params: list[tuple[str, str]] = field(default_factory=list)
    # Other readings of a plain parameter (name, value) that readers take:
    # the quoted string alone where text follows its closing quote
    # ('"a.js".txt'), the first word of an unquoted value with blanks in
    # it ('a.js .txt').  This module keeps the whole; Python's current
    # parser and Mozilla's stop there.
    alternates: list[tuple[str, str]] = field(default_factory=list)

    def get_all(self, name: str) -> list[str]:
        """Every value of parameter ``name`` (lower-case; with ``*`` for the extended form)."""
        return [v for n, v in self.params if n == name]

    def get(self, name: str) -> str | None:
        """The first value of parameter ``name``, or None."""
        for n, v in self.params:
            if n == name:
                return v
        return None

    def names(self) -> list[str]:
        return [n for n, _ in self.params]


def parse_params(header: str | None, max_params: int | None = DEFAULT_MAX_PARAMS) -> Structured:
    """Parse a structured field value in one pass.

    Raises ``TooManyParams`` when the value holds more than ``max_params``
    ``;`` characters (empty items and ``;`` inside quoted strings count:
    they are what makes Python's own parser slow); ``None`` means no cap,
    for callers that only ever see fields the parser has already bounded.
    """
    if header is None:
        return Structured("")
    text = str(header)
    if max_params is not None:
        count = text.count(";")
        if count > max_params:
            raise TooManyParams(count, max_params)
    semi = text.find(";")
    if semi < 0:
        return Structured(text.strip())
    alternates: list[tuple[str, str]] = []
    raw = _split(text, semi + 1, alternates)
    return Structured(text[:semi].strip(), _collapse(raw), alternates)


def _split(text: str, pos: int, alternates: list[tuple[str, str]]) -> list[tuple[str, str, bool]]:
    """(name, value, was_quoted) for each parameter after ``pos``: one pass,
    every character looked at a bounded number of times.  Other readings of
    a value are added to ``alternates``."""
    out: list[tuple[str, str, bool]] = []
    n = len(text)
    eq = -2  # the next '=' at or after pos, found once and reused: no rescans
    while pos < n:
        # Skip separators and blanks before a name.
        pos = _SKIP.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= n:
            break
        semi = text.find(";", pos)
        if eq != -1 and eq < pos:
            eq = text.find("=", pos)
        if eq < 0 or (0 <= semi < eq):
            # A name without a value ("attachment; inline; x"): kept, as
            # Python keeps it, with an empty value.
            stop = n if semi < 0 else semi
            name = text[pos:stop].strip().lower()
            if name:
                out.append((name, "", False))
            pos = stop
            continue
        name = text[pos:eq].strip().lower()
        pos = eq + 1
        pos = _BLANKS.match(text, pos).end()  # type: ignore[union-attr]
        quoted = pos < n and text[pos] == '"'
        if quoted:
            m = _QUOTED.match(text, pos + 1)
            assert m is not None  # the pattern matches the empty string
            value = _ESCAPE.sub(r"\1", m.group(1))
            pos = m.end()
            # Anything between the closing quote and the next ';' is kept:
            # 'filename="a.pdf".exe' is judged by what follows the quote.
            semi = text.find(";", pos) if pos < n else -1
            stop = n if semi < 0 else semi
            junk = text[min(pos, n):stop].strip()
            if junk:
                alternates.append((name, value))
            value += junk
            pos = stop
        else:
            semi = text.find(";", pos)
            stop = n if semi < 0 else semi
            value = text[pos:stop].strip()
            first = value.split(None, 1)[0] if value else ""
            if first != value:
                alternates.append((name, first))
            pos = stop
        if name:
            out.append((name, value, quoted))
    return out


def _collapse(raw: list[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    """Join RFC 2231 sections and decode extended values; the parameter
    keeps the position of its first section.  A section number given twice
    makes a second parameter of the same name, so a caller checking for
    duplicates sees the ambiguity."""
    out: list[tuple[str, str] | None] = []
    groups: dict[str, tuple[int, dict[int, tuple[bool, str]]]] = {}
    for name, value, _quoted in raw:
        m = _SECTION.match(name)
        if m:
            base, num, ext = m.group("base"), int(m.group("num")), bool(m.group("ext"))
            slot = groups.get(base)
            if slot is None or num in slot[1]:
                if slot is not None:  # a repeated section: flush the old group as its own parameter
                    out[slot[0]] = _join(base, slot[1])
                groups[base] = (len(out), {num: (ext, value)})
                out.append(None)
            else:
                slot[1][num] = (ext, value)
            continue
        if name.endswith("*") and len(name) > 1:
            out.append((name, _decode_extended(value, first=True)[1]))
            continue
        out.append((name, value))
    for base, (index, sections) in groups.items():
        out[index] = _join(base, sections)
    return [p for p in out if p is not None]


def _join(base: str, sections: dict[int, tuple[bool, str]]) -> tuple[str, str]:
    """One parameter from its numbered sections (in number order)."""
    extended = any(ext for ext, _ in sections.values())
    if not extended:
        return base, "".join(v for _, (_, v) in sorted(sections.items()))
    charset = ""
    data = bytearray()
    for i, (_num, (ext, value)) in enumerate(sorted(sections.items())):
        if ext:
            cs, decoded = _decode_bytes(value, first=(i == 0))
            if i == 0:
                charset = cs
            data += decoded
        else:
            data += value.encode("utf-8", "surrogateescape")
    return base + "*", _to_text(bytes(data), charset)


def _decode_bytes(value: str, first: bool) -> tuple[str, bytes]:
    """(charset, bytes) of an extended value; only the first section has
    the ``charset'language'`` prefix."""
    charset = ""
    if first and value.count("'") >= 2:
        charset, _lang, value = value.split("'", 2)
    return charset, unquote_to_bytes(value)


def _decode_extended(value: str, first: bool) -> tuple[str, str]:
    charset, data = _decode_bytes(value, first)
    return charset, _to_text(data, charset)


def _to_text(data: bytes, charset: str) -> str:
    """Bytes in ``charset``; an unknown or missing charset reads as UTF-8,
    undecodable bytes replaced (a name is for judging and showing, and
    replacement cannot make a name look like another extension)."""
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _encoded_words(text: str) -> Iterator[tuple[int, int, str, str, str]]:
    """(start, end, charset, encoding, encoded text) of each match of
    ``email.header.ecre`` in ``text``, in order, found in linear time.

    The pattern (``=?charset?Q?text?=``) reads to the end of the line for
    each ``=?x?q?`` that no ``?=`` follows: 64 KiB of them took 3 s.  Here
    the first ``?=`` and the first newline after a word's start are found
    once and reused while they lie ahead."""
    pos = 0
    close = newline = -2  # -2: not searched yet; else the first "?=" (LF) at or after the last search
    n = len(text)
    while (i := text.find("=?", pos)) >= 0:
        q = text.find("?", i + 2)  # the charset is all before the first "?"
        if q < 0:
            return
        start = q + 3
        if q + 2 < n and text[q + 1] in "qQbB" and text[q + 2] == "?":
            if close == -2 or 0 <= close < start:
                close = text.find("?=", start)
            if close < 0:
                return  # no "?=" after this word's start: none after any later one
            if newline == -2 or 0 <= newline < start:
                newline = text.find("\n", start)
            if newline < 0 or newline >= close:  # "." in the pattern is all but LF
                yield i, close + 2, text[i + 2:q], text[q + 1], text[start:close]
                pos = close + 2
                continue
        pos = i + 1


def decode_header(header: str) -> list[tuple[bytes | str, str | None]]:
    """``email.header.decode_header`` of a str, the same answer in linear
    time (its pattern, and its list and bytes handling, are quadratic)."""
    if next(_encoded_words(header), None) is None:
        return [(header, None)]
    words: list[tuple[str, str | None, str | None]] = []  # (text, encoding, charset)
    for line in header.splitlines():
        pos = 0
        for start, end, word_charset, word_encoding, encoded in _encoded_words(line):
            unencoded = line[pos:start] if pos else line[:start].lstrip()
            if unencoded:
                words.append((unencoded, None, None))
            words.append((encoded, word_encoding.lower(), word_charset.lower()))
            pos = end
        unencoded = line[pos:] if pos else line.lstrip()
        if unencoded:
            words.append((unencoded, None, None))
    # Blanks between two encoded words go.
    drop = {k - 1 for k, w in enumerate(words) if k > 1 and w[1] and words[k - 2][1] and words[k - 1][0].isspace()}
    decoded: list[tuple[bytes | str, str | None]] = []
    for k, (text, encoding, charset) in enumerate(words):
        if k in drop:
            continue
        if encoding is None:
            decoded.append((text, charset))
        elif encoding == "q":
            decoded.append((email.quoprimime.header_decode(text), charset))
        else:
            if len(text) % 4:  # as Python: missing padding added
                text += "==="[:4 - len(text) % 4]
            try:
                decoded.append((email.base64mime.decode(text), charset))
            except binascii.Error:
                raise HeaderParseError("Base64 decoding error") from None
    # Runs of words in one charset joined (unencoded ones with a space).
    collapsed: list[tuple[bytes | str, str | None]] = []
    run: list[bytes] = []
    last_charset: str | None = None
    for word, run_charset in decoded:
        data = bytes(word, "raw-unicode-escape") if isinstance(word, str) else word
        if run and run_charset != last_charset:
            collapsed.append((b"".join(run) if last_charset is not None else b" ".join(run), last_charset))
            run = []
        run.append(data)
        last_charset = run_charset
    collapsed.append((b"".join(run) if last_charset is not None else b" ".join(run), last_charset))
    return collapsed


# An encoded word's language (RFC 2231 section 5: "=?utf-8*en?B?...?="),
# which Python's decoder does not take: dropped before decoding.
_WORD_LANGUAGE = re.compile(r"(=\?[^?*\s]+)\*[^?\s]*\?")
#: An RFC 2047 encoded word, decoded or not.
ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def decode_2047(value: str) -> str:
    """``value`` with RFC 2047 encoded words decoded (many clients put them
    in a plain ``filename``); unchanged when they are malformed."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(_WORD_LANGUAGE.sub(r"\1?", value))))
    except Exception:  # noqa: BLE001 - malformed encoded words are common
        return value
