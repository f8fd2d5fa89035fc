"""Disarm end to end: active PDFs and Office files sent through real SMTP
reach the agent cleaned, the originals and the embedded programs in
quarantine, the notice naming what was removed.  Clean files pass byte for
byte.  What arrives is checked by parsing it (pikepdf, qpdf --check,
zipfile and XML), not by string search alone."""
from __future__ import annotations

import hashlib
import io
import urllib.parse
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import active_documents as docs
from tests.harness import GatewayProcess
from tests.messages import leaves, message, parse, payload, send, stored_objects
from tests.test_content_policies import docx_bytes
from tests.test_disarm import dangling_ids, external_relationships, package, pdf_constructs, qpdf_check

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CORPUS_PDF = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "mimekit" / "messages"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    with GatewayProcess(tmp_path_factory.mktemp("disarm"), sections={"gateway": {"processes": 1}}) as g:
        yield g


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deliver(gw: GatewayProcess, data: bytes, ctype: str, name: str) -> tuple[bytes, dict[str, bytes], bytes]:
    """Send one file; return what arrived as that file, the quarantine, and
    the readable text."""
    before = len(gw.outbox_messages())
    send(gw.smtp_port, message("Please see the attached document.\n",
                               attachments=[(data, ctype, name)], Subject=f"doc {name}"))
    out = gw.wait_outbox(before + 1)[before]
    cleaned = b"was cleaned" in out
    assert (b" disarmed=1" in out.split(b"\r\n\r\n", 1)[0]) == cleaned  # the trace header says so
    parts = leaves(parse(out))
    text = b"\n".join(payload(p) for p in parts if p.get_content_maintype() == "text")
    files = [payload(p) for p in parts if p.get_filename()]
    [arrived] = files
    quarantine = {k: v for k, v in stored_objects(gw.objects).items() if k.startswith("quarantine/")}
    return arrived, quarantine, text


@pytest.mark.parametrize("build,removed", [
    (docs.pdf_open_action_js, b"scripts"),
    (docs.pdf_launch, b"program launch"),
    (docs.pdf_embedded_exe, b"1 embedded file"),
    (docs.pdf_form_js, b"scripts"),
], ids=["open-action-js", "launch", "embedded-exe", "form-field-js"])
def test_an_active_pdf_arrives_cleaned(gw: GatewayProcess, tmp_path: Path, build: Callable[[], bytes],
                                       removed: bytes) -> None:
    original = build()
    arrived, quarantine, text = deliver(gw, original, PDF, "invoice.pdf")
    assert arrived != original
    qpdf_check(arrived, tmp_path)
    assert pdf_constructs(arrived) == set()
    assert sha(original) in {sha(v) for v in quarantine.values()}  # the original, for an administrator
    assert b'"invoice.pdf" was cleaned' in text and removed in text
    # By the original (each built PDF has its own random /ID): two different
    # originals can clean to the same bytes.
    events = [e for e in gw.audit() if e["EventType"] == "FileDisarmed" and e["OriginalFileSHA256"] == sha(original)]
    assert len(events) == 1 and events[0]["TargetFileSHA256"] == sha(arrived)


def test_the_program_embedded_in_a_pdf_is_quarantined(gw: GatewayProcess) -> None:
    _, quarantine, text = deliver(gw, docs.pdf_embedded_exe(), PDF, "statement.pdf")
    assert docs.EXE in quarantine.values()
    assert b'"setup.exe" was removed' in text


@pytest.mark.parametrize("build,ctype,name,check", [
    (docs.docx_remote_template, DOCX, "contract.docx", "external"),
    (docs.docx_external_ole, DOCX, "form.docx", "external"),
    (docs.docx_dde, DOCX, "letter.docx", "dde"),
    (docs.docm_macro, "application/vnd.ms-word.document.macroEnabled.12", "claim.docm", "macro"),
    (docs.xlsm_macro, "application/vnd.ms-excel.sheet.macroEnabled.12", "figures.xlsm", "macro"),
], ids=["docx-remote-template", "docx-external-ole", "docx-ddeauto", "docm-macro", "xlsm-macro"])
def test_an_active_office_file_arrives_cleaned(gw: GatewayProcess, build: Callable[[], bytes], ctype: str,
                                               name: str, check: str) -> None:
    original = build()
    arrived, quarantine, text = deliver(gw, original, ctype, name)
    parts = package(arrived)  # re-reads, CRC-tested
    assert not any(n.lower().endswith("vbaproject.bin") for n in parts)
    assert external_relationships(parts) == []
    assert not any(b"DDE" in v.upper() for n, v in parts.items() if n.endswith(".xml") and "instr" in v.decode(
        "utf-8", "replace").lower())
    assert b"macroEnabled" not in parts["[Content_Types].xml"]
    assert sha(original) in {sha(v) for v in quarantine.values()}
    assert b"was cleaned" in text
    if check == "macro":
        # The name the agent sees says what the file now is.
        stem = name.rsplit(".", 1)[0]
        assert f'"{stem}.{"docx" if name.endswith("docm") else "xlsx"}" was cleaned'.encode() in text


def test_links_that_open_files_are_taken_out_of_an_office_document(gw: GatewayProcess) -> None:
    """Hyperlinks and HYPERLINK fields to a share, a file or search-ms: go
    (the words stay, unlinked); the web link stays."""
    original = docs.docx_file_links()
    arrived, quarantine, text = deliver(gw, original, DOCX, "statement.docx")
    parts = package(arrived)
    assert not [n for n, v in parts.items() if docs.SHARE.encode() in v]
    assert b"https://example.com/pay" in parts["word/_rels/document.xml.rels"]
    body = parts["word/document.xml"]
    for words in (b"Open the invoice", b"Find your documents", b"Your statement", b"Your receipt", b"Pay online"):
        assert words in body
    assert b"HYPERLINK" not in body and b"QUOTE" not in body  # the field instructions are emptied
    assert dangling_ids(parts) == []
    assert sha(original) in {sha(v) for v in quarantine.values()}
    assert b'"statement.docx" was cleaned' in text and b"links that open other files" in text


def test_a_pdf_thread_into_a_file_on_a_share_is_taken_out(gw: GatewayProcess, tmp_path: Path) -> None:
    original = docs.pdf_thread_to_share()
    arrived, quarantine, text = deliver(gw, original, PDF, "thread.pdf")
    qpdf_check(arrived, tmp_path)
    assert docs.SHARE.encode() not in arrived and b"/Thread" not in arrived
    assert sha(original) in {sha(v) for v in quarantine.values()}
    assert b'"thread.pdf" was cleaned' in text and b"links that open other files" in text


def test_an_active_pdf_inside_a_pdf_is_not_linked_unchecked(gw: GatewayProcess) -> None:
    """The file taken out of a document is a PDF that runs a script: it is
    not disarmed on its own, so it must never be stored and linked as it is."""
    inner = docs.pdf_open_action_js()
    before = set(stored_objects(gw.objects))
    _, quarantine, text = deliver(gw, docs.pdf_embedded_pdf(inner), PDF, "portfolio.pdf")
    linked = [v for k, v in stored_objects(gw.objects).items() if k.startswith("uploads/") and k not in before]
    assert not [v for v in linked if v.startswith(b"%PDF") and pdf_constructs(v)]
    assert inner in quarantine.values()
    assert b'"terms.pdf" was removed' in text


def test_a_clean_pdf_inside_a_pdf_is_linked(gw: GatewayProcess) -> None:
    """Checked in turn and found clean, the file taken out is stored and linked."""
    inner = docs.clean_pdf(pages=2)
    before = set(stored_objects(gw.objects))
    _, _, text = deliver(gw, docs.pdf_embedded_pdf(inner, "annex.pdf"), PDF, "bundle.pdf")
    linked = [v for k, v in stored_objects(gw.objects).items() if k.startswith("uploads/") and k not in before]
    assert inner in linked
    assert b'"annex.pdf" was removed' not in text


def test_clean_documents_pass_byte_for_byte(gw: GatewayProcess) -> None:
    for data, ctype, name in [(docs.clean_pdf(pages=2, payload=5000), PDF, "clean.pdf"),
                              (docx_bytes(), DOCX, "clean.docx"),
                              (docs.clean_docx(), DOCX, "plain.docx")]:
        arrived, _, text = deliver(gw, data, ctype, name)
        assert arrived == data and b"was cleaned" not in text


def test_a_pdf_that_cannot_be_read_is_not_examined_and_refused(gw: GatewayProcess) -> None:
    broken = b"%PDF-1.7\n" + bytes(range(256)) * 20  # a PDF header, then nothing a reader can open
    before = len(gw.outbox_messages())
    send(gw.smtp_port, message("broken\n", attachments=[(broken, PDF, "broken.pdf")]))
    out = gw.wait_outbox(before + 1)[before]
    assert not any(payload(p) == broken for p in leaves(parse(out)))
    assert b"could not be checked for active content" in out
    assert broken in stored_objects(gw.objects).values()


def test_a_route_can_refuse_active_pdfs_instead(make_gateway: Callable[..., GatewayProcess]) -> None:
    g = make_gateway(route={"disarm": {"pdf": "refuse"}})
    original = docs.pdf_open_action_js()
    send(g.smtp_port, message("x\n", attachments=[(original, PDF, "invoice.pdf")]))
    [out] = g.wait_outbox()
    assert not any(payload(p) == original or payload(p).startswith(b"%PDF") for p in leaves(parse(out)))
    assert b"carries active content" in out
    assert original in stored_objects(g.objects).values()


def test_an_offloaded_active_pdf_is_stored_cleaned(make_gateway: Callable[..., GatewayProcess]) -> None:
    g = make_gateway(threshold=500)  # the cleaned file too is over it
    original = docs.pdf_open_action_js()
    send(g.smtp_port, message("x\n", attachments=[(original, PDF, "invoice.pdf")]))
    [out] = g.wait_outbox()
    objects = stored_objects(g.objects)
    [stored] = [v for k, v in objects.items() if k.startswith("uploads/")]
    assert pdf_constructs(stored) == set() and original in objects.values()
    assert b"after it was cleaned" in out


def test_office_zip_structure_survives(gw: GatewayProcess) -> None:
    arrived, _, _ = deliver(gw, docs.docx_remote_template(), DOCX, "again.docx")
    with zipfile.ZipFile(io.BytesIO(arrived)) as z:
        assert "word/document.xml" in z.namelist()


def test_a_cleaned_file_with_a_long_non_ascii_name_keeps_every_line_within_998(gw: GatewayProcess) -> None:
    """The gateway writes the Content-Disposition of a cleaned file itself:
    a name of 200 characters of four UTF-8 bytes each, percent-encoded,
    was one header line of 2,400 characters (RFC 5322: at most 998; a
    next hop may refuse the message, and its DSN quotes the line)."""
    name = "\U0001F4B6" * 196 + ".pdf"
    before = len(gw.outbox_messages())
    send(gw.smtp_port, message("see attached\n", attachments=[(docs.pdf_open_action_js(), PDF, name)],
                               Subject="long name"))
    out = gw.wait_outbox(before + 1)[before]
    assert b"was cleaned" in out
    longest = max(out.split(b"\r\n"), key=len)
    assert len(longest) <= 998, longest[:120]
    [cleaned] = [p for p in leaves(parse(out)) if p.get_filename()]
    encoded = str(cleaned["Content-Disposition"]).split("filename*=UTF-8''", 1)[1]
    shown = urllib.parse.unquote(encoded)  # shortened, still the name and its extension
    assert shown.startswith("\U0001F4B6" * 20) and shown.endswith(".pdf") and len(shown) < len(name)
