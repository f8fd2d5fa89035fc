"""The parser finds each delimiter with one search for ``--boundary``,
checking the byte before each hit (gateway.mime.parse ``_after_line_end``):
it must find what searching for ``\\n--boundary`` and ``\\r--boundary``
separately finds, the earlier of the two, wherever the hits fall: next to
each other, at the ends of the range, across the reader's windows."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.mime.parse import _after_line_end, _Reader
from gateway.mime.source import WINDOW, Source

DASH = b"--bd"


def reference(data: bytes, look: int, end: int) -> int:
    hits = [j for j in (data.find(b"\n" + DASH, look, end), data.find(b"\r" + DASH, look, end)) if j >= 0]
    return min(hits) + 1 if hits else -1


def check(path: Path, data: bytes, rnd: random.Random, tries: int) -> None:
    path.write_bytes(data)
    with Source(path) as src:
        reader = _Reader(src)
        for _ in range(tries):
            look = rnd.randint(0, len(data))
            end = rnd.randint(look, len(data) + 3)
            assert _after_line_end(reader, DASH, look, end) == reference(data, look, min(end, len(data))), (look, end)


@pytest.mark.parametrize("seed", range(20))
def test_small_bodies_full_of_near_delimiters(seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    for _ in range(20):
        data = b"".join(rnd.choice([b"\r", b"\n", b"-", b"--", b"bd", b"b", b"x", DASH, b"\r\n" + DASH])
                        for _ in range(rnd.randint(0, 400)))
        check(tmp_path / "m", data, rnd, 50)


@pytest.mark.parametrize("seed", range(3))
def test_hits_across_the_readers_windows(seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    data = bytearray(b"x" * (2 * WINDOW + 100))
    for at in (WINDOW - 3, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW - 2, 5, rnd.randrange(len(data) - 10)):
        kind = rnd.choice([b"\n" + DASH, b"\r" + DASH, b"y" + DASH, DASH])
        data[at:at + len(kind)] = kind
    check(tmp_path / "m", bytes(data), rnd, 40)
