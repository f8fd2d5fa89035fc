"""SMTP ingress and egress hygiene (issue 14): NUL refused at the end of
DATA, dot-unstuffing after every line end the gateway recognises, malformed
domains and invalid UTF-8 refused at MAIL and RCPT, and what goes to the
next hop unambiguous on the wire (checked on a raw-socket sink that keeps
the bytes exactly as they came)."""
from __future__ import annotations

import base64
import re
import email
import email.policy
import time
from typing import Iterator

import pytest

from gateway.spool import Envelope, Spool
from tests.harness import GatewayProcess, SmtpSink, wait_until
from tests.servers.rawsink import RawSink, assert_wire_clean
from tests.test_smuggling import Client


@pytest.fixture
def relay(make_gateway, sink: SmtpSink) -> GatewayProcess:
    return make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")


@pytest.fixture
def raw_sink() -> Iterator[RawSink]:
    s = RawSink().start()
    yield s
    s.stop()


_open: list[Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every client a test opened, also when it failed half-way."""
    yield
    while _open:
        _open.pop().close()


def session(port: int) -> Client:
    c = Client(port)
    _open.append(c)
    assert c.cmd(b"EHLO client.example\r\n").startswith(b"250")
    return c


def send(c: Client, data: bytes) -> bytes:
    """MAIL, RCPT, DATA with ``data`` (sent as it is) and the end marker;
    the reply to the final dot."""
    assert c.cmd(b"MAIL FROM:<customer@example.net>\r\n").startswith(b"250")
    assert c.cmd(b"RCPT TO:<support@contact.example>\r\n").startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    return c.cmd(data + b"\r\n.\r\n")


# --- 6. NUL -------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"Subject: nul\r\n\r\nbefore\x00after",
    b"Subject: nul\r\n\r\n" + b"x" * 3_000_000 + b"\r\n\x00",   # past the in-memory size: streamed
    b"Subject: nul\r\n\r\nline\r\n\x00.\r\nmore",               # smtpsmug's "nullbefore"
])
def test_nul_in_data_is_refused_and_nothing_spooled(relay: GatewayProcess, sink: SmtpSink, data: bytes) -> None:
    c = session(relay.smtp_port)
    reply = send(c, data)
    assert reply.startswith(b"554 5.6.0"), reply
    # The session goes on: a clean message right after is taken.
    assert send(c, b"Subject: clean\r\n\r\nclean body").startswith(b"250")
    c.cmd(b"QUIT\r\n")
    c.close()
    [got] = sink.wait(1)
    relay.wait_idle()
    assert b"clean body" in got.data
    assert len([e for e in relay.log_events() if e.get("event") == "queued"]) == 1
    assert [p for q in ("incoming", "active", "deferred", "hold", "tmp") for p in (relay.spool / q).glob("*")] == []
    assert len(sink.messages) == 1


# --- 8. dot-unstuffing --------------------------------------------------------

@pytest.mark.parametrize("sent, kept", [
    (b"one\n..stuffed after LF\r\n", b"one\r\n.stuffed after LF\r\n"),
    (b"one\r..stuffed after CR\r\n", b"one\r\n.stuffed after CR\r\n"),
    (b"one\r\n..stuffed after CRLF\r\n", b"one\r\n.stuffed after CRLF\r\n"),
    (b"one\n.\ntwo\r\n", b"one\r\n.\r\ntwo\r\n"),      # a lone dot is data, not stuffing
    (b"one\n.x\ntwo\r\n", b"one\r\nx\r\ntwo\r\n"),      # RFC 5321 4.5.2: the first dot goes
])
def test_stuffed_dot_removed_after_every_line_end(relay: GatewayProcess, sink: SmtpSink, sent: bytes,
                                                  kept: bytes) -> None:
    c = session(relay.smtp_port)
    assert send(c, b"Subject: dots\r\n\r\n" + sent + b"end").startswith(b"250")
    c.cmd(b"QUIT\r\n")
    c.close()
    [got] = sink.wait(1)
    assert got.data.endswith(b"Subject: dots\r\n\r\n" + kept + b"end\r\n"), got.data


def test_stuffed_dot_after_bare_lf_across_reads(relay: GatewayProcess, sink: SmtpSink) -> None:
    c = session(relay.smtp_port)
    for cmd in (b"MAIL FROM:<customer@example.net>\r\n", b"RCPT TO:<support@contact.example>\r\n"):
        assert c.cmd(cmd).startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    c.sock.sendall(b"Subject: split\r\n\r\nfirst\n")
    # Not a synchronisation: the pause makes it likely that the gateway reads
    # the two parts separately (the state carried between reads is what is
    # tested); read together, the test still checks the same output.
    time.sleep(0.2)
    assert c.cmd(b"..second\r\n.\r\n").startswith(b"250")
    c.close()
    [got] = sink.wait(1)
    assert got.data.endswith(b"first\r\n.second\r\n"), got.data


# --- 7. MAIL and RCPT ---------------------------------------------------------

@pytest.mark.parametrize("rcpt", [
    b"support@contact.example.", b"support@contact.example..", b"support@contact..example",
    b"support@-contact.example", b"support@contact-.example", b"support@con_tact.example",
    b"support@" + b"a" * 64 + b".example", b"support@" + b"a." * 127 + b"example",
    b"support@[127.0.0.1]",
])
def test_malformed_recipient_domain_refused(relay: GatewayProcess, rcpt: bytes) -> None:
    c = session(relay.smtp_port)
    assert c.cmd(b"MAIL FROM:<customer@example.net>\r\n").startswith(b"250")
    reply = c.cmd(b"RCPT TO:<" + rcpt + b">\r\n")
    assert reply.startswith(b"553 5.1.3"), reply
    assert c.cmd(b"RCPT TO:<support@contact.example>\r\n").startswith(b"250")
    c.close()


@pytest.mark.parametrize("sender", [
    b"customer@example.net.", b"customer@example..net", b"customer@-example.net", b"customer@exa_mple.net",
    b"customer@" + b"a" * 64 + b".net", b"customer", b"customer@[999.1.1.1]",
])
def test_malformed_sender_domain_refused(relay: GatewayProcess, sender: bytes) -> None:
    c = session(relay.smtp_port)
    reply = c.cmd(b"MAIL FROM:<" + sender + b">\r\n")
    assert reply.startswith(b"553 5.1.7"), reply
    assert c.cmd(b"MAIL FROM:<customer@example.net>\r\n").startswith(b"250")
    c.close()


@pytest.mark.parametrize("sender", [b"", b"customer@[127.0.0.1]", b"customer@[IPv6:::1]", b"c@xn--bcher-kva.example"])
def test_well_formed_senders_accepted(relay: GatewayProcess, sender: bytes) -> None:
    c = session(relay.smtp_port)
    reply = c.cmd(b"MAIL FROM:<" + sender + b">\r\n")
    assert reply.startswith(b"250"), reply
    c.close()


def test_invalid_utf8_refused_at_the_command(relay: GatewayProcess, sink: SmtpSink) -> None:
    c = session(relay.smtp_port)
    reply = c.cmd(b"MAIL FROM:<cust\xffomer@example.net> SMTPUTF8\r\n")
    assert reply.startswith(b"553 5.6.7"), reply
    assert c.cmd(b"MAIL FROM:<customer@example.net> SMTPUTF8\r\n").startswith(b"250")
    reply = c.cmd(b"RCPT TO:<supp\xc3\x28ort@contact.example>\r\n")
    assert reply.startswith(b"553 5.6.7"), reply
    # Valid UTF-8 with SMTPUTF8 is fine, and the transaction goes on.
    assert c.cmd("RCPT TO:<s\u00fcpport@contact.example>\r\n".encode()).startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    assert c.cmd(b"Subject: utf8\r\n\r\nbody\r\n.\r\n").startswith(b"250")
    c.close()
    [got] = sink.wait(1)
    assert got.rcpt_tos == ["s\u00fcpport@contact.example"]


def test_non_ascii_address_needs_smtputf8(relay: GatewayProcess) -> None:
    c = session(relay.smtp_port)
    assert c.cmd("MAIL FROM:<k\u00fcnde@example.net>\r\n".encode()).startswith(b"553 5.6.7")
    assert c.cmd(b"MAIL FROM:<customer@example.net>\r\n").startswith(b"250")
    assert c.cmd("RCPT TO:<s\u00fcpport@contact.example>\r\n".encode()).startswith(b"553 5.6.7")
    c.close()


# --- 1, 4, 5. on the wire -----------------------------------------------------

def test_rewritten_qp_body_is_clean_on_the_wire(make_gateway, raw_sink: RawSink) -> None:
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{raw_sink.port}", threshold=1000)
    attachment = base64.encodebytes(b"%PDF-1.4\n" + bytes(range(256)) * 40).replace(b"\n", b"\r\n")
    message = (b"From: customer@example.net\r\nTo: support@contact.example\r\nSubject: qp\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
               b"--b\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
               b"hello=0D.=0D=0AMAIL FROM:<evil@attacker.example>=0D=0A=0A.=0Aend\r\n"
               b"--b\r\nContent-Type: application/pdf; name=\"x.pdf\"\r\nContent-Transfer-Encoding: base64\r\n"
               b"Content-Disposition: attachment; filename=\"x.pdf\"\r\n\r\n" + attachment + b"--b--\r\n")
    c = session(gw.smtp_port)
    assert send(c, message).startswith(b"250")
    c.close()
    [wire] = raw_sink.wait(1)
    assert_wire_clean(wire)
    assert b"hello=0D.\r\nMAIL FROM:" in wire, wire[:3000]  # the text body was rewritten, its CRs kept encoded
    assert b"x.pdf" in wire.split(b"hello=0D.", 1)[1]  # the link was added


def test_stray_line_ends_in_the_spool_are_normalised_on_delivery(make_gateway, raw_sink: RawSink) -> None:
    """A message in the spool with bare line ends and NUL (as a bug, or an
    older version, might leave one) goes out CRLF-clean, and the gateway
    says so in its log with the queue id."""
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{raw_sink.port}")
    reception = Spool(gw.spool).receive()
    reception.write(b"Subject: stray\r\n\r\nbare LF\n.\nbare CR\r.\rNUL\x00\r\n..stuffed\r\n.x\n")
    reception.commit(Envelope(queue_id=reception.queue_id, mail_from="customer@example.net", rcpt_tos=["support@contact.example"],
                              route="contact", received_at=time.time(), size=0))
    [wire] = raw_sink.wait(1)
    assert_wire_clean(wire)
    assert b"bare LF\r\n..\r\nbare CR\r\n..\r\nNUL\r\n...stuffed\r\n..x\r\n" in wire
    deadline = time.monotonic() + 10
    while not [e for e in gw.log_events() if "normalised" in str(e.get("event"))]:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    [event] = [e for e in gw.log_events() if "normalised" in str(e.get("event"))]
    assert event["queue_id"] == reception.queue_id and event["level"] == "warning"


def test_stray_line_ends_in_the_spool_are_normalised_in_the_maildir(make_gateway) -> None:
    gw = make_gateway()
    reception = Spool(gw.spool).receive()
    reception.write(b"Subject: stray\r\n\r\nbare LF\nbare CR\rNUL\x00end\r")
    reception.commit(Envelope(queue_id=reception.queue_id, mail_from="customer@example.net", rcpt_tos=["support@contact.example"],
                              route="contact", received_at=time.time(), size=0))
    [got] = gw.wait_outbox(1)
    assert got.endswith(b"bare LF\r\nbare CR\r\nNULend\r\n")
    assert b"\x00" not in got and b"\r" not in got.replace(b"\r\n", b"") and b"\n" not in got.replace(b"\r\n", b"")


# --- mail loops -----------------------------------------------------------------

def test_a_mail_loop_ends_with_one_dsn(make_gateway) -> None:
    """A next hop that hands the message back (here: the route's next hop is
    the gateway itself; in life a platform forwarding rule, or an SRS bounce
    to an address of our own routes) makes a loop.  Each pass adds a
    Received field; past ``smtp.max_received`` the gateway refuses the
    message at the end of DATA (554 5.4.6, as Postfix's hopcount_limit),
    so the loop ends and the sender gets one DSN, instead of the message
    going round for ever."""
    gw = make_gateway(start=False)
    from tests.harness import render_config

    gw.cfg["routes"][0].update(next_hop=f"smtp://127.0.0.1:{gw.smtp_port}", tls="none")
    gw.cfg["smtp"]["max_received"] = 10
    gw.config_path.write_text(render_config(gw.cfg))
    gw.start()
    c = session(gw.smtp_port)
    assert send(c, b"Subject: round and round\r\n\r\nloop").startswith(b"250")
    c.close()
    bounces = gw.tmp / "bounces" / "new"

    def passes() -> int:
        return len([e for e in gw.log_events() if e.get("event") == "queued"])

    wait_until(lambda: bounces.exists() and list(bounces.iterdir()) or passes() > 40, timeout=60,
               what="the loop to end in a DSN")
    gw.wait_idle()
    assert passes() == 11, passes()  # as sent, then back with 1, 2 ... 10 Received fields
    [dsn] = [p.read_bytes() for p in bounces.iterdir()]
    assert b"Status: 5.4.6" in dsn and b"To: <customer@example.net>" in dsn


def test_too_many_received_fields_refused_at_the_end_of_data(relay: GatewayProcess, sink: SmtpSink) -> None:
    """51 Received fields (the default ``smtp.max_received`` is 50), the
    header name in any case."""
    c = session(relay.smtp_port)
    hops = b"".join(b"%s: from h%d.example by h%d.example; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
                    % (b"RECEIVED" if i % 2 else b"Received", i, i) for i in range(51))
    reply = send(c, hops + b"Subject: looped\r\n\r\nbody")
    assert reply.startswith(b"554 5.4.6"), reply
    # One fewer goes, and the session goes on.
    assert send(c, hops[hops.index(b"\r\n") + 2:] + b"Subject: fine\r\n\r\nbody").startswith(b"250")
    c.close()
    [got] = sink.wait(1)
    assert b"Subject: fine" in got.data


def test_the_envelope_header_a_maildir_gets_keeps_lines_within_998(make_gateway) -> None:
    """``X-Envelope-To`` names every recipient: 30 of 60 characters were one
    line of 1,900 (RFC 5322: at most 998)."""
    gw = make_gateway()
    rcpts = [f"{'agent-queue-' + str(i):0<50}@contact.example" for i in range(30)]
    c = session(gw.smtp_port)
    assert c.cmd(b"MAIL FROM:<customer@example.net>\r\n").startswith(b"250")
    for r in rcpts:
        assert c.cmd(f"RCPT TO:<{r}>\r\n".encode()).startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    assert c.cmd(b"Subject: many\r\n\r\nbody\r\n.\r\n").startswith(b"250")
    c.close()
    gw.wait_outbox(1)
    [out] = gw.outbox_messages()  # as written, the envelope headers included
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    head = email.message_from_bytes(out, policy=email.policy.default)
    assert [a.strip() for a in str(head["X-Envelope-To"]).split(",")] == rcpts


@pytest.mark.parametrize("helo", [
    b"x (trusted.bank.example [10.9.8.7])",
    b"trusted.bank.example [10.9.8.7]",
    b"(trusted.bank.example [10.9.8.7]) by mx.bank.example with ESMTP id 1; Mon, 7 Dec 2026 10:00:00 +0000",
])
def test_the_received_field_names_the_client_it_saw_whatever_the_helo(make_gateway, helo: bytes) -> None:
    """aiosmtpd takes the whole rest of the EHLO line (Postfix takes one
    word): a HELO with spaces, parentheses and brackets wrote a second
    client, an internal address, into our Received field, where the
    platform's filters read the path a message took.  Now the field names
    one HELO word, with nothing that opens a comment or an address."""
    gw = make_gateway()
    c = Client(gw.smtp_port)
    _open.append(c)
    assert c.cmd(b"EHLO " + helo + b"\r\n").startswith(b"250")
    assert send(c, b"Subject: trace\r\n\r\nbody").startswith(b"250")
    c.close()
    [out] = gw.wait_outbox(1)
    received = out.split(b";", 1)[0]
    assert b"10.9.8.7" not in received, received
    assert re.match(rb"Received: from [A-Za-z0-9.?_-]+ \(unknown \[127\.0\.0\.1\]\)\r\n\tby gw\.test ", received), received


def test_a_dsn_returns_a_bounded_header_block_with_lines_within_998(make_gateway) -> None:
    """A DSN goes to the envelope sender, which anyone can name, and
    returns the message's header block: up to ``max_header_bytes`` (1 MiB)
    of the sender's text, lines of up to 64 KiB, to a third party
    (backscatter), and a line past 998 can make the DSN itself refused.
    Now the returned fields are those whose lines fit, up to 64 KiB
    (Postfix returns at most 50,000 bytes), the fields a person needs
    first."""
    refusing = SmtpSink(reply_data="554 5.7.1 rejected by policy").start()
    try:
        gw = make_gateway(next_hop=f"smtp://127.0.0.1:{refusing.port}")
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"spam " * 150) for i in range(400))  # 300 KB
        head = (b"X-Long: " + b"a" * 5000 + b"\r\n" + filler + b"From: customer@example.net\r\n"
                b"Subject: will bounce\r\nMessage-ID: <bounce-me@example.net>\r\n")
        c = session(gw.smtp_port)
        assert send(c, head + b"\r\nbody").startswith(b"250")
        c.close()
        bounces = gw.tmp / "bounces" / "new"
        wait_until(lambda: bounces.exists() and list(bounces.iterdir()), what="the DSN")
        [dsn] = [p.read_bytes() for p in bounces.iterdir()]
    finally:
        refusing.stop()
    # (aiosmtpd, the next hop here, refuses the 5,000-character line itself.)
    assert b"To: <customer@example.net>" in dsn and b"Action: failed" in dsn
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 998
    assert len(dsn) < 80_000, len(dsn)
    returned = dsn.split(b"Content-Type: text/rfc822-headers\r\n\r\n", 1)[1]
    for field in (b"From: customer@example.net", b"Subject: will bounce", b"Message-ID: <bounce-me@example.net>"):
        assert field in returned
