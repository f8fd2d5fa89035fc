"""The five-minute tour, automated: send a message with a 12 MiB PDF and a
100 KiB PNG to a running gateway (``make run``), find the slimmed message in
the outbox, open its link and check the PDF comes back byte for byte."""
from __future__ import annotations

import os
import re
import smtplib
import sys
import time
import urllib.request
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

OUTBOX = Path("var/outbox/new")


def main() -> int:
    pdf = b"%PDF-1.4\n" + os.urandom(12 * 1024 * 1024 - 9)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(100 * 1024 - 8)
    msg = EmailMessage()
    msg["From"] = "customer@example.net"
    msg["To"] = "support@contact.example"
    msg["Subject"] = "Invoice 123"
    msg["Message-ID"] = make_msgid(domain="example.net")  # links and audit lines carry it
    msg.set_content("Hello, please find my invoice attached.\n")
    msg.add_alternative("<html><body><p>Hello, please find my invoice attached.</p></body></html>",
                        subtype="html")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="invoice_123.pdf")
    msg.add_attachment(png, maintype="image", subtype="png", filename="photo.png")
    before = set(OUTBOX.iterdir()) if OUTBOX.exists() else set()
    try:
        with smtplib.SMTP("127.0.0.1", 2525, timeout=60) as s:
            s.send_message(msg)
    except OSError as e:
        print(f"demo: cannot reach the gateway on 127.0.0.1:2525 ({e}); start it with `make run`", file=sys.stderr)
        return 1
    print(f"sent a {len(msg.as_bytes()) / 1e6:.1f} MB message to support@contact.example")
    deadline = time.time() + 30
    new: set[Path] = set()
    while time.time() < deadline and not new:
        new = set(OUTBOX.iterdir()) - before if OUTBOX.exists() else set()
        time.sleep(0.2)
    if not new:
        print("demo: nothing arrived in var/outbox/new within 30 s", file=sys.stderr)
        return 1
    out = new.pop()
    data = out.read_bytes()
    print(f"forwarded message: {out} ({len(data) / 1024:.0f} KiB)")
    url = re.search(rb"\((http://[^)\s]+/a/[A-Za-z0-9._-]+)\)", data)
    if url is None:
        print("demo: no link found in the forwarded message", file=sys.stderr)
        return 1
    link = url.group(1).decode()
    print(f"link: {link}")
    with urllib.request.urlopen(link, timeout=30) as r:
        got = r.read()
        print(f"download: HTTP {r.status}, {r.headers['Content-Disposition']}")
    print("PDF byte for byte:", "yes" if got == pdf else "NO")
    return 0 if got == pdf else 1


if __name__ == "__main__":
    sys.exit(main())
