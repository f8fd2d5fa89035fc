"""Rewriting a message: replace some parts, add links to the bodies, copy the rest.

The output is a list of segments: byte ranges of the spooled original and
new bytes in between.  Only the parts a decision touched are rebuilt (an
offloaded or refused part becomes a short text notice; the text and HTML
bodies get the links); every other byte, headers included, is copied from
the original unchanged, so untouched parts stay byte-identical.  New text is
UTF-8, quoted-printable where it is not ASCII, so the output is 7-bit clean
wherever the input was.
"""
from __future__ import annotations

import base64
import binascii
import html
import os
import re
from dataclasses import dataclass
from email.message import Message
from typing import Iterable, Union

from gateway.mime.decode import decoded_bytes
from gateway.mime.parse import Part
from gateway.mime.source import Source

Segment = Union[bytes, tuple[int, int]]
CRLF = b"\r\n"
_FIELD_START = re.compile(rb"^[^ \t\r\n]")


@dataclass(frozen=True)
class Link:
    """One offloaded attachment as the agent sees it."""

    filename: str
    size: int
    url: str


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


def link_label(template: str, link: Link) -> str:
    """The link text from the route's template ({filename}, {size})."""
    return template.replace("{filename}", link.filename or "attachment").replace("{size}", human_size(link.size))


def _markdown_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def text_links(links: list[Link], template: str) -> str:
    """The markdown link lines added to a text/plain body."""
    return "\n".join(f"[{_markdown_label(link_label(template, l))}]({l.url}) ({human_size(l.size)})" for l in links)


def html_links(links: list[Link], template: str) -> str:
    """The ``<a>`` elements added to a text/html body."""
    items = "".join(
        f'<p><a href="{html.escape(l.url)}">{html.escape(link_label(template, l))}</a> ({human_size(l.size)})</p>'
        for l in links)
    return f'<div class="attachment-gateway-links">{items}</div>'


def text_notices(notices: list[str]) -> str:
    """The notice lines added to a text/plain body (one per removed file)."""
    return "\n".join(notices)


def html_notices(notices: list[str]) -> str:
    """The notices as a block added to a text/html body."""
    items = "".join(f"<p>{html.escape(n)}</p>" for n in notices)
    return f'<div class="attachment-gateway-notices">{items}</div>'


_IMG_CID = re.compile(rb"""<img\b[^>]*?\bsrc\s*=\s*(["']?)cid:([^"'\s>]+)\1[^>]*>""", re.IGNORECASE)


def cid_references(html_body: bytes) -> set[str]:
    """The Content-IDs an HTML body refers to with cid: URLs (RFC 2392),
    unquoted and lower-cased."""
    from urllib.parse import unquote

    found = re.findall(rb"""cid:([^"'\s>)]+)""", html_body, re.IGNORECASE)
    return {unquote(c.decode("ascii", "replace")).strip("<>").lower() for c in found}


def _replace_inline_images(body: bytes, inline: dict[str, "Link"], template: str, charset: str) -> bytes:
    """Each <img src="cid:..."> whose image was offloaded becomes a link."""
    from urllib.parse import unquote

    def sub(m: re.Match[bytes]) -> bytes:
        cid = unquote(m.group(2).decode("ascii", "replace")).strip("<>").lower()
        link = inline.get(cid)
        if link is None:
            return m.group(0)
        a = (f'<a href="{html.escape(link.url)}">{html.escape(link_label(template, link))}</a> '
             f'({human_size(link.size)})')
        try:
            return a.encode(charset, "xmlcharrefreplace")
        except LookupError:
            return a.encode("ascii", "xmlcharrefreplace")

    return _IMG_CID.sub(sub, body)


def split_fields(raw: bytes) -> list[tuple[str, bytes]]:
    """Header fields of a header block as (lower-case name, raw bytes with
    continuation lines and line end), in order."""
    fields: list[tuple[str, bytes]] = []
    for line in raw.splitlines(keepends=True):
        if not line.strip():
            fields.append(("", line))  # the blank line that ends the block
            continue
        if fields and fields[-1][0] and not _FIELD_START.match(line):
            name, data = fields[-1]
            fields[-1] = (name, data + line)
        else:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            fields.append((name, line))
    return fields


def _qp(data: bytes) -> bytes:
    encoded = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True)
    return encoded.replace(b"\n", CRLF)


def _b64(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return CRLF.join(enc[i:i + 76] for i in range(0, len(enc), 76))


def _encode_body(data: bytes, cte: str) -> tuple[bytes, str]:
    """Encode a (new) body; return the bytes and the CTE to declare."""
    if cte == "base64":
        return _b64(data), "base64"
    if cte in ("8bit", "binary"):
        return data, cte
    if cte == "quoted-printable" or not data.isascii():
        return _qp(data), "quoted-printable"
    return data, "7bit"


def _with_crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def notice_part(notice: str, keep_fields: Iterable[bytes] = ()) -> bytes:
    """A text/plain part carrying ``notice``; ``keep_fields`` are header
    fields kept from the replaced entity (the message headers at the root)."""
    body, cte = _encode_body(_with_crlf(notice).encode("utf-8"), "7bit")
    head = b"".join(keep_fields)
    head += b'Content-Type: text/plain; charset="utf-8"\r\n'
    head += f"Content-Transfer-Encoding: {cte}\r\n".encode()
    head += b"Content-Disposition: inline\r\n"
    return head + CRLF + body


def _append_to_body(src: Source, part: Part, addition: str, is_html: bool,
                    inline: dict[str, Link] | None = None, template: str = "") -> bytes:
    """The part rebuilt with ``addition`` added to its body, in its own
    charset where it can carry the text, else the body switched to UTF-8
    when it was ASCII; other headers are kept as they were."""
    headers = part.headers
    charset = (headers.get_content_charset() or "us-ascii").lower()
    body = decoded_bytes(src, part)
    new_charset = charset
    if charset in ("us-ascii", "ascii") and not addition.isascii():
        new_charset = "utf-8"
    try:
        encoded = _with_crlf(addition).encode(new_charset, "xmlcharrefreplace" if is_html else "replace")
    except LookupError:
        # An unknown charset: assume it is ASCII-compatible (nearly all are)
        # and add only ASCII, so the existing bytes keep their meaning.
        encoded = _with_crlf(addition).encode("ascii", "xmlcharrefreplace" if is_html else "replace")
    if is_html and inline:
        body = _replace_inline_images(body, inline, template, new_charset)
    if is_html and not addition:
        pass  # only inline images changed; nothing to add at the end
    elif is_html:
        matches = list(re.finditer(rb"</body\s*>", body, re.IGNORECASE))
        if matches:
            at = matches[-1].start()
            body = body[:at] + encoded + CRLF + body[at:]
        else:
            body = body + CRLF + encoded + CRLF
    else:
        sep = CRLF if body.endswith((b"\n", b"\r")) else CRLF + CRLF
        body = body + sep + encoded + CRLF
    new_body, new_cte = _encode_body(body, part.cte)
    fields = split_fields(src.read(part.start, part.body_start))
    out: list[bytes] = []
    saw_cte = False
    for name, raw in fields:
        if name == "content-transfer-encoding":
            saw_cte = True
            out.append(f"Content-Transfer-Encoding: {new_cte}\r\n".encode())
        elif name == "content-type" and new_charset != charset:
            m = Message()
            m["Content-Type"] = headers.get("Content-Type", "text/plain")
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
    return b"".join(out) + CRLF + new_body


def plan(src: Source, root: Part, *, replacements: list[Replacement], links: list[Link],
         text_part: Part | None, html_part: Part | None, link_template: str,
         trace: bytes, notices: list[str] = (), inline: dict[str, Link] | None = None) -> list[Segment]:
    """The output message as segments of the original and new bytes.

    ``notices`` (one line per refused or empty file) and ``links`` are added
    to the text and HTML bodies; ``inline`` maps the Content-IDs of offloaded
    inline images to their links, which replace the ``<img>`` elements in
    the HTML body (and are not listed again at its end).
    """
    notices = list(notices)
    inline = inline or {}
    inline_urls = {l.url for l in inline.values()}
    html_only_links = [l for l in links if l.url not in inline_urls]
    edits: dict[int, tuple[int, bytes]] = {}  # start -> (end, new bytes)
    replaced_root = False
    for r in replacements:
        if r.raw is not None:
            edits[r.part.start] = (r.part.end, r.raw)
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
    if links or notices:
        text_add = "\n".join(x for x in (text_notices(notices), text_links(links, link_template)) if x)
        if text_part is not None:
            edits[text_part.start] = (text_part.end, _append_to_body(src, text_part, text_add, False))
        if html_part is not None:
            html_add = (html_notices(notices) if notices else "") + \
                (html_links(html_only_links, link_template) if html_only_links else "")
            edits[html_part.start] = (html_part.end, _append_to_body(src, html_part, html_add, True, inline,
                                                                     link_template))
        if text_part is None and html_part is None and not replaced_root and root.children:
            first = root.children[0]
            new = notice_part(text_add)
            delim = b"--" + (root.boundary or "").encode("utf-8", "surrogateescape")
            # Insert a whole new first part: the part, then the delimiter that
            # opens what used to be the first part (itself perhaps replaced,
            # so its own edit is kept behind the insertion).
            end, data = edits.get(first.start, (first.start, b""))
            edits[first.start] = (end, new + CRLF + delim + CRLF + data)
    segments: list[Segment] = [trace]
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
    """Write the output to ``path`` (temp name, fsync, rename); return its size."""
    path = os.fspath(path)
    tmp = path + ".part"
    size = 0
    with open(tmp, "wb") as f:
        for seg in segments:
            if isinstance(seg, bytes):
                f.write(seg)
                size += len(seg)
            else:
                for chunk in src.iter_range(seg[0], seg[1]):
                    f.write(chunk)
                    size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return size
