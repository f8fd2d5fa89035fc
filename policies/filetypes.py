"""File types as the content policies see them: plain data, no I/O.

Shared by the type policies (``allowed_types``, ``refuse_executables``,
``refuse_spoofed``): the default allow-list, the types and extensions that
are programs or scripts, which detected types each extension and each
declared type may have, and the plain words a customer reads in a notice.
"""
from __future__ import annotations

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

# The issue's default allow-list: PDF, JPEG, PNG, GIF, TIFF, HEIC, plain
# text, CSV, DOCX, XLSX, PPTX (detected types, as libmagic names them).
DEFAULT_ALLOWED = [
    "application/pdf", "image/jpeg", "image/png", "image/gif", "image/tiff", "image/heic", "image/heif",
    "text/plain", "text/csv", DOCX, XLSX, PPTX,
]

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
}

# Extensions that Windows, macOS or a shell runs when opened; refused even
# when the bytes look harmless (a script is text to libmagic).
EXECUTABLE_EXTENSIONS = {
    "exe", "com", "scr", "pif", "cpl", "dll", "sys", "msi", "msp", "mst", "bat", "cmd", "ps1", "psm1", "vbs",
    "vbe", "js", "jse", "wsf", "wsh", "wsc", "hta", "lnk", "jar", "reg", "inf", "sh", "bash", "zsh", "csh",
    "ksh", "py", "pyc", "pyw", "pl", "rb", "php", "app", "command", "apk", "appx", "msix", "elf", "run",
    "gadget", "application", "scf", "url", "iso", "img", "vhd", "vhdx",
}

# Extension -> the detected types a file so named may have.  Extensions not
# listed are not checked against the bytes (only declared types are).
EXTENSION_TYPES = {
    "pdf": {"application/pdf"},
    "jpg": {"image/jpeg"}, "jpeg": {"image/jpeg"}, "jpe": {"image/jpeg"}, "jfif": {"image/jpeg"},
    "png": {"image/png"}, "gif": {"image/gif"}, "tif": {"image/tiff"}, "tiff": {"image/tiff"},
    "heic": {"image/heic", "image/heif"}, "heif": {"image/heic", "image/heif"},
    "docx": {DOCX}, "xlsx": {XLSX}, "pptx": {PPTX},
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
    DOCX: {DOCX}, XLSX: {XLSX}, PPTX: {PPTX},
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
}


def describe(ctype: str | None) -> str:
    """A type in plain words, e.g. "a PNG image"; unknown ones by MIME type."""
    if not ctype:
        return "an unknown type"
    return _NAMES.get(ctype, f"a file of type {ctype}")


def extension(filename: str) -> str:
    """The filename's extension, lower case, without the dot ('' when none)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip().rstrip(". ")
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem else ""
