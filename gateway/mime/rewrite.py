"""Rewriting a message: replace some parts, add links to the bodies, copy the rest.

The output is a list of segments: byte ranges of the spooled original and
new bytes in between.  Only the parts a decision touched are rebuilt (an
offloaded or refused part becomes a short text notice; the text and HTML
bodies get the links); every other byte, headers included, is copied from
the original unchanged, so untouched parts stay byte-identical.  New text is
UTF-8, quoted-printable where it is not ASCII, so the output is 7-bit clean
wherever the input was.

Every byte written here is CRLF-clean (``clean_lines``): no NUL, no CR or LF
outside a CRLF, whatever the input.  A rebuilt body whose data has such
bytes (an 8bit body with a bare LF, a quoted-printable one with ``=0D``) is
written quoted-printable, where they are ``=0D``/``=0A``/``=00``; a body in a
charset that is not ASCII-compatible (UTF-16, UTF-7, EBCDIC) is decoded and
written again as UTF-8, so the added text is never encoded in a charset in
which it could become arbitrary bytes.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import html
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from gateway.lineends import clean_lines, is_clean
from gateway.mime.decode import decoded_bytes
from gateway.mime.filenames import display_name
from gateway.mime.htmlpoint import insertion_point
from gateway.mime.parse import Part
from gateway.mime.source import Source

Segment = bytes | tuple[int, int]
CRLF = b"\r\n"
_FIELD_START = re.compile(rb"^[^ \t\r\n]")


@dataclass(frozen=True)
class Link:
    """One offloaded attachment as the agent sees it."""

    filename: str
    size: int
    url: str
    # The link's text and size as the route's language writes them
    # (gateway/mailtext.py); when empty, ``template`` and ``human_size``.
    label: str = ""
    size_text: str = ""


@dataclass(frozen=True)
class Replacement:
    """A part to be replaced by a text notice (or, with ``raw``, by a whole
    new entity, headers included: the files of an unpacked TNEF)."""

    part: Part
    notice: str
    raw: bytes | None = None


def human_size(n: int) -> str:
    """Sizes as agents read them: ``12.0 MB`` (binary megabytes), ``100 KB``."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.0f} KB"
    return f"{n} bytes"


_TEMPLATE_FIELD = re.compile(r"\{(filename|size)\}")


def link_label(template: str, link: Link) -> str:
    """The link text from the route's template ({filename}, {size}).

    The template is expanded in one pass over the template alone, so text
    that came from the file name (a name holding ``{size}``) is never
    expanded; the name is shown as ``display_name`` makes it."""
    if link.label:
        return link.label
    fields = {"filename": display_name(link.filename) or "attachment", "size": human_size(link.size)}
    return _TEMPLATE_FIELD.sub(lambda m: fields[m.group(1)], template)


def _size(link: Link) -> str:
    return link.size_text or human_size(link.size)


# Characters that could end or change markdown link text: brackets (the
# label's own delimiters), ``<`` and ``>`` (autolinks, raw HTML), backticks
# (a code span outranks the link's brackets) and the escape character
# itself.  Parentheses and emphasis cannot leave the brackets once these
# are escaped, so they stay readable.
_MARKDOWN_SPECIAL = re.compile(r"([\\`\[\]<>])")


def _markdown_label(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def text_links(links: list[Link], template: str) -> str:
    """The markdown link lines added to a text/plain body."""
    return "\n".join(f"[{_markdown_label(link_label(template, link))}]({link.url}) ({_size(link)})"
                     for link in links)


def html_links(links: list[Link], template: str) -> str:
    """The ``<a>`` elements added to a text/html body."""
    items = "".join(
        f'<p><a href="{html.escape(link.url)}">{html.escape(link_label(template, link))}</a>'
        f' ({_size(link)})</p>'
        for link in links)
    return f'<div class="attachment-gateway-links">{items}</div>'


def text_notices(notices: list[str]) -> str:
    """The notice lines added to a text/plain body (one per removed file)."""
    return "\n".join(notices)


def html_notices(notices: list[str]) -> str:
    """The notices as a block added to a text/html body."""
    items = "".join(f"<p>{html.escape(n)}</p>" for n in notices)
    return f'<div class="attachment-gateway-notices">{items}</div>'


_IMG_CID = re.compile(rb"""<img\b[^>]*?\bsrc\s*=\s*(["']?)cid:([^"'\s>]+)\1[^>]*>""", re.IGNORECASE)
# Where ``_IMG_CID`` may start: "<img" and a word boundary (a constant-time look).
_IMG_START = re.compile(rb"<img\b", re.IGNORECASE)


_CID_URL = re.compile(rb"""cid:([^"'\s>)]+)""")


def cid_references(html_body: bytes) -> set[str]:
    """The Content-IDs an HTML body refers to with cid: URLs (RFC 2392),
    unquoted and lower-cased."""
    from urllib.parse import unquote

    # Lower-cased first (the ids are compared lower-cased anyway): a literal
    # "cid:" is found four times faster than the same pattern ignoring case.
    low = html_body.lower()
    if b"cid:" not in low:
        return set()
    return {unquote(c.decode("ascii", "replace")).strip("<>").lower() for c in _CID_URL.findall(low)}


def _replace_inline_images(body: bytes, inline: dict[str, Link], template: str, charset: str) -> bytes:
    """Each <img src="cid:..."> whose image was offloaded becomes a link."""
    from urllib.parse import unquote

    def sub(m: re.Match[bytes]) -> bytes:
        cid = unquote(m.group(2).decode("ascii", "replace")).strip("<>").lower()
        link = inline.get(cid)
        if link is None:
            return m.group(0)
        a = (f'<a href="{html.escape(link.url)}">{html.escape(link_label(template, link))}</a> '
             f'({_size(link)})')
        try:
            return a.encode(charset, "xmlcharrefreplace")
        except Exception:  # noqa: BLE001 - any codec failure: ASCII is safe in the body's charset
            return a.encode("ascii", "xmlcharrefreplace")

    out: list[bytes] = []
    pos = 0
    for m in _img_cid_matches(body):
        out += [body[pos:m.start()], sub(m)]
        pos = m.end()
    return b"".join(out) + body[pos:] if out else body


def _img_cid_matches(body: bytes) -> Iterator[re.Match[bytes]]:
    """The matches ``_IMG_CID.finditer(body)`` gives, found in linear time.

    Run over the whole body, the pattern is quadratic: each "<img" with no
    ">" after it is read to the end of the body (64 KiB of "<img " took 7 s
    on the event loop), and so is each way of cutting a cid that no ">"
    follows.  A match always ends at the first ">" after its "<img", so the
    pattern is run on just that tag; when a tag has no usable src, no other
    "<img" inside it has one either (a src's validity depends only on the
    bytes from the one before it to the ">"), so the search goes on after it.
    """
    pos = 0
    while True:
        start = _IMG_START.search(body, pos)
        if start is None:
            return
        p = start.start()
        gt = body.find(b">", start.end())
        if gt < 0:
            return  # no ">" anywhere after: nothing can match from here on
        m = _IMG_CID.match(body, p, gt + 1)
        if m is not None:
            yield m
        pos = gt + 1


def split_fields(raw: bytes) -> list[tuple[str, bytes]]:
    """Header fields of a header block as (lower-case name, raw bytes with
    continuation lines and line end), in order."""
    # (name, start, end): a field's bytes are cut from ``raw`` once at the
    # end, not copied again for each continuation line (a 1 MiB field of
    # short folded lines took seconds).
    fields: list[tuple[str, int, int]] = []
    pos = 0
    for line in raw.splitlines(keepends=True):
        end = pos + len(line)
        if not line.strip():
            fields.append(("", pos, end))  # the blank line that ends the block
        elif fields and fields[-1][0] and not _FIELD_START.match(line):
            fields[-1] = (fields[-1][0], fields[-1][1], end)
        else:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            fields.append((name, pos, end))
        pos = end
    return [(name, raw[start:end]) for name, start, end in fields]


def _qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 section 6.7) in which only a CRLF is a line
    break: a CR or LF that is data (a bare one in the input, or ``=0D``
    decoded) is written ``=0D``/``=0A``, never as the raw byte."""
    return CRLF.join(binascii.b2a_qp(line, istext=False).replace(b"\n", CRLF) for line in data.split(CRLF))


def _b64(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return CRLF.join(enc[i:i + 76] for i in range(0, len(enc), 76))


# RFC 5322 section 2.1.1: at most 998 characters on a line.
_MAX_LINE = 998


def _plain_lines(data: bytes) -> bool:
    """Whether ``data`` can go as it is (7bit/8bit): CRLF lines, no NUL,
    none longer than the limit."""
    return is_clean(data) and (len(data) <= _MAX_LINE or max(map(len, data.split(CRLF))) <= _MAX_LINE)


def _encode_body(data: bytes, cte: str) -> tuple[bytes, str]:
    """Encode a (new) body; return the bytes and the CTE to declare.

    A 7bit/8bit/binary body whose data has NUL, a bare CR or LF, or an
    over-long line is switched to quoted-printable: the output is always
    CRLF-clean."""
    if cte == "base64":
        return _b64(data), "base64"
    if cte != "quoted-printable" and _plain_lines(data):
        if cte in ("8bit", "binary"):
            return data, cte
        if data.isascii():
            return data, "7bit"
    return _qp(data), "quoted-printable"


# Control characters other than TAB and the line ends: never added to a body.
_ADDED_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TEXT_LINE_ENDS = re.compile(r"\r\n|\r|\n")


def _with_crlf(text: str) -> str:
    """Added text with CRLF line ends and no other control characters."""
    return _TEXT_LINE_ENDS.sub("\r\n", _ADDED_CONTROL.sub("", text))


def notice_part(notice: str, keep_fields: Iterable[bytes] = ()) -> bytes:
    """A text/plain part carrying ``notice``; ``keep_fields`` are header
    fields kept from the replaced entity (the message headers at the root)."""
    body, cte = _encode_body(_with_crlf(notice).encode("utf-8"), "7bit")
    head = b"".join(keep_fields)
    head += b'Content-Type: text/plain; charset="utf-8"\r\n'
    head += f"Content-Transfer-Encoding: {cte}\r\n".encode()
    head += b"Content-Disposition: inline\r\n"
    return clean_lines(head + CRLF + body)


# Every printable ASCII character and the line ends: a charset that encodes
# and decodes these as ASCII does is one new ASCII text can be added in.
_ASCII_PROBE = "".join(chr(c) for c in range(32, 127)) + "\t\r\n"
_ALL_BYTES = bytes(range(256))


def _charset_codec(charset: str) -> tuple[str | None, bool]:
    """(Python codec name, whether it is ASCII-compatible) for a declared
    charset; (None, False) for one Python cannot use (unknown, or a codec
    such as ``undefined`` or ``idna`` that raises on ordinary text)."""
    try:
        name = codecs.lookup(charset).name
        probe = _ASCII_PROBE.encode(name)
        compatible = probe == _ASCII_PROBE.encode("ascii") and probe.decode(name) == _ASCII_PROBE
        "\u00e9".encode(name, "replace")  # codecs that fail on any text fail here
        _ALL_BYTES.decode(name, "replace")  # and those that fail on bytes (punycode, idna)
    except Exception:  # noqa: BLE001 - any codec failure means "cannot use"
        return None, False
    return name, compatible


def _append_to_body(src: Source, part: Part, addition: str, is_html: bool,
                    inline: dict[str, Link] | None = None, template: str = "",
                    cuts: Iterable[tuple[int, int, bytes | str]] = ()) -> bytes:
    """The part rebuilt with ``addition`` added to its body; other headers
    are kept as they were.

    The addition goes in in the body's own charset when that charset is
    ASCII-compatible and can carry it; otherwise the body is decoded and
    written again as UTF-8 (the Content-Type's charset changed with it).  A
    body in a charset Python cannot use stays as it is, declared UTF-8 when
    it is valid UTF-8, else with the addition in ASCII (characters it lacks
    replaced).  ``cuts`` are ranges of the decoded body replaced by text
    first (files the body carried inline, uuencoded): bytes as they are, a
    str in the body's charset when that is ASCII-compatible, else in ASCII
    (characters it lacks replaced).  Never raises for a charset."""
    headers = part.headers
    try:
        charset = (headers.get_content_charset() or "us-ascii").lower()
    except Exception:  # noqa: BLE001 - a malformed parameter: treat as unknown
        charset = "unknown-8bit"
    body = decoded_bytes(src, part)
    # A body that came 7-bit stays 7-bit: the next hop is told BODY=8BITMIME
    # (and SMTPUTF8) from what the client sent, not from what is added here.
    was_7bit = body.isascii()
    name, compatible = _charset_codec(charset)
    for start, end, text_instead in sorted(cuts, key=lambda c: c[0], reverse=True):
        if isinstance(text_instead, str):
            text_instead = _with_crlf(text_instead).encode(name if name is not None and compatible else "ascii",
                                                           "replace")
        body = body[:start] + text_instead + body[end:]
    errors = "xmlcharrefreplace" if is_html else "replace"
    text = _with_crlf(addition)
    hostile = name is not None and not compatible  # UTF-16, UTF-7, EBCDIC, ...
    new_charset = charset
    encoded: bytes | None = None
    if name is not None and compatible:
        try:
            encoded = text.encode(name)
        except UnicodeError:
            encoded = None  # the charset cannot carry the text: transcode below
    if encoded is None and name is not None:
        try:
            body = body.decode(name).encode("utf-8")
            new_charset, name = "utf-8", "utf-8"
        except UnicodeError:
            if compatible:
                # A body that is not valid in its own (ASCII-compatible)
                # charset: add to it as it is, in that charset.
                if name == "ascii" and _is_utf8(body):
                    new_charset, name = "utf-8", "utf-8"
                encoded = text.encode(name, errors)
            else:
                # Not valid, and not ASCII-compatible: as much of it as
                # decodes, in UTF-8.
                body = body.decode(name, "replace").encode("utf-8")
                new_charset, name = "utf-8", "utf-8"
        if encoded is None:
            encoded = text.encode("utf-8")
    if name is None:
        if _is_utf8(body):
            new_charset, name = "utf-8", "utf-8"
            encoded = text.encode("utf-8")
        else:
            name = "ascii"
            encoded = text.encode("ascii", errors)
    assert encoded is not None
    if is_html and inline:
        body = _replace_inline_images(body, inline, template, name)
    if is_html and not addition:
        pass  # only inline images changed; nothing to add at the end
    elif is_html:
        # Where a browser reads it as markup: not inside a comment, raw text
        # or attribute value the sender left open (gateway/mime/htmlpoint.py).
        at = insertion_point(body)
        if at < len(body):
            body = body[:at] + encoded + CRLF + body[at:]
        else:
            body = body + CRLF + encoded + CRLF
    elif addition:
        sep = CRLF if body.endswith((b"\n", b"\r")) else CRLF + CRLF
        body = body + sep + encoded + CRLF
    cte = part.cte
    if hostile and cte in ("8bit", "binary"):
        cte = "quoted-printable"  # rewritten from a hostile charset: 7-bit safe from now on
    new_body, new_cte = _encode_body(body, cte)
    if was_7bit and new_cte in ("8bit", "binary") and not new_body.isascii():
        # Text added in UTF-8 (a file's name) to a 7-bit body declared 8bit.
        new_body, new_cte = _qp(body), "quoted-printable"
    fields = split_fields(src.read(part.start, part.body_start))
    out: list[bytes] = []
    saw_cte = False
    for field_name, raw in fields:
        if field_name == "content-transfer-encoding":
            saw_cte = True
            out.append(f"Content-Transfer-Encoding: {new_cte}\r\n".encode())
        elif field_name == "content-type" and new_charset != charset:
            m = Message()
            m["Content-Type"] = str(headers.get("Content-Type", "text/plain"))
            m.set_param("charset", new_charset)
            out.append(f"Content-Type: {m['Content-Type']}\r\n".encode("ascii", "replace"))
        elif raw.strip() == b"":
            continue  # the blank line that ends the block is re-added below
        else:
            out.append(raw if raw.endswith((b"\n", b"\r")) else raw + CRLF)
    if new_cte != part.cte and not saw_cte:
        out.append(f"Content-Transfer-Encoding: {new_cte}\r\n".encode())
    if new_charset != charset and headers.get("Content-Type") is None:
        out.append(f'Content-Type: text/{"html" if is_html else "plain"}; charset="{new_charset}"\r\n'.encode())
    return clean_lines(b"".join(out) + CRLF + new_body)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def plan(src: Source, root: Part, *, replacements: list[Replacement], links: list[Link],
         text_part: Part | None, html_part: Part | None, link_template: str,
         trace: bytes, notices: Sequence[str] = (), inline: dict[str, Link] | None = None,
         cuts: dict[int, list[tuple[int, int, bytes | str]]] | None = None) -> list[Segment]:
    """The output message as segments of the original and new bytes.

    ``notices`` (one line per refused or empty file) and ``links`` are added
    to the text and HTML bodies; ``inline`` maps the Content-IDs of offloaded
    inline images to their links, which replace the ``<img>`` elements in
    the HTML body (and are not listed again at its end); ``cuts`` maps a
    text part's start to ranges of its decoded body replaced by text (a
    uuencoded file taken out).  When no body can carry the links and
    notices, the first replaced part's notice does.
    """
    cuts = cuts or {}
    notices = list(notices)
    inline = inline or {}
    inline_urls = {link.url for link in inline.values()}
    html_only_links = [link for link in links if link.url not in inline_urls]
    edits: dict[int, tuple[int, bytes]] = {}  # start -> (end, new bytes)
    replaced_root = False
    for r in replacements:
        if r.raw is not None:
            edits[r.part.start] = (r.part.end, clean_lines(r.raw))
            replaced_root = replaced_root or r.part is root
        elif r.part is root:
            replaced_root = True
            keep = [raw for name, raw in split_fields(src.read(root.start, root.body_start))
                    if not name.startswith("content-") and raw.strip()]
            notice = r.notice
            if (links or notices) and text_part is None and html_part is None:
                notice += "\n\n" + "\n".join(x for x in (text_notices(notices), text_links(links, link_template)) if x)
            edits[root.start] = (root.end, notice_part(notice, keep))
        else:
            edits[r.part.start] = (r.part.end, notice_part(r.notice))
    for start, part_cuts in cuts.items():
        if text_part is None or start != text_part.start:
            part = next(p for p in root.walk() if p.start == start and not p.children)
            edits[start] = (part.end, _append_to_body(src, part, "", False, cuts=part_cuts))
    if links or notices:
        text_add = "\n".join(x for x in (text_notices(notices), text_links(links, link_template)) if x)
        if text_part is not None:
            edits[text_part.start] = (text_part.end, _append_to_body(src, text_part, text_add, False,
                                                                     cuts=cuts.get(text_part.start, ())))
        if html_part is not None:
            html_add = (html_notices(notices) if notices else "") + \
                (html_links(html_only_links, link_template) if html_only_links else "")
            edits[html_part.start] = (html_part.end, _append_to_body(src, html_part, html_add, True, inline,
                                                                     link_template))
        if text_part is None and html_part is None and not replaced_root and root.boundary is None:
            # No body, and no multipart to put one in (an attached message
            # at the top): the first replaced part's notice carries them.
            for r in replacements:
                if r.raw is None:
                    edits[r.part.start] = (r.part.end, notice_part(r.notice + "\n" + text_add))
                    break
        elif text_part is None and html_part is None and not replaced_root and root.children:
            first = root.children[0]
            new = notice_part(text_add)
            delim = b"--" + (root.boundary or "").encode("utf-8", "surrogateescape")
            # Insert a whole new first part: the part, then the delimiter that
            # opens what used to be the first part (itself perhaps replaced,
            # so its own edit is kept behind the insertion).
            end, data = edits.get(first.start, (first.start, b""))
            edits[first.start] = (end, clean_lines(new + CRLF + delim + CRLF + data))
    segments: list[Segment] = [clean_lines(trace)]
    pos = 0
    for start in sorted(edits):
        end, data = edits[start]
        if start > pos:
            segments.append((pos, start))
        segments.append(data)
        pos = max(pos, end)
    if pos < src.size:
        segments.append((pos, src.size))
    return segments


def segments_size(segments: list[Segment]) -> int:
    """The size of the output in bytes."""
    return sum(len(s) if isinstance(s, bytes) else s[1] - s[0] for s in segments)


def write_segments(src: Source, segments: list[Segment], path: str | os.PathLike[str]) -> int:
    """Write the output to ``path`` durably; return its size."""
    from gateway.spool.durable import write_chunks_atomic

    return write_chunks_atomic(Path(os.fspath(path)), _segment_chunks(src, segments))


def _segment_chunks(src: Source, segments: list[Segment]) -> Iterator[bytes]:
    for seg in segments:
        if isinstance(seg, bytes):
            yield seg
        else:
            yield from src.iter_range(seg[0], seg[1])


def header_field_ranges(src: Source, part: Part, names: set[str]) -> list[tuple[int, int]]:
    """Byte ranges of the header fields of ``part`` named in ``names``
    (lower case), continuation lines included."""
    out: list[tuple[int, int]] = []
    pos = part.start
    for name, raw in split_fields(src.read(part.start, part.body_start)):
        if name in names:
            out.append((pos, pos + len(raw)))
        pos += len(raw)
    return out


def cut_ranges(segments: list[Segment], drops: list[tuple[int, int]], raws: list[bytes]) -> list[Segment]:
    """``segments`` without the byte ranges in ``drops`` (whole header
    fields, whose text is ``raws``).  A header block the rewrite rebuilt (a
    replaced root part) carries the same fields as new bytes: they are cut
    from it by their text."""
    out: list[Segment] = []
    for seg in segments:
        if isinstance(seg, bytes):
            for raw in raws:
                seg = seg.replace(raw, b"")
            out.append(seg)
            continue
        pieces = [seg]
        for ds, de in drops:
            kept = []
            for s, e in pieces:
                if de <= s or ds >= e:
                    kept.append((s, e))
                    continue
                if s < ds:
                    kept.append((s, ds))
                if de < e:
                    kept.append((de, e))
            pieces = kept
        out.extend(pieces)
    return out


def salvage_headers(src: Source) -> bytes:
    """The fields a person needs (From, To, Subject, ...) from a message
    whose header block could not be parsed: the first of each, unfolded,
    bounded, CRLF-clean."""
    wanted = {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references"}
    out: list[bytes] = []
    for name, raw in split_fields(src.read(0, min(src.size, 256 << 10))):
        if not name:
            break
        if name in wanted:
            wanted.discard(name)
            value = re.sub(rb"[\r\n\x00]+[ \t]*", b" ", raw).strip()
            if len(value) <= 998:
                out.append(value + b"\r\n")
    return b"".join(out)
