"""Where in a sender's HTML the gateway's own block (links, notices) can go
so that a browser reads it as markup in the body.

A search for the last ``</body>`` is not enough: the sender writes the
HTML, and ``<!-- </body> -->`` at its end puts the block inside a comment
(hidden), while the sender's own look-alike link above it is what the agent
sees and clicks.  The same goes for a ``</body>`` inside a ``<textarea>``,
a ``<style>`` or an attribute value, and for the end of a document that
leaves a comment, a tag or a raw-text element open.

``insertion_point`` walks the document the way the HTML tokenizer does
(WHATWG HTML section 13.2.5) for the constructs that can swallow markup:
comments, bogus comments, tags with quoted attribute values, raw-text and
RCDATA elements.  Where its reading could differ from a browser's (foreign
SVG or MathML content, CDATA sections, ``<noscript>``, ``<template>`` and
``<select>``, whose content is not shown as links, ``<plaintext>``, a
script with ``<!--`` in it) it stops: that construct is "trouble", and the block goes
before it, where the tokenizer is certainly reading markup.  So is the
construct reached after ``MAX_STEPS`` of them (tags, comments, quotes in
tags): the walk costs Python time per construct, and 4 MiB of "<" took
7 s.  Pure: bytes in, an offset out.  The document is read as bytes of an ASCII-compatible
charset (the rewriter transcodes any other to UTF-8 first).
"""
from __future__ import annotations

import re

# Elements whose content is text up to their own end tag: raw text and RCDATA.
_RAW_TEXT = frozenset({b"script", b"style", b"textarea", b"title", b"xmp", b"iframe", b"noembed", b"noframes"})
# Start tags after which the reading may differ from a browser's, or the
# block would not be shown as links: the block goes before them.
# ``noscript`` is raw text where scripting is on and markup where it is off
# (a mail client): a comment opened inside it hides what follows in one
# reader only.
_TROUBLE = frozenset({b"svg", b"math", b"template", b"select", b"plaintext", b"frameset", b"noscript"})
_NAME_END = re.compile(rb"[ \t\n\r\f/>]")
_COMMENT_END = re.compile(rb"--!?>")
# What ends a tag or may open a value in it: the rest of a tag is skipped in C.
_IN_TAG = re.compile(rb"[>\"']")
# Constructs walked at most: a 5.6 MB document of 600,000 ordinary ones is
# walked whole; a hostile one stops after a second or two of CPU.
MAX_STEPS = 1_000_000


class _Spent(Exception):
    """The walk used up its steps."""


class _Steps:
    """What is left of a walk's steps."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _Spent()


def insertion_point(html: bytes, max_steps: int = MAX_STEPS) -> int:
    """The offset at which added markup is read as markup in the body:
    before the last ``</body>`` end tag a browser reads as one, when no
    trouble comes before it; else before the first trouble (a construct
    left open at the end, one read differently by different readers, or
    the one reached after ``max_steps``); else the end of the document."""
    body_end, trouble = _walk(html, _Steps(max_steps))
    if body_end >= 0:
        return body_end
    return len(html) if trouble is None else trouble


def _walk(html: bytes, steps: _Steps) -> tuple[int, int | None]:
    """(offset of the last ``</body>`` end tag before any trouble or -1,
    offset of the first trouble or None)."""
    n = len(html)
    body_end = -1
    i = lt = 0
    try:
        while True:
            lt = html.find(b"<", i)
            if lt < 0 or lt + 1 >= n:
                return body_end, None  # text to the end ("<" alone is text)
            steps.take()
            i = _construct(html, lt, steps)
            if i < 0:
                return body_end, lt
            if i > n:  # a "</body>" end tag, read as one
                body_end = lt
                i -= n
    except _Spent:
        # Read as the tokenizer reads up to here: this construct begins
        # where markup is read.
        return body_end, lt


def _construct(html: bytes, lt: int, steps: _Steps) -> int:
    """The offset after the construct at ``lt`` (a "<" that is not the
    last byte), -1 when it is trouble, or that offset plus ``len(html)``
    when it is a ``</body>`` end tag."""
    n = len(html)
    nxt = html[lt + 1:lt + 2]
    if html.startswith(b"<!--", lt):
        return _comment_end(html, lt + 4)
    if html.startswith(b"<![", lt):
        return -1  # CDATA: a section in SVG or MathML, a bogus comment elsewhere
    if nxt in (b"!", b"?"):
        gt = html.find(b">", lt + 2)  # a bogus comment (a DOCTYPE too): to the first ">"
        return -1 if gt < 0 else gt + 1
    if nxt == b"/":
        after = html[lt + 2:lt + 3]
        if after == b">":
            return lt + 3  # "</>" is dropped
        if after.isalpha():
            end, name = _tag(html, lt + 2, steps)
            if end >= 0 and name == b"body":
                return end + n
            return end
        if not after:
            return n  # "</" at the end is text: nothing after it
        gt = html.find(b">", lt + 2)  # "</" and no letter: a bogus comment
        return -1 if gt < 0 else gt + 1
    if nxt.isalpha():
        end, name = _tag(html, lt + 1, steps)
        if end < 0 or name in _TROUBLE:
            return -1
        if name in _RAW_TEXT:  # "<textarea/>" opens one too: the slash means nothing
            close = _raw_text_end(html, end, name, steps)
            if close < 0 or name == b"script" and b"<!--" in html[end:close]:
                return -1  # open to the end, or a script's escaped text
            return close
        return end
    return lt + 1  # "<" and no letter: text


def _comment_end(html: bytes, start: int) -> int:
    """The offset after a comment whose "<!--" ends before ``start``, or -1
    when it is not closed: "<!-->" and "<!--->" are empty comments."""
    if html.startswith(b">", start):
        return start + 1
    if html.startswith(b"->", start):
        return start + 2
    m = _COMMENT_END.search(html, start)
    return -1 if m is None else m.end()


def _tag(html: bytes, start: int, steps: _Steps) -> tuple[int, bytes]:
    """(offset after the tag whose name starts at ``start``, the name in
    lower case), or (-1, name) when the tag is not closed: attribute values
    in quotes are read whole, so a ">" or "</body>" in one ends nothing."""
    m = _NAME_END.search(html, start)
    if m is None:
        return -1, html[start:].lower()
    name = html[start:m.start()].lower()
    i = m.start()
    while (m := _IN_TAG.search(html, i)) is not None:
        i = m.start()
        ch = html[i:i + 1]
        if ch == b">":
            return i + 1, name
        steps.take()  # a quote: one step each, whether it opens a value or not
        if _value_follows(html, i):
            close = html.find(ch, i + 1)
            if close < 0:
                return -1, name
            i = close + 1
        else:
            i += 1
    return -1, name


def _value_follows(html: bytes, quote_at: int) -> bool:
    """Whether the quote at ``quote_at`` opens an attribute value (it comes
    after "=" and blanks); elsewhere a quote is part of a name."""
    j = quote_at - 1
    while j >= 0 and html[j:j + 1] in (b" ", b"\t", b"\n", b"\r", b"\f"):
        j -= 1
    return html[j:j + 1] == b"="


def _raw_text_end(html: bytes, start: int, name: bytes, steps: _Steps) -> int:
    """The offset after the end tag that closes raw text ``name`` begun at
    ``start`` ("</name" and a blank, "/" or ">", in any case), or -1."""
    pattern = re.compile(rb"</" + re.escape(name) + rb"[ \t\n\r\f/>]", re.IGNORECASE)
    m = pattern.search(html, start)
    if m is None:
        return -1
    end, _ = _tag(html, m.start() + 2, steps)
    return -1 if end < 0 else end
