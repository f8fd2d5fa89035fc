"""Building test messages and reading what came out."""
from __future__ import annotations

import email
import hashlib
import io
import os
import re
import smtplib
import struct
import urllib.error
import urllib.request
import zlib
from email import policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

LINK = re.compile(rb"https?://127\.0\.0\.1:\d+/a/[A-Za-z0-9._-]+")


def pdf_bytes(size: int) -> bytes:
    """A real PDF of exactly ``size`` bytes (one blank page, and random
    bytes in a stream to make up the size): what a reader opens and what
    the disarm step finds clean.  At least about 380 bytes."""
    objects = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
               b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>"]
    filler = 0
    for _ in range(5):  # the lengths' digits move the size a little; settle them
        payload = os.urandom(max(0, filler))
        stream = b"<</Length %d>>stream\n" % len(payload) + payload + b"\nendstream"
        out = b"%PDF-1.4\n"
        offsets = []
        for n, body in enumerate([*objects, stream], 1):
            offsets.append(len(out))
            out += b"%d 0 obj" % n + body + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 5\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
        out += b"trailer<</Size 5/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % xref
        if len(out) == size:
            return out
        filler += size - len(out)
    raise ValueError(f"no PDF of exactly {size} bytes (at least about 380)")


def png_bytes(size: int) -> bytes:
    """Random bytes behind a real PNG signature and IHDR chunk (what
    libmagic needs to call it image/png)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return head + os.urandom(size - len(head))


def message(text: str | None = "Hello, see attached.\n", html: str | None = None,
            attachments: list[tuple[bytes, str, str]] = (), **headers: str) -> EmailMessage:
    """A message with optional text/HTML bodies and (data, mime type, filename) attachments."""
    m = EmailMessage(policy=policy.SMTP)
    m["From"] = headers.pop("From", "customer@example.net")
    m["To"] = headers.pop("To", "support@contact.example")
    m["Subject"] = headers.pop("Subject", "Test")
    m["Message-ID"] = headers.pop("Message_ID", email.utils.make_msgid(domain="example.net"))
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    if text is not None:
        m.set_content(text)
    if html is not None:
        if text is not None:
            m.add_alternative(html, subtype="html")
        else:
            m.set_content(html, subtype="html")
    for data, ctype, name in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m


def send(port: int, msg: EmailMessage | bytes, rcpts: list[str] | None = None,
         sender: str = "customer@example.net") -> dict[str, Any]:
    """Send over real SMTP; returns smtplib's refused-recipients dict."""
    data = msg if isinstance(msg, bytes) else msg.as_bytes(policy=policy.SMTP)
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        return s.sendmail(sender, rcpts or ["support@contact.example"], data)


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=policy.compat32)


def leaves(msg: Message) -> list[Message]:
    """Leaf parts, not descending into attached messages."""
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        out: list[Message] = []
        for p in msg.get_payload():
            out.extend(leaves(p))
        return out
    return [msg]


def deep_leaves(msg: Message) -> list[Message]:
    """Leaf parts, attached messages (message/rfc822, message/global)
    included part by part, as the gateway examines them."""
    if msg.is_multipart():
        out: list[Message] = []
        for p in msg.get_payload():
            out.extend(deep_leaves(p))
        return out
    return [msg]


def as_bytes(msg: Message) -> bytes:
    """A parsed message back to bytes, with headers unfolded as they came."""
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(msg)
    return out.getvalue()


def payload(part: Message) -> bytes:
    """A leaf's decoded body; for message/* parts the enclosed entities."""
    data = part.get_payload(decode=True)
    if data is None:  # message/rfc822 and friends
        raw = part.get_payload()
        if isinstance(raw, list):
            return b"".join(as_bytes(p) for p in raw)
        return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    return data


def links(data: bytes) -> list[str]:
    return [m.decode() for m in LINK.findall(data)]


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET a URL on loopback; (status, headers, body) for any status."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_objects(objects: Path) -> dict[str, bytes]:
    """Object key -> bytes for every stored attachment (link records, the
    retention sweep's turns and metadata sidecars left out)."""
    out = {}
    for p in objects.rglob("*"):
        rel = p.relative_to(objects).as_posix()
        if p.is_file() and not rel.startswith(("links/", "leases/")) and not rel.endswith(".meta.json"):
            out[rel] = p.read_bytes()
    return out
