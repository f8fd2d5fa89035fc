"""Delivery to a route's next hop: SMTP or a Maildir.

A next hop reports a result per recipient: delivered, deferred (4xx, a
connection failure, a TLS requirement not met) or failed (5xx).  The worker
turns deferrals into retries with backoff and failures into one DSN.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.authn.resolver import Resolver
from gateway.mime.rewrite import Segment, segments_size
from gateway.mime.source import Source
from gateway.spool.durable import write_chunks_atomic
from gateway.spool.envelope import Envelope


class Content:
    """What a next hop sends: a spooled file, or segments of one (byte
    ranges and new bytes) so a message that needs no rewriting is sent
    straight from the spool without being written again."""

    def __init__(self, path: Path, segments: list[Segment] | None = None) -> None:
        self.path = path
        self.segments = segments
        self.size = segments_size(segments) if segments is not None else path.stat().st_size

    def chunks(self, window: int = 1 << 20) -> Generator[bytes, None, None]:
        """The bytes in order (blocking reads); close it to close the file early."""
        with Source(self.path) as src:
            for seg in self.segments if self.segments is not None else [(0, src.size)]:
                if isinstance(seg, bytes):
                    if seg:
                        yield seg
                else:
                    yield from src.iter_range(seg[0], seg[1], window)

    def write_to(self, path: Path) -> None:
        """Save the bytes durably (temp name, fsync, rename, directory fsync)."""
        write_chunks_atomic(path, self.chunks())


@dataclass
class DeliveryResult:
    """Per-recipient outcome of one delivery attempt."""

    delivered: list[str] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    # The next hop's final reply for each delivered recipient, as it said it
    # ("250 2.0.0 Ok: queued as 4XYZ"): the delivery log line carries it.
    replies: dict[str, str] = field(default_factory=dict)

    def defer_all(self, rcpts: list[str], reason: str) -> DeliveryResult:
        for r in rcpts:
            self.deferred[r] = reason
        return self


# How next hops name their queue id in the reply to the end of data:
# Postfix "queued as 4XYZ", Exim "OK id=1abc-000X-YZ", Sendmail "Ok: queued
# as ...", Microsoft "Queued mail for delivery" (none), SES and many others
# "Ok: <id>" / "Ok <id>".
_REMOTE_ID = (re.compile(r"queued as <?([^\s<>]+)", re.I),
              re.compile(r"\bid=<?([^\s<>]+)", re.I),
              re.compile(r"^\s*(?:\d\.\d{1,3}\.\d{1,3}\s+)?ok:?\s+<?([\w.@/+=-]{4,})>?\s*$", re.I))


def remote_queue_id(reply: str) -> str | None:
    """The queue id a next hop's reply names, if it names one."""
    text = reply[4:] if reply[:3].isdigit() else reply
    for pattern in _REMOTE_ID:
        m = pattern.search(text)
        if m is not None:
            return m.group(1)
    return None


#: Blocking work to do with a delivery's result, in a thread: the Maildir
#: next hop's own, or one the SMTP next hop shares among deliveries.
After = Callable[[DeliveryResult], None]


def followed(result: DeliveryResult, then: After | None) -> DeliveryResult:
    """``result``, after ``then(result)`` when there is a ``then``."""
    if then is not None:
        then(result)
    return result


class NextHop(Protocol):
    """Where a route's mail goes."""

    name: str

    async def deliver(self, envelope: Envelope, rcpts: list[str], message: Content,
                      then: After | None = None) -> DeliveryResult:
        """Hand ``message`` over for ``rcpts``; ``then(result)`` runs after,
        in a thread the delivery had anyway or shares with others (the
        worker removes a delivered message there: no hop of its own)."""

    async def close(self) -> None:
        """Close pooled connections."""


def build(spec: str, *, base_dir: Path, hostname: str, tls: str = "opportunistic",
          connect_timeout: float = 30, command_timeout: float = 300, max_connections: int = 10,
          tls_ca_file: Path | None = None, resolver: Resolver | None = None) -> NextHop:
    """The next hop for a ``smtp://HOST[:PORT]`` or ``maildir:PATH`` spec.

    A domain (``smtp://contact.example.com``) is a mail domain: its MX
    records are looked up with ``resolver`` (the ``[auth]`` DNS settings;
    None: /etc/resolv.conf) at each new connection.  ``smtp://[HOST]:PORT``
    and an IP address are connected to as they are, as in Postfix."""
    hop: NextHop
    if spec.startswith("maildir:"):
        from gateway.delivery.maildir import MaildirNextHop

        path = Path(spec[len("maildir:"):])
        hop = MaildirNextHop(path if path.is_absolute() else base_dir / path)
    else:
        from gateway.config import parse_smtp_next_hop
        from gateway.delivery.smtp import SmtpNextHop

        host, port, lookup_mx = parse_smtp_next_hop(spec)
        if lookup_mx and resolver is None:
            resolver = Resolver([], 5.0)
        hop = SmtpNextHop(host, port, hostname=hostname, tls=tls, connect_timeout=connect_timeout,
                          command_timeout=command_timeout, max_connections=max_connections,
                          tls_ca_file=str(tls_ca_file) if tls_ca_file is not None else None,
                          resolver=resolver if lookup_mx else None)
    return hop
