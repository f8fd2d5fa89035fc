"""A Maildir as the next hop: the embedded demo's outbox, and a drop folder.

Delivery follows the Maildir convention: write to ``tmp/``, fsync, rename
into ``new/``, fsync the directory; a reader never sees half a message.  One
file is written per message, headed by ``Return-Path`` and
``X-Envelope-To`` so the envelope survives.  Lines end in CRLF, as the
gateway writes them everywhere; a bare CR, bare LF or NUL that reached this
point (a bug upstream) is normalised and logged, never written.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from gateway import logs
from gateway.delivery import After, Content, DeliveryResult, followed
from gateway.lineends import Normaliser, clean_lines
from gateway.spool.durable import fsync_dir
from gateway.spool.envelope import Envelope

log = logs.get("delivery")


class MaildirNextHop:
    """Deliver into a Maildir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"maildir:{path}"
        self._seq = 0

    def _deliver(self, envelope: Envelope, rcpts: list[str], message: Content) -> DeliveryResult:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{time.time():.6f}.{os.getpid()}_{self._seq}.{envelope.queue_id}.{socket.gethostname()}"
        tmp = self.path / "tmp" / name
        # One recipient a line: a hundred on one line would be far past the
        # 998 characters a header line may hold.
        to = ",\r\n\t".join(rcpts)
        head = clean_lines(f"Return-Path: <{envelope.mail_from}>\r\nX-Envelope-To: {to}\r\n".encode("utf-8", "replace"))
        lines = Normaliser()
        with open(tmp, "wb") as out:
            out.write(head)
            for chunk in message.chunks():
                out.write(lines.feed(chunk))
            out.write(lines.end())
            out.flush()
            os.fsync(out.fileno())
        if lines.changed:
            log.warning("bare CR, bare LF or NUL in outgoing data: normalised (a bug upstream)",
                        queue_id=envelope.queue_id)
        os.rename(tmp, self.path / "new" / name)
        fsync_dir(self.path / "new")
        return DeliveryResult(delivered=list(rcpts))

    async def deliver(self, envelope: Envelope, rcpts: list[str], message: Content,
                      then: After | None = None) -> DeliveryResult:
        return await asyncio.to_thread(lambda: followed(self._deliver_or_defer(envelope, rcpts, message), then))

    def _deliver_or_defer(self, envelope: Envelope, rcpts: list[str], message: Content) -> DeliveryResult:
        try:
            return self._deliver(envelope, rcpts, message)
        except OSError as e:
            return DeliveryResult().defer_all(rcpts, f"4.3.0 cannot write to {self.path}: {e.strerror or e}")

    async def close(self) -> None:
        return None
