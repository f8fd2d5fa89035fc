"""A contact centre's mail as the bench sends it: a seeded mix of real MIME.

Three classes, in the shares a contact centre sees (issue 18):

- ``reply`` (85%): a customer's reply, 3-20 KB, ``multipart/alternative``
  with a text and an HTML body, each quoting the earlier messages of the
  thread (``>`` lines; ``<blockquote>`` in HTML);
- ``attachment`` (12%): such a reply in ``multipart/mixed`` with one 0.5-5 MB
  PDF, PNG or DOCX, real formats (a PDF a reader opens, a PNG with IHDR,
  IDAT and IEND and valid CRCs, a DOCX that is an Office Open XML package);
- ``large`` (3%): the same with one 12-30 MB attachment, above the 10 MiB
  offload threshold (the gateway and MIMEDefang replace it with a link).

Also the many-attachments message: about 5 MB in 200 attachments.

Everything comes from one ``random.Random(seed)``: the same seed gives the
same bytes, so every candidate gets the same mail in the same order.  The
sender is asyncio over plain sockets (one connection a session, several
messages a connection, no pipelining), cheap enough that the load
generator takes little of the CPU the candidates need.
"""
from __future__ import annotations

import asyncio
import base64
import io
import random
import struct
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SENDER = "customer@sender.example"
RECIPIENT = "agent@contact.example"
#: The shares of the classes, in order.
CLASSES: tuple[tuple[str, float], ...] = (("reply", 0.85), ("attachment", 0.12), ("large", 0.03))
#: Bounds of each class (bytes): the reply's size, or the attachment's.
REPLY_SIZE = (3_000, 20_000)
ATTACHMENT_SIZE = (500_000, 5_000_000)
LARGE_SIZE = (12_000_000, 30_000_000)
#: The many-attachments message: this many attachments, about this many bytes in all (decoded).
MANY_PARTS = 200
MANY_BYTES = 5_000_000

_WORDS = (
    "order invoice delivery account refund parcel payment address thanks please reply question "
    "attached scan photo receipt number customer service week yesterday tomorrow again still "
    "status problem broken replacement warranty contract reference help team kind regards"
).split()


@dataclass
class MixMessage:
    """One message of the mix, ready to send (CRLF lines, dot-stuffed)."""

    index: int
    kind: str
    message_id: str
    wire: bytes
    #: The attachment's decoded size (0 for a reply).
    attachment_bytes: int = 0


@dataclass
class Sent:
    """What the sender saw of one message."""

    index: int
    kind: str
    size: int
    start: float
    accepted: float
    reply: str = ""


@dataclass
class SendResult:
    """One run of the sender: every message's timing, and the refusals."""

    sent: list[Sent] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


def _sentence(rng: random.Random, words: int) -> str:
    out = " ".join(rng.choice(_WORDS) for _ in range(words))
    return out[:1].upper() + out[1:] + "."


def _paragraphs(rng: random.Random, size: int) -> list[str]:
    """Plain-text paragraphs of about ``size`` characters (lines under 78)."""
    paras: list[str] = []
    total = 0
    while total < size:
        lines = []
        for _ in range(rng.randint(1, 4)):
            lines.append(_sentence(rng, rng.randint(5, 11)))
        para = "\n".join(lines)
        paras.append(para)
        total += len(para) + 2
    return paras


def _reply_bodies(rng: random.Random, size: int, index: int) -> tuple[str, str]:
    """A reply's text and HTML bodies, quoting the thread, about ``size`` bytes together."""
    # The new text is short; most of a reply is the quoted history.
    own = _paragraphs(rng, max(200, size // 10))
    text_lines = ["Hello,", ""]
    for para in own:
        text_lines.extend([*para.split("\n"), ""])
    text_lines.extend(["Regards,", f"Customer {index}", ""])
    html = ["<html><body>", "<p>Hello,</p>", *(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in own),
            f"<p>Regards,<br>Customer {index}</p>"]
    depth = 0
    # Text and HTML carry the same history: about 40% of the size each.
    while sum(len(x) for x in text_lines) < size * 0.4:
        depth += 1
        quoted = _paragraphs(rng, rng.randint(400, 1500))
        who = f"On Mon, {rng.randint(1, 28)} Nov 2026 at {rng.randint(8, 18)}:{rng.randint(10, 59)}, " \
              f"Contact Centre <support@contact.example> wrote:"
        text_lines.append(">" * (depth - 1) + (" " if depth > 1 else "") + who)
        prefix = ">" * depth + " "
        for para in quoted:
            text_lines.extend(prefix + line for line in para.split("\n"))
            text_lines.append(prefix.rstrip())
        html.append(f"<div>{who}</div><blockquote type=\"cite\">")
        html.extend(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in quoted)
    html.extend("</blockquote>" for _ in range(depth))
    html.append("</body></html>")
    return "\r\n".join(text_lines) + "\r\n", "\r\n".join(html) + "\r\n"


def pdf(rng: random.Random, size: int) -> bytes:
    """A real PDF of about ``size`` bytes: one page showing an image whose
    samples are seeded noise (incompressible, as a scan's are)."""
    w = 1000
    raw_len = max(3000, size - 700)
    h = max(1, raw_len // (w * 3))
    data = rng.randbytes(w * 3 * h)
    content = b"q 612 0 0 792 0 0 cm /Im1 Do Q"
    objs = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]/Resources<</XObject<</Im1 5 0 R>>>>/Contents 4 0 R>>",
        b"<</Length %d>>stream\n" % len(content) + content + b"\nendstream",
        b"<</Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB/BitsPerComponent 8/Length %d>>"
        b"stream\n" % (w, h, len(data)) + data + b"\nendstream",
    ]
    out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(rng: random.Random, size: int) -> bytes:
    """A real PNG of about ``size`` bytes: RGB noise rows (filter 0), stored
    with zlib level 0 so the size is what was asked."""
    w = 800
    h = max(1, size // (w * 3 + 1))
    rows = b"".join(b"\x00" + rng.randbytes(w * 3) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows, 0)) + \
        _chunk(b"IEND", b"")


def docx(rng: random.Random, size: int) -> bytes:
    """A real DOCX (Office Open XML package) of about ``size`` bytes: a
    document of a few paragraphs with one embedded picture (a PNG)."""
    image = png(rng, max(2000, size - 3000))
    paras = "".join(f"<w:p><w:r><w:t>{_sentence(rng, 12)}</w:t></w:r></w:p>" for _ in range(6))
    parts = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Default Extension="png" ContentType="image/png"/>'
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/officeDocument" Target="word/document.xml"/></Relationships>'),
        "word/_rels/document.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId5" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/image" Target="media/image1.png"/></Relationships>'),
        "word/document.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            f"<w:body>{paras}</w:body></w:document>"),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in parts.items():
            z.writestr(name, text)
        z.writestr(zipfile.ZipInfo("word/media/image1.png", date_time=(2026, 11, 27, 10, 0, 0)), image,
                   compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


FORMATS = (
    ("pdf", "application/pdf", pdf),
    ("png", "image/png", png),
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", docx),
)


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _alternative(rng: random.Random, size: int, index: int) -> tuple[bytes, str]:
    """The multipart/alternative body part (headers and all) and its boundary."""
    text, html = _reply_bodies(rng, size, index)
    boundary = f"=_alt_{rng.getrandbits(48):012x}"
    part = (
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        f"{text}"
        f"--{boundary}\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        f"{html}"
        f"--{boundary}--\r\n"
    ).encode()
    return part, boundary


def _headers(rng: random.Random, index: int, message_id: str, subject: str) -> bytes:
    return (
        f"From: Customer {index} <{SENDER}>\r\n"
        f"To: Contact Centre <{RECIPIENT}>\r\n"
        f"Subject: Re: {subject}\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{message_id}>\r\n"
        f"In-Reply-To: <case-{rng.getrandbits(32):08x}@contact.example>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()


def _stuff(data: bytes) -> bytes:
    """Dot-stuff a CRLF message for DATA (which must have no bare CR or LF:
    real clients send none, and a receiver's slow path for them is not what
    the bench measures)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        raise ValueError("a bare CR or LF in a generated message")
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def build_message(rng: random.Random, index: int, kind: str, seed: int) -> MixMessage:
    """One message of class ``kind`` (``reply``, ``attachment``, ``large``)."""
    message_id = f"mix-{seed}-{index}@sender.example"
    subject = _sentence(rng, rng.randint(3, 7))
    reply_size = rng.randint(*REPLY_SIZE)
    head = _headers(rng, index, message_id, subject)
    if kind == "reply":
        alt, _ = _alternative(rng, reply_size, index)
        return MixMessage(index, kind, message_id, _stuff(head + alt))
    lo, hi = ATTACHMENT_SIZE if kind == "attachment" else LARGE_SIZE
    ext, ctype, make = rng.choice(FORMATS)
    data = make(rng, rng.randint(lo, hi))
    alt, _ = _alternative(rng, min(reply_size, 8000), index)
    boundary = f"=_mix_{rng.getrandbits(48):012x}"
    name = f"{rng.choice(('scan', 'invoice', 'photo', 'statement', 'form'))}-{index}.{ext}"
    body = (
        head + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
        + f"--{boundary}\r\n".encode() + alt
        + f"--{boundary}\r\nContent-Type: {ctype}; name=\"{name}\"\r\n"
          f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
          "Content-Transfer-Encoding: base64\r\n\r\n".encode()
        + _b64(data) + f"--{boundary}--\r\n".encode()
    )
    return MixMessage(index, kind, message_id, _stuff(body), attachment_bytes=len(data))


def build_mix(count: int, seed: int) -> list[MixMessage]:
    """``count`` messages in the class shares (rounded, at least one of each
    class when ``count`` allows), shuffled by ``seed``."""
    rng = random.Random(seed)
    counts = {name: round(count * share) for name, share in CLASSES}
    if count >= len(CLASSES):
        for name in counts:
            counts[name] = max(1, counts[name])
    counts["reply"] = count - counts["attachment"] - counts["large"]
    kinds = [name for name, _ in CLASSES for _ in range(counts[name])]
    rng.shuffle(kinds)
    return [build_message(rng, i, kind, seed) for i, kind in enumerate(kinds)]


def build_many_attachments(seed: int, parts: int = MANY_PARTS, total: int = MANY_BYTES) -> bytes:
    """About ``total`` bytes (decoded) in ``parts`` attachments of the three
    formats, behind a short reply; ready to send."""
    rng = random.Random(seed)
    each = total // parts
    alt, _ = _alternative(rng, 4000, 0)
    boundary = f"=_many_{rng.getrandbits(48):012x}"
    out = [_headers(rng, 0, f"many-{seed}@sender.example", "the documents you asked for"),
           f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n--{boundary}\r\n'.encode(), alt]
    for i in range(parts):
        ext, ctype, make = FORMATS[i % len(FORMATS)]
        name = f"page-{i:03d}.{ext}"
        out.append(f"--{boundary}\r\nContent-Type: {ctype}; name=\"{name}\"\r\n"
                   f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
                   "Content-Transfer-Encoding: base64\r\n\r\n".encode())
        out.append(_b64(make(rng, each)))
    out.append(f"--{boundary}--\r\n".encode())
    return _stuff(b"".join(out))


# ------------------------------------------------------------------- sending
class _Session:
    """One SMTP connection: EHLO once, then MAIL, RCPT, DATA per message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self) -> str:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed by the server")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    async def command(self, line: bytes, expect: str) -> str:
        self.writer.write(line)
        answer = await self.reply()
        if not answer.startswith(expect):
            raise _Refused(f"{line.split(b':')[0].decode().strip()}: {answer}")
        return answer


class _Refused(Exception):
    pass


async def _session(port: int, messages: Sequence[MixMessage], result: SendResult, limit_s: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    s = _Session(reader, writer)
    try:
        async with asyncio.timeout(limit_s):
            await s.command(b"", "220")
            await s.command(b"EHLO bench.localhost\r\n", "250")
            for m in messages:
                t0 = time.monotonic()
                try:
                    await s.command(f"MAIL FROM:<{SENDER}> SIZE={len(m.wire)}\r\n".encode(), "250")
                    await s.command(f"RCPT TO:<{RECIPIENT}>\r\n".encode(), "25")
                    await s.command(b"DATA\r\n", "354")
                    writer.write(m.wire)
                    answer = await s.command(b".\r\n", "250")
                except _Refused as e:
                    result.refused.append(f"message {m.index} ({m.kind}): {e}")
                    await s.command(b"RSET\r\n", "250")
                    continue
                result.sent.append(Sent(m.index, m.kind, len(m.wire), t0, time.monotonic(), answer))
            writer.write(b"QUIT\r\n")
            await writer.drain()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def send_mix(port: int, messages: Sequence[MixMessage], sessions: int, timeout: float) -> SendResult:
    """Send ``messages`` over ``sessions`` parallel connections (message i on
    session i mod sessions, so each session gets its share in order)."""
    result = SendResult()

    async def run() -> None:
        result.started = time.monotonic()
        await asyncio.gather(*(_session(port, messages[k::sessions], result, timeout)
                               for k in range(min(sessions, len(messages)))))
        result.finished = time.monotonic()

    asyncio.run(run())
    return result


def summary_by_class(result: SendResult, arrivals: dict[str, float] | None,
                     messages: Sequence[MixMessage]) -> dict[str, Any]:
    """Per class: messages, bytes, median and p95 seconds from the first
    command until the 250 and (relays) until arrival at the sink."""
    by_index = {m.index: m for m in messages}
    out: dict[str, Any] = {}
    for kind, _ in CLASSES:
        rows = [s for s in result.sent if s.kind == kind]
        if not rows:
            continue
        accept = sorted(s.accepted - s.start for s in rows)
        entry: dict[str, Any] = {"messages": len(rows), "bytes": sum(s.size for s in rows),
                                 "accept_p50_s": _pct(accept, 50), "accept_p95_s": _pct(accept, 95)}
        if arrivals is not None:
            e2e = sorted(arrivals[by_index[s.index].message_id] - s.start for s in rows
                         if by_index[s.index].message_id in arrivals)
            if e2e:
                entry.update(e2e_p50_s=_pct(e2e, 50), e2e_p95_s=_pct(e2e, 95))
        out[kind] = entry
    return out


def _pct(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]
