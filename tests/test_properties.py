"""Property: whatever MIME arrives, nothing escapes and nothing is lost.

Hypothesis builds random MIME trees (nested multiparts, every transfer
encoding, odd charsets, RFC 2231 and hostile filenames) and damages some
(missing close delimiters, wrong boundaries, headers without a body
separator, bare CR/LF).  Each goes through a real gateway over SMTP with a
tiny threshold; each must come out at the next hop (or be held with a
reason), and every original part's bytes must be in the output or in the
store.
"""
from __future__ import annotations

import base64
import itertools
import os
import quopri
import re
import smtplib
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.harness import GatewayProcess, strip_trace, to_wire
from tests.messages import leaves, parse, payload, sha256, stored_objects
from tests.test_corpus import _EMPTY_NOTICE, Store, _accounted

_counter = itertools.count()

CTYPES = ["text/plain", "text/html", "application/pdf", "image/png", "application/octet-stream",
          "message/rfc822", "text/csv", "application/x-unknown"]
CHARSETS = ["us-ascii", "utf-8", "iso-8859-1", "koi8-r", "x-no-such-charset", ""]
NAMES = ["a.pdf", "Rechnung März.pdf", "../../etc/passwd", "x\r\ny.txt", "A" * 200, "", "évènement.png",
         "file name with spaces.doc"]


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
    body = draw(st.binary(min_size=0, max_size=400)) if cte in ("base64", "quoted-printable") else \
        draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=300)).encode()
    if ctype == "message/rfc822":
        body = b"Subject: inner\n\n" + body
        cte = draw(st.sampled_from(["7bit", "8bit", ""]))
    head = f"Content-Type: {ctype}"
    charset = draw(st.sampled_from(CHARSETS))
    if ctype.startswith("text/") and charset:
        head += f"; charset={charset}"
    name = draw(st.sampled_from(NAMES))
    if name and draw(st.booleans()):
        head += "\nContent-Disposition: attachment; filename*=UTF-8''" + \
            "".join(c if c.isalnum() else "%%%02X" % b for c in name for b in c.encode())[:300]
    elif name:
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


messages = st.recursive(leaf(), multipart, max_leaves=8)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path_factory.mktemp("prop"), threshold=64) as g:
        yield g


# PROPERTY_EXAMPLES raises the count for a longer hunt than CI's.
@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(body=messages, damage=st.sampled_from(["none", "bare_cr", "no_separator"]))
# Found by CI: headers run into the inner message's, leaving an empty
# message/rfc822 attachment (replaced by the empty-file notice).
@example(body=b'Content-Type: message/rfc822\nContent-Disposition: attachment; filename="a.pdf"\n'
              b'Content-Transfer-Encoding: 7bit\n\nSubject: inner\n\n', damage="no_separator")
def test_random_mime_is_forwarded_and_nothing_is_lost(gw: GatewayProcess, body: bytes, damage: str) -> None:
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
    out = None
    while time.monotonic() < deadline and out is None:
        for p in (gw.outbox / "new").glob("*") if (gw.outbox / "new").exists() else []:
            data = p.read_bytes()
            if f"X-Envelope-To: {rcpt}\r\n".encode() in data[:300]:
                out = data.split(b"\r\n", 2)[2]
        held = list((gw.spool / "hold").glob("*"))
        assert not held, f"held: {[(h / 'state.json').read_text() for h in held]}"
        time.sleep(0.02)
    assert out is not None, "not forwarded"
    store = Store(list(stored_objects(gw.objects).values()))
    forwarded = parse(strip_trace(out))
    out_payloads = [payload(p) for p in leaves(forwarded)]
    # An empty attachment is replaced by its notice (content policies); a
    # refused one is in the store's quarantine, which Store includes.
    notices = sum(p.count(_EMPTY_NOTICE) for p in out_payloads)
    missing = [f"{p.get_content_type()} {len(payload(p))}" for p in leaves(parse(wire))
               if not _accounted(payload(p), p.get_content_type(), out_payloads, store, notices)]
    assert missing == []
    errors = [e for e in gw.log_events() if e.get("level") == "error"]
    assert errors == []


def test_the_property_run_offloaded_and_forwarded(gw: GatewayProcess) -> None:
    """The examples above really went through the offload path (runs after
    them, on the same gateway)."""
    forwarded = [p.read_bytes() for p in (gw.outbox / "new").glob("*")]
    assert len(forwarded) >= 60
    # How many parts go over the tiny threshold depends on what Hypothesis
    # drew (8 to 17 of 60 messages seen in fresh checkouts), so no fixed
    # count: some were offloaded, and every stored object is one the trace
    # headers of the forwarded messages account for.
    said = sum(int(m) for data in forwarded for m in re.findall(rb"X-Attachment-Offload: offloaded=(\d+)", data))
    # Refused parts go to quarantine/ (issue 5), not counted as offloaded.
    offloaded = [k for k in stored_objects(gw.objects) if k.startswith("uploads/")]
    assert 1 <= len(offloaded) <= said
