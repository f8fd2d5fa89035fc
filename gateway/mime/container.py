"""What a ZIP really holds: Office Open XML, Office with macros, or an
archive; and whether an old Office file (an OLE compound file) has macros.

The first 8 KiB that gateway/mime/sniff.py sees show only the first local
headers of a ZIP: a file whose first entries are ``[Content_Types].xml`` and
``word/...`` looks like a Word document even when it also carries a
program, a VBA project or a second document further on.  This module reads
the archive's central directory (at its end, so the whole decoded part is
needed) and names what the archive is:

* the Office Open XML flavour (DOCX, XLSX, PPTX, their templates and slide
  shows) from the main part's content type in ``[Content_Types].xml``;
* the macro-enabled variant (DOCM, XLSM, PPTM, ...) when that content type
  says so, when any content type is macro-enabled or a VBA project, or when
  a ``vbaProject.bin`` or an Excel 4 macro sheet is inside;
* ``OOXML_REMOTE`` when a relationship fetches a template, an object, a
  frame or a sub-document from outside the package when it is opened (the
  remote-template and Follina attacks: the code comes from the internet);
* ``ARCHIVED_PROGRAM`` when any entry is named as a program, a script or
  a web page (``filetypes.EXECUTABLE_EXTENSIONS``, ``ACTIVE_EXTENSIONS``):
  refused as a program even where ZIP archives are allowed;
* ``ODF_MACROS`` for an OpenDocument file (libmagic's type, from its
  ``mimetype`` entry) with a ``Basic/`` or ``Scripts/`` folder: macros;
* ``application/zip`` when any entry is outside the package's part names,
  or the content types name no main part;
* ``UNEXAMINED_ARCHIVE`` when it cannot be read to a verdict: a central
  directory that does not parse, encrypted entries, duplicate names, more
  than ``MAX_ENTRIES`` entries, a ``[Content_Types].xml`` or a relationship
  part over ``MAX_CONTENT_TYPES`` bytes, or more than ``MAX_INFLATED``
  bytes of them in all (a zip bomb); an entry that is itself an archive
  (``filetypes.ARCHIVE_EXTENSIONS``: not opened here); or two readers could
  see two different archives: a local header whose name is not its
  central record's (a reader that walks the local headers, as streaming
  unzippers and some antivirus engines do, would extract ``run.exe`` where
  the directory says ``readme.txt``), or a file that starts with a local
  header the directory does not begin at (two archives one after the
  other: 7-Zip opens the first, zipfile the last).  The policies refuse it.

An old Word, Excel or PowerPoint file (``.doc``, ``.xls``, ``.ppt``: an OLE
compound file, which disarm cannot rewrite) is ``OLE_ACTIVE`` when its
directory holds a VBA project (a ``Macros``, ``VBA`` or ``_VBA_PROJECT_CUR``
storage), a packaged file (``\x01Ole10Native``) or a linked object, or its
workbook globals name an Excel 4 macro sheet or a VBA module sheet; and an
unexamined archive when olefile cannot read its directory.  A route that
allows old Office files then still never passes one that runs code.

Nothing is extracted to disk, and only ``[Content_Types].xml`` and the
relationship parts (``*.rels``) are decompressed, each at most
``MAX_CONTENT_TYPES`` bytes, at most ``MAX_RELS`` of them, at most
``MAX_INFLATED`` bytes in all: reading them costs CPU per byte inflated,
and deflate inflates 1 KiB to 1 MiB (a 48 KiB part of 40 relationship
parts of 1 MiB each took 0.75 s, one of 300 in 650 KB took 12 s).  All of
it is blocking: the worker and the upload paths call it in a thread
(``zip_like`` says, from a part's first bytes, whether it will cost that).
"""
from __future__ import annotations

import re
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

import olefile

from gateway.mime import sniff
from gateway.mime.decode import Measure, decoded_chunks
from gateway.mime.parse import Part
from gateway.mime.source import Source
from policies import filetypes

# Bounds on what one archive may cost to examine.
MAX_ENTRIES = 10_000
MAX_CONTENT_TYPES = 1 << 20  # bytes of [Content_Types].xml decompressed
MAX_CENTRAL_DIRECTORY = 64 << 20  # bytes of central directory walked
MAX_RELS = 1000  # relationship parts read
MAX_INFLATED = 8 << 20  # bytes of [Content_Types].xml and relationship parts decompressed in all
# Bytes those entries may declare for a small archive to be examined on the
# event loop (a DOCX's are a few KiB: 2.5 ms of reading at most); past it,
# Costly, and the caller goes to a thread.  zipfile never inflates an entry
# past its declared size (it stops there and checks the CRC), so the
# declared sizes bound the work.
LOOP_INFLATED = 64 << 10
# Decoded bytes held in memory while spooling a part; the rest goes to a
# temporary file (deleted on close).
SPOOL_MEMORY = 4 << 20

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"

# Main-part content type (lower case) -> the package's file type.
_MAIN_PARTS = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml": filetypes.DOCX,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml": filetypes.DOTX,
    "application/vnd.ms-word.document.macroenabled.main+xml": filetypes.DOCM,
    "application/vnd.ms-word.template.macroenabledtemplate.main+xml": filetypes.DOTM,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml": filetypes.XLSX,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.template.main+xml": filetypes.XLTX,
    "application/vnd.ms-excel.sheet.macroenabled.main+xml": filetypes.XLSM,
    "application/vnd.ms-excel.template.macroenabled.main+xml": filetypes.XLTM,
    "application/vnd.ms-excel.addin.macroenabled.main+xml": filetypes.XLAM,
    "application/vnd.ms-excel.sheet.binary.macroenabled.main": filetypes.XLSB,
    "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml": filetypes.PPTX,
    "application/vnd.openxmlformats-officedocument.presentationml.template.main+xml": filetypes.POTX,
    "application/vnd.openxmlformats-officedocument.presentationml.slideshow.main+xml": filetypes.PPSX,
    "application/vnd.ms-powerpoint.presentation.macroenabled.main+xml": filetypes.PPTM,
    "application/vnd.ms-powerpoint.template.macroenabled.main+xml": filetypes.POTM,
    "application/vnd.ms-powerpoint.slideshow.macroenabled.main+xml": filetypes.PPSM,
    "application/vnd.ms-powerpoint.addin.macroenabled.main+xml": filetypes.PPAM,
}
# Each flavour's own top-level folder.
_FOLDER = {**{t: "word/" for t in (filetypes.DOCX, filetypes.DOTX, filetypes.DOCM, filetypes.DOTM)},
           **{t: "xl/" for t in (filetypes.XLSX, filetypes.XLTX, filetypes.XLSM, filetypes.XLTM,
                                 filetypes.XLAM, filetypes.XLSB)},
           **{t: "ppt/" for t in (filetypes.PPTX, filetypes.POTX, filetypes.PPSX, filetypes.PPTM,
                                  filetypes.POTM, filetypes.PPSM, filetypes.PPAM)}}
# Part names any Office Open XML package may have besides its own folder
# (relationships, properties, custom XML, signatures, sensitivity labels,
# ribbon customisation, what Office 2007 left in "[trash]"), lower case.
_COMMON = ("_rels/", "docprops/", "customxml/", "_xmlsignatures/", "docmetadata/", "customui/", "[trash]/")
_CONTENT_TYPES = "[content_types].xml"
_CONTENT_TYPE_ATTR = re.compile(rb"""contenttype\s*=\s*["']([^"']*)["']""")
_RELATIONSHIP = re.compile(rb"<relationship\b[^>]*>")
# Where ``_RELATIONSHIP`` may start (a constant-time look at each).
_RELATIONSHIP_START = re.compile(rb"<relationship\b")
_EXTERNAL = re.compile(rb"""targetmode\s*=\s*["']external["']""")
_REL_TYPE = re.compile(rb"""\btype\s*=\s*["'][^"']*/(attachedtemplate|oleobject|frame|subdocument|package)["']""")
# Entries that carry macros whatever the content types say.
_MACRO_ENTRY = re.compile(r"(^|/)vbaproject\.bin$|(^|/)vbadata\.xml$|^xl/(intl)?macrosheets/")

# OpenDocument types (as libmagic names them from the "mimetype" entry) and
# the folders that hold their macros (LibreOffice Basic; Python, BeanShell,
# JavaScript scripts).
_ODF = "application/vnd.oasis.opendocument."
_ODF_MACROS = ("basic/", "scripts/")

# What libmagic (or sniff's look at the first local headers) may call a
# ZIP: generic names and the Office types, all decided here instead.
_GENERIC_ZIP = {"application/zip", "application/x-zip-compressed", "application/octet-stream",
                *_MAIN_PARTS.values()}


_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# What libmagic calls an old Office file: examined whole for macros.
_OLE_OFFICE = {"application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
               "application/x-ole-storage", "application/cdfv2", "application/vnd.ms-office"}
# Storages (lower case) that hold a VBA project: Word's, Excel's, any.
_VBA_STORAGES = {"macros", "_vba_project_cur", "vba"}
# The workbook globals read for sheet records (they come first, before any sheet).
MAX_BIFF_GLOBALS = 4 << 20
_BIFF_EOF, _BIFF_BOUNDSHEET = 0x000A, 0x0085


class Unexamined(Exception):
    """The archive cannot be read to a verdict."""


class Costly(Exception):
    """The archive's entries to read would inflate to more than the caller
    allows where it is (on the event loop): examine it again in a thread."""


def zip_like(head: bytes, detected: str) -> bool:
    """Whether a part whose first bytes are ``head`` and which libmagic
    called ``detected`` must be examined as a ZIP (costs nothing else)."""
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")) or (
        detected in _GENERIC_ZIP and detected != "application/octet-stream") or (
        head.startswith(_OLE_MAGIC) and detected in _OLE_OFFICE)


def _end_record(f: IO[bytes], size: int) -> tuple[int, int, int]:
    """(entries, central directory size, its offset) from the end of
    central directory record, found as zipfile finds it (at the very end,
    else the last one in the final 64 KiB), Zip64 included."""
    if size < 22:
        raise Unexamined("too short to be a ZIP")
    f.seek(size - 22)
    tail = f.read(22)
    pos = size - 22
    if not tail.startswith(_EOCD):
        start = max(0, size - 22 - 65535)
        f.seek(start)
        tail = f.read()
        i = tail.rfind(_EOCD)
        if i < 0 or len(tail) - i < 22:
            raise Unexamined("no end of central directory")
        pos = start + i
        tail = tail[i:i + 22]
    disk, cd_disk, _, entries, cd_size, cd_offset = struct.unpack("<HHHHII", tail[4:20])
    if disk != 0 or cd_disk != 0:
        raise Unexamined("a multi-disk archive")
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        if pos < 20:
            raise Unexamined("Zip64 locator missing")
        f.seek(pos - 20)
        loc = f.read(20)
        if not loc.startswith(_ZIP64_LOCATOR):
            raise Unexamined("Zip64 locator missing")
        eocd64, = struct.unpack("<Q", loc[8:16])
        f.seek(eocd64)
        rec = f.read(56)
        if len(rec) < 56 or not rec.startswith(_ZIP64_EOCD):
            raise Unexamined("Zip64 end record missing")
        entries, cd_size, cd_offset = struct.unpack("<QQQ", rec[32:56])
        # zipfile locates the directory relative to the Zip64 record.
        pos = eocd64
    if entries > MAX_ENTRIES:
        raise Unexamined(f"{entries} entries (more than {MAX_ENTRIES})")
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise Unexamined(f"a central directory of {cd_size} bytes")
    # Data prepended to the archive shifts every offset (zipfile allows it).
    start = pos - cd_size
    if start < 0:
        raise Unexamined("central directory outside the file")
    return entries, cd_size, start


def _central_names(f: IO[bytes], size: int) -> list[tuple[str, int, bytes]]:
    """(name, flags, the name's raw bytes) of each central directory
    record, walked by hand with the bounds above before zipfile builds an
    object per entry."""
    entries, cd_size, start = _end_record(f, size)
    f.seek(start)
    cd = f.read(cd_size)
    if len(cd) != cd_size:
        raise Unexamined("central directory truncated")
    out: list[tuple[str, int, bytes]] = []
    pos = 0
    while pos < cd_size:
        if not cd.startswith(_CENTRAL, pos) or pos + 46 > cd_size:
            raise Unexamined("central directory does not parse")
        flags, = struct.unpack_from("<H", cd, pos + 8)
        nlen, xlen, clen = struct.unpack_from("<HHH", cd, pos + 28)
        raw = cd[pos + 46:pos + 46 + nlen]
        name = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        out.append((name, flags, raw))
        if len(out) > MAX_ENTRIES:
            raise Unexamined(f"more than {MAX_ENTRIES} entries")
        pos += 46 + nlen + xlen + clen
    if len(out) != entries:
        raise Unexamined(f"central directory has {len(out)} entries, its end record says {entries}")
    return out


def _normal(name: str) -> str:
    """A part name as Office compares them: lower case, forward slashes,
    no leading slash."""
    return name.replace("\\", "/").lstrip("/").lower()


class _Allowance:
    """The bytes still to be inflated from one archive (``MAX_INFLATED``)."""

    def __init__(self, cheap: int | None = None) -> None:
        self.left = MAX_INFLATED
        self.cheap = cheap  # declared bytes still allowed here, or None: no such bound

    def read(self, z: zipfile.ZipFile, name: str) -> bytes:
        """One member, decompressed: at most ``MAX_CONTENT_TYPES`` bytes and
        at most what is left of the archive's allowance (both checked while
        inflating, never after).  Costly when the member declares more than
        is left of ``cheap``."""
        if self.cheap is not None:
            self.cheap -= z.getinfo(name).file_size
            if self.cheap < 0:
                raise Costly(name)
        cap = min(MAX_CONTENT_TYPES, self.left)
        with z.open(name) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            if cap < MAX_CONTENT_TYPES:
                raise Unexamined(f"over {MAX_INFLATED} bytes of content types and relationships decompressed")
            raise Unexamined(f"{name} over {MAX_CONTENT_TYPES} bytes")
        self.left -= len(data)
        return data


def _content_types(z: zipfile.ZipFile, name: str, allowance: _Allowance) -> list[str]:
    """The content types named in ``[Content_Types].xml`` (lower case), read
    with a cap; attribute values by pattern, not an XML parser (no entity
    expansion, no external references)."""
    data = allowance.read(z, name)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        data = data.decode("utf-16", "ignore").encode("utf-8")
    return [m.group(1).decode("utf-8", "replace").strip().lower() for m in _CONTENT_TYPE_ATTR.finditer(data.lower())]


def examine_zip(f: IO[bytes], detected: str = "application/zip", cheap: int | None = None) -> str:
    """The refined type of the ZIP in the seekable binary file ``f`` (see
    the module docstring); ``detected`` is libmagic's answer, kept when it
    is a specific non-Office archive type (a Java archive, an OpenDocument
    file) and nothing inside says otherwise."""
    f.seek(0, 2)
    size = f.tell()
    try:
        entries = _central_names(f, size)
        names = [_normal(n) for n, _, _ in entries]
        if any(flags & 0x1 for _, flags, _ in entries):
            raise Unexamined("encrypted entries")
        if len(set(names)) != len(names):
            raise Unexamined("duplicate entry names")
        f.seek(0)
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            if [_normal(i.filename) for i in infos] != names:
                raise Unexamined("zipfile reads a different directory")
            _same_local_headers(f, infos, [raw for _, _, raw in entries])
            extensions = [_extension(n) for n in names]
            if any(e in filetypes.EXECUTABLE_EXTENSIONS or e in filetypes.ACTIVE_EXTENSIONS for e in extensions):
                return filetypes.ARCHIVED_PROGRAM
            if any(e in filetypes.ARCHIVE_EXTENSIONS for e in extensions):
                raise Unexamined("an archive inside the archive")
            if detected.startswith(_ODF) and any(n.startswith(_ODF_MACROS) for n in names):
                return filetypes.ODF_MACROS
            ct_name = next((i.filename for i in infos if _normal(i.filename) == _CONTENT_TYPES), None)
            if ct_name is None:
                return detected if detected not in _GENERIC_ZIP else "application/zip"
            allowance = _Allowance(cheap)
            types = _content_types(z, ct_name, allowance)
            rels = [i.filename for i in infos if _normal(i.filename).endswith(".rels")]
            if len(rels) > MAX_RELS:
                raise Unexamined(f"more than {MAX_RELS} relationship parts")
            remote = any(_fetches_code(z, r, allowance) for r in rels)
    except Unexamined:
        return filetypes.UNEXAMINED_ARCHIVE
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, EOFError,
            OSError, struct.error, UnicodeError, zlib.error):
        return filetypes.UNEXAMINED_ARCHIVE
    kind = _ooxml(names, types)
    if remote and kind in _FOLDER:
        return filetypes.OOXML_REMOTE
    return kind


def _fetches_code(z: zipfile.ZipFile, name: str, allowance: _Allowance) -> bool:
    """Whether a relationship part points a template, an OLE object, a
    frame, a sub-document or a package outside the file (read capped)."""
    data = allowance.read(z, name)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        data = data.decode("utf-16", "ignore").encode("utf-8")
    for tag in _relationship_tags(data.lower()):
        if _EXTERNAL.search(tag) and _REL_TYPE.search(tag):
            return True
    return False


def _relationship_tags(data: bytes) -> Iterator[bytes]:
    """The tags ``_RELATIONSHIP.finditer(data)`` matches, found in linear
    time: the pattern alone reads to the end of the data for each
    "<relationship" with no ">" after it (1 MiB of them, which a small ZIP
    holds compressed, took minutes).  Such a tag ends at the first ">", and
    when there is none, no later tag can end either."""
    pos = 0
    while (m := _RELATIONSHIP_START.search(data, pos)) is not None:
        gt = data.find(b">", m.end())
        if gt < 0:
            return
        yield data[m.start():gt + 1]
        pos = gt + 1


def _same_local_headers(f: IO[bytes], infos: list[zipfile.ZipInfo], raw_names: list[bytes]) -> None:
    """Raise Unexamined unless every entry's local header is where its
    central record says and names the same entry, and the file starts with
    the first of them (zipfile's offsets already count data prepended to
    the archive)."""
    offsets = sorted(i.header_offset for i in infos)
    f.seek(0)
    if f.read(4) == b"PK\x03\x04" and offsets and offsets[0] != 0:
        raise Unexamined("a second archive before the one the directory describes")
    for info, raw in zip(infos, raw_names, strict=True):
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) < 30 or not header.startswith(b"PK\x03\x04"):
            raise Unexamined("a central record points at no local header")
        nlen, = struct.unpack_from("<H", header, 26)
        if nlen != len(raw) or f.read(nlen) != raw:
            raise Unexamined("a local header names another entry than the central directory")


def _extension(name: str) -> str:
    """An entry's extension, as ``filetypes.extension`` reads it ('' for a folder)."""
    return "" if name.endswith("/") else filetypes.extension(name.rsplit("/", 1)[-1])


def _ooxml(names: list[str], types: list[str]) -> str:
    """The package's type from its part names and content types."""
    mains = {_MAIN_PARTS[t] for t in types if t in _MAIN_PARTS}
    folders = {_FOLDER[t] for t in mains}
    if len(folders) != 1:
        # No main part, or parts of two applications: not a document Office opens as one thing.
        return "application/zip"
    folder, = folders
    if len(mains) > 1:
        # The same application twice (a document and a template): keep the macro one if any.
        macro_mains = mains & filetypes.MACRO_TYPES
        main = sorted(macro_mains or mains)[0]
    else:
        main, = mains
    allowed = (folder, *_COMMON)
    for n in names:
        if n == _CONTENT_TYPES or n.endswith("/") and any(p.startswith(n) for p in allowed):
            continue
        if not n.startswith(allowed):
            return "application/zip"
    # A macro sheet is one by its content type wherever it lies (Excel does
    # not need the xl/macrosheets/ folder).
    macro = any("macroenabled" in t or "vbaproject" in t or "macrosheet" in t for t in types) \
        or any(_MACRO_ENTRY.search(n) for n in names)
    if macro and main not in filetypes.MACRO_TYPES:
        return filetypes.MACRO_VARIANT.get(main, main)
    return main


def _spooled(chunks: Iterable[bytes]) -> IO[bytes]:
    """The bytes in a temporary file, in memory up to ``SPOOL_MEMORY``."""
    f = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    try:
        for chunk in chunks:
            f.write(chunk)
    except BaseException:
        f.close()
        raise
    return f


def detect_chunks(head: bytes, chunks: Iterable[bytes]) -> str:
    """The detected type of a file whose first bytes are ``head`` and whose
    whole content ``chunks`` yields (only consumed for a ZIP-like file).
    Blocking: call it in a thread."""
    detected = sniff.detect(head)
    if not zip_like(head, detected):
        return detected
    return examine_chunks(chunks, detected)


def examine_chunks(chunks: Iterable[bytes], detected: str, cheap: int | None = None) -> str:
    """``examine_zip`` on the file ``chunks`` yields (libmagic called it
    ``detected``).  Blocking and costly: on the event loop only for a small
    part with ``cheap`` (``LOOP_INFLATED``), which raises Costly beyond it."""
    with _spooled(chunks) as f:
        f.seek(0)
        if f.read(len(_OLE_MAGIC)) == _OLE_MAGIC:
            if cheap is not None:
                raise Costly("an OLE compound file")  # olefile reads its whole directory
            return examine_ole(f, detected)
        return examine_zip(f, detected, cheap)


def examine_ole(f: IO[bytes], detected: str) -> str:
    """``OLE_ACTIVE`` for an old Office file in ``f`` that has macros, a
    packaged file or a linked object (see the module docstring), an
    unexamined archive when its directory does not read, else ``detected``."""
    f.seek(0)
    try:
        with olefile.OleFileIO(f) as ole:
            paths = ole.listdir(streams=True, storages=True)
            for path in paths:
                lower = [p.lower() for p in path]
                if set(lower) & _VBA_STORAGES or lower[-1] == "\x01ole10native":
                    return filetypes.OLE_ACTIVE
                if lower[-1] == "\x01ole" and _linked(ole.openstream(path).read(8)):
                    return filetypes.OLE_ACTIVE
            for name in ("Workbook", "Book"):
                if ole.exists(name) and _macro_sheets(ole.openstream(name).read(MAX_BIFF_GLOBALS)):
                    return filetypes.OLE_ACTIVE
    except (OSError, ValueError, IndexError, struct.error, RecursionError, MemoryError):
        return filetypes.UNEXAMINED_ARCHIVE
    return detected


def _linked(head: bytes) -> bool:
    """Whether an ``\x01Ole`` stream (version, then flags) is a linked
    object: one its source is fetched from, a URL moniker included
    (CVE-2017-0199)."""
    return len(head) >= 8 and bool(struct.unpack_from("<I", head, 4)[0] & 1)


def _macro_sheets(globals_: bytes) -> bool:
    """Whether a BIFF workbook's globals name a sheet that is an Excel 4
    macro sheet or a VBA module (BOUNDSHEET's sheet type 1 or 6)."""
    pos = 0
    while pos + 4 <= len(globals_):
        rtype, rlen = struct.unpack_from("<HH", globals_, pos)
        if rtype == _BIFF_EOF:
            return False
        if rtype == _BIFF_BOUNDSHEET and rlen >= 6 and pos + 10 <= len(globals_) and globals_[pos + 9] in (1, 6):
            return True
        pos += 4 + rlen
    return False


def detect_part(src: Source, part: Part, m: Measure) -> str:
    """The detected type of a leaf part, measured as ``m``: libmagic and the
    text markers on its first bytes, and for a ZIP the examination of the
    whole decoded part.  Blocking: call it in a thread."""
    return detect_chunks(m.head, decoded_chunks(src, part))
