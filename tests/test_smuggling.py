"""SMTP smuggling (issue 7): the published end-of-data variants
(hannob/smtpsmug's list) and bare CR / bare LF in commands, sent by a
raw-socket client the way that tool sends them.  Whatever the gateway
answers, the next hop must never see a second message.
"""
from __future__ import annotations

import socket
import time

import pytest

from tests.harness import GatewayProcess, SmtpSink

# Name -> the malformed end of data, as smtpsmug sends it ("nullafter" is
# listed there with the same bytes as "nullbefore"; the NUL after the dot
# is what the name says, so both are sent).
SMTPSMUG = {
    "lflf": b"\n.\n",
    "crcr": b"\r.\r",
    "crlf": b"\r.\n",
    "lfcr": b"\n.\r",
    "lfcrlf": b"\n.\r\n",
    "crlflf": b"\r\n.\n",
    "crcrlf": b"\r.\r\n",
    "crlfcr": b"\r\n.\r",
    "nullbefore": b"\r\n\x00.\r\n",
    "nullafter": b"\r\n.\x00\r\n",
}

SMUGGLED = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@contact.example>\r\nDATA\r\n"
            b"From: ceo@contact.example\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


class Client:
    """A raw SMTP client: sends exactly the bytes given, reads the replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.reply()

    def reply(self) -> bytes:
        """One complete reply (all its lines), or b"" when the server closed."""
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line[3:4] == b" ":
                    out = b"\r\n".join(lines[: i + 1])
                    self.buf = b"\r\n".join(lines[i + 1:])
                    return out
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                return b"(timeout)"
            if not chunk:
                return b""
            self.buf += chunk

    def cmd(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def relay(make_gateway, sink: SmtpSink) -> GatewayProcess:
    return make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")


def test_published_end_of_data_variants_never_make_a_second_message(relay: GatewayProcess, sink: SmtpSink) -> None:
    n = 0  # messages the sink should have
    for name, ending in SMTPSMUG.items():
        c = Client(relay.smtp_port)
        assert c.cmd(b"EHLO client.example\r\n").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<customer@example.net>\r\n").startswith(b"250")
        assert c.cmd(b"RCPT TO:<support@contact.example>\r\n").startswith(b"250")
        assert c.cmd(b"DATA\r\n").startswith(b"354")
        c.sock.sendall(b"From: customer@example.net\r\nSubject: " + name.encode() + b"\r\n\r\n"
                       b"This is a test mail with a malformed ending." + ending + SMUGGLED)
        # The malformed ending is not an end of data: no reply comes (the
        # smuggled commands are data too) until the real end.
        c.sock.settimeout(0.5)
        assert c.reply() == b"(timeout)", name
        c.sock.settimeout(5)
        final = c.cmd(b"\r\n.\r\n")
        if b"\x00" in ending:
            # A message with NUL is refused whole (554 5.6.0): nothing to smuggle.
            assert final.startswith(b"554 5.6.0"), (name, final)
            c.cmd(b"QUIT\r\n")
            c.close()
            continue
        assert final.startswith(b"250 2.0.0 Ok: queued as"), (name, final)
        assert c.cmd(b"QUIT\r\n").startswith(b"221")
        c.close()
        n += 1
        got = sink.wait(n)
        relay.wait_idle()
        assert len(sink.messages) == n, name
        last = got[-1]
        assert last.mail_from == "customer@example.net" and last.rcpt_tos == ["support@contact.example"], name
        assert b"smuggled body" in last.data and b"Subject: " + name.encode() in last.data
        # What went on has only CRLF line ends (a dot line in it is data,
        # dot-stuffed on the wire and unstuffed by the sink).
        assert b"\n" not in last.data.replace(b"\r\n", b""), name
        assert b"\r" not in last.data.replace(b"\r\n", b""), name
    time.sleep(1.0)
    assert len(sink.messages) == len([e for e in SMTPSMUG.values() if b"\x00" not in e])
    assert all(m.mail_from != "evil@attacker.example" for m in sink.messages)


@pytest.mark.parametrize("line", [
    b"MAIL FROM:<customer@example.net>\n",                      # bare LF ends the command
    b"MAIL FROM:<customer@example.net>\r",                      # bare CR ends the command
    b"RSET\rMAIL FROM:<evil@attacker.example>\r\n",             # bare CR inside
    b"NOOP\nMAIL FROM:<evil@attacker.example>\r\n",             # bare LF inside
])
def test_bare_cr_or_lf_in_a_command_is_refused_and_the_session_closed(relay: GatewayProcess, sink: SmtpSink,
                                                                      line: bytes) -> None:
    c = Client(relay.smtp_port)
    assert c.cmd(b"EHLO client.example\r\n").startswith(b"250")
    c.sock.sendall(line + b"RCPT TO:<support@contact.example>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    # (A lone CR ends nothing here: the next LF ends the line, which then
    # has a CR inside it, and is refused the same way.)
    reply = c.reply()
    assert reply.startswith(b"521 5.5.2"), reply
    assert c.reply() == b""  # closed
    c.close()
    # A clean session right after still works: the refusal is per session.
    c = Client(relay.smtp_port)
    for cmd in (b"EHLO client.example\r\n", b"MAIL FROM:<customer@example.net>\r\n",
                b"RCPT TO:<support@contact.example>\r\n"):
        assert c.cmd(cmd).startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    assert c.cmd(b"Subject: clean\r\n\r\nclean\r\n.\r\n").startswith(b"250")
    c.cmd(b"QUIT\r\n")
    c.close()
    [got] = sink.wait(1)
    time.sleep(0.5)
    assert len(sink.messages) == 1 and b"clean" in got.data
