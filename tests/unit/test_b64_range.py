"""Large base64 bodies are decoded window by window (gateway.mime.decode
``_b64_range``): whole windows of equal CRLF lines at once, the rest by the
general ``_b64_stream``.  Whatever the body holds, the bytes must be the
ones ``_b64_stream`` gives for the same range, window size and faults
alike, and the measured size must be their count."""
from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from gateway.mime.decode import _b64_lines, _b64_range, _b64_stream
from gateway.mime.source import Source

FAULTS = ["none", "bare-lf", "stray", "space", "nul", "pad-inside", "after-pad", "short-line", "long-line",
          "no-final-crlf", "blank-lines", "bare-cr", "lone-char"]


def body(rnd: random.Random, fault: str) -> bytes:
    data = rnd.randbytes(rnd.choice([0, 1, 2, 3, 57, 1000, rnd.randint(0, 40_000)]))
    encoded = base64.b64encode(data)
    width = rnd.choice([76, 76, 76, 64, 72, 4, 8, 60, 77, 75, 1000])
    lines = [encoded[i:i + width] for i in range(0, len(encoded), width)] or [b""]
    if fault != "none" and len(lines) > 1:
        k = rnd.randrange(len(lines))
        line = lines[k]
        at = rnd.randint(0, len(line))
        if fault == "bare-lf":
            lines[k] = line[:at] + b"\n" + line[at:]
        elif fault == "bare-cr":
            lines[k] = line[:at] + b"\r" + line[at:]
        elif fault == "stray":
            lines[k] = line[:at] + rnd.choice([b"!", b"-", b"*", b"\xff", b"\x80"]) + line[at:]
        elif fault == "space":
            lines[k] = line[:at] + b" " + line[at:]
        elif fault == "nul":
            lines[k] = line[:at] + b"\x00" + line[at:]
        elif fault == "pad-inside":
            lines[k] = line[:at] + b"=" + line[at:]
        elif fault == "after-pad":
            lines.insert(k, b"QQ==")
        elif fault == "short-line":
            lines[k] = line[: max(0, len(line) - rnd.randint(1, 4))]
        elif fault == "long-line":
            lines[k] = line + b"QUJD"
        elif fault == "blank-lines":
            lines.insert(k, b"")
        elif fault == "lone-char":
            lines.insert(k, b"Q")
    text = b"\r\n".join(lines) + b"\r\n"
    if fault == "no-final-crlf":
        text = text[:-2]
    return text


@pytest.mark.parametrize("seed", range(12))
def test_windows_decode_as_the_stream_does(seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    path = tmp_path / "part"
    for _ in range(60):
        fault = rnd.choice(FAULTS)
        lead = rnd.randbytes(rnd.randint(0, 30))
        text = body(rnd, fault)
        path.write_bytes(lead + text + rnd.randbytes(rnd.randint(0, 30)))
        window = rnd.choice([97, 256, 1000, 4096, 1 << 20])
        with Source(path) as src:
            start, end = len(lead), len(lead) + len(text)
            want = b"".join(_b64_stream(src.iter_range(start, end, window)))
            got = list(_b64_range(src, start, end, window))
            assert b"".join(got) == want, (seed, fault, window)
            assert sum(len(c) for c in got) == len(want)


def test_clean_lines_are_decoded_whole_windows_at_a_time(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(300_000)
    text = base64.encodebytes(data).replace(b"\n", b"\r\n")  # 76-character lines
    first = text[: 78 * 100]
    assert _b64_lines(first, len(first)) == base64.b64decode(first)
    path = tmp_path / "part"
    path.write_bytes(text)
    with Source(path) as src:
        chunks = list(_b64_range(src, 0, len(text), 4096))
    assert b"".join(chunks) == data
    # Every window but the one holding the short last line came decoded whole.
    assert len(chunks) >= len(text) // 4096


@pytest.mark.parametrize("data", [
    b"QUJD\r\nQUJD\r\n",  # equal lines of 4: taken
    b"QUJD\r\nQU==\r\n",  # padding: not taken here
    b"QUJD\r\nQUJ\r\n",  # unequal lines
    b"QUJ\r\nQUJ\r\n",  # lines not a multiple of 4
    b"QUJD\nQUJD\n",  # bare LF
    b"QU!D\r\nQUJD\r\n",  # a character outside the alphabet
    b"QUJD\r\rQUJD\r\n",  # no LF where the stride says
])
def test_only_whole_clean_lines_are_taken(data: bytes) -> None:
    got = _b64_lines(data, len(data))
    assert (got is not None) == (data == b"QUJD\r\nQUJD\r\n")
    if got is not None:
        assert got == b"ABCABC"
