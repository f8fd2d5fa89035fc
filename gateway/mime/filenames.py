"""Filenames from the message: read them carefully, never trust them.

A filename comes from ``Content-Disposition: filename`` (RFC 2231 encoded as
``filename*`` when non-ASCII) or from the older ``Content-Type: name``, often
RFC 2047 encoded by mail clients that ignore the standards.  The original is
kept for the download's Content-Disposition (percent-encoded in
``filename*``) and, without control characters, for the link text;
everything that becomes an object key or a header is made from the sanitised
form, which holds only ``[A-Za-z0-9._-]``, never starts with a dot and is
bounded in length.
"""
from __future__ import annotations

import re
import unicodedata
from email.message import Message
from urllib.parse import quote

from gateway.mime.params import Structured, decode_2047, parse_params

MAX_KEY_NAME = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Unicode categories left out of every name shown or stored: format
# characters, line and paragraph separators, surrogates.
_INVISIBLE = frozenset({"Cf", "Zl", "Zp", "Cs"})


def original_filename(headers: Message) -> str:
    """The filename the sender gave, decoded for display ('' when none).

    Read with the linear-time ``gateway.mime.params`` (Python's
    ``get_param`` is quadratic in the number of ``;``): see ``filename_from``.
    """
    return filename_from(parse_params(_field(headers, "Content-Type"), max_params=None),
                         parse_params(_field(headers, "Content-Disposition"), max_params=None))


def filename_from(ctype: Structured, disposition: Structured) -> str:
    """The filename in a part's parsed Content-Type and Content-Disposition
    (``''`` when none).

    ``filename*`` (RFC 2231) wins over a plain ``filename``: it is the
    standard form of the same name, and Python's own preference for the
    plain one is a known pitfall.  A plain ``filename`` has RFC 2047 encoded
    words decoded; without either, the Content-Type ``name`` (``name*``
    first) is used.  The parser has already marked a part whose names
    disagree as unexamined, so this choice never decides what a file is.
    """
    for params, key in ((disposition, "filename*"), (disposition, "filename"), (ctype, "name*"), (ctype, "name")):
        value = params.get(key)
        if value:
            return value.strip() if key.endswith("*") else decode_2047(value).strip()
    return ""


def _field(headers: Message, name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else str(value)


def _visible(name: str) -> str:
    """``name`` without control characters (CR, LF, NUL, C1), without
    format characters (Unicode category Cf: the bidi controls U+202A-202E,
    U+2066-2069, U+200E/200F, U+061C, zero-width spaces and joiners, ...),
    which could make ``invoice<U+202E>fdp.exe`` read as ``invoiceexe.pdf``,
    without the line and paragraph separators U+2028 and U+2029 (a name is
    one line wherever it is shown), and without lone surrogates (category
    Cs: what a JSON ``\\udcff`` or an undecodable header byte becomes),
    which no UTF-8 record, header or page can carry."""
    name = _CONTROL.sub("", name)
    if not name.isascii():
        name = "".join(ch for ch in name if unicodedata.category(ch) not in _INVISIBLE)
    return name


# A URL scheme's "://" and a "www." that starts a word: what mail clients
# and markdown renderers turn into a link.
_SCHEME = re.compile(r":(?=[/\\]{2})")  # ":" before two slashes or backslashes: clients link both
_WWW = re.compile(r"(?<![^\W_])(www)\.", re.IGNORECASE)


def display_name(name: str) -> str:
    """The name for showing to people in a message body or a page: still in
    its own script, but with nothing in it that could act rather than read.

    Control characters and Unicode format characters (bidi overrides,
    zero-width characters: ``_visible``) are removed; text that a mail
    client or a markdown renderer would turn into a link is broken the way
    security tools "defang" URLs, with brackets: ``http://evil.example/x``
    shows as ``http[:]//evil.example/x`` and ``www.evil.example`` as
    ``www[.]evil.example``, so a file name never brings a clickable link into
    the body.  The result is at most 255 characters, and applying it again
    changes nothing."""
    name = _visible(name).strip()
    if ":" in name:
        name = _SCHEME.sub("[:]", name)
    if "." in name:
        name = _WWW.sub(r"\1[.]", name)
    return name[:255]


def sanitise(name: str, default: str = "attachment") -> str:
    """A safe object-key component for ``name``: ASCII letters, digits, dot,
    dash, underscore; no leading dot; at most MAX_KEY_NAME characters with the
    extension kept."""
    name = display_name(name).replace("\\", "/").rsplit("/", 1)[-1]
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    safe = _UNSAFE.sub("_", ascii_name).strip("._-")
    safe = re.sub(r"\.{2,}", ".", safe)
    if not safe:
        return default
    if len(safe) > MAX_KEY_NAME:
        stem, dot, ext = safe.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            safe = stem[: MAX_KEY_NAME - len(ext) - 1] + "." + ext
        else:
            safe = safe[:MAX_KEY_NAME]
    return safe


# Longest name carried in a Content-Disposition (the fallback and filename*).
MAX_DISPOSITION_NAME = 200
# RFC 5987 attr-char besides letters and digits: left as they are in filename*.
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"
# Longest percent-encoded filename*: a MIME header line the gateway writes
# holds at most 998 characters (RFC 5322 section 2.1.1), and 200 characters
# of four UTF-8 bytes each encode to 2,400.  With the field name, the
# disposition and the quoted fallback (at most 200) the line stays under 998.
MAX_ENCODED_NAME = 600


def bounded(name: str, limit: int) -> str:
    """``name`` at most ``limit`` characters, its extension kept: cut
    anywhere else, ``<199 characters>.js.txt`` (judged as text) would be
    saved as ``<199 characters>.js``, a script Windows runs."""
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and len(ext) < 16:
        return stem[: limit - len(ext) - 1] + "." + ext
    # No extension the policies could have allowed (they judged this one,
    # longer than any on their lists): cut, and drop what Windows would
    # strip, so no dot or space ends the name either.
    return name[:limit].rstrip(". ")


def visible_basename(filename: str) -> str:
    """The name's last path component, without control or format characters."""
    return _visible(filename.replace("\\", "/").rsplit("/", 1)[-1]).strip()


def ascii_filename(filename: str, default: str = "attachment") -> str:
    """A plain-ASCII stand-in for ``filename`` for the quoted ``filename=``
    parameter: accents dropped, other non-ASCII and ``"\\%;`` replaced by "_",
    path components removed."""
    name = visible_basename(filename)
    out = []
    for c in unicodedata.normalize("NFKD", name):
        if unicodedata.combining(c):
            continue
        out.append(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%;' else "_")
    stem, dot, ext = "".join(out).strip(" .").rpartition(".")
    if not dot:
        stem, ext = ext, ""
    if not re.search(r"[A-Za-z0-9]", stem):
        stem = default  # nothing recognisable left, e.g. a Cyrillic name
    if not re.search(r"[A-Za-z0-9]", ext):
        ext = ""
    return bounded(stem + ("." + ext if ext else ""), MAX_DISPOSITION_NAME)


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """An RFC 6266 Content-Disposition value carrying the sender's file name:
    ``attachment; filename="ascii-fallback"; filename*=UTF-8''percent-encoded``
    (the second only when the name is not plain ASCII).

    The one builder for every download and every entity the gateway writes.
    The name is reduced to its last path component, stripped of control and
    format characters (a bidi override would disguise the extension of the
    saved file) and bounded; it never reaches a header as given."""
    name = visible_basename(filename)
    if not name:
        return disposition
    fallback = ascii_filename(name)
    value = f'{disposition}; filename="{fallback}"'
    if name != fallback:
        # Bounded as the fallback is: browsers save by filename*, so its
        # extension is the one the agent's computer opens the file by.
        value += f"; filename*=UTF-8''{_encoded_name(bounded(name, MAX_DISPOSITION_NAME))}"
    return value


def _encoded_name(name: str) -> str:
    """``name`` percent-encoded for ``filename*``, at most MAX_ENCODED_NAME
    characters: a longer one loses the end of its stem, never its extension
    (what the saved file opens with)."""
    encoded = quote(name, safe=_ATTR_CHAR_SAFE)
    if len(encoded) <= MAX_ENCODED_NAME:
        return encoded
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) >= 16:
        stem, ext = name, ""
    tail = quote(("." + ext) if ext else "", safe=_ATTR_CHAR_SAFE)
    kept, size = [], len(tail)
    for ch in stem:
        piece = quote(ch, safe=_ATTR_CHAR_SAFE)
        if size + len(piece) > MAX_ENCODED_NAME:
            break
        kept.append(ch)
        size += len(piece)
    cut = "".join(kept)
    if not ext:
        cut = cut.rstrip(". ")  # as bounded: Windows would strip them, leaving another name
    return quote(cut, safe=_ATTR_CHAR_SAFE) + tail
