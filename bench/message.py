"""The large benchmark message: a real MIME message with a short text body and an
18 MiB PDF-like attachment, base64 encoded (about 24.7 MiB on the wire)."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ATTACHMENT_BYTES = 18 * 1024 * 1024
SENDER = "customer@sender.example"
RECIPIENT = "agent@contact.example"


@dataclass(frozen=True)
class LargeMessage:
    """The generated message on disk, ready to send as DATA (CRLF lines, dot-stuffed)."""

    path: Path
    size: int
    attachment_size: int
    attachment_sha256: str
    attachment_name: str


def _pdf_like(size: int) -> bytes:
    """Bytes that look like a PDF to a type sniffer: PDF header, random (incompressible) body, EOF marker."""
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
    tail = b"\nendstream\n%%EOF\n"
    return head + os.urandom(size - len(head) - len(tail)) + tail


def build_large_message(directory: Path, attachment_bytes: int = ATTACHMENT_BYTES) -> LargeMessage:
    """Write the message to ``directory/large.eml`` and describe it."""
    payload = _pdf_like(attachment_bytes)
    name = "scan-invoice-2026-11.pdf"
    boundary = "=_bench_boundary_7f3a9c"
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")  # 76-character lines
    text = (
        "Hello,\r\n\r\nplease find the scanned invoice attached.\r\n"
        "The file is large; your gateway should replace it with a link.\r\n\r\nRegards,\r\nA customer\r\n"
    )
    headers = (
        f"From: A Customer <{SENDER}>\r\n"
        f"To: Contact Centre <{RECIPIENT}>\r\n"
        "Subject: Invoice scan (benchmark large message)\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <bench-large-1@sender.example>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        f"{text}"
        f"--{boundary}\r\n"
        f'Content-Type: application/pdf; name="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        "\r\n"
    ).encode()
    closing = f"--{boundary}--\r\n".encode()
    path = directory / "large.eml"
    with open(path, "wb") as fh:
        # No line starts with '.' (base64 has no dots), so no dot-stuffing is needed.
        fh.write(headers)
        fh.write(b64)
        fh.write(closing)
    return LargeMessage(
        path=path,
        size=path.stat().st_size,
        attachment_size=len(payload),
        attachment_sha256=hashlib.sha256(payload).hexdigest(),
        attachment_name=name,
    )
