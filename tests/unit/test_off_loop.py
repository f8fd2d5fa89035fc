"""Work whose cost the sender chooses is never done on the event loop, and
is bounded: a small ZIP's examination (it inflates megabytes from a few
kilobytes) and the unpacking of an Outlook TNEF (tnefparse loops on the
counts the blob declares).  Each froze every SMTP session and link click of
a gateway process: ten 48 KiB ZIPs for 7 s, a 364-byte message with a TNEF
for hours."""
from __future__ import annotations

import binascii
import io
import struct
import threading
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import policies
from gateway.mime import container, tnef
from tests.unit import test_pipeline

DOCX_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
TNEF_SIGNATURE = 0x223E9F78


def docx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", f'<Types><Override PartName="/word/document.xml" ContentType="{DOCX_MAIN}"/>'
                                          '</Types>')
        z.writestr("_rels/.rels", "<Relationships/>")
        z.writestr("word/document.xml", "<document/>")
    return out.getvalue()


def tnef_record(level: int, name: int, kind: int, data: bytes) -> bytes:
    return struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


# A TNEF whose message property list declares 2**32 - 1 properties in four
# bytes: tnefparse loops that many times.
ENDLESS_TNEF = struct.pack("<IH", TNEF_SIGNATURE, 0) + tnef_record(1, 0x9003, 6, struct.pack("<I", 0xFFFFFFFF))
# One file, as Outlook writes it (rendering data, title, data).
GOOD_TNEF = struct.pack("<IH", TNEF_SIGNATURE, 0) + tnef_record(2, 0x9002, 6, bytes(14)) + \
    tnef_record(2, 0x8010, 1, b"hello.txt\x00") + tnef_record(2, 0x800F, 6, b"hello world\n")


def message(attachments: list[tuple[bytes, str, str]], text: str = "Hello.\n") -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "customer@example.net", "support@contact.example", "files"
    m.set_content(text)
    for data, ctype, name in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, **kw: Any) -> Any:
    (tmp_path / "eml").mkdir()
    (tmp_path / "eml" / "m.eml").write_bytes(data)
    monkeypatch.setattr(test_pipeline, "EML", tmp_path / "eml")
    return test_pipeline.Gateway(tmp_path, **kw).run("m.eml")


def inflating_docx() -> bytes:
    """A small DOCX (a few KiB) whose relationship part inflates to 1 MiB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", f'<Types><Override PartName="/word/document.xml" ContentType="{DOCX_MAIN}"/>'
                                          '</Types>')
        z.writestr("_rels/.rels", "<Relationships>" + " " * ((1 << 20) - 40) + "</Relationships>")
        z.writestr("word/document.xml", "<document/>")
    return out.getvalue()


def test_a_small_archive_that_inflates_is_examined_in_a_thread_not_on_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ZIP whose entries to read declare more than LOOP_INFLATED goes to a
    worker thread, however small; an ordinary small DOCX is read on the loop
    (a hop to a thread per DOCX cost the 200-attachment message 30%)."""
    on_loop: list[tuple[int, bool]] = []
    examine_zip = container.examine_zip

    def spy(f: Any, detected: str = "application/zip", cheap: int | None = None) -> str:
        f.seek(0, 2)
        size = f.tell()
        try:
            return examine_zip(f, detected, cheap)
        finally:
            # asyncio.run's loop is on the main thread; a call that raised
            # Costly there counts as not done on the loop.
            on_loop.append((size, threading.current_thread() is threading.main_thread()))

    monkeypatch.setattr(container, "examine_zip", spy)
    big, small = inflating_docx(), docx()
    assert len(big) < 8192 and len(small) < 8192
    uu = b"begin 644 inner.docx\n" + b"".join(binascii.b2a_uu(small[i:i + 45]) for i in range(0, len(small), 45)) \
        + b"`\n\nend\n"
    job, _ = run(tmp_path, monkeypatch, message([(big, "application/octet-stream", "big.docx"),
                                                  (small, "application/octet-stream", "small.docx")],
                                                 text=uu.decode()))
    # The inflating one: tried on the loop, stopped before reading (Costly),
    # then read in a thread; the small one on the loop; the uuencoded one
    # in a thread, as every uuencoded archive is.
    assert on_loop == [(len(big), True), (len(big), False), (len(small), True), (len(small), False)], on_loop
    assert [o.facts.detected_type for o in job.outcomes if o.facts.filename in ("big.docx", "small.docx")] == [
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"] * 2


def test_a_tnef_that_makes_the_parser_loop_stays_packed_and_is_refused(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(run(
        tmp_path, monkeypatch, message([(ENDLESS_TNEF, "application/ms-tnef", "winmail.dat")]),
        worker={"max_cpu_seconds": 2})), daemon=True)
    worker.start()
    worker.join(120)  # the child gets the message's 2 s, killed at 12 s; tnefparse alone loops for hours
    assert done, "the TNEF was still being unpacked after 120 s"
    job, _ = done[0]
    [o] = job.outcomes
    assert o.part.filename == "winmail.dat" and o.decision.action is policies.Action.REFUSE
    assert not job.unpacked


def test_a_tnef_is_still_unpacked_into_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, out = run(tmp_path, monkeypatch, message([(GOOD_TNEF, "application/ms-tnef", "winmail.dat")]))
    assert job.unpacked
    assert [(p.get_filename(), p.get_payload(decode=True)) for p in out.walk() if p.get_filename()] == [
        ("hello.txt", b"hello world\n")]


def test_the_unpacking_child_is_limited_in_cpu() -> None:
    with pytest.raises(tnef.TnefError, match="CPU"):
        tnef.unpack_isolated(ENDLESS_TNEF, seconds=1)
