"""Hostile mail through milter mode: a real Postfix with ``smtpd_milters``
pointing at the gateway, relaying to a raw SMTP sink.

In milter mode the gateway does not read the message off the wire: Postfix
hands it the header fields one by one (as Postfix split them) and the body
in chunks, and the gateway answers with header and body changes that
Postfix applies.  Every rule of the SMTP path must hold here too, and the
shapes that matter most are those of the top-level header block, which the
gateway rebuilds from what Postfix passed.
"""
from __future__ import annotations

import itertools
import smtplib
from collections.abc import Iterator

import pytest

from tests.hostile_messages import (
    CRLF,
    DOCM_TYPE,
    RawSink,
    b64,
    b64head,
    dangers,
    envelope_message,
    multipart,
    ooxml,
    part,
    pe,
    quarantined,
    readable_text,
    text,
    uuencode,
    zip_of,
)
from tests.servers.postfix import PostfixInstance
from tests.test_milter import MilterGateway

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, raw_sink: RawSink) -> Iterator[tuple[MilterGateway,
                                                                                             PostfixInstance]]:
    gw = MilterGateway(tmp_path_factory.mktemp("milter-hostile"), threshold=20_000)
    gw.start()
    mta = PostfixInstance(relay_port=raw_sink.port, main_cf={
        "smtpd_milters": f"inet:127.0.0.1:{gw.milter_port}",
        "milter_default_action": "tempfail",
        "milter_protocol": "6",
        "milter_connect_timeout": "5s",
        "milter_command_timeout": "30s",
        "milter_content_timeout": "120s",
    })
    try:
        mta.start()
        yield gw, mta
    finally:
        mta.stop()
        gw.stop()


def _top(tag: str, root: bytes, extra: list[str] = ()) -> tuple[str, bytes]:
    """A whole message for a recipient of its own: (recipient, bytes)."""
    rcpt = f"m-{tag}-{next(_ids)}@contact.example"
    return rcpt, envelope_message(root, f"c-{tag}@example.net", rcpt, f"milter hostile {tag}", list(extra))


def _shape(shape: str, tag: str, readable: str) -> tuple[bytes, list[bytes], bool]:
    """(root entity, hostile files, whether the readable text must arrive)."""
    exe = pe(tag)
    body = text(readable)
    exe_part = part("application/octet-stream", exe, name="setup.exe")
    if shape == "exe-attached":
        return multipart([body, exe_part]), [exe], True
    if shape == "exe-is-the-message":
        return exe_part, [exe], False
    if shape == "exe-in-zip":
        z = zip_of([("readme.txt", b"hi " + tag.encode()), ("setup.exe", exe)])
        return multipart([body, part("application/zip", z, name="docs.zip")]), [z], True
    if shape == "two-top-content-types":
        # Postfix passes both fields; one reading sees a text body, the other
        # a multipart with a program in it.
        return b"Content-Type: text/plain; charset=utf-8\r\n" + multipart([body, exe_part]), [exe], False
    if shape == "blank-before-colon-top":
        # "Content-Type :" with a blank: a header field to a lenient reader,
        # the end of the header block to Python's parser.
        root = multipart([body, exe_part])
        return root.replace(b"Content-Type:", b"Content-Type :", 1), [exe], False
    if shape == "form-feed-delimiter":
        inner = (b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n--X\r\n' + text("notes") + b"\r\n--X\x0c\r\n"
                 + exe_part + b"\r\n--X--")
        return multipart([body, inner], boundary="top"), [exe], True
    if shape == "uuencoded-in-text":
        return part("text/plain; charset=us-ascii", (readable + "\r\n\r\n").encode() + uuencode(exe, "setup.exe"),
                    cte="7bit"), [exe], True
    if shape == "docm-as-docx":
        doc = ooxml("word", tag, macros=True)
        return multipart([body, part(DOCM_TYPE, doc, name="report.docx")]), [doc], True
    if shape == "exe-top-base64-without-headers":
        # The whole body is the program's base64, with only the top-level
        # fields to say what it is.
        return (b"Content-Type: application/octet-stream; name=setup.exe\r\nContent-Transfer-Encoding: base64\r\n"
                b"Content-Disposition: attachment; filename=setup.exe\r\n\r\n" + b64(exe)), [exe], False
    raise AssertionError(shape)


SHAPES = ["exe-attached", "exe-is-the-message", "exe-in-zip", "two-top-content-types", "blank-before-colon-top",
          "form-feed-delimiter", "uuencoded-in-text", "docm-as-docx", "exe-top-base64-without-headers"]


@pytest.mark.parametrize("shape", SHAPES)
def test_hostile_mail_through_the_milter_hands_no_program_to_the_agent(relay: tuple[MilterGateway, PostfixInstance],
                                                                        raw_sink: RawSink, shape: str) -> None:
    gw, mta = relay
    tag = f"{shape}-{next(_ids)}"
    readable = f"Readable text {tag}: please look at my claim."
    root, files, keeps_text = _shape(shape, tag, readable)
    rcpt, raw = _top(tag, root)
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=60) as s:
        s.sendmail(f"c-{tag}@example.net", [rcpt], raw)
    [tx] = raw_sink.wait_for(rcpt, timeout=60)
    problems = dangers(tx.data)
    for f in files:
        if b64head(f) in tx.wire or f[-40:] in tx.wire:
            problems.append(f"the hostile file ({len(f)} bytes) is on the wire")
        if not quarantined(gw.objects, f):
            problems.append(f"the hostile file ({len(f)} bytes) is not in quarantine")
    if keeps_text and readable not in readable_text(tx.data):
        problems.append("the readable text did not arrive")
    assert problems == [], f"{shape}:\n  " + "\n  ".join(problems) + "\n" + tx.data[:3000].decode(errors="replace")
    assert CRLF + b"X-Attachment-Offload:" in CRLF + tx.data
