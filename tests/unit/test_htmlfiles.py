"""gateway.mime.htmlfiles: a file carried in HTML as a data: URL, read as a
browser reads the attribute, in chunks as large bodies arrive."""
from __future__ import annotations

import time

import pytest

from gateway.mime.htmlfiles import embedded_file

FILE_URLS = [
    b'<a href="data:application/octet-stream;base64,TVqQ" download="x.exe">x</a>',
    b"<a href=data:,MZ%90 download>x</a>",
    b'<a href="&#100;&#x61;t&#97;&colon;application/x-msdownload;base64,TVqQ">x</a>',
    b'<a href="d\ta\nta:text/html,<script>">x</a>',
    b'<A HREF = " DATA:TEXT/HTML;base64,PHNjcmlwdD4=">x</A>',
    b'<iframe src="data:image/svg+xml,<svg onload=alert(1)>"></iframe>',
    b'<meta http-equiv="refresh" content="0;url=data:text/html;base64,PHNjcmlwdD4=">',
    b'<a href="data:image/png;base64,TVqQ" download="invoice.exe">x</a>',
    b'<a download="invoice.exe" href="data:image/png;base64,TVqQ">x</a>',
    b'<iframe srcdoc="&lt;a href=&quot;data:application/x-msdownload;base64,TVqQ&quot; download&gt;x"></iframe>',
    b'<iframe srcdoc="&lt;iframe srcdoc=&quot;&amp;lt;a href=&amp;quot;data:,MZ&amp;quot;&amp;gt;&quot;&gt;">',
]
HARMLESS = [
    b'<img src="data:image/png;base64,iVBORw0KGgo=" alt="">',
    b'<div style="background-image: url(\'data:image/jpeg;base64,/9j/\')"></div>',
    b"<p>Your data: attached, see the download section.</p>",
    b'<a href="https://example.com/download?x=1">download</a>',
    b"<p>Metadata:application/pdf is what the form said; our data: see below.</p>",
]


@pytest.mark.parametrize("html", FILE_URLS)
def test_a_file_in_a_data_url_is_found(html: bytes) -> None:
    assert embedded_file([b"<html><body>" + html + b"</body></html>"]) is not None


@pytest.mark.parametrize("html", HARMLESS)
def test_images_and_prose_are_not_files(html: bytes) -> None:
    assert embedded_file([b"<html><body>" + html + b"</body></html>"]) is None


@pytest.mark.parametrize("html", FILE_URLS)
def test_found_across_any_chunk_edge(html: bytes) -> None:
    doc = b"<p>" + b"x" * 5000 + b"</p>" + html
    for cut in range(5000, len(doc)):
        assert embedded_file([doc[:cut], doc[cut:]]) is not None, cut


def test_a_large_body_of_references_is_read_in_linear_time() -> None:
    doc = b"&#100;&#97;&#8217;&colon;<a href=" * 200_000  # 6.6 MB, no data: URL among them
    start = time.process_time()
    assert embedded_file(doc[i:i + 65536] for i in range(0, len(doc), 65536)) is None
    assert time.process_time() - start < 5


def test_a_download_attribute_far_before_the_image_counts() -> None:
    chunks = [b'<a download="invoice.exe" href="#">x</a>' + b"x" * 70000, b"y" * 70000,
              b'<a href="data:image/png;base64,TVqQ">x</a>']
    assert embedded_file(chunks) is not None


@pytest.mark.parametrize("charset,bom", [("utf-16", b""), ("utf-16-le", b""), ("utf-32", b""), ("cp037", b""),
                                         ("us-ascii", b"\xff\xfe"), (None, b"\xfe\xff")])
def test_found_in_a_charset_that_spells_it_otherwise(charset: str | None, bom: bytes) -> None:
    html = '<a href="data:application/octet-stream;base64,TVqQ" download="x.exe">x</a>' * 2000
    if bom:
        data = bom + html.encode("utf-16-le" if bom == b"\xff\xfe" else "utf-16-be")
    else:
        data = html.encode(charset)
    assert embedded_file([data[:4097], data[4097:]], charset) is not None


@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1", "x-unknown-charset", "windows-1252"])
def test_an_ascii_charset_is_read_as_it_is(charset: str) -> None:
    assert embedded_file([b'<img src="data:image/png;base64,iVBO">'], charset) is None
    assert embedded_file([b'<a href="data:text/html,x">'], charset) is not None
