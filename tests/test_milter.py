"""Milter mode (issue 9): a real Postfix from Debian with ``smtpd_milters``
pointing at ``attachment-gateway milter`` started as a process, relaying to
a real SMTP sink on loopback."""
from __future__ import annotations

import base64
import email.utils
import os
import re
import signal
import smtplib
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness import CORPUS, GATEWAY, GatewayProcess, SmtpSink, to_wire, wait_until
from tests.messages import fetch, leaves, links, message, parse, payload, pdf_bytes, send, stored_objects
from tests.servers.gcs import GcsEmulator
from tests.servers.ports import free_port, port_is_open
from tests.servers.postfix import PostfixInstance

MiB = 1 << 20


class MilterGateway(GatewayProcess):
    """``attachment-gateway milter`` (the milter and the link listener), or
    ``serve`` with a ``[milter]`` table (every role)."""

    def __init__(self, tmp: Path, milter: dict[str, Any] | None = None, command: str = "milter",
                 **kwargs: Any) -> None:
        self.milter_port = free_port()
        self.command_name = command
        sections = kwargs.pop("sections", {})
        sections["milter"] = {"listen": f"127.0.0.1:{self.milter_port}", **(milter or {})}
        sections["gateway"] = {"processes": 1, **sections.get("gateway", {})}
        super().__init__(tmp, sections=sections, **kwargs)

    def start(self, roles: list[str] | None = None) -> "MilterGateway":
        ports = [self.milter_port, self.http_port] + ([self.smtp_port] if self.command_name == "serve" else [])
        return self._launch([*GATEWAY, "-c", str(self.config_path), self.command_name], ports)


@pytest.fixture
def setup(tmp_path: Path, sink: SmtpSink) -> Iterator[Any]:
    """make(milter=..., **gateway kwargs) -> (gateway, postfix), both stopped after."""
    made: list[Any] = []

    def make(default_action: str = "tempfail", **kwargs: Any) -> tuple[MilterGateway, PostfixInstance]:
        sub = tmp_path / f"gw{len(made)}"
        sub.mkdir()
        gw = MilterGateway(sub, **kwargs)
        made.append(gw)
        gw.start()
        mta = PostfixInstance(relay_port=sink.port, main_cf={
            "smtpd_milters": f"inet:127.0.0.1:{gw.milter_port}",
            "milter_default_action": default_action,
            "milter_protocol": "6",
            "milter_connect_timeout": "5s",
            "milter_command_timeout": "30s",
            "milter_content_timeout": "120s",
        })
        made.append(mta)
        mta.start()
        return gw, mta

    yield make
    for thing in reversed(made):
        thing.stop()


def _original(**headers: str) -> tuple[Any, bytes]:
    msg = message("Hello, see attached.\n", "<html><body><p>Hello</p></body></html>",
                  [(pdf_bytes(3000), "application/pdf", "small.pdf")],
                  Date=email.utils.formatdate(), **headers)
    return msg, to_wire(msg.as_bytes())


def _split_added(out: bytes, original: bytes) -> list[bytes]:
    """The header fields in front of ``original`` in ``out`` (which must end with it)."""
    assert out.endswith(original), out[:3000]
    added = out[: len(out) - len(original)]
    return re.findall(rb"(?m)^[^ \t\r\n][^:\r\n]*:(?:.*\r\n)(?:[ \t].*\r\n)*", added)


def test_15_mb_pdf_through_postfix_arrives_slimmed_with_a_working_link(setup, sink: SmtpSink) -> None:
    gw, mta = setup()
    pdf = pdf_bytes(15 * MiB)
    send(mta.port, message("Hello, see attached invoice.\n", "<html><body><p>Hello</p></body></html>",
                           [(pdf, "application/pdf", "invoice_15mb.pdf")]))
    [got] = sink.wait(1, timeout=60)
    out = got.data
    assert len(out) < 200 * 1024
    assert got.rcpt_tos == ["support@contact.example"]
    parts = leaves(parse(out))
    text = next(p for p in parts if p.get_content_type() == "text/plain" and not p.get_filename()
                and p.get("Content-Disposition") is None)
    html = next(p for p in parts if p.get_content_type() == "text/html")
    [url] = links(payload(text))
    assert links(payload(html)) == [url]
    assert b"Secure Attachment: invoice_15mb.pdf](" in payload(text)
    status, headers, body = fetch(url)
    assert status == 200 and body == pdf
    assert "invoice_15mb.pdf" in headers["Content-Disposition"]
    # The trace headers, added through milter actions, name Postfix's queue id.
    queue_id = re.search(r"postfix/smtpd\[\d+\]: ([0-9A-F]+): client=", mta.maillog()).group(1)
    assert re.search(rb"\r\nReceived: from [^\r\n]*\r\n\tby gw\.test \(attachment-gateway\) with ESMTP id "
                     + queue_id.encode() + rb"\r\n\tfor <support@contact\.example>;", b"\r\n" + out)
    assert b"\r\nX-Attachment-Offload: offloaded=1 bytes=15728640\r\n" in out
    [stored] = stored_objects(gw.objects).values()
    assert stored == pdf
    assert any(e.get("event") == "milter reply" and e.get("outcome") == "rewritten" for e in gw.log_events())


def test_nothing_to_offload_arrives_unchanged_but_for_the_headers(setup, sink: SmtpSink) -> None:
    gw, mta = setup()
    msg, original = _original()
    send(mta.port, msg)
    [got] = sink.wait(1, timeout=30)
    added = _split_added(got.data, original)
    names = [f.split(b":", 1)[0] for f in added]
    # Postfix's own Received, ours and the offload summary; nothing else.
    assert sorted(names) == [b"Received", b"Received", b"X-Attachment-Offload"], added
    assert b"X-Attachment-Offload: offloaded=0 bytes=0\r\n" in added
    assert stored_objects(gw.objects) == {}


def test_a_message_that_is_only_an_attachment_gets_new_content_headers(setup, sink: SmtpSink) -> None:
    gw, mta = setup(threshold=1000)
    pdf = pdf_bytes(5000)
    raw = (b"From: a@example.net\r\nTo: support@contact.example\r\nSubject: a folded\r\n subject line\r\n"
           b"Date: " + email.utils.formatdate().encode() + b"\r\nMessage-ID: <only-pdf@example.net>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: application/pdf; name=\"x.pdf\"\r\n"
           b"Content-Disposition: attachment; filename=\"x.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(pdf).replace(b"\n", b"\r\n"))
    send(mta.port, raw)
    [got] = sink.wait(1, timeout=30)
    head, _, body = got.data.partition(b"\r\n\r\n")
    fields = re.findall(rb"(?m)^([^ \t\r\n][^:\r\n]*):", head + b"\r\n")
    # Content-* fields deleted and added again (changed through milter
    # actions); every other original field kept once, byte for byte.
    assert sorted(f for f in fields if f.lower().startswith(b"content-")) == [
        b"Content-Disposition", b"Content-Transfer-Encoding", b"Content-Type"]
    assert b"Content-Type: text/plain; charset=\"utf-8\"\r\n" in head + b"\r\n"
    assert b"\r\nSubject: a folded\r\n subject line\r\n" in head
    assert fields.count(b"Message-ID") == 1 and fields.count(b"MIME-Version") == 1
    assert b'The attachment "x.pdf" (5 KB) was moved to secure storage.' in body
    [url] = links(body)
    assert fetch(url)[2] == pdf


def test_recipients_no_route_covers_are_left_alone(setup, sink: SmtpSink) -> None:
    # ``serve`` with a [milter] table runs the same milter beside the relay.
    gw, mta = setup(threshold=1000, command="serve")
    msg, original = _original(To="someone@elsewhere.example")
    send(mta.port, msg, rcpts=["someone@elsewhere.example"])
    [got] = sink.wait(1, timeout=30)
    # Only Postfix's Received header: the milter changed nothing.
    assert [f.split(b":", 1)[0] for f in _split_added(got.data, original)] == [b"Received"]
    assert stored_objects(gw.objects) == {}
    # A transaction mixing routes: the recipient that differs from the first
    # is deferred (452 4.5.3) so that each message has one route or none.
    refused = send(mta.port, msg, rcpts=["support@contact.example", "someone@elsewhere.example"])
    assert refused == {"someone@elsewhere.example": (452, b"4.5.3 Recipient on another route; send it in a "
                                                          b"separate transaction")}
    got = sink.wait(2, timeout=30)[1]
    assert got.rcpt_tos == ["support@contact.example"]
    assert b"X-Attachment-Offload: offloaded=1 bytes=3000" in got.data


@pytest.mark.parametrize("default_action", ["accept", "tempfail"])
def test_milter_stopped_postfix_applies_its_default_action(setup, sink: SmtpSink, default_action: str) -> None:
    gw, mta = setup(default_action=default_action)
    gw.stop()
    msg, original = _original()
    if default_action == "accept":
        # Mail still flows, untouched.
        send(mta.port, msg)
        [got] = sink.wait(1, timeout=30)
        assert [f.split(b":", 1)[0] for f in _split_added(got.data, original)] == [b"Received"]
    else:
        with pytest.raises(smtplib.SMTPResponseException) as e:
            send(mta.port, msg)
        assert e.value.smtp_code == 451
        assert sink.messages == []
    assert f"connect to Milter service inet:127.0.0.1:{gw.milter_port}: Connection refused" in mta.maillog()


def test_storage_failure_inside_the_milter_forwards_the_attachment(setup, sink: SmtpSink) -> None:
    gw, mta = setup(threshold=1000)
    # The store cannot write: where its "uploads" directory belongs is a file.
    (gw.objects / "uploads").write_text("")
    msg, original = _original()
    send(mta.port, msg)
    [got] = sink.wait(1, timeout=30)
    added = _split_added(got.data, original)
    # The trace header says the attachment went as it was (it fits the next hop).
    assert b"X-Attachment-Offload: offloaded=0 bytes=0; 1 not stored, forwarded as is\r\n" in added
    assert any(e.get("event") == "offload failed; failing open" for e in gw.log_events())


@pytest.mark.parametrize("on_error", ["continue", "tempfail"])
def test_processing_error_tempfails_or_where_chosen_lets_the_message_through(tmp_path: Path, setup, sink: SmtpSink,
                                                                            on_error: str) -> None:
    # The milter cannot collect the message: its temporary directory is a file.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    gw, mta = setup(threshold=1000, milter={"temp_dir": str(blocker), "on_error": on_error})
    msg, original = _original()
    if on_error == "tempfail":
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(mta.port, msg)
        assert e.value.smtp_code == 451
        time.sleep(1)
        assert sink.messages == []
    else:
        send(mta.port, msg)
        [got] = sink.wait(1, timeout=30)
        assert [f.split(b":", 1)[0] for f in _split_added(got.data, original)] == [b"Received"]
    [event] = [e for e in gw.log_events() if e.get("event") == "processing failed; message not examined"]
    assert event["action"] == on_error and event["count"] == 1 and event["level"] == "error"
    # Letting unexamined mail through is a choice, said at start as an error.
    chosen = [e for e in gw.log_events() if e.get("event", "").startswith("milter.on_error is \"continue\"")]
    assert [e["level"] for e in chosen] == (["error"] if on_error == "continue" else [])
    status, _, body = fetch(f"http://127.0.0.1:{gw.http_port}/metrics")
    assert status == 200 and b'gateway_milter_messages_total{outcome="error"} 1.0' in body
    assert stored_objects(gw.objects) == {}


def test_processing_past_milter_timeout_tempfails_by_default(setup, sink: SmtpSink) -> None:
    """Nothing was examined: by default the MTA answers 451 and the client
    keeps the message (an executable in it never reaches an agent)."""
    with GcsEmulator() as gcs:
        gw, mta = setup(threshold=1000, milter={"timeout": 1}, route={"storage": "cloud"}, sections={
            "storage.cloud": {"backend": "gcs", "bucket": gcs.bucket, "endpoint_url": gcs.endpoint_url,
                              "anonymous": True, "timeout": 5}})
        # The storage server stalls: uploads hang well past milter.timeout.
        pid = gcs._proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        try:
            msg, _ = _original()
            started = time.monotonic()
            with pytest.raises(smtplib.SMTPDataError) as e:
                send(mta.port, msg)
            assert e.value.smtp_code == 451
            assert time.monotonic() - started < 10
        finally:
            os.kill(pid, signal.SIGCONT)
    [event] = [e for e in gw.log_events()
               if e.get("event") == "processing exceeded milter.timeout; message not examined"]
    assert event["timeout"] == 1 and event["action"] == "tempfail" and event["count"] == 1
    assert sink.messages == []


def test_milter_settings_are_validated_naming_key_value_and_expectation(tmp_path: Path) -> None:
    gw = MilterGateway(tmp_path, milter={"listen": "8891", "on_error": "maybe", "timeout": 0, "bogus": 1})
    result = gw.command("check-config")
    assert result.returncode == 78
    assert "milter.listen: '8891': expected HOST:PORT" in result.stderr
    assert "milter.on_error: 'maybe': Input should be 'continue' or 'tempfail'" in result.stderr
    assert "milter.timeout: 0: Input should be greater than or equal to 1" in result.stderr
    assert "milter.bogus: unknown key" in result.stderr
    result = gw.command("milter")
    assert result.returncode == 78 and not port_is_open("127.0.0.1", gw.milter_port)


def test_winmail_dat_through_postfix_is_unpacked_and_its_web_page_refused(setup, sink: SmtpSink) -> None:
    gw, mta = setup(milter={"temp_dir": "."})  # the gateway's own directory, to look for leftovers
    tnef = CORPUS / "mimekit" / "tnef"
    send(mta.port, message("Sent from Outlook.\n", "<html><body><p>Sent from Outlook.</p></body></html>",
                           [((tnef / "attachments.tnef").read_bytes(), "application/ms-tnef", "winmail.dat")]))
    [got] = sink.wait(1, timeout=60)
    names = {p.get_filename(): payload(p) for p in leaves(parse(got.data)) if p.get_filename()}
    assert names["zappa_av1.jpg"] == (tnef / "attachments" / "zappa_av1.jpg").read_bytes()
    assert "winmail.dat" not in names and "bookmark.htm" not in names
    assert b'The attachment "bookmark.htm" was removed: ' in got.data
    assert b"tnef=unpacked" in got.data
    assert any(k.startswith("quarantine/") and k.endswith("bookmark.htm") for k in stored_objects(gw.objects))
    # The milter's temporary file and the work files named after it are gone
    # (removed when the MTA ends the milter session, which need not be
    # before the message reaches the next hop).
    wait_until(lambda: not list(gw.tmp.glob("milter-*")), timeout=20, what="the milter's files removed")
    assert not list(gw.tmp.glob("milter-*"))
    assert any(e.get("event") == "TNEF unpacked" for e in gw.log_events())


EXE = b"MZ" + b"\x90\x00\x03" * 1000 + b"tag-milter-exe"


@pytest.mark.parametrize("rcpt,delivered_as", [
    # Read as the route's own address: examined.
    ('"support"@contact.example', "support@contact.example"),
    ("@relay.example:support@contact.example", "support@contact.example"),
    # Forms the relay refuses too: refused (Postfix itself refuses the last).
    ("support@contact.example.", None),
    ('"sup port"@contact.example', None),
    ("support%elsewhere.example@contact.example", None),
    ("elsewhere.example!support@contact.example", None),
    ('"support@x"@contact.example', None),
    ("support@contact.example..", None),
])
def test_a_recipient_of_a_route_written_another_way_is_never_left_alone(setup, sink: SmtpSink, rcpt: str,
                                                                        delivered_as: str | None) -> None:
    """Postfix delivers each of these to the route's domain (the first
    three to the very address the route names), but the milter sees the
    recipient as the client wrote it: ``route_for`` refused the form, and
    the message was left alone as one for no route, a program in it
    reaching the agent unexamined.  Now a form the gateway reads as a
    route's address is that route's, and any other naming a route's domain
    is refused (553 5.1.3, as the relay refuses it)."""
    gw, mta = setup()
    msg = message("Please run the attached tool.\n", attachments=[(EXE, "application/octet-stream", "tool.exe")])
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as s:
        s.ehlo("client.example")
        s.mail("customer@example.net")
        code, text = s.docmd(f"RCPT TO:<{rcpt}>")
        if code == 250:
            s.data(msg.as_bytes())
    if delivered_as is None:
        assert code in (501, 553) and text.startswith(b"5.1.3"), (code, text)
        assert not any(e.get("event") == "no route covers the recipients; left alone" for e in gw.log_events())
        return
    assert code == 250, (code, text)
    [got] = sink.wait(1, timeout=30)
    assert got.rcpt_tos == [delivered_as]
    assert b"X-Attachment-Offload: " in got.data
    assert b'The attachment "tool.exe" was removed' in got.data
    assert not any(payload(p) == EXE for p in leaves(parse(got.data)))
