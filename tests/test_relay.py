"""The relay end to end, through real SMTP on loopback (issue: the relay)."""
from __future__ import annotations

import re
import smtplib
import time
from email import policy

import pytest

from tests.harness import GatewayProcess, SmtpSink, strip_trace, to_wire
from tests.messages import (fetch, leaves, links, message, parse, payload, pdf_bytes, png_bytes, send,
                            stored_objects)

MiB = 1 << 20


def test_demo_message_is_slimmed_with_one_working_link_in_each_body(gateway: GatewayProcess) -> None:
    pdf, png = pdf_bytes(12 * MiB), png_bytes(100 * 1024)
    msg = message("Hello, see attached invoice.\n", "<html><body><p>Hello</p></body></html>",
                  [(pdf, "application/pdf", "invoice_123.pdf"), (png, "image/png", "photo.png")])
    send(gateway.smtp_port, msg)
    [out] = gateway.wait_outbox()
    assert len(out) < 200 * 1024
    parsed = parse(out)
    parts = leaves(parsed)
    text = next(p for p in parts if p.get_content_type() == "text/plain" and not p.get_filename()
                and p.get("Content-Disposition") is None)
    html = next(p for p in parts if p.get_content_type() == "text/html")
    assert [p for p in parts if p.get_filename() == "photo.png"][0].get_payload(decode=True) == png
    text_links, html_links = links(payload(text)), links(payload(html))
    assert len(text_links) == 1 and text_links == html_links
    url = text_links[0]
    assert len(url) < 200
    assert re.search(rb"\[Secure Attachment: invoice_123\.pdf\]\(" + re.escape(url.encode()) + rb"\) \(12\.0 MB\)",
                     payload(text))
    assert b">Secure Attachment: invoice_123.pdf</a> (12.0 MB)" in payload(html)
    status, headers, body = fetch(url)
    assert status == 200 and body == pdf
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "invoice_123.pdf" in headers["Content-Disposition"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert out.startswith(b"Received: from ")
    assert b"X-Attachment-Offload: offloaded=1 bytes=12582912\r\n" in out
    [key] = stored_objects(gateway.objects)
    assert re.fullmatch(r"uploads/customer@example\.net/\d{8}T\d{6}\.\d{6}Z-invoice_123\.pdf", key)
    events = gateway.wait_audit(lambda e: e["EventType"] == "FileAccessed" and e["EventResult"] == "Success")
    click = [e for e in events if e["EventType"] == "FileAccessed"][-1]
    assert click["TargetFilePath"] == key and click["TargetFileSize"] == len(pdf)


def test_customer_id_comes_from_the_header_when_the_client_is_trusted(make_gateway) -> None:
    gw = make_gateway(route={"customer_id": {"trusted_networks": ["127.0.0.0/8"]}})
    msg = message(attachments=[(pdf_bytes(11 * MiB), "application/pdf", "a.pdf")], X_CustomerId="ACME/../42")
    send(gw.smtp_port, msg)
    [out] = gw.wait_outbox()
    [key] = stored_objects(gw.objects)
    # The key uses the sanitised form (a hash marks that sanitising changed
    # the id); the audit trail keeps the id as given.
    assert key.split("/")[0] == "uploads" and re.fullmatch(r"acme_\.\._42~[0-9a-f]{12}", key.split("/")[1]), key
    assert ".." not in key.split("/")
    [stored] = [e for e in gw.wait_audit(lambda e: e["EventType"] == "FileStored") if e["EventType"] == "FileStored"]
    assert stored["CustomerId"] == "ACME/../42" and stored["TargetFilePath"] == key
    assert b"X-CustomerId: ACME/../42" in out


def test_customer_id_header_from_an_untrusted_client_is_removed_and_not_believed(make_gateway) -> None:
    # The sender names another customer; the client (127.0.0.1) is not in
    # the trusted networks, so the sender fallback applies.
    gw = make_gateway(route={"customer_id": {"trusted_networks": ["192.0.2.0/24"]}})
    msg = message(attachments=[(pdf_bytes(11 * MiB), "application/pdf", "a.pdf")], X_CustomerId="victim-123",
                  X_Attachment_Offload="offloaded=0 bytes=0; forged")
    send(gw.smtp_port, msg)
    [out] = gw.wait_outbox()
    [key] = stored_objects(gw.objects)
    assert key.startswith("uploads/customer@example.net/"), key
    head = out.split(b"\r\n\r\n", 1)[0]
    assert b"victim-123" not in head and b"X-CustomerId" not in head
    assert head.count(b"X-Attachment-Offload:") == 1 and b"forged" not in head


@pytest.mark.parametrize("extra,offloaded", [(0, False), (1, True)])
def test_threshold_boundary_exact_stays_one_byte_over_goes(make_gateway, extra: int, offloaded: bool) -> None:
    gw = make_gateway(threshold=1000)
    data = pdf_bytes(1000 + extra)
    send(gw.smtp_port, message(attachments=[(data, "application/pdf", "x.pdf")]))
    [out] = gw.wait_outbox()
    assert (b"offloaded=1" in out) is offloaded
    if offloaded:
        assert list(stored_objects(gw.objects).values()) == [data]
        assert data not in parse(out).as_bytes()
    else:
        assert stored_objects(gw.objects) == {}
        assert [p for p in leaves(parse(out)) if p.get_filename() == "x.pdf"][0].get_payload(decode=True) == data


def test_attachment_nested_in_alternative_inside_mixed(make_gateway) -> None:
    gw = make_gateway(threshold=1000)
    big = pdf_bytes(5000)
    raw = (b"From: a@example.net\r\nTo: support@contact.example\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=ALT\r\n\r\n"
           b"--ALT\r\nContent-Type: text/plain\r\n\r\nplain body\r\n"
           b"--ALT\r\nContent-Type: multipart/mixed; boundary=MIX\r\n\r\n"
           b"--MIX\r\nContent-Type: text/html\r\n\r\n<html><body>html body</body></html>\r\n"
           b"--MIX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
           b"Content-Disposition: attachment; filename=deep.pdf\r\n\r\n"
           + __import__("base64").encodebytes(big).replace(b"\n", b"\r\n") +
           b"--MIX--\r\n--ALT--\r\n")
    send(gw.smtp_port, raw, sender="a@example.net")
    [out] = gw.wait_outbox()
    assert list(stored_objects(gw.objects).values()) == [big]
    parts = leaves(parse(out))
    assert len(links(payload(parts[0]))) == 1  # text/plain body
    assert len(links(payload(parts[1]))) == 1  # text/html body
    assert b"deep.pdf" in payload(parts[2])  # the notice in place of the file


def test_an_attached_message_is_examined_part_by_part(make_gateway) -> None:
    # The forwarded email's own large part is offloaded (its link in the
    # outer body), its program refused and quarantined, both replaced inside
    # the attached message; its text stays where it was.
    gw = make_gateway(threshold=2000)
    big = png_bytes(5000)
    program = b"MZ\x90\x00" + bytes(range(256)) * 4
    inner = message("inner body " * 100, attachments=[(big, "image/png", "i.png"),
                                                     (program, "application/octet-stream", "setup.exe")],
                    Subject="forwarded").as_bytes(policy=policy.SMTP)
    raw = (b"From: a@example.net\r\nTo: support@contact.example\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain\r\n\r\nsee attached message\r\n"
           b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--B--\r\n")
    send(gw.smtp_port, raw, sender="a@example.net")
    [out] = gw.wait_outbox()
    objects = stored_objects(gw.objects)
    assert [v for k, v in objects.items() if k.startswith("uploads/")] == [big]
    assert [v for k, v in objects.items() if k.startswith("quarantine/")] == [program]
    msg = parse(out)
    outer_text = payload(leaves(msg)[0])
    assert b"see attached message" in outer_text and len(links(outer_text)) == 1
    attached = [p for p in msg.walk() if p.get_content_type() == "message/rfc822"]
    assert len(attached) == 1
    inner_out = attached[0].get_payload()[0]
    assert inner_out["Subject"] == "forwarded"
    inner_leaves = [payload(p) for p in leaves(inner_out)]
    assert any(b"inner body" in t for t in inner_leaves)
    assert not any(t in (big, program) for t in inner_leaves)
    assert any(b"setup.exe" in t and b"removed" in t for t in inner_leaves)


@pytest.mark.parametrize("disposition,expected", [
    ("attachment; filename*=UTF-8''Rechnung%20M%C3%A4rz%20%E2%82%AC.pdf", "Rechnung März €.pdf"),
    ('attachment; filename="=?UTF-8?B?0YHRh9C10YIg4oSWMS5wZGY=?="', "счет №1.pdf"),
    ("attachment; filename*0*=UTF-8''%E8%AB%8B%E6%B1%82;\r\n filename*1*=%E6%9B%B8.pdf", "請求書.pdf"),
])
def test_non_ascii_filenames(make_gateway, disposition: str, expected: str) -> None:
    gw = make_gateway(threshold=100)
    data = pdf_bytes(500)
    raw = (b"From: a@example.net\r\nTo: support@contact.example\r\nSubject: names\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nbody\r\n"
           b"--B\r\nContent-Type: application/pdf\r\nContent-Disposition: " + disposition.encode() +
           b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + __import__("base64").encodebytes(data) +
           b"--B--\r\n")
    send(gw.smtp_port, to_wire(raw), sender="a@example.net")
    [out] = gw.wait_outbox()
    text = leaves(parse(out))[0]
    assert text.get_content_charset() == "utf-8"  # switched from us-ascii to carry the name
    body = payload(text).decode("utf-8")
    assert f"[Secure Attachment: {expected}](" in body
    [key] = stored_objects(gw.objects)
    assert re.fullmatch(r"uploads/[a-z0-9@._+-]+/[0-9TZ.]+-[A-Za-z0-9._-]+", key), key
    status, headers, got = fetch(links(payload(text))[0])
    assert status == 200 and got == data
    from urllib.parse import quote
    assert f"filename*=UTF-8''{quote(expected, safe='')}" in headers["Content-Disposition"]


@pytest.mark.parametrize("name", [
    "../../../etc/passwd.pdf",
    "evil\x00name\x07.pdf",
    "inject\r\nX-Evil: yes.pdf",
    "A" * 300 + ".pdf",
    "..",
    ".hidden",
])
def test_hostile_filenames_stay_out_of_keys_and_headers(make_gateway, name: str) -> None:
    gw = make_gateway(threshold=100)
    data = pdf_bytes(400)
    from urllib.parse import quote
    raw = (b"From: a@example.net\r\nTo: support@contact.example\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
           b"--B\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename*=UTF-8''" + quote(name, safe="").encode() +
           b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + __import__("base64").encodebytes(data) +
           b"--B--\r\n")
    send(gw.smtp_port, to_wire(raw), sender="a@example.net")
    [out] = gw.wait_outbox()
    [key] = stored_objects(gw.objects)
    segments = key.split("/")
    # No header was made from the name: the parsed output has no X-Evil.
    assert parse(out).get("X-Evil") is None
    assert all(p.get("X-Evil") is None for p in leaves(parse(out)))
    assert "\r" not in key and "\n" not in key and "\x00" not in key and ".." not in segments
    if any(ord(c) < 32 for c in name) or name == ".hidden":
        # A name with a control character is ambiguous (readers cut it at
        # the NUL or keep it), and ".hidden" ends in an extension no route
        # allows: refused, kept in quarantine under a key of its own.
        assert segments[0] == "quarantine", key
        assert b"was removed" in out and not links(out)
        return
    assert segments[0] == "uploads" and len(segments) == 3
    assert re.fullmatch(r"[0-9TZ.]+-[A-Za-z0-9._-]{1,100}", segments[2]), key
    assert ".." not in segments[2] and "\r" not in key and "\n" not in key
    assert (gw.objects / key).read_bytes() == data  # inside the store's root
    status, headers, got = fetch(links(payload(leaves(parse(out))[0]))[0])
    assert status == 200 and got == data
    cd = headers["Content-Disposition"]
    assert "\r" not in cd and "\n" not in cd and "/" not in cd and "\x00" not in cd
    # The name survives as a person reads it: its last path component, its
    # control characters gone, bounded with its extension kept.
    from gateway.mime.filenames import bounded, visible_basename
    shown = bounded(visible_basename(name), 200)
    if shown:
        assert quote(shown, safe="!#$&+-.^_`|~") in cd or f'filename="{shown}"' in cd, cd


def test_message_without_attachment_is_forwarded_unchanged_but_for_trace(make_gateway, sink: SmtpSink) -> None:
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")
    raw = message("Just text, nothing attached.\n", "<p>Just html</p>").as_bytes(policy=policy.SMTP)
    send(gw.smtp_port, raw)
    [got] = sink.wait(1)
    assert got.rcpt_tos == ["support@contact.example"] and got.mail_from == "customer@example.net"
    assert got.data.startswith(b"Received: from ")
    assert strip_trace(got.data) == raw
    assert b"X-Attachment-Offload: offloaded=0 bytes=0\r\n" in got.data


def test_relay_refused_for_other_domains(gateway: GatewayProcess) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port) as s:
        s.ehlo("client.example")
        s.mail("customer@example.net")
        code, resp = s.rcpt("victim@elsewhere.example")
        assert code == 550 and resp.startswith(b"5.7.1")
        for bad in ("user%elsewhere.example@contact.example", "a!b@contact.example", "x@[127.0.0.1]"):
            code, _ = s.rcpt(bad)
            assert code >= 550, bad
        assert s.rcpt("support@contact.example")[0] == 250


def test_ehlo_and_size_limit(make_gateway) -> None:
    gw = make_gateway(sections={"smtp": {"max_message_size": 100000}})
    with smtplib.SMTP("127.0.0.1", gw.smtp_port) as s:
        code, resp = s.ehlo("client.example")
        for ext in (b"SIZE 100000", b"8BITMIME", b"SMTPUTF8", b"PIPELINING"):
            assert ext in resp.split(b"\n")
        code, resp = s.mail("customer@example.net", ["SIZE=100001"])
        assert code == 552 and resp.startswith(b"5.3.4")
        assert s.mail("customer@example.net", ["SIZE=1000"])[0] == 250
        assert s.rcpt("support@contact.example")[0] == 250
        # Lying about SIZE does not help: the limit holds while streaming.
        code, resp = s.data(b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n" * 2000 + b"y" * 200000)
        assert code == 552
    assert gw.outbox_messages() == []


def test_queued_reply_names_the_queue_id_and_logs_carry_it(gateway: GatewayProcess) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port) as s:
        s.ehlo("client.example")
        s.mail("customer@example.net")
        s.rcpt("support@contact.example")
        code, resp = s.data(b"Subject: hi\r\n\r\nhello\r\n")
    assert code == 250
    m = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-Z]+)", resp)
    assert m
    qid = m.group(1).decode()
    gateway.wait_outbox()
    deadline = time.monotonic() + 10  # "removed" is logged just after the spool entry goes
    while time.monotonic() < deadline:
        events = {e["event"] for e in gateway.log_events() if e.get("queue_id") == qid}
        if {"queued", "delivered", "removed"} <= events:
            break
        time.sleep(0.05)
    assert {"queued", "processed", "delivered", "removed"} <= events


def test_next_hop_down_defers_then_delivers_when_back(make_gateway) -> None:
    sink = SmtpSink()
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")
    send(gw.smtp_port, message("while the next hop is down\n"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listing = gw.command("queue", "list", "--json")
        rows = __import__("json").loads(listing.stdout)
        if rows and rows[0]["queue"] == "deferred":
            break
        time.sleep(0.1)
    assert rows and rows[0]["queue"] == "deferred" and rows[0]["attempts"] >= 1
    assert "connect" in rows[0]["last_error"]
    sink.start()
    try:
        [got] = sink.wait(1, timeout=30)
        assert b"while the next hop is down" in got.data
        gw.wait_idle()
        time.sleep(2.5)  # another scan: nothing is delivered twice
        assert len(sink.messages) == 1
        assert __import__("json").loads(gw.command("queue", "list", "--json").stdout) == []
    finally:
        sink.stop()


def test_permanent_failure_sends_one_dsn_and_none_to_null_sender(make_gateway) -> None:
    sink = SmtpSink(reply_data="554 5.7.1 rejected by policy").start()
    try:
        gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")
        send(gw.smtp_port, message("will bounce\n"), sender="customer@example.net")
        send(gw.smtp_port, message("will bounce silently\n"), sender="")
        gw.wait_idle()
        deadline = time.monotonic() + 10
        bounces = gw.tmp / "bounces" / "new"
        while time.monotonic() < deadline and not (bounces.exists() and list(bounces.iterdir())):
            time.sleep(0.1)
        time.sleep(1)
        dsns = [p.read_bytes() for p in bounces.iterdir()]
        assert len(dsns) == 1
        dsn = parse(dsns[0].split(b"\r\n", 2)[2])
        assert dsn.get_content_type() == "multipart/report"
        assert dsn["To"] == "<customer@example.net>"
        status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"][0]
        assert "Status: 5.7.1" in status.as_string() and "Action: failed" in status.as_string()
        assert dsns[0].startswith(b"Return-Path: <>")
    finally:
        sink.stop()


def test_storage_failure_fails_open(make_gateway) -> None:
    gw = make_gateway(threshold=1000, start=False)
    gw.objects.mkdir()
    gw.start()
    gw.objects.chmod(0o500)
    (gw.objects / "uploads").mkdir(exist_ok=True)
    # Root ignores permissions, so make storage fail with a file where the
    # customer's directory must go.
    (gw.objects / "uploads" / "customer@example.net").write_text("not a directory")
    small, big = pdf_bytes(3000), pdf_bytes(40 * MiB)
    send(gw.smtp_port, message(attachments=[(small, "application/pdf", "fits.pdf")]))
    [out] = gw.wait_outbox()
    assert [p for p in leaves(parse(out)) if p.get_filename() == "fits.pdf"][0].get_payload(decode=True) == small
    send(gw.smtp_port, message(attachments=[(big, "application/pdf", "huge.pdf")]))
    outs = gw.wait_outbox(2, timeout=60)
    assert len(outs[1]) < 1 * MiB
    assert b"huge.pdf" in outs[1] and b"could not be stored" in outs[1]
    refused = [e for e in gw.audit() if e["EventType"] == "FileRefused"]
    assert refused and refused[0]["TargetFileName"] == "huge.pdf"
