"""Files an HTML part carries inside itself, as ``data:`` URLs.

``<a href="data:application/octet-stream;base64,TVqQ..." download="invoice.exe">``
is a program the agent saves with one click from a browser-based agent
desktop, and the gateway never sees it as a part: HTML smuggling.  Such an
HTML part cannot be examined as the message's text; the worker refuses it
as unexamined (quarantined, a notice in its place), and the text part of
the message still goes.

What counts: a ``data:`` URL in an attribute value or a CSS ``url()``, or
spelled as one anywhere (a srcdoc's HTML is escaped once more), whose
media type is not a plain raster image (a page, an SVG, a program, no type
at all), and any ``data:`` URL when the HTML also has a ``download``
attribute (which saves even an "image" under the name it gives).  Inline
raster images as ``data:`` URLs, common in real mail, pass.  The bytes are
read as a browser reads an attribute: character references decoded, tabs
and line ends dropped (the URL parser removes them), case ignored.
"""
from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator

# Raster image types a data: URL may carry: shown, never run.
_IMAGES = frozenset({b"image/png", b"image/jpeg", b"image/jpg", b"image/pjpeg", b"image/gif", b"image/webp",
                     b"image/bmp", b"image/x-icon", b"image/vnd.microsoft.icon", b"image/avif"})
# The character references that can spell what is looked for: "data:",
# "url(" (in a style attribute) and the white space around them, in either
# case.  Only these are decoded: a Python call for each of the many other
# references real HTML holds (&#8217;) cost more than the rest of the read.
_REFERENCE = re.compile(rb"&#(?:x0*(64|44|61|41|74|54|3a|75|55|72|52|6c|4c|28|9|a|c|d|20)(?![0-9a-f])"
                        rb"|0*(100|68|97|65|116|84|58|117|85|114|82|108|76|40|9|10|12|13|32)(?![0-9]));?"
                        rb"|&(colon|tab|newline|lpar);", re.I)
_NAMED = {b"colon": b":", b"tab": b"\t", b"newline": b"\n", b"lpar": b"("}
# A data: URL and its media type.  Searched for by its literal, then its
# context looked at (a pattern that starts at every '=' cost twice the
# rest of the read): see _counts.
_DATA_URL = re.compile(rb"data:([^,;\"'\s>)]*)")
_DOWNLOAD = re.compile(rb"[\s\"'/]download[\s=/>]")
_CARRY = 4096  # bytes kept from one chunk for the next: a match never spans more


def _reference(m: re.Match[bytes]) -> bytes:
    if m.group(3) is not None:
        return _NAMED[m.group(3).lower()]
    code = int(m.group(1), 16) if m.group(1) is not None else int(m.group(2))
    return bytes([code]) if code < 128 else b"?"


def _readable(data: bytes) -> bytes:
    """``data`` as a browser's URL parser reads an attribute value."""
    if b"&" in data:
        data = _REFERENCE.sub(_reference, data)
    return data.translate(None, b"\t\r\n").lower()


def _counts(data: bytes, m: re.Match[bytes]) -> bool:
    """Whether the ``data:`` found by ``m`` is a URL: where one is read
    (after '=', an attribute or a refresh's url=, or CSS's 'url(', past
    blanks and a quote), or, wherever it is, spelled as one (a media type,
    or the ',' or ';' after it): HTML escaped once more, as in an iframe's
    srcdoc (&quot;), is a page in the page.  Prose ("our data: see") is not."""
    start = m.start()
    if start and data[start - 1:start].isalnum():
        return False  # "metadata:", a word that ends in data
    before = data[max(0, start - 64):start].rstrip(b" \t\n\r\x0b\x0c\"'")
    return before.endswith((b"=", b"url(")) or b"/" in m.group(1) or data[m.end():m.end() + 1] in (b",", b";")


# Byte order marks: a browser decodes by one whatever the charset says.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# What must read the same in a charset for its bytes to be searched as they are.
_PROBE = "<a href=\"data:,\" download>&#;()"


def _ascii_text(chunks: Iterable[bytes], charset: str | None) -> Iterator[bytes]:
    """``chunks`` as ASCII-compatible bytes: as they are, or, in a charset
    that spells ``data:`` otherwise (UTF-16, UTF-32, EBCDIC), or behind
    such a byte order mark, decoded and written as UTF-8."""
    it = iter(chunks)
    first = next(it, b"")
    encoding = next((name for bom, name in _BOMS if first.startswith(bom)), None)
    if encoding is None and charset:
        try:
            same = _PROBE.encode(charset) == _PROBE.encode("ascii")
        except (LookupError, UnicodeError, ValueError):
            same = True  # a charset Python does not know: readers fall back to an ASCII one
        encoding = None if same else charset
    if encoding is None:
        yield first
        yield from it
        return
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    yield decoder.decode(first).encode("utf-8")
    for chunk in it:
        yield decoder.decode(chunk).encode("utf-8")
    yield decoder.decode(b"", final=True).encode("utf-8")


def embedded_file(chunks: Iterable[bytes], charset: str | None = None) -> str | None:
    """Why the HTML in ``chunks`` (decoded from its transfer encoding, in
    ``charset``) carries a file of its own, or None."""
    chunks = _ascii_text(chunks, charset)
    carry = b""
    images = download = False
    for chunk in chunks:
        data = _readable(carry + chunk)
        for m in _DATA_URL.finditer(data):
            if not _counts(data, m):
                continue
            kind = m.group(1).strip()
            if kind not in _IMAGES:
                return f"a file in the HTML as a data: URL ({(kind or b'no type').decode('ascii', 'replace')[:40]})"
            images = True
        # The literal first: most HTML has no such word.
        download = download or (b"download" in data and bool(_DOWNLOAD.search(data)))
        if images and download:
            return "a data: URL in HTML with a download attribute"
        carry = chunk[-_CARRY:] if len(chunk) >= _CARRY else (carry + chunk)[-_CARRY:]
    return None
