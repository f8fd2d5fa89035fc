"""Outlook's TNEF wrapper (winmail.dat, application/ms-tnef) unpacked into
the files it carries.

Outlook sends rich-text mail as one opaque ``winmail.dat`` that only Outlook
opens; the files inside are what the customer meant to send.  The worker
replaces the TNEF part with a ``multipart/mixed`` entity holding each file
as an ordinary base64 attachment (and the rich-text or HTML body as a file,
so nothing in it is lost) before the policies run, so every file is typed,
checked and offloaded like any other.  A TNEF that tnefparse cannot read, or
that holds no file, is left as it is and forwarded unchanged.
"""
from __future__ import annotations

import base64
import mimetypes
import secrets
from dataclasses import dataclass

import tnefparse

from gateway.mime import filenames
from gateway.mime.parse import Part

TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}


@dataclass(frozen=True)
class TnefFile:
    """One file taken out of a TNEF blob."""

    name: str
    data: bytes


class TnefError(Exception):
    """The blob is not TNEF tnefparse can read, or carries no file."""


def is_tnef(part: Part) -> bool:
    """Whether a leaf is Outlook's TNEF wrapper (by type or by its usual name)."""
    return part.content_type in TNEF_TYPES or part.filename.lower() == "winmail.dat"


def unpack(data: bytes) -> list[TnefFile]:
    """The files in a TNEF blob, with its body as ``message.rtf`` or
    ``message.html`` when it has one; TnefError when it cannot be read."""
    try:
        tnef = tnefparse.TNEF(data)
        files = [TnefFile(_name(a, i), bytes(a.data or b"")) for i, a in enumerate(tnef.attachments, 1)]
        if tnef.htmlbody:
            body = tnef.htmlbody
            files.append(TnefFile("message.html", body.encode("utf-8") if isinstance(body, str) else body))
        elif getattr(tnef, "rtfbody", None):
            files.append(TnefFile("message.rtf", bytes(tnef.rtfbody)))
    except Exception as e:  # noqa: BLE001 - a third-party parser on untrusted bytes
        raise TnefError(f"{type(e).__name__}: {e}") from None
    if not tnef.attachments:
        raise TnefError("no attached files in the TNEF")
    return files


def _name(attachment: object, n: int) -> str:
    try:
        name = attachment.long_filename()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        name = getattr(attachment, "name", "") or ""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    name = filenames.display_name(str(name).rstrip("\x00"))
    return name or f"attachment-{n}.bin"


def entity(files: list[TnefFile], keep_fields: bytes = b"") -> bytes:
    """A ``multipart/mixed`` entity holding ``files`` as base64 attachments;
    ``keep_fields`` are header fields kept from the replaced part (the
    message headers when the TNEF was the whole message)."""
    boundary = "=_tnef_" + secrets.token_hex(12)
    out = [keep_fields, f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()]
    for f in files:
        ctype = mimetypes.guess_type(f.name, strict=False)[0] or "application/octet-stream"
        enc = base64.b64encode(f.data)
        body = b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))
        out.append(f"--{boundary}\r\n".encode())
        out.append(f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
                   f"Content-Disposition: {filenames.content_disposition(f.name)}\r\n\r\n".encode())
        out.append(body + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)
