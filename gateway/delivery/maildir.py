"""A Maildir as the next hop: the embedded demo's outbox, and a drop folder.

Delivery follows the Maildir convention: write to ``tmp/``, fsync, rename
into ``new/``, fsync the directory; a reader never sees half a message.  One
file is written per message, headed by ``Return-Path`` and
``X-Envelope-To`` so the envelope survives.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from gateway.delivery import After, Content, DeliveryResult, followed
from gateway.spool import Envelope, fsync_dir


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
        head = f"Return-Path: <{envelope.mail_from}>\r\nX-Envelope-To: {', '.join(rcpts)}\r\n".encode(
            "utf-8", "replace")
        with open(tmp, "wb") as out:
            out.write(head)
            for chunk in message.chunks():
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
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
