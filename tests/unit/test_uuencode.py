"""Uuencoded files inside text bodies (issue 14): found wherever a lenient
mail client would show them as attachments, decoded tolerantly, and never
taken from ordinary prose."""
from __future__ import annotations

import base64
import binascii
import time

import pytest

from gateway.mime.uuencode import decode_uu, find_blocks

DATA = bytes(range(256)) * 4


def uu(data: bytes = DATA, eol: bytes = b"\n") -> bytes:
    lines = b"".join(binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45))
    return lines.replace(b"\n", eol)


def test_a_plain_block_is_found_and_decoded() -> None:
    text = b"Hello,\n\nsee the file.\nbegin 644 report.exe\n" + uu() + b"`\nend\nRegards\n"
    (block,) = find_blocks(text)
    assert (block.mode, block.filename, block.complete, block.base64) == ("644", "report.exe", True, False)
    assert text[block.start:block.end] == b"begin 644 report.exe\n" + uu() + b"`\nend\n"
    assert block.decode() == DATA
    assert block.decode(max_bytes=10) == DATA[:10]


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"])
def test_any_line_end(eol: bytes) -> None:
    text = b"x" + eol + b"begin 644 a.bin" + eol + uu(eol=eol) + b"end" + eol + b"y"
    (block,) = find_blocks(text)
    assert block.decode() == DATA and text[block.end:] == b"y"


@pytest.mark.parametrize("begin", [b"  begin 644 a.bin", b"\tbegin 0755 a.bin", b"BEGIN 644 a.bin",
                                   b"begin 644 name with spaces.pdf.exe ", b"begin 7 a.bin", b"begin  644\ta.bin"])
def test_begin_line_variants_an_attacker_could_use(begin: bytes) -> None:
    text = b"intro\n" + begin + b"\n" + uu() + b"end\n"
    (block,) = find_blocks(text)
    assert block.start == len(b"intro\n")  # the leading blanks belong to the block
    assert block.decode() == DATA
    if b"spaces" in begin:
        assert block.filename == "name with spaces.pdf.exe"


def test_a_missing_end_line_runs_to_the_end_of_the_text() -> None:
    text = b"begin 644 a.bin\n" + uu()
    (block,) = find_blocks(text)
    assert (block.end, block.complete) == (len(text), False) and block.decode() == DATA


def test_a_missing_end_line_stops_at_the_next_block() -> None:
    text = b"begin 644 a.bin\n" + uu() + b"begin 644 b.bin\n" + uu(b"second") + b"end\n"
    a, b = find_blocks(text)
    assert (a.complete, a.end, b.start) == (False, b.start, len(b"begin 644 a.bin\n" + uu()))
    assert a.decode() == DATA and b.decode() == b"second" and b.complete


def test_junk_and_blank_lines_after_begin_do_not_hide_the_block() -> None:
    text = b"begin 644 a.bin\n\n   \nthis is junk\n" + uu() + b"end\n"
    (block,) = find_blocks(text)
    assert block.decode() == DATA


def test_trailing_garbage_and_short_lines_are_tolerated() -> None:
    lines = [binascii.b2a_uu(DATA[i:i + 45]).rstrip(b"\n") for i in range(0, len(DATA), 45)]
    garbage = b"".join(line + b"XYZ\n" for line in lines)  # checksums, junk
    (block,) = find_blocks(b"begin 644 a\n" + garbage + b"end\n")
    assert block.decode() == DATA
    # Trailing spaces stripped in transit: the line is read as padded.
    assert decode_uu(binascii.b2a_uu(b"ab\x00").rstrip(b"\n").rstrip(b" ")) in (b"ab\x00", b"ab")


def test_begin_base64_is_found() -> None:
    text = b"begin-base64 644 a.bin\n" + base64.encodebytes(DATA) + b"====\nafter\n"
    (block,) = find_blocks(text)
    assert block.base64 and block.decode() == DATA and text[block.end:] == b"after\n"


@pytest.mark.parametrize("prose", [
    b"Let's begin 2024 planning\nMeeting notes follow.\nend\n",
    b"begin 100 yards\nthen run.\n",
    b"xbegin 644 a\nM" + b"!" * 60 + b"\n",  # not at the start of a line
    b"begin 644 a.bin\nend\n",  # no data: no file
])
def test_prose_is_not_a_file(prose: bytes) -> None:
    assert find_blocks(prose) == []


def test_more_blocks_than_the_cap_leaves_one_unexamined_rest() -> None:
    one = b"begin 644 a\n" + uu(b"abc") + b"end\n"
    text = one * 5
    blocks = find_blocks(text, max_blocks=3)
    assert [b.unexamined for b in blocks] == [None, None, None, "more than 3 uuencoded blocks in one text"]
    assert (blocks[3].start, blocks[3].end) == (3 * len(one), len(text))


def test_hostile_texts_are_scanned_fast() -> None:
    for text in (b"begin 644 x\nM" + b"\n" * (4 << 20),
                 (b"begin 644 x\n" + b"\n" * 10 + b"#86)C\n") * 50_000,
                 b" " * (4 << 20) + b"begin 644 x\n#86)C\n",
                 (b" begin 644 x" * 10_000 + b"\n") * 40):
        t = time.thread_time()  # CPU time: other work on the machine does not count
        find_blocks(text)
        took = time.thread_time() - t
        print(f"{len(text)} bytes: {took:.3f} s")
        assert took < 3


def test_yenc_and_binhex_blocks_are_found_unexamined() -> None:
    # Thunderbird shows both as attachments in a text without a type.
    text = (b"Hello,\r\n=ybegin line=128 size=3 name=setup.exe\r\nw\x84**\r\n=yend size=3\r\nbye\r\n"
            b"(This file must be converted with BinHex 4.0)\r\n:$f*TEQKPH#jdCA0d,R0TG!\"6594%8dP8)3#3\"!\r\n"
            b"aaa:\r\nthe end\r\n")
    blocks = find_blocks(text)
    assert [(b.filename, b.unexamined) for b in blocks] == [
        ("setup.exe", "a yEnc-encoded file in the text"), ("", "a BinHex-encoded file in the text")]
    yenc = b"=ybegin line=128 size=3 name=setup.exe\r\nw\x84**\r\n=yend size=3\r\n"
    assert text[blocks[0].start:blocks[0].end] == yenc
    assert text[blocks[1].end:] == b"the end\r\n"


def test_many_yenc_lines_leave_one_unexamined_rest() -> None:
    text = b"".join(b"=ybegin line=1 size=1 name=a%d.exe\r\nx\r\n=yend\r\n" % i for i in range(150))
    blocks = find_blocks(text, max_blocks=100)
    assert len(blocks) == 101 and blocks[-1].end == len(text) and "more than 100" in (blocks[-1].unexamined or "")
