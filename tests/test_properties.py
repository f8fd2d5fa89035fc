"""Property: whatever MIME arrives, nothing escapes and nothing is lost.

Hypothesis builds random MIME trees (nested multiparts, every transfer
encoding, odd charsets, non-ASCII-compatible ones among them (UTF-16,
UTF-32, EBCDIC), CR, LF and NUL inside encoded data, RFC 2231 and hostile
filenames) and damages some (missing close delimiters, wrong boundaries,
headers without a body separator, bare CR/LF).  Each goes through a real
gateway over SMTP with a tiny threshold to a raw SMTP next hop; each must
come out there, never held, CRLF-clean on the wire without NUL, and every
original part's bytes must be in the output, in the store (offloaded) or
in quarantine (refused, or inside a part that was not examined).
"""
from __future__ import annotations

import base64
import itertools
import os
import quopri
import re
import smtplib
import time
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.harness import GatewayProcess, strip_trace, to_wire
from tests.hostile_messages import RawSink, Transaction
from tests.messages import deep_leaves, leaves, parse, payload, pdf_bytes, png_bytes, sha256, stored_objects
from tests.test_corpus import _EMPTY_NOTICE, Store, _accounted, _in_quarantine, _norm

_counter = itertools.count()

CTYPES = ["text/plain", "text/html", "application/pdf", "image/png", "application/octet-stream",
          "message/rfc822", "text/csv", "application/x-unknown"]
CHARSETS = ["us-ascii", "utf-8", "iso-8859-1", "koi8-r", "x-no-such-charset", "", "utf-16", "utf-16-le",
            "utf-32", "cp500"]
# Not ASCII-compatible: CR, LF and the notice's ASCII are other bytes there.
# UTF-16 and UTF-32 text always holds NUL bytes, so it travels encoded (a
# NUL in DATA is refused); EBCDIC has none.
WIDE = {"utf-16", "utf-16-le", "utf-32"}
NAMES = ["a.pdf", "Rechnung März.pdf", "../../etc/passwd", "x\r\ny.txt", "A" * 200, "", "évènement.png",
         "file name with spaces.doc", "a\r\n.\r\nMAIL FROM:<x@evil>\x00.exe", "invoice\u202efdp.exe",
         "x{size}{filename}.pdf", "http://evil.example/x.pdf", "a\x00b.pdf", "..%2f..%2fx.pdf"]
# Bytes that end or smuggle SMTP data when decoded carelessly.
HOSTILE_CHUNKS = [b"\r.\r\n", b"\n.\n", b"\r\n.\r\n", b"\x00", b"\r", b"\n", b"MAIL FROM:<x@evil>\r\n", b"."]


def _encode(body: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(body)
    if cte == "quoted-printable":
        return quopri.encodestring(body)
    return body


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(CTYPES))
    cte = draw(st.sampled_from(["base64", "quoted-printable", "7bit", "8bit", ""]))
    charset = draw(st.sampled_from(CHARSETS))
    chars = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=300)
    if ctype.startswith("text/") and charset in WIDE:
        cte = draw(st.sampled_from(["base64", "quoted-printable"]))
        body = draw(chars).encode(charset)
    elif ctype.startswith("text/") and charset == "cp500":
        body = draw(chars).encode("cp500", "replace")
    elif cte in ("base64", "quoted-printable"):
        body = draw(st.one_of(st.binary(min_size=0, max_size=400),
                              st.lists(st.one_of(st.sampled_from(HOSTILE_CHUNKS), st.binary(max_size=20)),
                                       max_size=20).map(b"".join)))
    else:
        body = draw(chars).encode()
    if ctype in ("application/pdf", "image/png") and draw(st.booleans()):
        # A real file of its type, so some parts are allowed and offloaded.
        body = (pdf_bytes if ctype == "application/pdf" else png_bytes)(draw(st.integers(400, 900)))
        cte = "base64"
    if ctype == "message/rfc822":
        # Sent as it is (7bit or 8bit), so text: a NUL in DATA is refused.
        body = b"Subject: inner\n\n" + draw(chars).encode()
        cte = draw(st.sampled_from(["7bit", "8bit", ""]))
    head = f"Content-Type: {ctype}"
    if ctype.startswith("text/") and charset:
        head += f"; charset={charset}"
    name = draw(st.sampled_from(NAMES))
    if name and draw(st.booleans()):
        head += "\nContent-Disposition: attachment; filename*=UTF-8''" + \
            "".join(c if c.isalnum() else "%%%02X" % b for c in name for b in c.encode())[:300]
    elif name and "\x00" not in name:
        head += f'\nContent-Disposition: attachment; filename="{name}"'
    if cte:
        head += f"\nContent-Transfer-Encoding: {cte}"
    return head.encode("utf-8", "replace") + b"\n\n" + _encode(body, cte)


def multipart(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        kind = draw(st.sampled_from(["mixed", "alternative", "related", "digest"]))
        boundary = f"b{next(_counter)}_" + draw(st.sampled_from(["x", "=_Part_1", "a b", "----"]))
        parts = draw(st.lists(children, min_size=0, max_size=4))
        damage = draw(st.sampled_from(["none", "none", "no_close", "wrong_boundary", "no_boundary_param"]))
        head = f'Content-Type: multipart/{kind}; boundary="{boundary}"'
        if damage == "no_boundary_param":
            head = f"Content-Type: multipart/{kind}"
        sep = boundary if damage != "wrong_boundary" else boundary + "X"
        out = head.encode() + b"\n\npreamble\n"
        for p in parts:
            out += f"--{sep}\n".encode() + p + b"\n"
        if damage != "no_close":
            out += f"--{sep}--\nepilogue\n".encode()
        return out

    return build()


@st.composite
def body_leaf(draw: st.DrawFn) -> bytes:
    """The text or HTML body a notice or link is appended to: any charset,
    any transfer encoding, and encoded data that decodes to CR, LF, NUL and
    lone dots."""
    ctype = draw(st.sampled_from(["text/plain", "text/html"]))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(["base64", "quoted-printable", "7bit", "8bit", ""]))
    text = draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), min_size=1, max_size=200))
    if charset in WIDE:
        cte = draw(st.sampled_from(["base64", "quoted-printable"]))
        body = text.encode(charset)
    elif charset == "cp500":
        body = text.encode("cp500", "replace")
    else:
        body = text.encode()
    if cte in ("base64", "quoted-printable"):
        body += b"".join(draw(st.lists(st.sampled_from(HOSTILE_CHUNKS), max_size=6)))
    head = f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else "")
    if cte:
        head += f"\nContent-Transfer-Encoding: {cte}"
    return head.encode() + b"\n\n" + _encode(body, cte)


@st.composite
def with_body(draw: st.DrawFn) -> bytes:
    """A body and attachments: the shape whose body the gateway rewrites
    (the tiny threshold offloads most attachments; some are refused)."""
    boundary = f"w{next(_counter)}"
    parts = [draw(body_leaf())] + draw(st.lists(leaf(), min_size=1, max_size=3))
    out = f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
    for p in parts:
        out += f"--{boundary}\n".encode() + p + b"\n"
    return out + f"--{boundary}--\n".encode()


messages = st.one_of(st.recursive(leaf(), multipart, max_leaves=8), with_body())


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, raw_sink: RawSink) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path_factory.mktemp("prop"), threshold=64, next_hop=f"smtp://127.0.0.1:{raw_sink.port}",
                        route={"tls": "none"}) as g:
        yield g


def _wire_clean(tx: Transaction) -> list[str]:
    """What is wrong with the bytes the next hop got."""
    rest = tx.wire.replace(b"\r\n", b"")
    return [what for what, bad in (("NUL", b"\x00" in tx.wire), ("bare CR", b"\r" in rest),
                                   ("bare LF", b"\n" in rest)) if bad]


# PROPERTY_EXAMPLES raises the count for a longer hunt than CI's.
# Derandomised: CI runs the same examples every time (a random draw that
# fails one run in many costs a whole submission); PROPERTY_SEED varies them
# for a hunt by hand.
@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "60")), deadline=None,
          derandomize="PROPERTY_SEED" not in os.environ,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=messages, damage=st.sampled_from(["none", "bare_cr", "no_separator"]))
# Found by CI: headers run into the inner message's, leaving an empty
# message/rfc822 attachment (replaced by the empty-file notice).
@example(body=b'Content-Type: message/rfc822\nContent-Disposition: attachment; filename="a.pdf"\n'
              b'Content-Transfer-Encoding: 7bit\n\nSubject: inner\n\n', damage="no_separator")
def test_random_mime_is_forwarded_and_nothing_is_lost(gw: GatewayProcess, raw_sink: RawSink, body: bytes,
                                                      damage: str) -> None:
    i = next(_counter)
    raw = b"From: prop@example.net\nTo: support@contact.example\nSubject: property " + str(i).encode() + \
        b"\nMIME-Version: 1.0\n" + body
    if damage == "bare_cr":
        raw = raw.replace(b"\n", b"\r", 3)
    elif damage == "no_separator":
        raw = raw.replace(b"\n\n", b"\n", 1)
    wire = to_wire(raw)
    wire = wire if wire.endswith(b"\r\n") else wire + b"\r\n"
    rcpt = f"p{i}@contact.example"
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
        assert not s.sendmail("prop@example.net", [rcpt], wire)
    deadline = time.monotonic() + 30
    got: list[Transaction] = []
    while time.monotonic() < deadline and not got:
        got = raw_sink.for_rcpt(rcpt)
        held = list((gw.spool / "hold").glob("*"))
        assert not held, f"held: {[(h / 'state.json').read_text() for h in held]}"
        time.sleep(0.02)
    assert len(got) == 1, "not forwarded"
    [tx] = got
    assert _wire_clean(tx) == [], (wire[:3000], tx.wire[:3000])
    out = tx.data
    objects = stored_objects(gw.objects)
    store = Store(list(objects.values()))
    quarantine = [v for k, v in objects.items() if k.startswith("quarantine/")]
    forwarded = parse(strip_trace(out))
    out_payloads = [payload(p) for p in deep_leaves(forwarded)]
    # An empty attachment is replaced by its notice (content policies); a
    # refused one is in the store's quarantine, which Store includes; a part
    # the gateway could not examine may be kept inside a quarantined object.
    notices = sum(p.count(_EMPTY_NOTICE) for p in out_payloads)
    out_texts = [_text(p) for p in deep_leaves(forwarded) if p.get_content_maintype() == "text"]
    # A message whose structure could not be examined is quarantined whole.
    whole = _norm(wire).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if any(_norm(q).replace(b"\r", b"\n") == whole for q in quarantine):
        return
    missing = [f"{p.get_content_type()} {len(payload(p))}" for p in deep_leaves(parse(wire))
               if not _accounted(payload(p), p.get_content_type(), out_payloads, store, notices)
               and not _in_quarantine(payload(p), _encoded(p), quarantine)
               and not _text_kept(p, out_texts)]
    assert missing == [], (wire[:3000], out[:3000])
    errors = [e for e in gw.log_events() if e.get("level") == "error"]
    assert errors == []


def _text(part: Any) -> str:
    """A text leaf as characters, without control characters and white
    space: what a reader sees, whatever the charset and line breaks."""
    charset = part.get_content_charset() or "us-ascii"
    try:
        s = payload(part).decode(charset, "replace")
    except LookupError:
        s = payload(part).decode("utf-8", "replace")
    return "".join(c for c in s if not c.isspace() and unicodedata.category(c) != "Cc")


def _text_kept(part: Any, out_texts: list[str]) -> bool:
    """A body in a charset that is not ASCII-compatible, with the notice or
    link lines appended in that charset (the byte comparisons of
    ``_accounted`` cannot see past them): its text is still there."""
    if part.get_content_maintype() != "text" or (part.get_content_charset() or "") not in WIDE | {"cp500"}:
        return False
    original = _text(part)
    return any(original in t for t in out_texts)


def _encoded(part: object) -> bytes:
    """A leaf's body as it was sent (still transfer-encoded)."""
    raw = part.get_payload()  # type: ignore[attr-defined]
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def test_the_property_run_offloaded_and_forwarded(gw: GatewayProcess, raw_sink: RawSink) -> None:
    """The examples above really went through the offload path (runs after
    them, on the same gateway)."""
    forwarded = [t.data for t in raw_sink.transactions if t.mail_from == "prop@example.net"]
    assert len(forwarded) >= 60
    # How many parts go over the tiny threshold depends on what Hypothesis
    # drew (8 to 17 of 60 messages seen in fresh checkouts), so no fixed
    # count: some were offloaded, and every stored object is one the trace
    # headers of the forwarded messages account for.
    said = sum(int(m) for data in forwarded for m in re.findall(rb"X-Attachment-Offload: offloaded=(\d+)", data))
    # Refused parts go to quarantine/ (issue 5), not counted as offloaded.
    offloaded = [k for k in stored_objects(gw.objects) if k.startswith("uploads/")]
    assert 1 <= len(offloaded) <= said
