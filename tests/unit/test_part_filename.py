"""A part's filename comes from the parameters the parser has already read
(``Part.params_read``) instead of a second parse of its headers: it must be
the name ``original_filename`` reads from the same headers, for every part
of the corpus and for hostile parameter shapes, and a part whose fields
were not read (more than one Content-Type, too many ';') still gets its
name from the headers."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.mime.filenames import original_filename
from gateway.mime.parse import Limits, parse
from gateway.mime.source import Source
from tests.harness import CORPUS

NAMES = ["a.pdf", '"quoted name.pdf"', '"a\\"b.exe"', "=?utf-8?q?caf=C3=A9.docx?=", "", " ", "x.exe;", '"a.pdf".exe']
PARAMS = ["name={}", "filename={}", "NAME={}", "FileName={}", "filename*=utf-8''%E2%80%AEfdp.exe",
          "filename*0={}", "filename*1=part2.exe", "name*0*=utf-8''a%20b", "name*1*=.js", "file name={}",
          "filename ={}", "x={}", "charset=utf-8", "", "name", "filename="]


def message(rnd: random.Random) -> bytes:
    def field(value: str) -> str:
        params = [rnd.choice(PARAMS).format(rnd.choice(NAMES)) for _ in range(rnd.randint(0, 4))]
        return "; ".join([value, *params])
    parts = []
    for _ in range(rnd.randint(1, 3)):
        lines = [f"Content-Type: {field(rnd.choice(['application/pdf', 'text/plain', 'image/png']))}"]
        if rnd.random() < 0.7:
            lines.append(f"Content-Disposition: {field(rnd.choice(['attachment', 'inline', 'ATTACHMENT']))}")
        if rnd.random() < 0.1:
            lines.append("Content-Type: text/html; name=second.html")
        parts.append("\r\n".join(lines) + "\r\n\r\nbody\r\n")
    body = "".join(f"--b\r\n{p}" for p in parts) + "--b--\r\n"
    return f"Content-Type: multipart/mixed; boundary=b\r\n\r\n{body}".encode()


def names_agree(path: Path, limits: Limits | None = None) -> int:
    """Check every part of the message in ``path``; how many read their params."""
    read = 0
    with Source(path) as src:
        for part in parse(src, limits or Limits()).walk():
            assert part.filename == original_filename(part.headers), (path, part.path)
            read += part.params_read
    return read


def test_every_corpus_part_has_the_same_name() -> None:
    files = [p for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.suffix in (".eml", ".msg", ".txt", "")]
    assert files, f"no corpus messages under {CORPUS}"
    assert sum(names_agree(p) for p in files) > 100


@pytest.mark.parametrize("seed", range(10))
def test_hostile_parameters_give_the_same_name(seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    read = 0
    for i in range(100):
        path = tmp_path / f"{i}.eml"
        path.write_bytes(message(rnd))
        read += names_agree(path, Limits(max_params=3))
    assert read > 100  # the reuse is exercised, not only the fallback


def test_a_part_whose_fields_were_not_read_is_named_from_its_headers(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"Content-Type: application/pdf; name=a.pdf\r\nContent-Type: text/plain\r\n\r\nx\r\n")
    with Source(path) as src:
        root = parse(src)
    assert root.unexamined is not None and not root.params_read
    assert root.filename == "a.pdf"
