"""Where the gateway's block goes in a sender's HTML: before the last
"</body>" a browser reads as one, else before what the sender left open."""
from __future__ import annotations

import pytest

from gateway.mime.htmlpoint import insertion_point


@pytest.mark.parametrize("html, before", [
    (b"<html><body><p>hi</p></body></html>", b"</body></html>"),
    (b"<html><body><p>hi</p></BODY >", b"</BODY >"),
    (b"<html><body><p>hi</p><!-- </body> -->", b""),
    (b"<html><body><p>hi</p><!-- </body> --></body>", b"</body>"),
    (b"<html><body><p>hi</p><!-- -- > </body>", b"<!-- -- > </body>"),
    (b"<html><body><textarea></body></html>", b"<textarea></body></html>"),
    (b"<html><body><textarea></body></textarea></body>", b"</body>"),
    (b"<html><body><a title='</body>'>x</a>", b""),
    (b"<html><body><a title='</body>", b"<a title='</body>"),
    (b"<html><body><img alt=a\"b>x</body>", b"</body>"),
    (b"<html><body><template></body></html>", b"<template></body></html>"),
    (b"<html><body><noscript><!--</noscript></body>", b"<noscript><!--</noscript></body>"),
    (b"<html><body><![CDATA[ > <!-- ]]></body>", b"<![CDATA[ > <!-- ]]></body>"),
    (b"<html><body><script><!--<script></script></body></script></body>", b"<script><!--<script>"
                                                                          b"</script></body></script></body>"),
    (b"<p>no body", b""),
    (b"<p>a < b</p>", b""),
])
def test_the_block_goes_where_a_browser_reads_markup(html: bytes, before: bytes) -> None:
    assert html[insertion_point(html):] == before


def test_a_long_document_is_walked_in_linear_time() -> None:
    html = b"<p title='x'>a</p><!-- c -->" * 200_000 + b"</body>"
    assert insertion_point(html) == len(html) - len(b"</body>")


@pytest.mark.parametrize("html, steps, before", [
    # The fourth construct is where the steps run out: the block goes before it.
    (b"<p>a</p><p>b</p></body>", 3, b"</p></body>"),
    (b"<p>a</p></body><p>b</p><i>c</i></body>", 3, b"</body><p>b</p><i>c</i></body>"),
    # Quotes in a tag take steps too.
    (b"<a b='1' c='2' d='3'>x</a></body>", 3, b"<a b='1' c='2' d='3'>x</a></body>"),
    (b"<p>a</p></body>", 3, b"</body>"),
])
def test_a_walk_that_runs_out_of_steps_puts_the_block_where_it_stopped(html: bytes, steps: int,
                                                                      before: bytes) -> None:
    assert html[insertion_point(html, max_steps=steps):] == before
