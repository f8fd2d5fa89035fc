"""File types as the content policies see them: plain data, no I/O.

Shared by the type policies (``allowed_types``, ``refuse_executables``,
``refuse_spoofed``) and by the type detection (gateway/mime/sniff.py,
gateway/mime/container.py): the default allow-list and the extensions each
allowed type may carry, the types and extensions that are programs or
scripts, the Office variants that can carry macros, the active-content text
formats, which detected types each extension and each declared type may
have, and the plain words a customer reads in a notice.
"""
from __future__ import annotations

import unicodedata

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
DOTX = "application/vnd.openxmlformats-officedocument.wordprocessingml.template"
XLTX = "application/vnd.openxmlformats-officedocument.spreadsheetml.template"
POTX = "application/vnd.openxmlformats-officedocument.presentationml.template"
PPSX = "application/vnd.openxmlformats-officedocument.presentationml.slideshow"
# The macro-enabled Office Open XML variants (they can carry VBA or Excel 4
# macros): never on the default allow-list.
DOCM = "application/vnd.ms-word.document.macroenabled.12"
DOTM = "application/vnd.ms-word.template.macroenabled.12"
XLSM = "application/vnd.ms-excel.sheet.macroenabled.12"
XLTM = "application/vnd.ms-excel.template.macroenabled.12"
XLAM = "application/vnd.ms-excel.addin.macroenabled.12"
XLSB = "application/vnd.ms-excel.sheet.binary.macroenabled.12"
PPTM = "application/vnd.ms-powerpoint.presentation.macroenabled.12"
POTM = "application/vnd.ms-powerpoint.template.macroenabled.12"
PPSM = "application/vnd.ms-powerpoint.slideshow.macroenabled.12"
PPAM = "application/vnd.ms-powerpoint.addin.macroenabled.12"
MACRO_TYPES = {DOCM, DOTM, XLSM, XLTM, XLAM, XLSB, PPTM, POTM, PPSM, PPAM}
# The macro-enabled variant of each macro-free flavour: what a package with
# a VBA project (or a macro content type) inside really is.
MACRO_VARIANT = {DOCX: DOCM, DOTX: DOTM, XLSX: XLSM, XLTX: XLTM, PPTX: PPTM, POTX: POTM, PPSX: PPSM}

# An Office Open XML document that fetches a template, an OLE object, a
# frame or a sub-document from outside itself when opened (remote template
# injection, CVE-2022-30190 "Follina"): code from the internet.
OOXML_REMOTE = "application/x-ooxml-remote-content"

# A ZIP the container examination could not read to the end: encrypted
# entries, a central directory that does not parse, duplicate names, or
# more entries or bytes than it reads (a zip bomb).  Never passes.
UNEXAMINED_ARCHIVE = "application/x-unexamined-archive"

# Archives and disk images the gateway does not open (as libmagic names
# them): what is inside was never examined, so allowed_types refuses them
# as unexamined even where the allow-list names them.
UNOPENED_ARCHIVES = {
    "application/x-7z-compressed", "application/x-rar", "application/x-rar-compressed", "application/vnd.rar",
    "application/gzip", "application/x-gzip", "application/x-bzip2", "application/x-xz", "application/x-lzma",
    "application/x-lzip", "application/zstd", "application/x-compress", "application/x-tar", "application/x-cpio",
    "application/vnd.ms-cab-compressed", "application/x-arj", "application/x-lzh-compressed",
    "application/x-ace-compressed", "application/x-xar", "application/x-ms-wim", "application/x-iso9660-image",
    "application/x-apple-diskimage", "application/x-stuffit", "application/x-archive",
}

# An old Office file (OLE: .doc, .xls, .ppt) with a VBA project, an Excel 4
# macro sheet, a packaged file or a linked object: disarm cannot rewrite
# one, so it passes nowhere unless a route lists this type itself.
OLE_ACTIVE = "application/x-ole-office-active"

# An OpenDocument file (LibreOffice) with macros (its Basic/ or Scripts/
# folder): a route that allows OpenDocument files does not pass it.
ODF_MACROS = "application/x-opendocument-macros"

# A ZIP with a program, a script or a web page among its entries (by their
# names, as Windows opens them once extracted): refused as a program on
# every route, even one that allows ZIP archives.
ARCHIVED_PROGRAM = "application/x-zip-with-program"

# Text that a browser, Windows or Excel runs or renders actively, as
# gateway/mime/sniff.py names it when it finds the markers in the bytes.
SVG = "image/svg+xml"
HTML = "text/html"
HTA = "application/hta"
IQY = "text/x-ms-iqy"
URL_SHORTCUT = "application/x-mswinurl"
DESKTOP_ENTRY = "application/x-desktop"
SYLK = "application/x-sylk"
ACTIVE_TYPES = {SVG, HTML, HTA, IQY, URL_SHORTCUT, DESKTOP_ENTRY, SYLK, "application/xhtml+xml"}

# The issue's default allow-list: PDF, JPEG, PNG, GIF, TIFF, HEIC, plain
# text, CSV, DOCX, XLSX, PPTX (detected types, as libmagic names them).
DEFAULT_ALLOWED = [
    "application/pdf", "image/jpeg", "image/png", "image/gif", "image/tiff", "image/heic", "image/heif",
    "text/plain", "text/csv", DOCX, XLSX, PPTX,
]

# Detected type -> the extensions a file of that type may be named with
# when the allow-list names the type without its own list.  A file whose
# extension is not on its detected type's list is refused: the extension,
# not the bytes, decides which program opens it (plain text named .hta is
# an HTML application to Windows).  Types not listed here have no default
# and must be given their extensions in the table form of ``allow``.
DEFAULT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "application/pdf": ("pdf",),
    "image/jpeg": ("jpg", "jpeg", "jpe", "jfif"), "image/png": ("png",), "image/gif": ("gif",),
    "image/tiff": ("tif", "tiff"), "image/heic": ("heic", "heif"), "image/heif": ("heif", "heic"),
    "image/bmp": ("bmp",), "image/webp": ("webp",),
    "text/plain": ("txt", "text", "log", "csv", "tsv"), "text/csv": ("csv", "txt", "tsv"),
    DOCX: ("docx",), XLSX: ("xlsx",), PPTX: ("pptx",),
    DOTX: ("dotx",), XLTX: ("xltx",), POTX: ("potx",), PPSX: ("ppsx",),
    DOCM: ("docm",), DOTM: ("dotm",), XLSM: ("xlsm",), XLTM: ("xltm",), XLAM: ("xlam",), XLSB: ("xlsb",),
    PPTM: ("pptm",), POTM: ("potm",), PPSM: ("ppsm",), PPAM: ("ppam",),
    "application/msword": ("doc",), "application/vnd.ms-excel": ("xls",),
    "application/vnd.ms-powerpoint": ("ppt",), "text/rtf": ("rtf",),
    "application/vnd.oasis.opendocument.text": ("odt",),
    "application/vnd.oasis.opendocument.spreadsheet": ("ods",),
    "application/vnd.oasis.opendocument.presentation": ("odp",),
    # (The archives other than ZIP stay here so that a config naming them
    # still loads; allowed_types refuses them as unexamined all the same.)
    "application/zip": ("zip",), "application/x-7z-compressed": ("7z",), "application/x-rar": ("rar",),
    "application/gzip": ("gz", "tgz"),
    "message/rfc822": ("eml",), "application/pgp-signature": ("asc", "sig"),
    "application/pkcs7-signature": ("p7s",),
    "audio/mpeg": ("mp3",), "audio/x-wav": ("wav",), "video/mp4": ("mp4", "m4v"),
    "text/html": ("html", "htm"), SVG: ("svg",), "text/xml": ("xml",), "application/xml": ("xml",),
    "application/json": ("json",),
}

# The extension the worker gives a part that has no filename, by declared
# type (else .bin): the policies check that name as if the sender had given
# it, since it is the name the agent's computer will open the file by.  A
# name without an extension is checked with it too: mail clients name and
# open such a file by its declared type (Outlook saves a nameless
# application/msword part as ATT00001.doc), so an RTF with an embedded
# program, plain text to libmagic once its header is "{\rt1", would open
# in Word.  The Office and rich-text types are here for that.
DEFAULT_NAME_EXTENSIONS = {"application/pdf": "pdf", "image/png": "png", "image/jpeg": "jpg",
                           "text/plain": "txt", "text/html": "html", "message/rfc822": "eml",
                           "image/svg+xml": "svg", "application/xhtml+xml": "xhtml",
                           "application/msword": "doc", "application/vnd.ms-word": "doc",
                           "application/rtf": "rtf", "application/x-rtf": "rtf", "text/rtf": "rtf",
                           "text/richtext": "rtf", "application/vnd.ms-excel": "xls", "application/x-msexcel": "xls",
                           "application/vnd.ms-powerpoint": "ppt", "application/mspowerpoint": "ppt",
                           "application/vnd.oasis.opendocument.text": "odt",
                           "application/vnd.oasis.opendocument.spreadsheet": "ods",
                           "application/vnd.oasis.opendocument.presentation": "odp",
                           DOCX: "docx", XLSX: "xlsx", PPTX: "pptx", DOTX: "dotx", XLTX: "xltx", POTX: "potx",
                           PPSX: "ppsx", DOCM: "docm", DOTM: "dotm", XLSM: "xlsm", XLTM: "xltm", XLAM: "xlam",
                           XLSB: "xlsb", PPTM: "pptm", POTM: "potm", PPSM: "ppsm", PPAM: "ppam"}

# Outlook's TNEF wrapper (winmail.dat), by its declared or detected type.
TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}

# Detected types that are programs or scripts, whatever the name says.
EXECUTABLE_TYPES = {
    "application/x-dosexec", "application/x-msdownload", "application/vnd.microsoft.portable-executable",
    "application/x-executable", "application/x-pie-executable", "application/x-sharedlib",
    "application/x-mach-binary", "application/x-elf", "application/x-object", "application/x-coff",
    "application/x-msi", "application/x-ms-installer", "application/x-ms-shortcut", "application/x-java-applet",
    "application/java-archive", "application/x-java-archive", "application/x-shockwave-flash",
    "application/javascript", "text/javascript", "application/x-javascript", "application/hta",
    "text/x-shellscript", "text/x-msdos-batch", "text/x-python", "text/x-script.python", "text/x-perl",
    "text/x-php", "text/x-ruby", "text/x-tcl", "text/x-lua", "text/x-awk", "application/x-bytecode.python",
    "text/x-powershell", "text/vbscript", "text/x-vbscript",
    # Declared types a client names a file without an extension by (the
    # WHATWG list of JavaScript types, shells, PowerShell, VBScript,
    # Windows programs and help files): libmagic never says these, the
    # sender does.
    "application/ecmascript", "application/x-ecmascript", "text/ecmascript", "text/x-ecmascript", "text/jscript",
    "text/x-javascript", "text/livescript", "text/javascript1.0", "text/javascript1.1", "text/javascript1.2",
    "text/javascript1.3", "text/javascript1.4", "text/javascript1.5", "application/x-sh", "application/x-shellscript",
    "text/x-sh", "application/x-csh", "application/x-powershell", "application/x-bat", "application/bat",
    "application/x-msdos-program", "application/x-ms-application", "application/vnd.ms-htmlhelp",
    "application/x-chm", "application/vbscript", "application/x-vbscript", "text/vbs", "text/scriptlet",
    "application/x-python", "application/x-python-code", "application/x-perl", "application/x-ruby",
    "application/x-php", "application/x-mswinurl", "application/x-wsh",
    # Text formats that Windows or Excel act on: an Excel web query fetches
    # and runs a remote page, a shortcut or desktop entry launches a target.
    IQY, URL_SHORTCUT, DESKTOP_ENTRY, OOXML_REMOTE, ARCHIVED_PROGRAM,
}

# Extensions that Windows, macOS or a shell runs when opened; refused even
# when the bytes look harmless (a script is text to libmagic).
EXECUTABLE_EXTENSIONS = {
    "exe", "com", "scr", "pif", "cpl", "dll", "sys", "msi", "msp", "mst", "bat", "cmd", "ps1", "psm1", "vbs",
    "vbe", "js", "jse", "wsf", "wsh", "wsc", "hta", "lnk", "jar", "reg", "inf", "sh", "bash", "zsh", "csh",
    "ksh", "py", "pyc", "pyw", "pl", "rb", "php", "app", "command", "apk", "appx", "msix", "elf", "run",
    "gadget", "application", "scf", "url", "iso", "img", "vhd", "vhdx",
    # Also run or act when opened: Excel web queries and add-ins, shortcuts
    # and search connectors, help and console files, installers.
    "iqy", "slk", "xll", "desktop", "website", "webloc", "inetloc", "appref-ms", "settingcontent-ms",
    "library-ms", "searchconnector-ms", "msc", "chm", "hlp", "ocx", "jnlp", "diagcab", "appinstaller", "xbap",
}

# Extensions that a browser or Windows opens as active content (web pages,
# SVG images, web archives), which can run scripts: refused by name too,
# as their bytes may look like plain text.
ACTIVE_EXTENSIONS = {"html", "htm", "xhtml", "xht", "shtml", "mht", "mhtml", "svg", "svgz"}

# Extensions of archives and disk images: an entry so named inside a ZIP is
# an archive the examination does not open (nested deeper than it looks),
# so the ZIP is an unexamined archive.
ARCHIVE_EXTENSIONS = {
    "zip", "zipx", "7z", "rar", "gz", "tgz", "bz2", "tbz", "tbz2", "xz", "txz", "lz", "lzma", "zst", "z", "tar",
    "cpio", "cab", "arj", "ace", "lzh", "lha", "xar", "wim", "dmg",
}

# Extension -> the detected types a file so named may have.  Extensions not
# listed are not checked against the bytes (only declared types are).
EXTENSION_TYPES = {
    "pdf": {"application/pdf"},
    "jpg": {"image/jpeg"}, "jpeg": {"image/jpeg"}, "jpe": {"image/jpeg"}, "jfif": {"image/jpeg"},
    "png": {"image/png"}, "gif": {"image/gif"}, "tif": {"image/tiff"}, "tiff": {"image/tiff"},
    "heic": {"image/heic", "image/heif"}, "heif": {"image/heic", "image/heif"},
    "docx": {DOCX}, "xlsx": {XLSX}, "pptx": {PPTX}, "dotx": {DOTX}, "xltx": {XLTX}, "potx": {POTX},
    "ppsx": {PPSX}, "docm": {DOCM}, "dotm": {DOTM}, "xlsm": {XLSM}, "xltm": {XLTM}, "xlam": {XLAM},
    "xlsb": {XLSB}, "pptm": {PPTM}, "potm": {POTM}, "ppsm": {PPSM}, "ppam": {PPAM},
    "zip": {"application/zip"},
    "txt": {"text/plain", "text/csv"}, "csv": {"text/csv", "text/plain"},
}

# Declared Content-Type -> the detected types it may have.  Generic
# declarations (application/octet-stream and anything not listed) say
# nothing about the bytes and are not checked.
DECLARED_TYPES = {
    "application/pdf": {"application/pdf"}, "application/x-pdf": {"application/pdf"},
    "image/jpeg": {"image/jpeg"}, "image/jpg": {"image/jpeg"}, "image/pjpeg": {"image/jpeg"},
    "image/png": {"image/png"}, "image/gif": {"image/gif"}, "image/tiff": {"image/tiff"},
    "image/heic": {"image/heic", "image/heif"}, "image/heif": {"image/heic", "image/heif"},
    DOCX: {DOCX}, XLSX: {XLSX}, PPTX: {PPTX}, DOTX: {DOTX}, XLTX: {XLTX}, POTX: {POTX}, PPSX: {PPSX},
    **{t: {t} for t in MACRO_TYPES},
    "application/zip": {"application/zip", DOCX, XLSX, PPTX},
    "text/csv": {"text/csv", "text/plain"},
}

# Declared signature types of signed mail -> the detected types their
# bytes may have (a DER S/MIME signature is opaque data to libmagic).
SIGNATURE_TYPES = {
    "application/pgp-signature": {"application/pgp-signature", "text/plain"},
    "application/pkcs7-signature": {"application/pkcs7-signature", "application/octet-stream"},
    "application/x-pkcs7-signature": {"application/pkcs7-signature", "application/octet-stream"},
}

_NAMES = {
    "application/pdf": "a PDF document", "image/jpeg": "a JPEG image", "image/png": "a PNG image",
    "image/jpg": "a JPEG image", "image/pjpeg": "a JPEG image",
    "image/gif": "a GIF image", "image/tiff": "a TIFF image", "image/heic": "a HEIC image",
    "image/heif": "a HEIF image", "text/plain": "plain text", "text/csv": "a CSV table",
    DOCX: "a Word document (DOCX)", XLSX: "an Excel workbook (XLSX)", PPTX: "a PowerPoint presentation (PPTX)",
    "application/zip": "a ZIP archive", "application/x-dosexec": "a Windows program",
    "application/x-executable": "a program", "application/x-sharedlib": "a program library",
    "application/x-pie-executable": "a program", "text/x-shellscript": "a shell script",
    "text/x-msdos-batch": "a Windows batch script", "text/x-script.python": "a Python script",
    "text/x-python": "a Python script", "application/x-empty": "an empty file",
    "application/octet-stream": "unrecognised data", "text/html": "a web page (HTML)",
    "text/rtf": "a rich-text document (RTF)", "application/msword": "an old Word document (DOC)",
    "application/vnd.ms-excel": "an old Excel workbook (XLS)", "application/x-rar": "a RAR archive",
    "application/x-7z-compressed": "a 7-Zip archive", "application/vnd.ms-tnef": "an Outlook TNEF file",
    "application/ms-tnef": "an Outlook TNEF file",
    "application/vnd.ms-powerpoint": "an old PowerPoint presentation (PPT)",
    "application/x-ole-storage": "an old Office document (OLE)", "application/cdfv2": "an old Office document (OLE)",
    "application/onenote": "a OneNote notebook",
    DOTX: "a Word template (DOTX)", XLTX: "an Excel template (XLTX)", POTX: "a PowerPoint template (POTX)",
    PPSX: "a PowerPoint slide show (PPSX)",
    DOCM: "a Word document with macros (DOCM)", DOTM: "a Word template with macros (DOTM)",
    XLSM: "an Excel workbook with macros (XLSM)", XLTM: "an Excel template with macros (XLTM)",
    XLAM: "an Excel add-in with macros (XLAM)", XLSB: "a binary Excel workbook, which can hold macros (XLSB)",
    PPTM: "a PowerPoint presentation with macros (PPTM)", POTM: "a PowerPoint template with macros (POTM)",
    PPSM: "a PowerPoint slide show with macros (PPSM)", PPAM: "a PowerPoint add-in with macros (PPAM)",
    OOXML_REMOTE: "an Office document that loads a template or object from the internet when opened",
    UNEXAMINED_ARCHIVE: "an archive that could not be examined (encrypted, damaged or too large to check)",
    ARCHIVED_PROGRAM: "a ZIP archive holding a program, a script or a web page",
    OLE_ACTIVE: "an old Office document with macros or embedded programs",
    ODF_MACROS: "an OpenDocument file with macros",
    SVG: "an SVG image, which can run scripts", "application/xhtml+xml": "a web page (XHTML)",
    HTA: "an HTML application (HTA)", IQY: "an Excel web query (IQY)",
    URL_SHORTCUT: "an internet shortcut (URL)", DESKTOP_ENTRY: "a desktop launcher",
    SYLK: "a SYLK spreadsheet, which can run macros", "text/xml": "an XML file", "application/xml": "an XML file",
    "message/rfc822": "an email message", "application/java-archive": "a Java program (JAR)",
    "application/x-msi": "a Windows installer",
}

#: The types in words, as the mail catalogue's message ids (gateway/mailtext.py).
TYPE_NAMES = _NAMES


def describe(ctype: str | None) -> str:
    """A type in plain words, e.g. "a PNG image"; unknown ones by MIME type."""
    if not ctype:
        return "an unknown type"
    return _NAMES.get(ctype, f"a file of type {ctype}")


def name_extension(filename: str, declared_type: str) -> str:
    """The extension of the name the agent will see: the sender's, else the
    one a nameless or extensionless file is named and opened by (its
    declared type's, ``DEFAULT_NAME_EXTENSIONS``), else ''."""
    if filename.strip():
        ext = extension(filename)
        if ext:
            return ext
    return DEFAULT_NAME_EXTENSIONS.get(declared_type, "")


def extension(filename: str) -> str:
    """The filename's extension, lower case, without the dot ('' when none),
    as a person reads it: control and format characters (bidi overrides,
    zero-width spaces) do not count, so ``x.pdf<U+2069>`` ends in .pdf.
    A name that is only an extension (``.vbs``) has it: Windows opens
    ``.js`` as a script."""
    # A printable ASCII name has no control or format character: the walk
    # by character (unicodedata per character) is for the others.
    visible = filename if filename.isascii() and filename.isprintable() else \
        "".join(c for c in filename if unicodedata.category(c) not in ("Cc", "Cf"))
    base = visible.replace("\\", "/").rsplit("/", 1)[-1].strip().rstrip(". ")
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot else ""
