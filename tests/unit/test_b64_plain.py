"""Small base64 bodies are decoded by a fast path (gateway.mime.decode):
its answer must be Python's email package's, byte for byte, for every
body, clean or not (the gateway and the agent's mail client must agree on
what a file is)."""
from __future__ import annotations

import base64
import random
from email.message import Message
from pathlib import Path

import pytest

from gateway.mime.decode import _b64_plain, decoded_bytes, measure
from gateway.mime.parse import Limits, parse
from gateway.mime.source import Source


def python_decode(body: bytes) -> bytes:
    msg = Message()
    msg["Content-Transfer-Encoding"] = "base64"
    msg.set_payload(body)
    decoded = msg.get_payload(decode=True)
    assert isinstance(decoded, bytes)
    return decoded


def bodies(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for _ in range(60):
        data = base64.b64encode(rnd.randbytes(rnd.randint(0, 3000)))
        width = rnd.choice([4, 60, 64, 72, 76, 1000])
        end = rnd.choice([b"\r\n", b"\r\n", b"\n", b"\r"])
        body = b"".join(data[i:i + width] + end for i in range(0, len(data), width))
        if rnd.random() < 0.6 and body:
            # One fault: a stray byte, a bare line end, padding in the
            # middle, a space, a missing character, a non-ASCII byte.
            at = rnd.randrange(len(body))
            fault = rnd.choice([b" ", b"\n", b"\r", b"=", b"==", b"*", b"\xff", b"\x00", b"-", b"_", b""])
            body = body[:at] + fault + body[at + (1 if fault == b"" else 0):]
        if rnd.random() < 0.2:
            body += rnd.choice([b"\r\n", b"\r\n\r\n", b"  \r\n", b"=\r\n", b"A"])
        out.append(body)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_fast_path_agrees_with_python(seed: int) -> None:
    for body in bodies(seed):
        fast = _b64_plain(body)
        if fast is not None:
            assert fast == python_decode(body), body[:200]


def test_fast_path_takes_what_mailers_write() -> None:
    data = random.Random(7).randbytes(25_000)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert _b64_plain(encoded) == data
    assert _b64_plain(b"") == b""


@pytest.mark.parametrize("body", [b"ab=c\r\n", b"ab==cd==\r\n", b"abc\r\n", b"QUJD RA==\r\n", b"QUJDRA==\nQUJD\r\n",
                                  b"QUJD\r\nQUJDRA=\r\n", b"=QUJ\r\n"])
def test_fast_path_leaves_the_odd_ones_to_python(body: bytes) -> None:
    assert _b64_plain(body) is None


@pytest.mark.parametrize("cte", ["base64", "BASE64", "base64 ", " base64", "Base64\t"])
def test_a_part_decodes_as_python_reads_its_encoding(tmp_path: Path, cte: str) -> None:
    # Python compares the field as it is (lower-cased, not stripped): a
    # trailing blank makes it not base64 to Python, so not to the gateway.
    payload = base64.encodebytes(b"%PDF-1.7 hello" * 50).replace(b"\n", b"\r\n")
    raw = (b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n"
           + payload + b"--b--\r\n")
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    with Source(path) as src:
        root = parse(src, Limits())
        leaf = root.leaves()[0]
        import email
        python = email.message_from_bytes(raw).get_payload()[0].get_payload(decode=True)
        assert decoded_bytes(src, leaf) == python
        assert measure(src, leaf).size == len(python)
