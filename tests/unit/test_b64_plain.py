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

from gateway.mime.decode import HEAD, SMALL, _b64_plain, decoded_bytes, measure
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
@pytest.mark.parametrize("copies", [50, 80_000])  # decoded in memory, and streamed
def test_a_part_decodes_as_a_client_that_strips_its_encoding_reads_it(tmp_path: Path, cte: str,
                                                                      copies: int) -> None:
    # Python compares the field as it is (lower-cased, not stripped), so to
    # it "base64 " is not base64; a client that strips the blank opens what
    # it decodes to.  The gateway examines that, small or large: a program
    # sent as "base64 " is judged as the program.
    data = b"%PDF-1.7 hello" * copies
    payload = base64.encodebytes(data).replace(b"\n", b"\r\n")
    raw = (b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n"
           + payload + b"--b--\r\n")
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    with Source(path) as src:
        root = parse(src, Limits())
        leaf = root.leaves()[0]
        assert (leaf.encoded_size > SMALL) == (copies > 50)
        assert decoded_bytes(src, leaf) == data
        m = measure(src, leaf)
        assert m.size == len(data) and m.head == data[:HEAD]
