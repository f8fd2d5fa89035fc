"""Fail closed on content, at the worker: what could not be examined is
quarantined, never forwarded, and never holds the message.

Each test sends real mail with smtplib into ``attachment-gateway serve`` and
reads the Maildir outbox, the quarantine in the filesystem store, the log
and the audit stream.
"""
from __future__ import annotations

import binascii
import hashlib

from tests.harness import GatewayProcess
from tests.messages import leaves, message, parse, payload, pdf_bytes, send, stored_objects

EXECUTABLE = b"MZ\x90\x00" + bytes(range(256)) * 8  # a Windows program's first bytes


def quarantined(gw: GatewayProcess) -> dict[str, bytes]:
    """The quarantine's objects by key."""
    return {k: v for k, v in stored_objects(gw.objects).items() if k.startswith("quarantine/")}


def test_a_part_examined_past_the_cpu_budget_is_quarantined_and_the_text_still_goes(make_gateway) -> None:
    # A budget no message can meet: the parse alone uses it up, so every
    # file is unexamined; the text body is not a file and still goes.
    gw = make_gateway(sections={"worker": {"max_cpu_seconds": 1e-9}})
    pdf = pdf_bytes(5000)
    send(gw.smtp_port, message("Please see the invoice.\n", attachments=[(pdf, "application/pdf", "inv.pdf")]))
    [out] = gw.wait_outbox()
    msg = parse(out)
    texts = [payload(p) for p in leaves(msg)]
    assert any(b"Please see the invoice." in t for t in texts)
    assert not any(t == pdf for t in texts)
    assert b"could not be examined" in out and b"ran out" in out
    [kept] = quarantined(gw).values()
    assert payload(parse(kept)) == pdf  # the whole entity, headers and all, as it came
    events = [e for e in gw.audit() if e.get("EventType") == "FileRefused"]
    assert events and events[0]["Policy"] == "unexamined"


def test_a_message_whose_own_header_block_is_beyond_a_bound_is_quarantined_whole(make_gateway) -> None:
    gw = make_gateway(sections={"worker": {"max_header_fields": 20}})
    msg = message("Text the agent never sees unexamined.\n",
                  attachments=[(EXECUTABLE, "application/octet-stream", "setup.exe")])
    for i in range(30):
        msg[f"X-Filler-{i}"] = "x"
    raw = msg.as_bytes()
    send(gw.smtp_port, raw)
    [out] = gw.wait_outbox()
    forwarded = parse(out)
    assert forwarded["Subject"] == "Test" and forwarded["From"] == "customer@example.net"
    # The program is nowhere in what went on: not as bytes, not in base64
    # ("MZ" alone is no test: a random queue id in Received can hold it).
    assert b"X-Filler" not in out and EXECUTABLE[:64] not in out
    assert binascii.b2a_base64(EXECUTABLE[:57], newline=False) not in out
    assert not any(payload(p) == EXECUTABLE for p in leaves(forwarded))
    assert b"could not be examined" in out
    [kept] = quarantined(gw).values()
    assert hashlib.sha256(kept).hexdigest() == hashlib.sha256(raw.replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n")).hexdigest()
    assert not list((gw.spool / "hold").iterdir())


def test_forwarding_unexamined_parts_is_explicit_and_logged_as_an_error(make_gateway) -> None:
    gw = make_gateway(route={"unexamined": "forward-unexamined"},
                      sections={"worker": {"max_cpu_seconds": 1e-9}})
    pdf = pdf_bytes(3000)
    send(gw.smtp_port, message(attachments=[(pdf, "application/pdf", "inv.pdf")]))
    [out] = gw.wait_outbox()
    assert any(payload(p) == pdf for p in leaves(parse(out)))
    errors = [e for e in gw.log_events() if e.get("level") == "error"]
    assert any("forward-unexamined" in e.get("event", "") for e in errors)
    assert any(e.get("event", "").startswith("part not examined and forwarded") for e in errors)


def _uuencode(name: str, data: bytes) -> bytes:
    lines = [binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45)]
    return b"begin 644 " + name.encode() + b"\n" + b"".join(lines) + b"`\nend\n"


def test_a_uuencoded_program_in_the_text_is_cut_out_and_quarantined(make_gateway) -> None:
    gw = make_gateway()
    text = b"Dear support,\nthe tool is below.\n\n" + _uuencode("setup.exe", EXECUTABLE) + b"\nRegards\n"
    send(gw.smtp_port, message(text.decode()))
    [out] = gw.wait_outbox()
    [body] = [payload(p) for p in leaves(parse(out))]
    assert b"Dear support" in body and b"Regards" in body
    assert b"begin 644" not in body and b"setup.exe" in body and b"removed" in body
    [kept] = quarantined(gw).values()
    assert kept == EXECUTABLE


def test_a_uuencoded_pdf_in_the_text_is_examined_and_kept(make_gateway) -> None:
    gw = make_gateway()
    pdf = pdf_bytes(2000)
    text = b"The invoice:\n" + _uuencode("invoice.pdf", pdf) + b"Thanks\n"
    send(gw.smtp_port, message(text.decode()))
    [out] = gw.wait_outbox()
    [body] = [payload(p) for p in leaves(parse(out))]
    assert b"begin 644 invoice.pdf" in body and not quarantined(gw)
