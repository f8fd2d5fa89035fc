"""What a part really is: its type detected from its decoded first bytes.

Attachments lie about their type, so the policies compare the declared
Content-Type and the filename's extension with what libmagic (through
python-magic) makes of the first bytes.  Office Open XML files are ZIP
archives; libmagic's answer for them depends on the order of the archive's
entries, so a ZIP is classified here from the names of the entries whose
local headers lie in the first bytes: ``[Content_Types].xml`` with
``word/``, ``xl/`` or ``ppt/`` entries is DOCX, XLSX or PPTX; any other ZIP
stays ``application/zip`` whatever its name says (the whole archive is
examined afterwards by gateway/mime/container.py, from its central
directory).

Text is where libmagic is weakest: an SVG that starts with an XML prolog, a
comment or a few words, a web page, an HTML application, an Excel web
query or a Windows shortcut are all "text/plain" to it.  ``active_type``
looks for the markers of those formats anywhere in the first bytes,
whatever comes before them (whitespace, a byte-order mark, a prolog,
comments, junk), and names the real format, so that the allow-list refuses
it however it is named.

Runs in the worker (in a thread: libmagic is blocking C code), never in a
policy.
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
from collections.abc import Iterator

import magic

from policies import filetypes

OOXML = {
    "word/": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xl/": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt/": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
_ZIP_TYPES = {"application/zip", "application/octet-stream", "application/x-zip-compressed", *OOXML.values()}
_LOCAL_HEADER = b"PK\x03\x04"

#: Most libmagic handles a process keeps: detection is CPU work in C (ctypes
#: lets go of the GIL), so more handles than CPUs would only wait.
HANDLES = max(1, os.cpu_count() or 1)


class _Handles:
    """libmagic handles, each used by one thread at a time (a handle is not
    safe to share), at most ``limit`` of them, the last one given back
    handed out first.

    Not one per thread: every handle maps ``magic.mgc`` (8 MB on Debian 12)
    on its own, and the pages a detection reads count in the process's RSS
    once per handle.  With a handle per thread of the 64-thread pool, the
    bench's mix of 100 messages left 25.8 MiB of ``magic.mgc`` resident in
    one process (0.1 MiB fresh), and more under longer loads as more threads
    came to detect.  A detection takes 0.01-1 ms (text is the slowest).
    """

    def __init__(self, limit: int) -> None:
        self._free: list[magic.Magic] = []
        self._available = threading.Semaphore(limit)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def handle(self) -> Iterator[magic.Magic]:
        """A handle for this thread alone until the block ends."""
        with self._available:
            with self._lock:
                m = self._free.pop() if self._free else None
            if m is None:
                m = magic.Magic(mime=True)
            try:
                yield m
            finally:
                with self._lock:
                    self._free.append(m)


_handles = _Handles(HANDLES)


def zip_entry_names(head: bytes) -> list[str]:
    """Names of the ZIP entries whose local file headers lie in ``head``,
    walked from the start (entries stored with a data descriptor end the
    walk, since their size is not in the header)."""
    names: list[str] = []
    pos = 0
    while head.startswith(_LOCAL_HEADER, pos) and pos + 30 <= len(head):
        flags, = struct.unpack_from("<H", head, pos + 6)
        csize, = struct.unpack_from("<I", head, pos + 18)
        nlen, xlen = struct.unpack_from("<HH", head, pos + 26)
        name = head[pos + 30:pos + 30 + nlen]
        if len(name) < nlen:
            break
        names.append(name.decode("utf-8", "replace"))
        if flags & 0x08:
            break
        pos += 30 + nlen + xlen + csize
    return names


def ooxml_type(head: bytes) -> str | None:
    """The Office Open XML type of a ZIP from its entries, or None."""
    names = zip_entry_names(head)
    if "[Content_Types].xml" not in names:
        return None
    for prefix, ctype in OOXML.items():
        if any(n.startswith(prefix) for n in names):
            return ctype
    return None


# Markers of active content, searched case-insensitively in the text (most
# specific format first).  An event handler or a javascript: URL counts only
# inside a tag, so that prose such as "condition=ok" is not a web page.
_SIMPLE_ACTIVE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"<hta:application\b"), filetypes.HTA),
    (re.compile(r"\[internetshortcut\]"), filetypes.URL_SHORTCUT),
    (re.compile(r"\[desktop entry\]"), filetypes.DESKTOP_ENTRY),
    # An Excel web query: "WEB", a version number, then the URL, each on its own line.
    (re.compile(r"\A\s*web[ \t]*\r?\n[ \t]*\d+[ \t]*\r?\n"), filetypes.IQY),
    # SYLK: Excel opens it (even named .csv) and it can run macros.
    (re.compile(r"\A\s*id;"), filetypes.SYLK),
    (re.compile(r"<svg[\s>/:]"), filetypes.SVG),
]
# A web page by a start tag alone.
_HTML_TAGS = re.compile(r"<!doctype\s+html|<html[\s>]|<script[\s>]|<iframe[\s>]|<object[\s>]|<embed[\s>]"
                        r"|<body[\s>]|<frameset[\s>]")
# A web page by what is inside a tag: the tag's "<" and letter, then
# anything but ">" before these (as "<[a-z][^>]*" then each, which a regular
# expression finds in quadratic time: 8 KiB of "<a " took 0.6 s).
_TAG_START = re.compile(r"<[a-z]")
_IN_ANY_TAG = re.compile(r"\son[a-z]+\s*=|(?:java|vb)script\s*:")
_META_REFRESH = re.compile(r"http-equiv")
_IMG_SRC = re.compile(r"\ssrc\s*=")


def _web_page(text: str) -> bool:
    """Whether ``text`` has the markers of a web page: one of its start tags,
    or an event handler or script URL inside a tag, a ``<meta`` tag with
    ``http-equiv``, an ``<img`` with ``src``.

    Linear: every tag that starts between two ">" ends at the second, so
    only the first start in that stretch need be tried (the others' text is
    part of its text)."""
    if _HTML_TAGS.search(text):
        return True
    pos, n = 0, len(text)
    while (start := _TAG_START.search(text, pos)) is not None:
        end = text.find(">", start.start())
        end = n if end < 0 else end
        if _IN_ANY_TAG.search(text, start.start() + 2, end):
            return True
        meta = text.find("<meta", start.start(), end)
        if meta >= 0 and _META_REFRESH.search(text, meta + 5, end):
            return True
        img = text.find("<img", start.start(), end)
        if img >= 0 and _IMG_SRC.search(text, img + 4, end):
            return True
        pos = end + 1
    return False


# Detected types whose bytes are text that may hide one of those formats.
_TEXTUAL = {"application/xml", "image/svg+xml", "application/x-empty", "application/octet-stream",
            "application/x-wine-extension-ini", "application/json"}


def _text(head: bytes) -> str:
    """``head`` as lower-case text for the marker search: UTF-16 (with a
    byte-order mark, or the zero bytes of one without) decoded, anything
    else read byte for byte, NULs dropped."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", "ignore")
    elif len(head) >= 8 and head[1:64:2].count(0) > len(head[1:64:2]) * 3 // 4:
        text = head.decode("utf-16-le", "ignore")
    elif len(head) >= 8 and head[0:64:2].count(0) > len(head[0:64:2]) * 3 // 4:
        text = head.decode("utf-16-be", "ignore")
    else:
        text = head.decode("latin-1")
    return text.replace("\x00", "").lower()


def active_type(head: bytes) -> str | None:
    """The active-content format whose markers appear in ``head`` (SVG, a
    web page, an HTML application, an Excel web query or SYLK sheet, a
    shortcut or desktop entry, a script with a shebang), or None."""
    text = _text(head)
    for pattern, ctype in _SIMPLE_ACTIVE:
        if pattern.search(text):
            return ctype
    if _web_page(text):
        return filetypes.HTML
    if text.lstrip("\ufeff\xef\xbb\xbf").startswith("#!"):
        return "text/x-shellscript"
    return None


def detect(head: bytes) -> str:
    """The MIME type of data starting with ``head`` (lower case)."""
    if not head:
        return "application/x-empty"
    try:
        with _handles.handle() as m:
            detected = (m.from_buffer(head) or "application/octet-stream").lower()
    except magic.MagicException:
        detected = "application/octet-stream"
    if head.startswith(_LOCAL_HEADER) and detected in _ZIP_TYPES:
        return ooxml_type(head) or "application/zip"
    if (detected.startswith("text/") or detected in _TEXTUAL) and detected not in filetypes.EXECUTABLE_TYPES:
        return active_type(head) or detected
    return detected
