"""Delivery to an SMTP next hop, end to end through real SMTP on loopback.

Messages go into the gateway (a real ``attachment-gateway serve`` process)
with smtplib; the gateway relays them to a real server on a loopback port:

- ``PostfixSink``: Postfix's ``smtp-sink`` (``tests.servers.smtpsink``, the
  one bench/ uses), dumping each message to a file.  It offers PIPELINING;
  with ``-p`` it does not; with ``-t N`` it drops a connection idle for N s.
- ``HopSink``: aiosmtpd, the harness sink (``tests.harness.SmtpSink``) with a
  handler that can also offer PIPELINING (aiosmtpd reads commands off one
  stream, so pipelined ones just work), answer RCPT per recipient, drop idle
  connections (aiosmtpd's ``timeout``) and allow one MAIL per connection
  (aiosmtpd's ``command_call_limit``: it answers ``421`` and closes).  Out of
  the box aiosmtpd does not offer PIPELINING; through its Controller (as the
  harness starts it) it does offer SMTPUTF8, which ``smtputf8=False`` turns off.

Only behaviour is checked: what arrives at the next hop (byte for byte, how
many times, with which envelope, on which connection), what the queue and
the log say, and what the sender gets back.  Nothing here knows how the
gateway's SMTP client is built.
"""
from __future__ import annotations

import asyncio
import email.utils
import socket
import json
import logging
import random
import re
import smtplib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.harness import GatewayProcess, SmtpSink, strip_maildir_headers, strip_trace
from tests.messages import parse, send
from tests.servers.smtpsink import SmtpSink as PostfixSink

MiB = 1 << 20
SENDER = "customer@example.net"
SETTLE = 1.5  # after the queue is idle: more than a worker scan (1 s) and a backoff (1-2 s) ...
# ... in which anything sent twice would show up twice


# -- the next hops ---------------------------------------------------------


@dataclass
class Arrival:
    """One message as a next hop took it."""

    mail_from: str  # "" for the null sender
    rcpt_tos: list[str]
    data: bytes  # as sent, dot-stuffing undone, lines ending CRLF
    mail_args: str = ""  # smtp-sink: what followed "MAIL FROM:"; aiosmtpd: the MAIL parameters
    connection: int = 0  # 1 for the first connection to the next hop, ... (aiosmtpd only)


class _HopHandler:
    def __init__(self, hop: "HopSink") -> None:
        self.hop = hop

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must set it
        with self.hop.lock:
            self.hop.connections += 1
            session.hop_connection = self.hop.connections
        if self.hop.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.hop.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.hop.data_delay:
            await asyncio.sleep(self.hop.data_delay)
        if self.hop.reply_data:
            return self.hop.reply_data
        with self.hop.lock:
            self.hop.messages.append(Arrival(envelope.mail_from, list(envelope.rcpt_tos),
                                             envelope.original_content, " ".join(envelope.mail_options),
                                             getattr(session, "hop_connection", 0)))
        return "250 2.0.0 Ok: stored"


@dataclass
class HopSink(SmtpSink):
    """The harness's aiosmtpd sink, scriptable: see the module docstring."""

    pipelining: bool = False
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply instead of 250
    idle_timeout: float | None = None  # aiosmtpd drops a connection idle this long
    mails_per_connection: int | None = None  # aiosmtpd answers 421 to the next MAIL and closes
    smtputf8: bool = True  # offered by default, as by the harness sink
    connections: int = 0  # EHLOs seen: one a connection (no STARTTLS here)
    data_delay: float = 0.0  # seconds before answering the end of data

    def start(self) -> "HopSink":
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": self.smtputf8}
        if self.idle_timeout is not None:
            kwargs["timeout"] = self.idle_timeout
        if self.mails_per_connection is not None:
            kwargs["command_call_limit"] = {"MAIL": self.mails_per_connection, "*": 1000}
        self._controller = Controller(_HopHandler(self), hostname="127.0.0.1", port=self.port,
                                      data_size_limit=None, **kwargs)
        self._controller.start()
        return self

    def arrivals(self) -> list[Arrival]:
        with self.lock:
            return list(self.messages)  # type: ignore[arg-type]


class PostfixHop:
    """Postfix's smtp-sink, dumping every message, read back as Arrivals."""

    def __init__(self, *extra_args: str) -> None:
        self.sink = PostfixSink(dump=True, extra_args=extra_args)

    @property
    def port(self) -> int:
        return self.sink.port

    def start(self) -> "PostfixHop":
        self.sink.start()
        return self

    def stop(self) -> None:
        self.sink.stop()

    def arrivals(self) -> list[Arrival]:
        out = []
        for m in self.sink.messages():
            # smtp-sink writes lines ending LF; the gateway sends only CRLF.
            out.append(Arrival(m.mail_from, m.rcpt_to, m.content.replace(b"\n", b"\r\n"),
                               m.sink_headers.get("X-Mail-Args", [""])[0]))
        return out

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[Arrival]:
        self.sink.wait_for_count(count, timeout)
        return self.arrivals()

    def log(self) -> str:
        return self.sink.log_path.read_text(errors="replace")

    def sessions(self) -> int:
        """Sessions that ended (smtp-sink's ``-c`` counter)."""
        counts = re.findall(r"sess=(\d+)", self.log())
        return int(counts[-1]) if counts else 0


Hop = HopSink | PostfixHop


@pytest.fixture
def hops() -> Iterator[Callable[..., Any]]:
    """Start next hops for a test: ``hops("smtp-sink", "-t", "1")`` or
    ``hops("aiosmtpd", pipelining=True, ...)``; all stopped after it.  Ask for
    this fixture before ``make_gateway`` so the gateways stop first."""
    started: list[Hop] = []

    def start(kind: str, *args: str, **kwargs: Any) -> Any:
        hop: Hop = PostfixHop(*args) if kind == "smtp-sink" else HopSink(**kwargs)
        hop.start()
        started.append(hop)
        return hop

    yield start
    for hop in reversed(started):
        hop.stop()


HOP_KINDS = {
    # id: (kind, args, kwargs)
    "smtp-sink-pipelining": ("smtp-sink", (), {}),
    "aiosmtpd-no-pipelining": ("aiosmtpd", (), {}),
    "aiosmtpd-pipelining": ("aiosmtpd", (), {"pipelining": True}),
}


def gateway_for(make_gateway: Callable[..., GatewayProcess], hop: Hop, one_process: bool = False,
                **kwargs: Any) -> GatewayProcess:
    """A gateway whose route goes to ``hop``.  ``one_process``: ``serve``
    runs one process (by default one per CPU, each with connections of its
    own), so that a second message can only go the way the first went."""
    if one_process:
        kwargs["sections"] = {"gateway": {"processes": 1}}
    return make_gateway(next_hop=f"smtp://127.0.0.1:{hop.port}", **kwargs)


# -- helpers ---------------------------------------------------------------


def settle(gw: GatewayProcess) -> None:
    """Wait until the gateway has nothing in progress, then a little longer."""
    gw.wait_idle()
    time.sleep(SETTLE)


def queue(gw: GatewayProcess) -> list[dict[str, Any]]:
    r = gw.command("queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout or "[]")


def wait_deferred(gw: GatewayProcess, timeout: float = 15.0) -> dict[str, Any]:
    """The message's queue row once it is in the deferred queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = queue(gw)
        if rows and rows[0]["queue"] == "deferred":
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"nothing deferred: {queue(gw)}\n{gw.log()[-3000:]}")


def deferrals(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [e for e in gw.log_events() if e.get("event") == "deferred"]


def assert_nothing_deferred(gw: GatewayProcess) -> None:
    assert deferrals(gw) == [], gw.log()[-3000:]
    assert queue(gw) == []


def arrived_once(gw: GatewayProcess, hop: Hop, raw: bytes) -> Arrival:
    """The one arrival of ``raw`` sent through ``gw``: relayed as sent, with
    no second copy, nothing deferred and nothing left in the queue."""
    [got] = hop.wait(1)
    assert_relayed(got, raw)
    settle(gw)
    assert len(hop.arrivals()) == 1
    assert_nothing_deferred(gw)
    return got


def bounces(gw: GatewayProcess) -> list[bytes]:
    """DSNs the gateway sent (its bounce next hop is a Maildir), without the
    Maildir envelope headers."""
    new = gw.tmp / "bounces" / "new"
    return [strip_maildir_headers(p.read_bytes()) for p in sorted(new.iterdir())] if new.exists() else []


def wait_bounces(gw: GatewayProcess, count: int = 1, timeout: float = 15.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = bounces(gw)
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{len(bounces(gw))} DSN(s), expected {count}\n{gw.log()[-3000:]}")


def dsn_parts(dsn: bytes) -> tuple[str, str]:
    """(the human-readable text, the delivery-status fields) of a DSN, read
    from its bytes as UTF-8 (an internationalised address is raw UTF-8)."""
    m = parse(dsn)
    assert m.get_content_type() == "multipart/report", dsn[:2000]
    parts = dsn.split(b"\r\n--" + m.get_boundary().encode())[1:-1]
    bodies = {}
    for part in parts:
        head, _, body = part.partition(b"\r\n\r\n")
        ctype = parse(head.strip() + b"\r\n\r\n").get_content_type()
        bodies[ctype] = body.decode("utf-8")
    assert {"text/plain", "message/delivery-status"} <= set(bodies), bodies
    return bodies["text/plain"], bodies["message/delivery-status"]


def raw_message(body: bytes, subject: str = "delivery test", to: str = "support@contact.example") -> bytes:
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: {email.utils.make_msgid(domain='example.net')}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode() + body


def assert_relayed(arrival: Arrival, raw: bytes) -> None:
    """``arrival`` is ``raw`` byte for byte under the gateway's trace headers."""
    assert arrival.data.startswith(b"Received: from "), arrival.data[:200]
    got = strip_trace(arrival.data)
    if got != raw:
        i = next((i for i, (a, b) in enumerate(zip(got, raw)) if a != b), min(len(got), len(raw)))
        raise AssertionError(f"content differs at byte {i} of {len(raw)} (got {len(got)}): "
                             f"got {got[max(0, i - 40):i + 40]!r}, sent {raw[max(0, i - 40):i + 40]!r}")


DOTS = (b"The lines below start with dots.\r\n"
        b".one dot\r\n"
        b"..two dots\r\n"
        b"...three dots\r\n"
        b".\r\n"
        b"(a lone dot above, two lone dots below)\r\n"
        b"..\r\n"
        b". a dot and a space\r\n"
        b"a line with a dot after CRLF\r\n"
        b".\r\n")  # the last line is a lone dot too: the wire ends "\r\n..\r\n.\r\n"


def big_body(size: int) -> bytes:
    """About ``size`` bytes of text lines, many starting with dots.  Around
    each 1 MiB mark of the message (128 KiB either side) every line is a
    lone dot: a sender that streams the message in windows of 2^k bytes (any
    k from 16 to 20, wherever the windows start within those 128 KiB) has a
    window begin with a dot line at one of three consecutive marks, since a
    lone dot line is 3 bytes and 2^k is never a multiple of 3."""
    head = len(raw_message(b""))
    rng = random.Random(20240611)
    letters = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:-"
    out = bytearray()
    while head + len(out) < size:
        pos = head + len(out)
        near = min(pos % MiB, MiB - pos % MiB) < 128 * 1024 and pos > MiB // 2
        if near:
            out += b".\r\n"
            continue
        prefix = rng.choice([b"", b"", b".", b"..", b"..."])
        out += prefix + bytes(rng.choice(letters) for _ in range(rng.randint(0, 76))) + b"\r\n"
    return bytes(out)


# -- the tests ---------------------------------------------------------------


def test_next_hops_offer_what_these_tests_assume(hops) -> None:
    """The tests below count on which extensions each next hop offers."""
    def extensions(port: int) -> set[str]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("probe.test")
            return set(s.esmtp_features)

    postfix = extensions(hops("smtp-sink").port)
    assert "pipelining" in postfix and "smtputf8" not in postfix
    assert "pipelining" not in extensions(hops("smtp-sink", "-p").port)
    plain = extensions(hops("aiosmtpd").port)
    assert "pipelining" not in plain and "smtputf8" in plain
    assert "pipelining" in extensions(hops("aiosmtpd", pipelining=True).port)
    assert "smtputf8" not in extensions(hops("aiosmtpd", smtputf8=False).port)


@pytest.mark.parametrize("hop_id", list(HOP_KINDS))
def test_dot_lines_arrive_byte_for_byte_once(hops, make_gateway, hop_id: str) -> None:
    kind, args, kwargs = HOP_KINDS[hop_id]
    hop = hops(kind, *args, **kwargs)
    gw = gateway_for(make_gateway, hop)
    raw = raw_message(DOTS, subject="dots")
    send(gw.smtp_port, raw)
    got = arrived_once(gw, hop, raw)
    assert got.mail_from == SENDER and got.rcpt_tos == ["support@contact.example"]


@pytest.mark.parametrize("hop_id", list(HOP_KINDS))
def test_3mib_message_below_threshold_arrives_byte_for_byte_once(hops, make_gateway, hop_id: str) -> None:
    kind, args, kwargs = HOP_KINDS[hop_id]
    hop = hops(kind, *args, **kwargs)
    gw = gateway_for(make_gateway, hop)  # offload threshold 10 MiB
    raw = raw_message(big_body(3 * MiB + 100_000), subject="big")
    assert 3 * MiB < len(raw) < 4 * MiB
    send(gw.smtp_port, raw)
    got = arrived_once(gw, hop, raw)
    assert b"X-Attachment-Offload: offloaded=0 bytes=0\r\n" in got.data


@pytest.mark.parametrize("hop_id", list(HOP_KINDS))
def test_messages_in_a_row_share_a_connection_and_arrive_once_each(hops, make_gateway, hop_id: str) -> None:
    kind, args, kwargs = HOP_KINDS[hop_id]
    hop = hops(kind, *args, **kwargs)
    gw = gateway_for(make_gateway, hop, one_process=True)
    sent = []
    for i in range(5):
        raw = raw_message(f"message {i} of 5\r\n".encode(), subject=f"in a row {i}")
        sent.append(raw)
        send(gw.smtp_port, raw)
        hop.wait(i + 1)
        gw.wait_idle()
    settle(gw)
    got = hop.arrivals()
    assert len(got) == 5
    for raw in sent:
        [match] = [a for a in got if strip_trace(a.data) == raw]
        assert match.rcpt_tos == ["support@contact.example"]
    assert_nothing_deferred(gw)
    # Reuse: fewer connections than messages.
    if isinstance(hop, HopSink):
        assert 1 <= hop.connections < 5, f"{hop.connections} connections for 5 messages in a row"
    else:
        gw.stop()  # smtp-sink counts a session when it ends
        deadline = time.monotonic() + 10
        while hop.sessions() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert 1 <= hop.sessions() < 5, f"{hop.sessions()} sessions for 5 messages in a row\n{hop.log()}"


@pytest.mark.parametrize("hop_id", list(HOP_KINDS))
def test_connection_the_next_hop_closed_when_idle_is_replaced_not_deferred(hops, make_gateway, caplog,
                                                                           hop_id: str) -> None:
    kind, args, kwargs = HOP_KINDS[hop_id]
    if kind == "smtp-sink":
        hop = hops(kind, *args, "-t", "1")  # drops a connection after 1 s without a command
    else:
        hop = hops(kind, idle_timeout=1.0, **kwargs)  # the same, silently, as aiosmtpd does
        caplog.set_level(logging.INFO, logger="mail.log")
    gw = gateway_for(make_gateway, hop, one_process=True)
    first = raw_message(b"before the idle close\r\n", subject="first")
    send(gw.smtp_port, first)
    hop.wait(1)
    gw.wait_idle()
    time.sleep(2.5)  # the next hop has dropped the idle connection by now
    # The next hop did drop the connection.
    if isinstance(hop, PostfixHop):
        assert "read timeout" in hop.log(), hop.log()
    else:
        assert any("connection timeout" in r.getMessage() for r in caplog.records)
    second = raw_message(b"after the idle close\r\n", subject="second")
    send(gw.smtp_port, second)
    got = hop.wait(2, timeout=10)
    settle(gw)
    got = hop.arrivals()
    assert len(got) == 2
    assert_relayed(next(a for a in got if b"Subject: first" in a.data), first)
    assert_relayed(next(a for a in got if b"Subject: second" in a.data), second)
    if isinstance(hop, HopSink):
        assert got[1].connection == 2  # a new connection: the idle one was really gone
    assert_nothing_deferred(gw)


@pytest.mark.parametrize("pipelining", [False, True], ids=["no-pipelining", "pipelining"])
def test_421_to_mail_on_a_reused_connection_goes_on_a_fresh_one(hops, make_gateway, caplog,
                                                                pipelining: bool) -> None:
    # aiosmtpd with a limit of one MAIL per connection answers the second
    # MAIL with "421 4.7.0 MAIL sent too many times" and closes.
    hop = hops("aiosmtpd", pipelining=pipelining, mails_per_connection=1)
    gw = gateway_for(make_gateway, hop, one_process=True)
    caplog.set_level(logging.WARNING, logger="mail.log")
    first = raw_message(b"on the first connection\r\n", subject="first")
    send(gw.smtp_port, first)
    hop.wait(1)
    gw.wait_idle()
    second = raw_message(b"after a 421 to MAIL\r\n", subject="second")
    send(gw.smtp_port, second)
    hop.wait(2, timeout=10)
    settle(gw)
    got = hop.arrivals()
    assert len(got) == 2
    assert_relayed(got[0], first)
    assert_relayed(got[1], second)
    assert [a.connection for a in got] == [1, 2]
    # The 421 was said: the gateway did try the first connection again.
    assert any("over limit" in r.getMessage() for r in caplog.records), gw.log()[-3000:]
    assert_nothing_deferred(gw)


@pytest.mark.parametrize("pipelining", [False, True], ids=["no-pipelining", "pipelining"])
def test_recipient_refused_with_550_gets_one_dsn_the_other_the_message_once(hops, make_gateway,
                                                                            pipelining: bool) -> None:
    refused = "nobody@contact.example"
    hop = hops("aiosmtpd", pipelining=pipelining,
               rcpt_replies={refused: f"550 5.1.1 <{refused}>: Recipient address rejected: User unknown"})
    gw = gateway_for(make_gateway, hop)
    raw = raw_message(b"to two recipients, one unknown\r\n", to=f"support@contact.example, {refused}")
    assert send(gw.smtp_port, raw, rcpts=["support@contact.example", refused]) == {}
    [got] = hop.wait(1)
    assert got.rcpt_tos == ["support@contact.example"]
    assert_relayed(got, raw)
    [dsn] = wait_bounces(gw)
    settle(gw)
    assert len(hop.arrivals()) == 1
    assert len(bounces(gw)) == 1
    assert parse(dsn)["To"] == f"<{SENDER}>"
    text, status = dsn_parts(dsn)
    assert f"Final-Recipient: rfc822; {refused}" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert status.count("Final-Recipient:") == 1
    assert refused in text
    assert "support@contact.example" not in text and "support@contact.example" not in status
    assert queue(gw) == []


@pytest.mark.parametrize("pipelining", [False, True], ids=["no-pipelining", "pipelining"])
def test_recipient_deferred_with_450_is_retried_alone(hops, make_gateway, pipelining: bool) -> None:
    later = "busy@contact.example"
    hop = hops("aiosmtpd", pipelining=pipelining, rcpt_replies={later: f"450 4.2.1 <{later}>: mailbox busy"})
    gw = gateway_for(make_gateway, hop)
    raw = raw_message(b"to two recipients, one busy\r\n", to=f"{later}, support@contact.example")
    send(gw.smtp_port, raw, rcpts=[later, "support@contact.example"])
    [first] = hop.wait(1)
    assert first.rcpt_tos == ["support@contact.example"]
    assert_relayed(first, raw)
    row = wait_deferred(gw)
    assert "450 4.2.1" in row["last_error"], row
    assert [e["rcpt"] for e in deferrals(gw)] == [later] * len(deferrals(gw))
    del hop.rcpt_replies[later]  # the mailbox is free again
    hop.wait(2, timeout=10)
    settle(gw)
    got = hop.arrivals()
    assert [a.rcpt_tos for a in got] == [["support@contact.example"], [later]]
    assert_relayed(got[1], raw)
    assert queue(gw) == []
    assert bounces(gw) == []


def send_smtputf8(port: int, sender: str, rcpt: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.example")
        assert s.has_extn("smtputf8")
        assert s.sendmail(sender, [rcpt], data, mail_options=["SMTPUTF8"]) == {}


UTF8_RCPT = "støtte@contact.example"


def utf8_message() -> bytes:
    return (f"From: {SENDER}\r\nTo: {UTF8_RCPT}\r\nSubject: Grüße\r\n"
            f"Message-ID: {email.utils.make_msgid(domain='example.net')}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            "\r\nHallo, schöne Grüße.\r\n").encode("utf-8")


@pytest.mark.parametrize("hop_id", ["smtp-sink-pipelining", "aiosmtpd-no-pipelining"])
def test_smtputf8_message_to_a_next_hop_without_smtputf8_bounces_with_5_6_7(hops, make_gateway,
                                                                            hop_id: str) -> None:
    kind, args, kwargs = HOP_KINDS[hop_id]
    if kind == "aiosmtpd":
        kwargs = {**kwargs, "smtputf8": False}
    hop = hops(kind, *args, **kwargs)
    gw = gateway_for(make_gateway, hop)
    rcpt, raw = UTF8_RCPT, utf8_message()
    send_smtputf8(gw.smtp_port, SENDER, rcpt, raw)
    [dsn] = wait_bounces(gw)
    settle(gw)
    assert hop.arrivals() == []
    assert len(bounces(gw)) == 1
    text, status = dsn_parts(dsn)
    assert "Status: 5.6.7" in status and "Action: failed" in status
    assert status.count("Final-Recipient:") == 1 and rcpt in status
    assert_nothing_deferred(gw)


@pytest.mark.parametrize("pipelining", [False, True], ids=["no-pipelining", "pipelining"])
def test_smtputf8_message_to_a_next_hop_with_smtputf8_goes_with_smtputf8(hops, make_gateway,
                                                                         pipelining: bool) -> None:
    hop = hops("aiosmtpd", pipelining=pipelining, smtputf8=True)
    gw = gateway_for(make_gateway, hop)
    raw = utf8_message()
    send_smtputf8(gw.smtp_port, SENDER, UTF8_RCPT, raw)
    got = arrived_once(gw, hop, raw)
    assert got.rcpt_tos == [UTF8_RCPT]
    assert "SMTPUTF8" in got.mail_args.split(" ")
    assert bounces(gw) == []


@pytest.mark.parametrize("pipelining", [False, True], ids=["no-pipelining", "pipelining"])
def test_451_at_end_of_data_defers_then_delivers_once(hops, make_gateway, pipelining: bool) -> None:
    hop = hops("aiosmtpd", pipelining=pipelining, reply_data="451 4.3.0 queue full, try again later")
    gw = gateway_for(make_gateway, hop)
    raw = raw_message(b"the next hop is busy at first\r\n")
    send(gw.smtp_port, raw)
    row = wait_deferred(gw)
    assert "451 4.3.0 queue full, try again later" in row["last_error"], row
    assert hop.arrivals() == []
    hop.reply_data = None
    [got] = hop.wait(1, timeout=10)
    settle(gw)
    assert len(hop.arrivals()) == 1
    assert got.rcpt_tos == ["support@contact.example"] and got.mail_from == SENDER
    assert_relayed(got, raw)  # one set of trace headers, however many tries
    assert queue(gw) == []
    assert bounces(gw) == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_null_sender_is_relayed_as_mail_from_null(hops, make_gateway, pipelining: bool) -> None:
    hop = hops("smtp-sink", *(() if pipelining else ("-p",)))
    gw = gateway_for(make_gateway, hop)
    raw = raw_message(b"a bounce from elsewhere, with the null sender\r\n", subject="null sender")
    send(gw.smtp_port, raw, sender="")
    got = arrived_once(gw, hop, raw)
    # X-Mail-Args is what followed "MAIL FROM:" on the wire.
    assert got.mail_args.split(" ")[0] == "<>", got.mail_args
    assert got.mail_from == ""


def test_ascii_message_received_with_smtputf8_goes_without_it_to_a_next_hop_without_smtputf8(hops,
                                                                                            make_gateway) -> None:
    # The client asked for SMTPUTF8, but nothing in the message needs it
    # (RFC 6531 section 3.4): relayed as plain mail, not bounced.
    hop = hops("aiosmtpd", smtputf8=False)
    gw = gateway_for(make_gateway, hop)
    raw = raw_message(b"all ASCII, sent with SMTPUTF8 anyway\r\n")
    send_smtputf8(gw.smtp_port, SENDER, "support@contact.example", raw)
    got = arrived_once(gw, hop, raw)
    assert "SMTPUTF8" not in got.mail_args.split(" ")
    assert bounces(gw) == []


@pytest.mark.parametrize("pipelining", [False, True], ids=["no-pipelining", "pipelining"])
def test_421_to_mail_on_a_fresh_connection_defers_with_the_servers_words(hops, make_gateway,
                                                                          pipelining: bool) -> None:
    # aiosmtpd with no MAIL allowed answers the first MAIL with 421 and closes.
    hop = hops("aiosmtpd", pipelining=pipelining, mails_per_connection=0)
    gw = gateway_for(make_gateway, hop)
    send(gw.smtp_port, raw_message(b"the next hop is closing\r\n"))
    row = wait_deferred(gw)
    assert "421 4.7.0 MAIL sent too many times" in row["last_error"], row
    assert hop.arrivals() == []


def test_next_hop_that_never_greets_defers_within_the_connect_timeout(make_gateway) -> None:
    # A listening socket nobody accepts from: the TCP connection is made
    # (the kernel's backlog), the greeting never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        gw = make_gateway(next_hop=f"smtp://127.0.0.1:{silent.getsockname()[1]}",
                          sections={"delivery": {"connect_timeout": 1}})
        send(gw.smtp_port, raw_message(b"to a next hop that says nothing\r\n"))
        row = wait_deferred(gw)
    assert "connect to smtp://127.0.0.1" in row["last_error"] and "no reply within 1s" in row["last_error"], row


def test_next_hop_that_stalls_after_the_data_defers_within_the_command_timeout_then_delivers(
        hops, make_gateway) -> None:
    hop = hops("aiosmtpd", data_delay=4.0)
    gw = gateway_for(make_gateway, hop, sections={"delivery": {"command_timeout": 1}})
    raw = raw_message(b"the next hop is slow to answer the end of data\r\n")
    send(gw.smtp_port, raw)
    row = wait_deferred(gw)
    assert "no reply within 1s" in row["last_error"], row
    hop.data_delay = 0.0
    # The stalled attempt may still have been stored by the next hop (the
    # gateway cannot know): at least once, as any MTA after a timeout.
    got = hop.wait(1, timeout=20)
    gw.wait_idle()
    assert_relayed(got[-1], raw)
    assert queue(gw) == []
