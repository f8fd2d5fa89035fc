"""Outlook's TNEF wrapper (winmail.dat, application/ms-tnef) unpacked into
the files it carries.

Outlook sends rich-text mail as one opaque ``winmail.dat`` that only Outlook
opens; the files inside are what the customer meant to send.  The worker
replaces the TNEF part with a ``multipart/mixed`` entity holding each file
as an ordinary base64 attachment (and the rich-text or HTML body as a file,
so nothing in it is lost) before the policies run, so every file is typed,
checked and offloaded like any other.  A TNEF that tnefparse cannot read, or
that holds no file, is left as it is and forwarded unchanged.

tnefparse trusts the counts in the blob: a property list that says it has
4 billion properties makes it loop 4 billion times (a 32-byte TNEF held the
event loop for hours), a multi-valued property does the same while keeping
an object per value, and each of its records copies the rest of the blob
(a TNEF of tiny records costs its size squared).  So the gateway parses a
TNEF only in a child process (``unpack_isolated``: ``python -m
gateway.mime.tnef``) limited in CPU seconds and address space and killed
when late; a TNEF it cannot unpack so is a TnefError, left packed.
"""
from __future__ import annotations

import base64
import json
import mimetypes
import os
import resource
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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


#: Address space of the unpacking child process (RLIMIT_AS), bytes.
CHILD_MEMORY = 1 << 30
_HERE = Path(__file__).resolve().parent.parent.parent


def unpack_isolated(data: bytes, seconds: float, memory: int = CHILD_MEMORY) -> list[TnefFile]:
    """``unpack`` in a child Python process limited to ``seconds`` of CPU
    (and killed after that many seconds of wall time, plus its start) and
    ``memory`` bytes of address space; TnefError when it fails, overruns or
    answers badly.  Blocking: call it in a thread.  The answer is read as
    JSON and raw bytes, never unpickled."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_HERE), env.get("PYTHONPATH", "")) if p)
    cpu = max(1, int(seconds + 0.999))
    request = json.dumps({"cpu": cpu, "memory": memory}).encode() + b"\n" + data
    timeout = cpu + 10  # interpreter start and imports
    try:
        proc = subprocess.run([sys.executable, "-m", "gateway.mime.tnef"], input=request, capture_output=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise TnefError(f"unpacking took longer than {timeout:g} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""])[0][:200]
        if proc.returncode in (-9, -24) or "MemoryError" in tail:  # SIGKILL, SIGXCPU
            raise TnefError(f"unpacking took more than {cpu} s of CPU or {memory >> 20} MiB of memory")
        raise TnefError(f"the unpacking process failed (exit status {proc.returncode}: {tail})")
    try:
        head, _, rest = proc.stdout.partition(b"\n")
        answer = json.loads(head)
        if "error" in answer:
            raise TnefError(str(answer["error"]))
        files, pos = [], 0
        for name, size in answer["files"]:
            if not isinstance(name, str) or not isinstance(size, int) or size < 0 or pos + size > len(rest):
                raise ValueError("a file outside the answer")
            files.append(TnefFile(name, rest[pos:pos + size]))
            pos += size
        if pos != len(rest):
            raise ValueError("bytes after the last file")
    except (ValueError, KeyError, TypeError) as e:
        raise TnefError(f"the unpacking process answered badly: {e}") from None
    return files


def child_main() -> int:
    """``python -m gateway.mime.tnef``: read the limits (one JSON line) and
    the blob from stdin, write the files (a JSON line, then their bytes)."""
    head, _, data = sys.stdin.buffer.read().partition(b"\n")
    limits = json.loads(head)
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
    try:
        files = unpack(data)
    except TnefError as e:
        answer: dict[str, object] = {"error": str(e)}
        files = []
    else:
        answer = {"files": [[f.name, len(f.data)] for f in files]}
    out = sys.stdout.buffer
    out.write(json.dumps(answer).encode() + b"\n")
    for f in files:
        out.write(f.data)
    out.flush()
    return 0


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


if __name__ == "__main__":
    sys.exit(child_main())
