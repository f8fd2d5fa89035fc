"""The benchmark messages: real MIME messages with a short text body and one
PDF-like attachment, base64 encoded.

- the large message: an 18 MiB attachment, about 24.7 MiB on the wire;
- the memory message: a 90 MB (90,000,000 bytes) decoded attachment, about
  123 MB (117.5 MiB) on the wire, for the "100 MB message" memory figure;
- the click message: a 64 KiB attachment sent to the bench's low-threshold
  route, whose link the HTTP load test fetches."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

ATTACHMENT_BYTES = 18 * 1024 * 1024
#: The memory figure's attachment: 90 MB decoded (base64 makes the message ~123 MB).
MEMORY_ATTACHMENT_BYTES = 90_000_000
#: The issue 18 memory target's message: a 1 GB attachment (1,000,000,000 bytes decoded, 1.35 GB on the wire).
GIGABYTE_ATTACHMENT_BYTES = 1_000_000_000
#: The click test's attachment: small, so the HTTP load measures the link path, not bulk transfer.
CLICK_ATTACHMENT_BYTES = 64 * 1024
SENDER = "customer@sender.example"
RECIPIENT = "agent@contact.example"
#: A recipient on the bench's second route, whose offload threshold is 32 KiB.
CLICK_RECIPIENT = "agent@clicks.example"


def path_stem(filename: str) -> str:
    """``large.eml`` -> ``large`` (for the Message-ID)."""
    return filename.rsplit(".", 1)[0]


@dataclass(frozen=True)
class LargeMessage:
    """The generated message on disk, ready to send as DATA (CRLF lines, dot-stuffed)."""

    path: Path
    size: int
    attachment_size: int
    attachment_sha256: str
    attachment_name: str


def _pdf_like(size: int) -> bytes:
    """A real PDF of ``size`` bytes (random, incompressible image data): what
    a reader opens, and what the disarm step finds clean."""
    from tests.messages import pdf_bytes

    return pdf_bytes(size)


def build_large_message(
    directory: Path,
    attachment_bytes: int = ATTACHMENT_BYTES,
    filename: str = "large.eml",
    recipient: str = RECIPIENT,
) -> LargeMessage:
    """Write the message to ``directory/filename`` and describe it."""
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
        f"To: Contact Centre <{recipient}>\r\n"
        "Subject: Invoice scan (benchmark large message)\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <bench-{path_stem(filename)}-1@sender.example>\r\n"
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
    path = directory / filename
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
