"""Clean output by construction (issue 14): every byte the rewriter writes is
CRLF-only with no NUL, whatever the body's encoding or charset; added text
never becomes raw bytes in a hostile charset; a charset Python cannot use
never stops a message; displayed names carry no bidi tricks, no template
fields and no links.  Fast unit tests on the rewriter and filename functions,
and on the delivery-side normaliser."""
from __future__ import annotations

import email
import email.policy
import re
import urllib.parse
from pathlib import Path

import pytest

from gateway.lineends import Normaliser, clean_lines, crlf_only, is_clean
from gateway.mime import filenames
from gateway.mime.parse import parse
from gateway.mime.rewrite import Link, Replacement, html_links, link_label, plan, text_links
from gateway.mime.source import Source

LINK = Link("report.pdf", 2 << 20, "https://gw.test/d/abc")
EVIL_NAME = "x\r\n.\r\nMAIL FROM:<evil@attacker.example>\r\n\x00.pdf"


def rewrite(tmp_path: Path, raw: bytes, *, links: list[Link] = (), notices: list[str] = (),
            html: bool = False, template: str = "{filename}") -> bytes:
    """Run the rewriter on ``raw`` (the root is the body to add to) and
    return the bytes it would send."""
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    with Source(path) as src:
        root = parse(src)
        segments = plan(src, root, replacements=[], links=list(links), text_part=None if html else root,
                        html_part=root if html else None, link_template=template, trace=b"",
                        notices=list(notices))
        out = b"".join(s if isinstance(s, bytes) else src.read(*s) for s in segments)
    return out


def assert_wire_clean(data: bytes) -> None:
    """No NUL, no bare CR or LF, no line over 998 bytes."""
    assert b"\x00" not in data
    assert b"\r" not in data.replace(b"\r\n", b""), data
    assert b"\n" not in data.replace(b"\r\n", b""), data
    assert max(map(len, data.split(b"\r\n"))) <= 998


def body_text(out: bytes) -> str:
    msg = email.message_from_bytes(out, policy=email.policy.default)
    return msg.get_content()


# --- 1. quoted-printable keeps data CR/LF encoded -----------------------------

def test_qp_body_with_encoded_cr_stays_encoded(tmp_path: Path) -> None:
    raw = (b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"hello=0D.=0D=0AMAIL FROM:<evil@attacker.example>=0D=0A\r\nsecond line\r\n")
    out = rewrite(tmp_path, raw, links=[LINK])
    assert_wire_clean(out)
    assert b"\r.\r\n" not in out and b"\n.\r\n" not in out
    # The CR that is data stays encoded; the CRLF pair is a line break.
    assert b"hello=0D.\r\nMAIL FROM:" in out
    import binascii
    assert binascii.a2b_qp(out.split(b"\r\n\r\n", 1)[1]).startswith(
        b"hello\r.\r\nMAIL FROM:<evil@attacker.example>\r\n\r\nsecond line\r\n")


def test_qp_decoded_body_round_trips_exactly(tmp_path: Path) -> None:
    raw = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"a=0Db=0Ac=00d\r\n.leading dot\r\ntrailing space =20\r\n")
    out = rewrite(tmp_path, raw, links=[LINK])
    assert_wire_clean(out)
    body = out.split(b"\r\n\r\n", 1)[1]
    import binascii
    decoded = binascii.a2b_qp(body)
    assert decoded.startswith(b"a\rb\nc\x00d\r\n.leading dot\r\ntrailing space  \r\n")


# --- 2. charsets that are not ASCII-compatible --------------------------------

@pytest.mark.parametrize("charset", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-7", "cp500", "cp037"])
@pytest.mark.parametrize("cte", ["8bit", "binary", "base64"])
def test_added_text_never_in_a_hostile_charset(tmp_path: Path, charset: str, cte: str) -> None:
    text = "Hello agent,\r\nplease see the file.\r\n"
    encoded = text.encode(charset)
    if cte == "base64":
        import base64
        body = base64.encodebytes(encoded).replace(b"\n", b"\r\n")
    else:
        body = encoded
    raw = (f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
           + body)
    notice = f"The attachment {filenames.display_name(EVIL_NAME)} was removed."
    out = rewrite(tmp_path, raw, notices=[notice], links=[LINK])
    assert_wire_clean(out)
    assert not any(line.startswith(b"MAIL FROM") for line in out.split(b"\r\n"))
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"].lower() in ("quoted-printable", "base64")
    content = msg.get_content()
    assert "Hello agent," in content and "please see the file." in content
    assert "report.pdf" in content


def test_hostile_charset_in_html(tmp_path: Path) -> None:
    html_body = "<html><body><p>Hi</p></body></html>\r\n".encode("utf-16")
    raw = b"Content-Type: text/html; charset=utf-16\r\nContent-Transfer-Encoding: binary\r\n\r\n" + html_body
    out = rewrite(tmp_path, raw, links=[Link(EVIL_NAME, 10, "https://gw.test/d/x")], html=True)
    assert_wire_clean(out)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg.get_content_charset() == "utf-8"
    content = msg.get_content()
    assert "<p>Hi</p>" in content and 'href="https://gw.test/d/x"' in content
    assert content.index("attachment-gateway-links") < content.index("</body>")


# --- 3. charsets Python cannot use --------------------------------------------

@pytest.mark.parametrize("charset", ["undefined", "idna", "x-no-such-charset", "utf-8'en'"])
@pytest.mark.parametrize("body", [b"plain ascii body\r\n", "caf\u00e9 body\r\n".encode("utf-8"), b"latin \xe9\r\n"])
def test_unusable_charset_never_raises(tmp_path: Path, charset: str, body: bytes) -> None:
    raw = (f"Content-Type: text/plain; charset=\"{charset}\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".encode()
           + body)
    out = rewrite(tmp_path, raw, notices=["Removed: r\u00e9sum\u00e9.exe"], links=[LINK])
    assert_wire_clean(out)
    assert body.rstrip(b"\r\n") in out  # the body itself is kept byte for byte
    assert b"report.pdf" in out


def test_unusable_charset_html_with_inline_images(tmp_path: Path) -> None:
    raw = (b"Content-Type: text/html; charset=undefined\r\n\r\n"
           b'<html><body><img src="cid:img1"></body></html>\r\n')
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    with Source(path) as src:
        root = parse(src)
        segments = plan(src, root, replacements=[], links=[LINK], text_part=None, html_part=root,
                        link_template="{filename}", trace=b"", inline={"img1": LINK})
        out = b"".join(s if isinstance(s, bytes) else src.read(*s) for s in segments)
    assert_wire_clean(out)
    assert b'href="https://gw.test/d/abc"' in out and b"cid:img1" not in out


# --- 4. 8bit/binary bodies with bare CR, bare LF or NUL ------------------------

@pytest.mark.parametrize("cte", ["8bit", "binary", "7bit"])
@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1", "us-ascii"])
def test_rewritten_body_is_crlf_clean(tmp_path: Path, cte: str, charset: str) -> None:
    body = b"line one\nline\rtwo\r\n.\r\n\x00nul\r\n" + b"x" * 1200 + b"\r\n"
    raw = f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode() + body
    out = rewrite(tmp_path, raw, notices=[EVIL_NAME], links=[LINK])
    assert_wire_clean(out)
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    decoded = msg.get_payload(decode=True)
    assert decoded.startswith(body)  # nothing lost: the odd bytes are encoded, not dropped


def test_clean_8bit_body_stays_8bit(tmp_path: Path) -> None:
    body = "Gr\u00fc\u00dfe\r\n".encode("utf-8")
    raw = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
    out = rewrite(tmp_path, raw, links=[LINK])
    assert b"Content-Transfer-Encoding: 8bit" in out and body in out


def test_replacement_notices_and_inserted_parts_are_clean(tmp_path: Path) -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: application/pdf\r\n\r\nPDF\r\n"
           b"--b\r\nContent-Type: application/zip\r\n\r\nZIP\r\n--b--\r\n")
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    with Source(path) as src:
        root = parse(src)
        pdf, z = root.children
        segments = plan(src, root, replacements=[Replacement(z, f"removed {EVIL_NAME}"),
                                                 Replacement(pdf, "", raw=b"Content-Type: text/plain\n\nbare\rCR\x00")],
                        links=[Link(EVIL_NAME, 1, "https://gw.test/d/y")], text_part=None, html_part=None,
                        link_template="{filename}", trace=b"Received: x\n", notices=[EVIL_NAME])
        for seg in segments:
            if isinstance(seg, bytes):
                assert is_clean(seg), seg
        out = b"".join(s if isinstance(s, bytes) else src.read(*s) for s in segments)
    assert_wire_clean(out)


# --- 9. names ------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
                                  "\u2069", "\u200e", "\u200f", "\u061c", "\u200b", "\u200d", "\ufeff", "\u00ad"])
def test_display_name_drops_bidi_and_format_characters(char: str) -> None:
    assert filenames.display_name(f"invoice{char}fdp.exe") == "invoicefdp.exe"
    assert char not in filenames.content_disposition(f"invoice{char}fdp.exe")
    assert filenames.quote("\u202e") not in filenames.content_disposition(f"invoice{char}fdp.exe")


@pytest.mark.parametrize("name, shown", [
    ("http://evil.example/x.pdf", "http[:]//evil.example/x.pdf"),
    ("HTTPS://evil.example", "HTTPS[:]//evil.example"),
    ("www.evil.example", "www[.]evil.example"),
    ("see WWW.evil.example.pdf", "see WWW[.]evil.example.pdf"),
    ("(www.evil.example)", "(www[.]evil.example)"),
    ("javascript://x", "javascript[:]//x"),
    ("awww.example.pdf", "awww.example.pdf"),
    ("r\u00e9sum\u00e9.pdf", "r\u00e9sum\u00e9.pdf"),
])
def test_display_name_neutralises_links(name: str, shown: str) -> None:
    assert filenames.display_name(name) == shown
    assert filenames.display_name(shown) == shown  # idempotent


def test_link_label_expands_only_its_own_fields() -> None:
    link = Link("{size} {filename}.pdf", 5 << 20, "https://gw.test/d/z")
    assert link_label("{filename} ({size})", link) == "{size} {filename}.pdf (5.0 MB)"


def test_filename_brings_no_link_into_bodies() -> None:
    link = Link("a](http://evil.example/) <img src=x onerror=alert(1)> `x` www.evil.example", 1,
                "https://gw.test/d/z")
    text = text_links([link], "Secure Attachment: {filename}")
    assert "http://evil" not in text and "www.evil" not in text
    # One link only, to our URL: the label's brackets, backticks and angle
    # brackets are escaped.
    assert re.findall(r"(?<!\\)\]\(([^)]*)\)", text) == ["https://gw.test/d/z"]
    assert re.search(r"(?<!\\)<img", text) is None  # "\<img" is text in markdown
    html = html_links([link], "Secure Attachment: {filename}")
    assert html.count("<a ") == 1 and "<img" not in html and "http://evil" not in html


# --- 5. the delivery-side normaliser ------------------------------------------

@pytest.mark.parametrize("chunks, expected", [
    ([b"a\r\nb\r\n"], b"a\r\nb\r\n"),
    ([b"a\r", b"\nb\r\n"], b"a\r\nb\r\n"),            # CRLF across the boundary
    ([b"a\r", b"b\n"], b"a\r\nb\r\n"),                 # bare CR at a boundary
    ([b"a\r"], b"a\r\n"),                              # bare CR at the very end
    ([b"a\n.\nb", b"\x00c\r"], b"a\r\n.\r\nbc\r\n"),
    ([b"a\r", b"", b"\r\n"], b"a\r\n\r\n"),
])
def test_normaliser_across_chunks(chunks: list[bytes], expected: bytes) -> None:
    n = Normaliser()
    out = b"".join(n.feed(c) for c in chunks) + n.end()
    assert out == expected
    assert n.changed == (b"".join(chunks) != expected)


def test_clean_lines_leaves_clean_data_alone() -> None:
    data = b"a\r\n" * 1000
    assert clean_lines(data) is data
    assert crlf_only(data) and not crlf_only(b"a\nb") and clean_lines(b"a\rb\x00\n") == b"a\r\nb\r\n"


def _crlf_only_by_definition(data: bytes) -> bool:
    return data.replace(b"\r\n", b"").count(b"\r") == 0 and data.replace(b"\r\n", b"").count(b"\n") == 0


@pytest.mark.parametrize("seed", range(40))
def test_crlf_only_walk_agrees_with_the_definition(seed: int) -> None:
    # crlf_only checks long runs of equal lines by stride (base64 bodies):
    # one bare CR or LF anywhere (inside a run, at its edges, in the text
    # between runs, swapped to LF CR) must still be found, and clean data
    # of every shape must pass.
    import base64
    import random

    rnd = random.Random(seed)
    pieces = []
    for _ in range(rnd.randint(1, 12)):
        shape = rnd.random()
        if shape < 0.5:
            width = rnd.choice([60, 64, 76, 78, 998])
            body = base64.b64encode(rnd.randbytes(rnd.randint(1, 40_000)))
            pieces.append(b"".join(body[i:i + width] + b"\r\n" for i in range(0, len(body), width)))
        elif shape < 0.8:
            pieces.append(b"".join(b"x" * rnd.randint(0, 120) + b"\r\n" for _ in range(rnd.randint(1, 400))))
        else:
            pieces.append(b"\r\n" * rnd.randint(1, 40))
    clean = b"".join(pieces)
    assert crlf_only(clean)
    ends = [i for i in range(1, len(clean)) if clean[i] == 10]
    for _ in range(25):
        at = rnd.randrange(len(clean) + 1)
        bad = rnd.choice([b"\r", b"\n", b"\n\r", b"\r\r\n", b"\r\n\n"])
        data = clean[:at] + bad + clean[at:]
        assert crlf_only(data) == _crlf_only_by_definition(data), (seed, at, bad)
        # The same fault where the stride walk lands: a line end of a run.
        i = rnd.choice(ends)
        for broken in (clean[:i - 1] + b"x" + clean[i:], clean[:i] + b"x" + clean[i + 1:],
                       clean[:i - 1] + b"\n\r" + clean[i + 1:]):
            assert crlf_only(broken) == _crlf_only_by_definition(broken) is False, (seed, i)


@pytest.mark.parametrize("seed", range(30))
def test_crlf_only_runs_with_a_line_end_inside_a_line(seed: int) -> None:
    # Data that is mostly runs of equal lines is checked by blanking the
    # runs' line ends in a copy: a CR or LF put in place of any other byte
    # of a run (its length unchanged, so the stride still lands) must be
    # found, and clean lines whose lengths add up to the stride must pass.
    import base64
    import random

    rnd = random.Random(seed)
    width = rnd.choice([60, 64, 76])
    body = base64.b64encode(rnd.randbytes(rnd.randint(20_000, 120_000)))
    lines = [body[i:i + width] for i in range(0, len(body), width)]
    # With odd seeds, two short lines as long as one run line together.
    if seed % 2:
        k = rnd.randrange(1, len(lines) - 1)
        split = rnd.randint(0, width - 2)
        lines[k:k + 1] = [lines[k][:split], lines[k][split + 2:]]
    clean = b"".join(line + b"\r\n" for line in lines)
    assert crlf_only(clean) and _crlf_only_by_definition(clean)
    for _ in range(40):
        i = rnd.randrange(len(clean))
        if clean[i] in b"\r\n":
            continue
        for bad in (b"\r", b"\n"):
            broken = clean[:i] + bad + clean[i + 1:]
            assert crlf_only(broken) is _crlf_only_by_definition(broken) is False, (seed, i, bad)


@pytest.mark.parametrize("name", ["\u00e9" + "a" * 196 + ".js.txt", "a" * 197 + ".js.txt",
                                  "\u00e9" + "a" * 195 + ".hta" + "x" * 40 + ".pdf"])
def test_a_long_name_keeps_its_extension_in_both_disposition_names(name: str) -> None:
    """Cut at 200 characters, these names would end in .js or .hta: the
    browser saves by filename*, so both names keep the judged extension."""
    value = filenames.content_disposition(name)
    names = re.findall(r'filename="([^"]*)"', value) + [urllib.parse.unquote(v) for v in
                                                         re.findall(r"filename\*=UTF-8''([^;\s]+)", value)]
    assert names and all(n.endswith("." + name.rsplit(".", 1)[1]) and len(n) <= 200 for n in names), names
