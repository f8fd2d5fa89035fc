"""The parser finds each delimiter with one search for ``--boundary`` when
a line end is before the hit, and otherwise with a search for each form
(gateway.mime.parse ``_LineStartFinder``): it must find what searching for ``\\n--boundary`` and ``\\r--boundary``
separately finds, the earlier of the two, wherever the hits fall: next to
each other, at the ends of the range, across the reader's windows."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.mime.parse import _delimiters, _LineStartFinder, _Reader
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
            found = _LineStartFinder(reader, DASH, end).find(look)
            assert found == reference(data, look, min(end, len(data))), (look, end)


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


class _CountingReader(_Reader):
    """A reader that counts the searches the parser asks of it."""

    def __init__(self, src: Source) -> None:
        super().__init__(src)
        self.searches = 0

    def find(self, needle: bytes, start: int, end: int) -> int:
        self.searches += 1
        return super().find(needle, start, end)


@pytest.mark.parametrize(("boundary", "filler"), [(b"-", b"-"), (b"b", b"x--b"), (b"ab", b"--ab--ab ")])
def test_a_body_full_of_the_boundary_off_line_starts_is_searched_in_c(boundary: bytes, filler: bytes,
                                                                       tmp_path: Path) -> None:
    # "--boundary" everywhere but at a line start: each such hit must not
    # cost a step of the parser's own loop (a body of dashes under boundary
    # "-" was 0.8 s a MB and a nesting level that way, 6 ms with searches in C).
    dash = b"--" + boundary
    body = b"\r\n" + dash + b"\r\n" + filler * (200_000 // len(filler)) + b"\r\n" + dash + b"--\r\n"
    (tmp_path / "m").write_bytes(body)
    with Source(tmp_path / "m") as src:
        reader = _CountingReader(src)
        out, _, _ = _delimiters(reader, boundary, 0, len(body), 1000)
    assert [close for _, _, close in out] == [False, True]
    assert reader.searches < 20, f"{reader.searches} searches for 200 KB"
