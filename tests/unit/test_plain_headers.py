"""The parser reads plain header blocks itself (gateway.mime.parse
``_plain_headers``): the Message it builds must be the one Python's header
parser builds, field for field, for every block it takes, and it must leave
every other block to Python's parser."""
from __future__ import annotations

import random
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest

from gateway.mime.parse import _plain_headers
from tests.harness import CORPUS

PYTHON = BytesHeaderParser(policy=compat32)


def shape(msg: Message) -> tuple[object, ...]:
    return (msg._headers, msg._payload, msg._unixfrom, [type(d) for d in msg.defects],  # type: ignore[attr-defined]
            msg.get_default_type(), msg.policy)


def agrees(raw: bytes) -> bool:
    """Whether the fast path took ``raw``; it fails the test if it took it wrongly."""
    plain = _plain_headers(raw)
    if plain is None:
        return False
    assert shape(plain) == shape(PYTHON.parsebytes(raw)), raw
    return True


PIECES = ["Subject", "Content-Type", "X-A", "From", "to", "a!#$%&'*+-.^_`|~9", "Sübject", "X Y", "", "X\x7f",
          "Content-Disposition"]
VALUES = ["hello", "", " ", "  spaced  ", "\tTabbed", "multipart/mixed; boundary=b", "text/plain",
          "attachment; filename=a.pdf", "=?utf-8?q?caf=C3=A9?=", "caf\u00e9", "a:b:c", "x\x0cy", "x\x0by", "\x1c",
          "x\x00y", "trailing \t"]
ENDS = ["\r\n"] * 12 + ["\n", "\r", "\r\r\n", ""]


def block(rnd: random.Random) -> bytes:
    lines = []
    for _ in range(rnd.randint(0, 8)):
        r = rnd.random()
        if r < 0.15:
            lines.append(rnd.choice([" ", "\t", "  "]) + rnd.choice(VALUES))
        elif r < 0.2:
            lines.append(rnd.choice(["From someone@example.org Mon Dec 7", ":no name", "no colon at all"]))
        else:
            lines.append(rnd.choice(PIECES) + rnd.choice([":", ": ", ":\t", " :"]) + rnd.choice(VALUES))
    text = "".join(line + rnd.choice(ENDS) for line in lines)
    return text.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("seed", range(20))
def test_random_blocks_agree_with_python(seed: int) -> None:
    rnd = random.Random(seed)
    taken = sum(agrees(block(rnd)) for _ in range(300))
    assert taken > 10  # the fast path is exercised, not only the fallback


def test_blocks_it_must_leave_to_python() -> None:
    for raw in (b" continued first\r\nA: b\r\n", b"From x@example.org\r\nA: b\r\n", b":x\r\n", b"A: b\n",
                b"A: b\rC: d\r\n", b"A: b", b"", b"S\xc3\xbcbject: x\r\n", b"X Y: z\r\n"):
        assert _plain_headers(raw) is None, raw


def test_what_a_plain_block_gives() -> None:
    msg = _plain_headers(b"Subject:   hello\r\n world \r\nContent-Type: multipart/mixed; boundary=b\r\nX-E:\r\n")
    assert msg is not None
    assert msg._headers == [("Subject", "hello\r\n world "), ("Content-Type", "multipart/mixed; boundary=b"),  # type: ignore[attr-defined]
                            ("X-E", "")]
    assert agrees(b"Subject:   hello\r\n world \r\nContent-Type: multipart/mixed; boundary=b\r\nX-E:\r\n")


def test_corpus_header_blocks_agree() -> None:
    # Every header block of every corpus message that the fast path takes.
    taken = 0
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.stat().st_size > 4 << 20:
            continue
        data = path.read_bytes()
        for start in [0] + [i + 2 for i in range(len(data)) if data.startswith(b"\r\n--", i)][:50]:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                continue
            taken += agrees(data[start:end + 2])
    assert taken > 20
