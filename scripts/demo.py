"""The five-minute tour, automated (``make demo``, against ``make run``).

1. Links: send a message with a text and an HTML body, a 12 MiB PDF and a
   100 KiB PNG (real files, made here: the policies refuse bytes that only
   pretend to be a PDF or a PNG) to the route whose next hop is a Maildir;
   find the slimmed message there, open the PDF's link and check the PDF
   comes back byte for byte.  Nothing is refused, so the customer gets no
   automatic reply.
2. A deferral: send a message to the route whose next hop is SMTP while
   nothing listens there, show it waiting in the ``deferred`` queue, start
   a stand-in for the contact-centre platform's SMTP server, flush the
   queue and see the message go out; then stop the stand-in.

Where to send and look is read from the config (``-c``, default
conf/gateway.toml), so the tour follows the file ``make run`` serves.
``--write-files DIR`` only writes invoice_123.pdf and photo.png, for the
README's swaks lines.
"""
from __future__ import annotations

import argparse
import os
import re
import smtplib
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

MiB = 1 << 20
SENDER = "customer@example.net"


# -- the files --------------------------------------------------------------


def make_pdf(size: int = 12 * MiB) -> bytes:
    """A valid one-page PDF of at least ``size`` bytes: a heading and a
    picture of noise (a DeviceRGB image, uncompressed) that fills the rest."""
    side = max(16, int(((size - 2048) / 3) ** 0.5))
    pixels = os.urandom(side * side * 3)
    text = b"BT /F1 24 Tf 72 720 Td (Invoice 123) Tj ET\nq 468 0 0 468 72 200 cm /Im1 Do Q\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> /XObject << /Im1 6 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
        b"/BitsPerComponent 8 /Length %d >>\nstream\n" % (side, side, len(pixels)) + pixels + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_png(size: int = 100 * 1024) -> bytes:
    """A valid RGB PNG of noise of about ``size`` bytes (stored, not
    compressed: noise would not shrink anyway)."""
    side = max(1, int((size / 3) ** 0.5))
    rows = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 0))
            + chunk(b"IEND", b""))


def write_files(directory: Path) -> tuple[Path, Path]:
    """invoice_123.pdf and photo.png in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pdf, png = directory / "invoice_123.pdf", directory / "photo.png"
    pdf.write_bytes(make_pdf())
    png.write_bytes(make_png())
    return pdf, png


# -- the config -------------------------------------------------------------


class Tour:
    """What the tour needs from the config the gateway serves."""

    def __init__(self, config: Path) -> None:
        from gateway.config import load, parse_hostport

        self.config = config
        cfg = load(config)
        self.smtp = parse_hostport(cfg.smtp.listen)
        self.spool = cfg.path(cfg.gateway.spool_dir)
        self.maildir_route: Any = None
        self.smtp_route: Any = None
        for route in cfg.routes:
            if route.next_hop.startswith("maildir:") and route.domains and self.maildir_route is None:
                self.maildir_route = route
            elif route.next_hop.startswith("smtp://") and route.domains and self.smtp_route is None:
                self.smtp_route = route
        self.outbox = (cfg.path(self.maildir_route.next_hop[len("maildir:"):]) / "new"
                       if self.maildir_route is not None else None)
        self.autoreplies = None
        if self.maildir_route is not None and self.maildir_route.autoreply is not None:
            hop = self.maildir_route.autoreply.next_hop
            if hop.startswith("maildir:"):
                self.autoreplies = cfg.path(hop[len("maildir:"):]) / "new"

    def send(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(*self.smtp, timeout=120) as s:
            s.send_message(msg)

    def cli(self, *args: str) -> str:
        """Run ``attachment-gateway -c CONFIG ARGS`` as the reader would, showing the command."""
        print(f"  $ attachment-gateway -c {self.config} {' '.join(args)}")
        done = subprocess.run([sys.executable, "-m", "gateway", "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=60)
        out = (done.stdout + done.stderr).rstrip()
        print("".join(f"    {line}\n" for line in out.splitlines()), end="")
        return out


def _files(directory: Path | None) -> set[Path]:
    return set(directory.iterdir()) if directory is not None and directory.exists() else set()


def _wait(predicate: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    return None


# -- the two parts ----------------------------------------------------------


def links(tour: Tour) -> bool:
    """Part 1: a large PDF becomes a link that works."""
    route = tour.maildir_route
    if route is None or tour.outbox is None:
        print("demo: no route with a maildir: next hop in the config; skipping the link part", file=sys.stderr)
        return False
    to = f"support@{route.domains[0]}"
    pdf, png = make_pdf(), make_png()
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = to
    msg["Subject"] = "Invoice 123"
    msg["Message-ID"] = make_msgid(domain="example.net")  # links and audit lines carry it
    msg.set_content("Hello, please find my invoice attached.\n")
    msg.add_alternative("<html><body><p>Hello, please find my invoice attached.</p></body></html>",
                        subtype="html")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="invoice_123.pdf")
    msg.add_attachment(png, maintype="image", subtype="png", filename="photo.png")
    before, replies_before = _files(tour.outbox), _files(tour.autoreplies)
    tour.send(msg)
    print(f"1. sent a {len(msg.as_bytes()) / 1e6:.1f} MB message (a {len(pdf) / MiB:.0f} MiB PDF, "
          f"a {len(png) / 1024:.0f} KiB PNG) to {to} on {tour.smtp[0]}:{tour.smtp[1]}")
    new = _wait(lambda: _files(tour.outbox) - before, 60)
    if not new:
        print(f"demo: nothing arrived in {tour.outbox} within 60 s", file=sys.stderr)
        return False
    out = sorted(new)[0]
    data = out.read_bytes()
    kept = b'filename="photo.png"' in data or b"filename=photo.png" in data
    print(f"   forwarded message: {out} ({len(data) / 1024:.0f} KiB; the PNG is still attached: "
          f"{'yes' if kept else 'NO'})")
    url = re.search(rb"\((https?://[^)\s]+/a/[A-Za-z0-9._-]+)\)", data)
    if url is None:
        print("demo: no link found in the forwarded message", file=sys.stderr)
        return False
    link = url.group(1).decode()
    print(f"   link: {link}")
    with urllib.request.urlopen(link, timeout=60) as r:
        got = r.read()
        print(f"   download: HTTP {r.status}, {r.headers['Content-Disposition']}")
    print("   PDF byte for byte:", "yes" if got == pdf else "NO")
    replies = _files(tour.autoreplies) - replies_before
    print(f"   automatic replies to the customer: {len(replies)} (none: no file was refused)")
    return got == pdf and not replies


def deferral(tour: Tour) -> bool:
    """Part 2: the SMTP next hop is down, the message waits in deferred,
    and goes once the next hop is back."""
    from aiosmtpd.controller import Controller

    from gateway.config import parse_smtp_next_hop

    route = tour.smtp_route
    if route is None:
        print("demo: no route with an smtp:// next hop in the config; skipping the deferral part",
              file=sys.stderr)
        return True
    host, port, lookup_mx = parse_smtp_next_hop(route.next_hop)
    if lookup_mx or host not in ("127.0.0.1", "::1", "localhost"):
        print(f"demo: the route {route.name!r} goes to {route.next_hop}, not a local port the demo can "
              f"play; skipping the deferral part", file=sys.stderr)
        return True
    to = f"agent@{route.domains[0]}"
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = to
    msg["Subject"] = "Waiting for the platform"
    msg["Message-ID"] = make_msgid(domain="example.net")
    msg.set_content("This one goes to the contact-centre platform over SMTP.\n")
    deferred = tour.spool / "deferred"
    before = _files(deferred)
    tour.send(msg)
    print(f"2. sent a message to {to}, whose route {route.name!r} delivers to {route.next_hop}, "
          f"where nothing listens yet")
    waiting = _wait(lambda: _files(deferred) - before, 60)
    if not waiting:
        print(f"demo: the message did not reach {deferred} within 60 s", file=sys.stderr)
        return False
    qid = sorted(waiting)[0].name
    print("   it waits in the deferred queue, to be retried with backoff:")
    tour.cli("queue", "list", "--queue", "deferred")

    class Platform:
        """The stand-in for the platform's SMTP server: keeps what it gets."""

        def __init__(self) -> None:
            self.got: list[bytes] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.got.append(envelope.original_content)
            return "250 2.0.0 Ok: queued by the demo platform"

    platform = Platform()
    controller = Controller(platform, hostname=host, port=port)
    controller.start()
    try:
        print(f"   the platform's SMTP server is back on {host}:{port}; retry now instead of at the next backoff:")
        tour.cli("queue", "flush", qid)
        got = _wait(lambda: [m for m in platform.got if b"Waiting for the platform" in m], 60)
    finally:
        controller.stop()
    if not got:
        print("demo: the platform did not get the message within 60 s", file=sys.stderr)
        return False
    print(f"   delivered: the platform got it ({len(got[0])} bytes); its server is stopped again")
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the tour, or write its files (``--write-files DIR``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("-c", "--config", type=Path, default=Path("conf/gateway.toml"),
                   help="the config the running gateway serves (default: conf/gateway.toml)")
    p.add_argument("--write-files", type=Path, metavar="DIR",
                   help="only write invoice_123.pdf (12 MiB) and photo.png (100 KiB) into DIR")
    args = p.parse_args(argv)
    if args.write_files is not None:
        for path in write_files(args.write_files):
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
        return 0
    try:
        tour = Tour(args.config)
    except Exception as e:  # noqa: BLE001 - the reader sees why, not a traceback
        print(f"demo: cannot use {args.config}: {e}", file=sys.stderr)
        return 78
    try:
        ok = links(tour)
        ok = deferral(tour) and ok
    except OSError as e:
        print(f"demo: cannot reach the gateway on {tour.smtp[0]}:{tour.smtp[1]} ({e}); start it with `make run`",
              file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
