"""Content policies end to end (issue 5): real file types, empty files,
refusals the customer understands, Outlook TNEF, inline images, clamd.

Every test sends real mail with smtplib into ``attachment-gateway serve``
and reads what arrived in the Maildir outbox, the store, the log, the audit
stream and, for automatic replies, a real SMTP sink.
"""
from __future__ import annotations

import html
import io
import json
import re
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

import pytest

from gateway.spool import message_source
from tests.harness import CORPUS, GatewayProcess, SmtpSink, strip_trace
from tests.messages import (fetch, leaves, links, message, parse, payload, pdf_bytes, png_bytes, send,
                            stored_objects)
from tests.servers.clamd import CLAMD, Clamd

TNEF = CORPUS / "mimekit" / "tnef"
EMPTY_NOTICE = "Attachment was empty and could not be processed."
EXECUTABLE = Path("/bin/true").read_bytes()  # a real ELF program
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def docx_bytes() -> bytes:
    """A minimal but complete WordprocessingML package."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml",
                   '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                   '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                   '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
                   '<Default Extension="xml" ContentType="application/xml"/>'
                   '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
                   'officedocument.wordprocessingml.document.main+xml"/>'
                   '</Types>')
        z.writestr("_rels/.rels",
                   '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                   '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                   '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                   'relationships/officeDocument" Target="word/document.xml"/></Relationships>')
        z.writestr("word/document.xml",
                   '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                   '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
                   '<w:body><w:p><w:r><w:t>Contract</w:t></w:r></w:p></w:body></w:document>')
    return out.getvalue()


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("notes.txt", "not a Word document\n" * 50)
        z.writestr("data.bin", bytes(range(256)) * 8)
    return out.getvalue()


def autoreply_route(sink: SmtpSink, interval: int | str = "1h") -> dict[str, Any]:
    return {"autoreply": {"from": "Support <support@contact.example>", "next_hop": f"smtp://127.0.0.1:{sink.port}",
                          "interval": interval, "upload_url": "https://upload.contact.example/"}}


def bodies(out: bytes) -> tuple[bytes, bytes]:
    """The decoded text/plain and text/html bodies of a forwarded message."""
    parts = leaves(parse(out))
    text = next(p for p in parts if p.get_content_type() == "text/plain" and not p.get_filename()
                and p.get("Content-Disposition") is None)
    htm = next(p for p in parts if p.get_content_type() == "text/html")
    return payload(text), payload(htm)


def notice_parts(out: bytes) -> list[bytes]:
    """Payloads of the text/plain parts that replaced files (inline notices)."""
    return [payload(p) for p in leaves(parse(out))
            if p.get_content_type() == "text/plain" and p.get("Content-Disposition") == "inline"]


def decisions(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [e for e in gw.log_events() if e.get("event") == "decision"]


def refuse_one(make_gateway: Callable[..., GatewayProcess], sink: SmtpSink, data: bytes, ctype: str,
               name: str) -> tuple[GatewayProcess, bytes]:
    gw = make_gateway(route=autoreply_route(sink))
    send(gw.smtp_port, message("Please see the attached file.\n", "<html><body><p>Please see.</p></body></html>",
                               [(data, ctype, name)], Subject="My claim"))
    [out] = gw.wait_outbox()
    return gw, out


def assert_refused(gw: GatewayProcess, out: bytes, sink: SmtpSink, data: bytes, name: str,
                   reason_words: list[str]) -> None:
    """The file is gone from the message, a notice stands in its place and in
    both bodies, the bytes are quarantined, an auto-reply went out."""
    payloads = [payload(p) for p in leaves(parse(out))]
    assert data not in payloads and all(data not in p for p in payloads)
    assert not [p for p in leaves(parse(out)) if p.get_filename() == name]
    [notice] = notice_parts(out)
    assert f'The attachment "{name}" was removed: '.encode() in notice
    for w in reason_words:
        assert w.encode() in notice, notice
    text, htm = bodies(out)
    assert f'The attachment "{name}" was removed: '.encode() in text
    assert html.escape(f'The attachment "{name}" was removed: ').encode() in htm
    assert b"refused=1" in out.split(b"\r\n\r\n", 1)[0]
    quarantined = {k: v for k, v in stored_objects(gw.objects).items() if k.startswith("quarantine/")}
    assert list(quarantined.values()) == [data]
    # No link record leads to the quarantine: agents cannot reach it.
    for rec in (gw.objects / "links").glob("*.json") if (gw.objects / "links").exists() else []:
        assert not json.loads(rec.read_text())["key"].startswith("quarantine/")
    audit = [e for e in gw.audit() if e["EventType"] == "FileRefused"]
    assert len(audit) == 1 and audit[0]["TargetFileName"] == name
    assert audit[0]["TargetFilePath"] == next(iter(quarantined))
    [reply] = sink.wait(1)
    assert reply.mail_from == "<>" and reply.rcpt_tos == ["customer@example.net"]
    r = parse(reply.data)
    assert r["Auto-Submitted"] == "auto-replied"
    assert r["To"] == "customer@example.net"
    body = payload(r).decode()
    assert name in body and '"My claim"' in body


def test_an_executable_renamed_invoice_pdf_is_refused(make_gateway: Callable[..., GatewayProcess],
                                                      sink: SmtpSink) -> None:
    gw, out = refuse_one(make_gateway, sink, EXECUTABLE, "application/pdf", "invoice.pdf")
    assert_refused(gw, out, sink, EXECUTABLE, "invoice.pdf", ["program", "not accepted"])
    [d] = decisions(gw)
    assert d["policy"] == "refuse_executables" and d["action"] == "refuse"
    assert d["declared_type"] == "application/pdf"
    assert d["detected_type"] in ("application/x-sharedlib", "application/x-pie-executable",
                                  "application/x-executable")
    audit = [e for e in gw.audit() if e["EventType"] == "FileRefused"][0]
    assert audit["DeclaredMimeType"] == "application/pdf" and audit["TargetFileMimeType"] == d["detected_type"]


def test_a_png_declared_as_pdf_is_refused_as_spoofed(make_gateway: Callable[..., GatewayProcess],
                                                     sink: SmtpSink) -> None:
    png = png_bytes(20_000)
    gw, out = refuse_one(make_gateway, sink, png, "application/pdf", "photo.png")
    assert_refused(gw, out, sink, png, "photo.png", ["sent as a PDF document (application/pdf)",
                                                     "it is a PNG image"])
    [d] = decisions(gw)
    assert (d["policy"], d["declared_type"], d["detected_type"]) == ("refuse_spoofed", "application/pdf",
                                                                     "image/png")


def test_a_zip_renamed_docx_is_refused(make_gateway: Callable[..., GatewayProcess], sink: SmtpSink) -> None:
    data = zip_bytes()
    gw, out = refuse_one(make_gateway, sink, data, DOCX_TYPE, "contract.docx")
    assert_refused(gw, out, sink, data, "contract.docx", ["ends in .docx", "ZIP archive"])
    [d] = decisions(gw)
    assert (d["declared_type"], d["detected_type"]) == (DOCX_TYPE, "application/zip")


def test_a_real_docx_passes_untouched(make_gateway: Callable[..., GatewayProcess], sink: SmtpSink) -> None:
    data = docx_bytes()
    gw = make_gateway(route=autoreply_route(sink))
    msg = message("Contract attached.\n", attachments=[(data, DOCX_TYPE, "contract.docx")])
    send(gw.smtp_port, msg)
    [out] = gw.wait_outbox()
    [part] = [p for p in leaves(parse(out)) if p.get_filename() == "contract.docx"]
    assert part.get_payload(decode=True) == data
    assert strip_trace(out).replace(b"\r\n", b"\n") == msg.as_bytes().replace(b"\r\n", b"\n")
    [d] = decisions(gw)
    assert (d["action"], d["detected_type"]) == ("keep", DOCX_TYPE)
    time.sleep(0.5)
    assert sink.messages == []


def test_an_empty_attachment_is_replaced_by_the_notice(make_gateway: Callable[..., GatewayProcess],
                                                       sink: SmtpSink) -> None:
    gw = make_gateway(route=autoreply_route(sink))
    send(gw.smtp_port, message("Here it is.\n", "<html><body><p>Here it is.</p></body></html>",
                               [(b"", "application/pdf", "scan.pdf"), (pdf_bytes(5000), "application/pdf", "ok.pdf")]))
    [out] = gw.wait_outbox()
    [notice] = notice_parts(out)
    assert notice.decode().strip() == EMPTY_NOTICE
    assert not [p for p in leaves(parse(out)) if p.get_filename() == "scan.pdf"]
    assert [p for p in leaves(parse(out)) if p.get_filename() == "ok.pdf"]
    text, htm = bodies(out)
    assert f'"scan.pdf": {EMPTY_NOTICE}'.encode() in text
    assert html.escape(f'"scan.pdf": {EMPTY_NOTICE}').encode() in htm
    assert [e for e in gw.log_events() if e.get("event") == "attachment replaced"][0]["filename"] == "scan.pdf"
    assert b"replaced=1" in out
    time.sleep(0.5)
    assert sink.messages == []  # an empty file is not a refusal: no auto-reply


def _with_tnef(blob: bytes) -> EmailMessage:
    return message("Sent from Outlook.\n", attachments=[(blob, "application/ms-tnef", "winmail.dat")])


def test_winmail_dat_is_unpacked_into_its_files_before_the_policies(
        make_gateway: Callable[..., GatewayProcess], sink: SmtpSink) -> None:
    gw = make_gateway(route=autoreply_route(sink))
    send(gw.smtp_port, _with_tnef((TNEF / "attachments.tnef").read_bytes()))
    send(gw.smtp_port, _with_tnef((TNEF / "two-files.tnef").read_bytes()), sender="other@example.net")
    outs = gw.wait_outbox(2)
    by_name = {}
    for out in outs:
        assert b"tnef=unpacked" in out
        assert not [p for p in leaves(parse(out)) if p.get_filename() == "winmail.dat"]
        by_name.update({p.get_filename(): payload(p) for p in leaves(parse(out)) if p.get_filename()})
    # The files as MimeKit's own test expects them, byte for byte.
    assert by_name["zappa_av1.jpg"] == (TNEF / "attachments" / "zappa_av1.jpg").read_bytes()
    assert by_name["AUTHORS"] == (TNEF / "two-files" / "AUTHORS").read_bytes()
    assert by_name["README"] == (TNEF / "two-files" / "README").read_bytes()
    # ... and each went through the policies: the web page inside is refused.
    assert "bookmark.htm" not in by_name
    quarantined = [v for k, v in stored_objects(gw.objects).items() if k.startswith("quarantine/")]
    # (MimeKit's expected copy of the web page was stored with LF line ends.)
    assert (TNEF / "attachments" / "bookmark.htm").read_bytes() in [q.replace(b"\r\n", b"\n") for q in quarantined]
    # The rich-text body, decompressed, is kept too (as MimeKit expects it).
    assert (TNEF / "attachments" / "message.rtf").read_bytes() in quarantined
    by_file = {d["filename"]: d for d in decisions(gw)}
    assert by_file["zappa_av1.jpg"]["detected_type"] == "image/jpeg"
    assert by_file["bookmark.htm"]["action"] == "refuse"
    [reply] = sink.wait(1)
    assert "bookmark.htm" in payload(parse(reply.data)).decode()


def test_a_tnef_that_cannot_be_unpacked_is_refused(make_gateway: Callable[..., GatewayProcess],
                                                   sink: SmtpSink) -> None:
    # Issue 14: the files inside a winmail.dat that does not unpack cannot
    # be checked, so it is refused (it used to be forwarded as it was).
    blob = (TNEF / "garbage-at-end.tnef").read_bytes()
    gw = make_gateway(route=autoreply_route(sink))
    send(gw.smtp_port, message("Please see the attached file.\n", "<html><body><p>Please see.</p></body></html>",
                               [(blob, "application/ms-tnef", "winmail.dat")], Subject="My claim"))
    [out] = gw.wait_outbox()
    assert_refused(gw, out, sink, blob, "winmail.dat", ["Outlook TNEF file", "could not be unpacked"])
    assert [e for e in gw.log_events() if e.get("event") == "TNEF not unpacked; the policies refuse it packed"]
    [d] = decisions(gw)
    assert (d["action"], d["policy"]) == ("refuse", "allowed_types")


def _inline_message(image: bytes) -> EmailMessage:
    m = message("See the picture.\n", '<html><body><p>Look:</p><img src="cid:pic1@example.net" alt="pic">'
                                      '</body></html>')
    m.get_payload()[1].add_related(image, "image", "png", cid="<pic1@example.net>")
    return m


def test_inline_image_under_the_threshold_stays_inline(make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(threshold="100KiB")
    img = png_bytes(50 * 1024)
    msg = _inline_message(img)
    send(gw.smtp_port, msg)
    [out] = gw.wait_outbox()
    assert strip_trace(out).replace(b"\r\n", b"\n") == msg.as_bytes().replace(b"\r\n", b"\n")
    [d] = decisions(gw)
    assert d["inline"] is True and d["action"] == "keep"


def test_inline_image_over_the_threshold_becomes_a_link_in_place(make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(threshold="100KiB")
    img = png_bytes(300 * 1024)
    send(gw.smtp_port, _inline_message(img))
    [out] = gw.wait_outbox()
    text, htm = bodies(out)
    assert b"cid:pic1@example.net" not in htm
    [url] = links(htm)
    assert htm.index(b"Look:") < htm.index(url.encode())  # where the image was, not at the end
    assert b'<img' not in htm
    assert links(text) == [url]
    status, _, body = fetch(url)
    assert status == 200 and body == img
    [d] = decisions(gw)
    assert d["inline"] is True and d["action"] == "offload"


def test_auto_reply_at_most_once_per_interval_never_to_null_lists_or_auto_submitted(
        make_gateway: Callable[..., GatewayProcess], sink: SmtpSink) -> None:
    # Two processes share the spool, so the rate state must be shared too.
    gw = make_gateway(route=autoreply_route(sink, "1h"), sections={"gateway": {"processes": 2}})
    bad = [(EXECUTABLE, "application/octet-stream", "tool.exe")]
    for _ in range(3):
        send(gw.smtp_port, message(attachments=bad))
    send(gw.smtp_port, message(attachments=bad), sender="")
    send(gw.smtp_port, message(attachments=bad, Auto_Submitted="auto-generated"), sender="robot@example.net")
    send(gw.smtp_port, message(attachments=bad, List_Id="<news.example.net>"), sender="list@example.net")
    send(gw.smtp_port, message(attachments=bad, Precedence="bulk"), sender="bulk@example.net")
    gw.wait_outbox(7)
    gw.wait_idle()
    time.sleep(1.0)
    assert [(m.mail_from, m.rcpt_tos) for m in sink.messages] == [("<>", ["customer@example.net"])]
    reasons = sorted(e["reason"] for e in gw.log_events() if e.get("event") == "no auto-reply")
    assert reasons == sorted(["one went to this sender within 3600s"] * 2 + [
        "null sender", "message is auto-submitted (auto-generated)", "message came through a list (List-Id)",
        "Precedence: bulk"])


def test_auto_reply_goes_again_after_the_interval(make_gateway: Callable[..., GatewayProcess],
                                                  sink: SmtpSink) -> None:
    gw = make_gateway(route=autoreply_route(sink, 2))
    bad = [(EXECUTABLE, "application/octet-stream", "tool.exe")]
    send(gw.smtp_port, message(attachments=bad))
    sink.wait(1)
    time.sleep(2.2)
    send(gw.smtp_port, message(attachments=bad))
    sink.wait(2)


@pytest.fixture
def clamd(tmp_path: Path) -> Any:
    """clamd with one signature: the bytes of EICAR_LIKE."""
    assert Path(CLAMD).exists(), "clamd missing: run scripts/install-test-deps.sh"
    with Clamd(tmp_path / "clamd", {"Gateway.Test.Signature": EICAR_LIKE}) as c:
        yield c


EICAR_LIKE = b"This harmless text is what the test's own clamd signature flags as malware.\n" * 20


def test_clamd_flags_a_test_file_and_fails_open_when_stopped(make_gateway: Callable[..., GatewayProcess],
                                                              sink: SmtpSink, clamd: Clamd) -> None:
    gw = make_gateway(route={**autoreply_route(sink), "policies": [
        {"name": "empty_attachment"}, {"name": "refuse_malware"}, {"name": "refuse_executables"},
        {"name": "refuse_spoofed"}, {"name": "allowed_types"}, {"name": "offload_large"}]},
        sections={"clamd": {"address": clamd.address, "timeout": 10}})
    clean = b"An ordinary note from a customer.\n" * 10
    send(gw.smtp_port, message("Two files.\n", "<html><body><p>Two files.</p></body></html>",
                               [(EICAR_LIKE, "text/plain", "report.txt"), (clean, "text/plain", "note.txt")],
                               Subject="My claim"))
    [out] = gw.wait_outbox()
    by_name = {p.get_filename(): payload(p) for p in leaves(parse(out)) if p.get_filename()}
    assert by_name == {"note.txt": clean}
    assert_refused(gw, out, sink, EICAR_LIKE, "report.txt", ["malware scan found Gateway.Test.Signature"])
    d = {e["filename"]: e for e in decisions(gw)}
    assert d["report.txt"]["scan"] == "infected" and d["note.txt"]["scan"] == "clean"

    clamd.stop()
    send(gw.smtp_port, message(attachments=[(EICAR_LIKE, "text/plain", "report.txt")]), sender="b@example.net")
    outs = gw.wait_outbox(2)
    second = next(o for o in outs if o is not out and b"report.txt" in o and b"refused=" not in o)
    [part] = [p for p in leaves(parse(second)) if p.get_filename() == "report.txt"]
    assert payload(part) == EICAR_LIKE
    failures = [e for e in gw.log_events() if e.get("event") == "malware scan failed; failing open"]
    assert len(failures) == 1 and failures[0]["scan_failures_total"] == 1
    # Counted across the gateway's processes, for Prometheus.
    status, _, body = fetch(f"http://127.0.0.1:{gw.http_port}/metrics")
    assert status == 200
    counts = {tuple(sorted(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))): float(line.rsplit(" ", 1)[1])
              for line in body.decode().splitlines() if line.startswith("gateway_malware_scans_total{")}
    assert counts[(("result", "error"), ("route", "contact"))] == 1.0
    assert counts[(("result", "infected"), ("route", "contact"))] == 1.0
    assert counts[(("result", "clean"), ("route", "contact"))] == 1.0


@pytest.mark.parametrize("route, expected", [
    ({"policies": [{"name": "allowed_types", "settings": {"allow": ["pdf"]}}]},
     "routes[0].policies[0].settings.allow: ['pdf']: 'pdf': expected a MIME type such as \"application/pdf\""),
    ({"policies": [{"name": "allowed_types", "settings": {"alow": []}}]},
     "routes[0].policies[0].settings.alow: unknown key (policy allowed_types)"),
    ({"policies": [{"name": "refuse_malware"}]}, "'refuse_malware' needs a [clamd] table"),
    ({"quarantine": {"prefix": "uploads/"}}, "routes[0].quarantine.prefix: 'uploads/': expected a prefix"),
    # Every prefix the gateway writes is its own: quarantined files there
    # would take its retention and be read back as its records (erase).
    *(({"quarantine": {"prefix": p}}, f"routes[0].quarantine.prefix: '{p}': expected a prefix")
      for p in ("jobs/", "pages/", "invitations/", "leases/", "autoreply/", "revoked/", "staging/", "check/")),
    ({"autoreply": {"from": "support@contact.example", "next_hop": "maildir:x", "template": "Hi {name}"}},
     "routes[0].autoreply.template: 'Hi {name}': unknown field {name}; the fields allowed are {refusals}, "
     "{subject}, {upload_url}"),
    ({"autoreply": {"from": "support@contact.example", "next_hop": "maildir:x",
                    "storage_failed_template": "Lost {refusals}"}},
     "routes[0].autoreply.storage_failed_template: 'Lost {refusals}': unknown field {refusals}; "
     "the fields allowed are {files}, {subject}, {upload_url}"),
    ({"autoreply": {"from": "nobody", "next_hop": "maildir:x"}},
     "routes[0].autoreply.from: 'nobody': expected an address"),
    ({"autoreply": {"from": "a@b.example", "next_hop": "ftp://x"}},
     "routes[0].autoreply.next_hop: 'ftp://x': expected \"smtp://DOMAIN[:PORT]\" (its MX records)"),
])
def test_bad_content_policy_config_is_refused_with_the_key(make_gateway: Callable[..., GatewayProcess],
                                                           route: dict[str, Any], expected: str) -> None:
    gw = make_gateway(start=False, route=route)
    r = gw.command("check-config")
    assert r.returncode == 78, r.stderr
    assert expected in r.stderr, r.stderr


def test_bad_clamd_address_is_refused(make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(start=False, sections={"clamd": {"address": "clamd.example:3310"}})
    r = gw.command("check-config")
    assert r.returncode == 78
    assert "clamd.address: 'clamd.example:3310': expected \"unix:/PATH\" or \"tcp:HOST:PORT\"" in r.stderr


def _offloaded_names(gw: GatewayProcess, out: bytes) -> set[str]:
    return {e["filename"] for e in decisions(gw) if e["action"] == "offload"}


def test_largest_attachments_are_offloaded_until_the_message_fits_the_next_hop(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(route={"next_hop_max_size": "300KiB"})
    files = [(pdf_bytes(100 * 1024), "application/pdf", "small.pdf"),
             (pdf_bytes(150 * 1024), "application/pdf", "medium.pdf"),
             (pdf_bytes(200 * 1024), "application/pdf", "large.pdf")]
    send(gw.smtp_port, message("Three files.\n", attachments=files))
    [out] = gw.wait_outbox()
    assert len(out) <= 300 * 1024
    kept = {p.get_filename(): payload(p) for p in leaves(parse(out)) if p.get_filename()}
    assert kept == {"small.pdf": files[0][0]}
    assert {e["filename"] for e in decisions(gw) if e["policy"] == "next_hop_limits"} == {"medium.pdf", "large.pdf"}
    text = payload(next(p for p in leaves(parse(out)) if p.get_content_type() == "text/plain"
                        and not p.get_filename() and p.get("Content-Disposition") is None))
    urls = links(text)
    assert len(urls) == 2
    assert sorted(fetch(u)[2] for u in urls) == sorted([files[1][0], files[2][0]])


def test_attachments_over_the_next_hops_count_are_offloaded_largest_first(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway(route={"max_attachments": 2})
    sizes = {"a.pdf": 3000, "b.pdf": 9000, "c.pdf": 5000, "d.pdf": 7000}
    send(gw.smtp_port, message("Four files.\n", attachments=[(pdf_bytes(n), "application/pdf", name)
                                                             for name, n in sizes.items()]))
    [out] = gw.wait_outbox()
    kept = {p.get_filename() for p in leaves(parse(out)) if p.get_filename()}
    assert kept == {"a.pdf", "c.pdf"}
    assert {e["filename"] for e in decisions(gw) if e["policy"] == "next_hop_limits"} == {"b.pdf", "d.pdf"}


def test_a_refused_file_that_cannot_be_quarantined_holds_the_message(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    gw = make_gateway()
    gw.objects.mkdir(parents=True, exist_ok=True)
    (gw.objects / "quarantine").write_text("not a directory: every quarantine write fails\n")
    msg = message(attachments=[(EXECUTABLE, "application/pdf", "invoice.pdf")])
    send(gw.smtp_port, msg)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list((gw.spool / "hold").glob("*")):
        time.sleep(0.05)
    [held] = list((gw.spool / "hold").iterdir())
    # Neither forwarded with the file nor dropped: held, the original intact.
    assert gw.outbox_messages() == []
    with message_source(held) as src:
        original = src.read(0, src.size)
    assert original.replace(b"\r\n", b"\n") == \
        msg.as_bytes().replace(b"\r\n", b"\n")
    r = gw.command("queue", "list", "--queue", "hold")
    assert "(held: internal error: QuarantineError: refused file 'invoice.pdf' could not be quarantined" \
        in r.stdout, r.stdout


def test_an_auto_reply_that_cannot_be_sent_is_logged_and_the_message_still_goes(
        make_gateway: Callable[..., GatewayProcess], sink: SmtpSink) -> None:
    gw = make_gateway(route=autoreply_route(sink))
    sink.stop()  # the auto-reply's next hop is down
    send(gw.smtp_port, message(attachments=[(EXECUTABLE, "application/octet-stream", "tool.exe")]))
    [out] = gw.wait_outbox()
    assert b"refused=1" in out
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not [e for e in gw.log_events()
                                               if e.get("event") == "auto-reply not delivered"]:
        time.sleep(0.05)
    [event] = [e for e in gw.log_events() if e.get("event") == "auto-reply not delivered"]
    assert event["to"] == "customer@example.net" and event["reason"]
    # The claim on the interval was given back: the next refusal may reply.
    sink.start()
    send(gw.smtp_port, message(attachments=[(EXECUTABLE, "application/octet-stream", "tool.exe")]))
    [reply] = sink.wait(1)
    assert parse(reply.data)["Auto-Submitted"] == "auto-replied"


def test_the_signature_of_signed_mail_is_not_refused(gateway: GatewayProcess) -> None:
    signature = (b"-----BEGIN PGP SIGNATURE-----\r\n\r\n"
                 b"iQEzBAEBCAAdFiEEexampleexampleexampleexampleexampleFAmVexampleAAoJEexample\r\n"
                 b"=abcd\r\n-----END PGP SIGNATURE-----\r\n")
    data = (b"From: customer@example.net\r\nTo: support@contact.example\r\nSubject: signed\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256;\r\n"
            b" protocol=\"application/pgp-signature\"; boundary=\"sig\"\r\n\r\n"
            b"--sig\r\nContent-Type: text/plain\r\n\r\nHello, signed.\r\n"
            b"--sig\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n"
            b"Content-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n" + signature +
            b"--sig--\r\n")
    send(gateway.smtp_port, data)
    [out] = gateway.wait_outbox()
    assert strip_trace(out) == data
    [d] = decisions(gateway)
    assert (d["action"], d["detected_type"]) == ("keep", "application/pgp-signature")


def test_storage_failed_reply_text_without_an_upload_page_and_from_a_template() -> None:
    from gateway import autoreply

    text = autoreply.render_storage_failed(None, files=["a.pdf", "b.jpg"], subject="Claim", upload_url="")
    assert "- a.pdf\n- b.jpg\n" in text and "Please send the file(s)\nagain.\n" in text
    assert "upload page" not in text
    own = autoreply.render_storage_failed("{subject}: {files} ({upload_url})", files=["a.pdf"], subject="Claim",
                                          upload_url="https://u.example/")
    assert own == "Claim: - a.pdf (https://u.example/)"


def test_no_auto_reply_to_a_machine_address_written_quoted_or_in_capitals(
        make_gateway: Callable[..., GatewayProcess], sink: SmtpSink) -> None:
    # "mailer-daemon"@ and MAILER-DAEMON@ are the same mailbox as
    # mailer-daemon@ (RFC 5321 4.1.2: quoting changes nothing): a reply to
    # one is a reply to a machine, the start of a mail loop.
    gw = make_gateway(route=autoreply_route(sink, "1h"))
    bad = [(EXECUTABLE, "application/octet-stream", "tool.exe")]
    for sender in ('"mailer-daemon"@example.net', "MAILER-DAEMON@example.net", '"owner-list"@example.net',
                   '"news-request"@example.net'):
        send(gw.smtp_port, message(attachments=bad), sender=sender)
    gw.wait_outbox(4)
    gw.wait_idle()
    reasons = [e["reason"] for e in gw.log_events() if e.get("event") == "no auto-reply"]
    assert reasons == ["sender is not a person's address"] * 4, reasons
    assert sink.messages == []
