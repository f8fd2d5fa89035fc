"""What a part really is: its type detected from its decoded first bytes.

Attachments lie about their type, so the policies compare the declared
Content-Type and the filename's extension with what libmagic (through
python-magic) makes of the first bytes.  Office Open XML files are ZIP
archives; libmagic's answer for them depends on the order of the archive's
entries, so a ZIP is classified here from the names of the entries whose
local headers lie in the first bytes: ``[Content_Types].xml`` with
``word/``, ``xl/`` or ``ppt/`` entries is DOCX, XLSX or PPTX; any other ZIP
stays ``application/zip`` whatever its name says.

Runs in the worker (in a thread: libmagic is blocking C code), never in a
policy.
"""
from __future__ import annotations

import struct
import threading

import magic

OOXML = {
    "word/": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xl/": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt/": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
_ZIP_TYPES = {"application/zip", "application/octet-stream", "application/x-zip-compressed", *OOXML.values()}
_LOCAL_HEADER = b"PK\x03\x04"

# A libmagic handle is not safe to share between threads; one per thread.
_local = threading.local()


def _magic() -> magic.Magic:
    m = getattr(_local, "magic", None)
    if m is None:
        m = _local.magic = magic.Magic(mime=True)
    return m


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


def detect(head: bytes) -> str:
    """The MIME type of data starting with ``head`` (lower case)."""
    if not head:
        return "application/x-empty"
    try:
        detected = (_magic().from_buffer(head) or "application/octet-stream").lower()
    except magic.MagicException:
        detected = "application/octet-stream"
    if head.startswith(_LOCAL_HEADER) and detected in _ZIP_TYPES:
        return ooxml_type(head) or "application/zip"
    return detected
