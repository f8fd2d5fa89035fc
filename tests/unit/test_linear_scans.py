"""Scans of attacker-controlled text that used to be quadratic (ReDoS and
repeated copies), each checked against the old code kept here as the
reference: the same answers on normal, hostile and random inputs, and a
generous bound on the time the hostile inputs take now."""
from __future__ import annotations

import email.header
import io
import random
import re
import time
from collections.abc import Callable
from typing import Any

from gateway.authn import verify
from gateway.mime import container, params, rewrite
from policies.filetypes import OOXML_REMOTE
from tests.hostile_messages import ooxml

# The bound on each hostile input: the old code took seconds on each.
FAST = 0.2


def _elapsed(f: Callable[[], object]) -> float:
    # CPU time of this thread: a machine busy with other work does not
    # slow the clock the bound is read on.
    t0 = time.thread_time()
    f()
    return time.thread_time() - t0


def _fuzz(alphabet: list[bytes], n: int, seed: int, longest: int = 60) -> list[bytes]:
    """``n`` random strings of pieces of ``alphabet`` (fixed seed)."""
    rnd = random.Random(seed)
    return [b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(longest))) for _ in range(n)]


# -- <img src="cid:..."> in an HTML body (gateway/mime/rewrite.py) ----------

OLD_IMG_CID = re.compile(rb"""<img\b[^>]*?\bsrc\s*=\s*(["']?)cid:([^"'\s>]+)\1[^>]*>""", re.IGNORECASE)

IMG_NORMAL = [
    b"", b"<p>hello</p>", b'<img src="cid:logo@x">', b"<IMG SRC='CID:a'>", b"<img src=cid:a>",
    b'<img alt="x" src = "cid:a.b@c" width=1>', b'<img src="cid:a\'>', b'<img src="cid:">', b"<imgsrc=cid:a>",
    b'<imgx src="cid:a"> <img src="cid:b">', b'<img <img src="cid:a">', b'<img src="http://x"> <img src=cid:b>',
    b'<img data-src="cid:a" src="cid:b">', b'<img xsrc="cid:a" src=cid:b>', b'<img src="cid:a b">',
    b'<img\tsrc=\n"cid:a"\n>', b'<img src="cid:a" src="cid:b">', b'<img src=\'cid:a"\' src=cid:c>',
    b'<img src="cid:a', b'<img src="cid:;src=cid:x">', b'<img/src="cid:a">', b'x<img src=cid:a>y<img src=cid:b>z',
]
IMG_HOSTILE = [
    b"<img " * 13108,  # no ">": every "<img" was read to the end
    b"<img src=cid:" + b"a" * 65536,  # no ">": every cut of the cid was tried against the rest
    b"<img " + b"src=cid:a " * 6553,
    b"<img " * 13108 + b">",
    b'<img src="cid:' + b"a" * 65536 + b"'>",
    (b'<img src="cid:' + b"a" * 64 + b"' ") * 1000 + b">",
]


def test_img_cid_same_matches_as_the_pattern() -> None:
    alphabet = [b"<img", b"<IMG", b"<", b"i", b"g", b">", b" ", b"\t", b"src", b"SRC", b"=", b"'", b'"', b"cid:",
                b"CID:", b"a", b"-", b";", b"x"]
    for body in IMG_NORMAL + _fuzz(alphabet, 4000, seed=1) + [h[:3000] for h in IMG_HOSTILE]:
        want = [(m.span(), m.groups()) for m in OLD_IMG_CID.finditer(body)]
        assert [(m.span(), m.groups()) for m in rewrite._img_cid_matches(body)] == want, body


def test_img_cid_replacement_unchanged() -> None:
    link = rewrite.Link("logo.png", 10, "https://gw.test/a/t", size_text="10 B", label="logo.png")
    body = b'<p>hi <img src="cid:Logo@x" alt=1> <img src="cid:other"> <img src=cid:logo@x></p>'
    got = rewrite._replace_inline_images(body, {"logo@x": link}, "", "utf-8")
    assert got.count(b'href="https://gw.test/a/t"') == 2 and b'<img src="cid:other">' in got
    assert rewrite._replace_inline_images(b"<p>no images</p>", {"logo@x": link}, "", "utf-8") == b"<p>no images</p>"


def test_img_cid_hostile_is_fast() -> None:
    link = rewrite.Link("logo.png", 10, "https://gw.test/a/t", size_text="10 B", label="logo.png")
    for body in IMG_HOSTILE:
        spent = _elapsed(lambda body=body: rewrite._replace_inline_images(body, {"a": link}, "", "utf-8"))
        assert spent < FAST, body[:40]


# -- relationship tags in an Office package (gateway/mime/container.py) ------

OLD_RELATIONSHIP = re.compile(rb"<relationship\b[^>]*>")

RELS_NORMAL = [
    b"", b'<relationships><relationship id="r1" type="x/oleobject" targetmode="external"/></relationships>',
    b"<relationship>", b"<relationships>", b"<relationship", b"<relationship a>b<relationship c>",
    b"<relationshipx><relationship y>", b"<relationship <relationship a>", b"<relationship-a>",
    b"<relationship\n target='a>b'>",
]
RELS_HOSTILE = [
    b"<relationship " * 18724,  # no ">": every tag was read to the end
    b"<relationship " * 18724 + b">",
    b"<relationship type='" + b"/" * 262144 + b">",
    b"<relationship " + b"type='/a " * 29127 + b">",
    b"<relationship targetmode=" + b" " * 262144 + b">",
]


def test_relationship_tags_same_as_the_pattern() -> None:
    alphabet = [b"<relationship", b"<", b"relationship", b">", b" ", b"x", b"-", b"'", b"\n"]
    for data in RELS_NORMAL + _fuzz(alphabet, 3000, seed=2) + [h[:3000] for h in RELS_HOSTILE]:
        assert list(container._relationship_tags(data)) == [m.group(0) for m in OLD_RELATIONSHIP.finditer(data)]


def test_relationship_hostile_is_fast() -> None:
    for rels in RELS_HOSTILE:
        # Deflated, each is a few KiB: a part small enough to be examined on the event loop.
        docx = ooxml("word", "x", extra=[("word/_rels/document.xml.rels", rels)])
        assert len(docx) < 64 << 10
        assert _elapsed(lambda docx=docx: container.examine_zip(io.BytesIO(docx))) < FAST, rels[:40]


def test_relationship_remote_template_still_found() -> None:
    rels = (b'<Relationships><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
            b'2006/relationships/attachedTemplate" Target="http://evil.test/t.dotm" TargetMode="External"/>'
            b"</Relationships>")
    docx = ooxml("word", "x", extra=[("word/_rels/settings.xml.rels", rels)])
    assert container.examine_zip(io.BytesIO(docx)) == OOXML_REMOTE
    assert container.examine_zip(io.BytesIO(ooxml("word", "x"))) != OOXML_REMOTE


# -- header fields with many continuation lines (rewrite.split_fields, verify.header_fields) --

_OLD_FIELD_START = re.compile(rb"^[^ \t\r\n]")


def old_split_fields(raw: bytes) -> list[tuple[str, bytes]]:
    """gateway.mime.rewrite.split_fields as it was (a copy per continuation line)."""
    fields: list[tuple[str, bytes]] = []
    for line in raw.splitlines(keepends=True):
        if not line.strip():
            fields.append(("", line))
            continue
        if fields and fields[-1][0] and not _OLD_FIELD_START.match(line):
            name, data = fields[-1]
            fields[-1] = (name, data + line)
        else:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            fields.append((name, line))
    return fields


def old_header_fields(block: bytes) -> list[tuple[str, int, int, bytes]]:
    """gateway.authn.verify.header_fields as it was, as tuples."""
    out: list[list[Any]] = []
    pos = 0
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            out[-1][2] = pos + len(line)
            out[-1][3] += line
        else:
            name = line.split(b":", 1)[0].decode("ascii", "replace").strip()
            out.append([name, pos, pos + len(line), line])
        pos += len(line)
    return [tuple(f) for f in out]  # type: ignore[misc]


HEADERS_NORMAL = [
    b"", b"\r\n", b"Subject: hi\r\n", b"Subject: a\r\n b\r\n\tc\r\nFrom: x\r\n\r\nbody\r\n", b" leading\r\nA: b\r\n",
    b"A: b\n c\rD: e\r\n  \r\n f\r\n", b":x\r\n y\r\n", b"A: b\r\n\r\n c\r\n", b"A: b\x0bc\x0c d\x1c\r\n e",
    b"Received: from a\r\n\tby b\r\n\tid c\r\nDKIM-Signature: v=1;\r\n bh=x;\r\n b=y\r\n",
]
HEADERS_HOSTILE = [b"Subject: x\r\n" + b" x\r\n" * ((256 << 10) - 3), b"X: y\r\n" + b"\t\r\n" * (340 << 10)]


def test_header_fields_same_as_before() -> None:
    alphabet = [b"A", b"b", b":", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\x0b", b"\x1c", b"\x85"]
    for block in HEADERS_NORMAL + _fuzz(alphabet, 3000, seed=3) + [h[:3000] for h in HEADERS_HOSTILE]:
        assert rewrite.split_fields(block) == old_split_fields(block), block
        assert [(f.name, f.start, f.end, f.raw) for f in verify.header_fields(block)] == old_header_fields(block)


def test_header_fields_hostile_are_fast() -> None:
    # A Python step per line remains (0.1-0.3 s for 256 Ki lines); the old code took 6 s here.
    for block in HEADERS_HOSTILE:
        assert len(block) <= 1 << 20  # worker.max_header_bytes
        assert _elapsed(lambda block=block: rewrite.split_fields(block)) < 1.5
        assert _elapsed(lambda block=block: verify.header_fields(block)) < 1.5


# -- RFC 2047 encoded words (gateway/mime/params.py) --------------------------

WORDS_NORMAL = [
    "", "plain", "=?utf-8?q?caf=C3=A9.pdf?=", "=?UTF-8?B?Y2Fmw6kucGRm?=", "=?utf-8?b?Y2Fmw6kucGRm?= =?utf-8?q?x?=",
    "a =?iso-8859-1?q?=E9t=E9?= b", "=?utf-8?q?a?=\r\n =?utf-8?q?b?=", "  lead =?x?q?y?=  trail  ", "=?a?q? =?a?q?",
    "=?a?q?x?==?b?b?eQ==?=", "=?a?q?x\n?=", "=?a\nb?q?x?=", "=?a?Q?x?= \t =?a?Q?y?=", "=?a?q? ?==?a?q? ?=",
    "=?utf-8?b?!!!?=", "=?utf-8?b?YQ?=", "=?utf-8?x?a?=", "=?=?a?q?b?=", "?==?a?q?", "=?a?q?=", "=?a?q??=",
    "=?unknown-8bit?q?=FF?= x", "x\x0b=?a?q?b?=\x85y\u2028=?a?b?Yg==?=", "=?a?q?b?=\r=?a?q?c?=",
]
WORDS_HOSTILE = ["=?a?q? " * 9362, "=?a?q?" + "x" * 65530, "=?a?q?x?=" * 7281, "=?a?q?x?= " * 6553,
                 "=?a?q?x?=" + "=?a?q? " * 9360]


def _stdlib_or_error(f: Callable[[str], object], value: str) -> object:
    try:
        return f(value)
    except Exception as e:  # noqa: BLE001 - the same error is the same answer
        return type(e)


def test_decode_header_same_as_python() -> None:
    alphabet = ["=?", "?=", "?", "=", "q", "Q", "b", "B", "utf-8", "a", "YQ==", " ", "\t", "\r\n", "\n", "\r", "=E9",
                "_", "\x85", "é"]
    rnd = random.Random(4)
    fuzz = ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(40))) for _ in range(5000)]
    for value in WORDS_NORMAL + fuzz + [h[:2000] for h in WORDS_HOSTILE]:
        assert _stdlib_or_error(params.decode_header, value) == _stdlib_or_error(email.header.decode_header, value), \
            value


def test_decode_2047_hostile_is_fast() -> None:
    for value in WORDS_HOSTILE:
        assert len(value) <= 65536  # worker.max_header_line
        assert _elapsed(lambda value=value: params.decode_2047(value)) < FAST, value[:40]
