"""Builders for hostile messages (issue 14) and the checks of what came out.

Messages are built by hand as CRLF bytes, not with ``EmailMessage``: the
attacks are malformed on purpose (two boundaries, a signature that is a
ZIP, a header line of 5000 bytes), and Python's generator would repair
them.  The payload files are made so that each one is unique (random tail)
and recognisable in any encoding: ``b64head`` is the first 60 characters of
its base64, which do not depend on the line length an encoder chooses.
"""
from __future__ import annotations

import base64
import binascii
import email
import hashlib
import io
import quopri
import re
import socket
import struct
import threading
import time
import zipfile
from dataclasses import dataclass, field
from email.message import Message
from email.policy import compat32
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

from tests.servers.ports import LOOPBACK

CRLF = b"\r\n"
OLE_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")
ONENOTE_MAGIC = bytes.fromhex("E4525C7B8CD8A74DAEB15378D02996D3")
TNEF_MAGIC = bytes.fromhex("789F3E22")
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
DOCM_TYPE = "application/vnd.ms-word.document.macroEnabled.12"
XLSM_TYPE = "application/vnd.ms-excel.sheet.macroEnabled.12"
# What must never reach an agent as (part of) a file.
RUNNABLE_NAMES = re.compile(r"\.(exe|dll|scr|com|pif|bat|cmd|js|jse|vbs|vbe|wsf|hta|lnk|ps1|msi|jar|iqy|url|"
                            r"desktop)$", re.I)
BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]")


def pe(tag: str, size: int = 2048) -> bytes:
    """A minimal Windows PE (MZ header, PE signature, COFF header, optional
    header magic) that libmagic calls a PE32 executable, with a tail unique
    to ``tag`` so each test's file is its own."""
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    # The reserved words (e_res, e_oemid, e_res2) carry the tag's digest, so
    # even the first bytes (and ``b64head``) differ between files.
    dos[0x1C:0x3C] = hashlib.sha256(tag.encode()).digest()
    struct.pack_into("<I", dos, 0x3C, 0x80)
    coff = struct.pack("<HHIIIHH", 0x014C, 1, 0, 0, 0, 0xE0, 0x0102)
    opt = struct.pack("<H", 0x010B) + bytes(0xE0 - 2)
    body = bytes(dos) + b"PE\x00\x00" + coff + opt
    tail = hashlib.sha512(tag.encode()).digest() * (size // 64 + 1)
    return body + tag.encode() + tail[: max(0, size - len(body))]


def b64head(data: bytes) -> bytes:
    """The first 60 base64 characters of ``data`` (its first 45 bytes):
    the same in any base64 encoding of it, whatever the line length."""
    return base64.b64encode(data[:45])


def b64(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines."""
    return base64.encodebytes(data).replace(b"\n", CRLF)


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return out.getvalue()


_CT_XML = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
           '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
           '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
           '<Default Extension="xml" ContentType="application/xml"/>'
           '<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/>'
           '<Override PartName="/{main}" ContentType="{ctype}"/></Types>')
_RELS = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
         '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
         '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
         'officeDocument" Target="{main}"/></Relationships>')


def ooxml(kind: str, tag: str, macros: bool = False, extra: list[tuple[str, bytes]] = ()) -> bytes:
    """A minimal Word (``kind="word"``) or Excel (``"xl"``) package;
    ``macros`` adds a vbaProject.bin (an OLE file), ``extra`` entries go at
    the end of the archive."""
    main = "word/document.xml" if kind == "word" else "xl/workbook.xml"
    ctype = ("application/vnd.ms-word.document.macroEnabled.main+xml" if macros else
             "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml") \
        if kind == "word" else ("application/vnd.ms-excel.sheet.macroEnabled.main+xml" if macros else
                                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml")
    entries = [("[Content_Types].xml", _CT_XML.format(main=main, ctype=ctype).encode()),
               ("_rels/.rels", _RELS.format(main=main).encode()),
               (main, f'<?xml version="1.0"?><doc><t>{tag}</t></doc>'.encode())]
    if macros:
        entries.append((f"{kind}/vbaProject.bin", OLE_MAGIC + b"\x00" * 24 + tag.encode() + b"Attribute VB_Name"))
    return zip_of(entries + list(extra))


def uuencode(data: bytes, name: str) -> bytes:
    """``begin 644 NAME`` ... ``end``, CRLF lines."""
    lines = [f"begin 644 {name}".encode()]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n"))
    lines += [b"`", b"end"]
    return CRLF.join(lines) + CRLF


def rfc2231(name: str) -> str:
    """``filename*=UTF-8''...``: any character, CR, LF and NUL included."""
    return "filename*=UTF-8''" + quote(name.encode("utf-8"), safe="")


def part(ctype: str, body: bytes, cte: str = "base64", name: str | None = None, disposition: str = "attachment",
         extra: list[str] = (), raw_name: str | None = None) -> bytes:
    """One MIME entity: headers, blank line, the body encoded with ``cte``.
    ``raw_name`` is a literal Content-Disposition parameter string."""
    head = [f"Content-Type: {ctype}"]
    if raw_name is not None:
        head.append(f"Content-Disposition: {disposition}; {raw_name}")
    elif name is not None:
        head.append(f'Content-Disposition: {disposition}; filename="{name}"')
    if cte:
        head.append(f"Content-Transfer-Encoding: {cte}")
    head.extend(extra)
    if cte == "base64":
        body = b64(body)
    elif cte == "quoted-printable":
        body = quopri.encodestring(body).replace(b"\n", CRLF)
    return CRLF.join(h.encode("utf-8") for h in head) + CRLF + CRLF + body


def text(s: str, ctype: str = "text/plain; charset=utf-8") -> bytes:
    """A readable text body in 8bit (the test's text is ASCII)."""
    return part(ctype, s.encode() + CRLF, cte="7bit")


def multipart(parts: list[bytes], subtype: str = "mixed", boundary: str = "b1", params: str | None = None,
              separator: str | None = None) -> bytes:
    """A multipart entity. ``params`` replaces the Content-Type parameters
    (two boundaries, none at all); ``separator`` is the boundary actually
    used between the parts."""
    sep = (separator or boundary).encode()
    head = f"Content-Type: multipart/{subtype}; " + (params if params is not None else f'boundary="{boundary}"')
    out = head.encode() + CRLF + CRLF + b"This is a multi-part message in MIME format." + CRLF
    for p in parts:
        out += b"--" + sep + CRLF + p + CRLF
    return out + b"--" + sep + b"--" + CRLF


def envelope_message(root: bytes, sender: str, rcpt: str, subject: str, extra: list[str] = ()) -> bytes:
    """Top-level headers in front of ``root`` (an entity with its own Content-Type)."""
    head = [f"From: {sender}", f"To: {rcpt}", f"Subject: {subject}", "MIME-Version: 1.0",
            f"Message-ID: <{subject.replace(' ', '.')}@example.net>", *extra]
    return CRLF.join(h.encode("utf-8") for h in head) + CRLF + root


@dataclass
class Case:
    """One hostile message and what the fixed gateway must make of it.

    ``files``: the hostile payloads (decoded bytes); none may reach the next
    hop, each must be in quarantine (or inside a quarantined object).
    ``markers``: byte strings that must not appear in any decoded leaf.
    ``readable``: text that must still arrive.
    ``name``: the file the notice must name (None for names that cannot
    be shown as they are).
    """

    raw: bytes
    readable: str
    files: list[bytes] = field(default_factory=list)
    markers: list[bytes] = field(default_factory=list)
    name: str | None = None


# ---------------------------------------------------------------- reading


def _decode_text(part: Message, raw: bytes) -> bytes:
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", raw) + b"==", validate=False)
    if cte == "quoted-printable":
        return quopri.decodestring(raw)
    return raw


def _serialise(m: Message) -> bytes:
    from email.generator import BytesGenerator

    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(m)
    return out.getvalue()


def decoded_blobs(data: bytes, depth: int = 0) -> Iterator[tuple[Message, bytes]]:
    """Every leaf of a message, decoded, as an agent's client could open it:
    into attached messages (also ones wrongly base64-encoded) and archives."""
    if depth > 12:
        return
    msg = email.message_from_bytes(data, policy=compat32)
    for p in msg.walk():
        body = p.get_payload()
        if isinstance(body, list):
            if p.get_content_maintype() == "message":
                cte = str(p.get("Content-Transfer-Encoding", "")).strip().lower()
                if cte in ("base64", "quoted-printable"):
                    # Python parsed the encoded text as a message; a client
                    # may decode it first.
                    inner = _decode_text(p, b"".join(_serialise(x) for x in body))
                    yield p, inner
                    yield from _nested(inner, depth)
            continue
        raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else b""
        blob = _decode_text(p, raw) if raw else b""
        yield p, blob
        yield from _nested(blob, depth)


def _nested(blob: bytes, depth: int) -> Iterator[tuple[Message, bytes]]:
    """What a blob holds: the entries of a ZIP; a message's leaves."""
    if blob[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                for info in z.infolist()[:200]:
                    entry = z.read(info) if info.file_size < (8 << 20) else b""
                    holder = Message()
                    holder["X-Zip-Entry"] = info.filename
                    yield holder, entry
                    yield from _nested(entry, depth + 1)
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError):
            pass
    elif re.match(rb"(?:[A-Za-z-]+:[^\r\n]*\r?\n)+", blob[:4096]) and re.search(rb"(?im)^content-type:", blob[:8192]):
        yield from decoded_blobs(blob, depth + 1)


_ACTIVE = [
    (re.compile(rb"\AMZ"), "a Windows program (MZ)"),
    (re.compile(rb"\A\x7fELF"), "an ELF program"),
    (re.compile(re.escape(OLE_MAGIC)), "an OLE compound file"),
    (re.compile(re.escape(ONENOTE_MAGIC)), "a OneNote file"),
    (re.compile(rb"\A" + re.escape(TNEF_MAGIC)), "a TNEF blob"),
    (re.compile(rb"vbaProject\.bin"), "a macro project"),
    (re.compile(rb"<svg", re.I), "an SVG image"),
    (re.compile(rb"\bonload\s*=", re.I), "an onload handler"),
    (re.compile(rb"(?m)^begin [0-7]{3} "), "a uuencoded file"),
    (re.compile(rb"\AWEB\r?\n1\r?\n"), "an Excel web query"),
    (re.compile(rb"\[InternetShortcut\]", re.I), "an Internet shortcut"),
    (re.compile(rb"\[Desktop Entry\]", re.I), "a desktop entry"),
    (re.compile(rb"<hta:application", re.I), "an HTML application"),
]


def dangers(data: bytes, markers: list[bytes] = ()) -> list[str]:
    """What active content a forwarded message hands to an agent."""
    found = []
    for part, blob in decoded_blobs(data):
        where = part.get("X-Zip-Entry") or part.get_filename() or part.get_content_type()
        for rx, what in _ACTIVE:
            if rx.search(blob):
                found.append(f"{where}: {what}")
        for m in markers:
            if m in blob:
                found.append(f"{where}: marker {m[:40]!r}")
        name = part.get("X-Zip-Entry") or part.get_filename() or ""
        if RUNNABLE_NAMES.search(str(name)):
            found.append(f"{where}: a file named as runnable")
    return found


def readable_text(data: bytes) -> str:
    """The decoded text/plain and text/html leaves, as the agent reads them."""
    out = []
    for part, blob in decoded_blobs(data):
        if part.get_content_maintype() == "text":
            out.append(_as_text(blob, part.get_content_charset()))
    return "\n".join(out)


def _as_text(blob: bytes, charset: str | None) -> str:
    """``blob`` in its charset; UTF-8 when the charset is unknown or cannot
    decode (Python's "undefined" codec always fails, "idna" refuses
    "replace")."""
    try:
        return blob.decode(charset or "utf-8", "replace")
    except (LookupError, UnicodeError):
        return blob.decode("utf-8", "replace")


def quarantined(objects: Path, data: bytes) -> bool:
    """Is ``data`` in the quarantine: as an object, or inside one (the
    enclosing part or message kept whole, with ``data`` in the base64 it
    was sent in)."""
    digest = hashlib.sha256(data).hexdigest()
    root = objects / "quarantine"
    for p in root.rglob("*") if root.exists() else []:
        if not p.is_file() or p.name.endswith(".meta.json"):
            continue
        blob = p.read_bytes()
        encoded = b64(data)  # as the tests send it: kept inside a MIME entity
        if hashlib.sha256(blob).hexdigest() == digest or data in blob or encoded in blob \
                or encoded.replace(CRLF, b"\n") in blob:
            return True
    return False


# ---------------------------------------------------------------- the next hop
# A raw SMTP next hop that records the bytes exactly as they came over the
# wire: no line-ending repair, no dot handling but the one SMTP defines.
#
# aiosmtpd (``tests.harness.SmtpSink``) normalises what it receives, so a
# bare CR or LF the gateway wrote would not be seen there.  This sink keeps
# every command line and each DATA section as sent (dot-stuffed), ends DATA
# only at ``CRLF . CRLF`` and unstuffs by CRLF lines, as a strict server
# would; a gateway that smuggles a second transaction into one DATA shows up
# as a second ``MAIL FROM`` in ``commands``.


@dataclass
class Transaction:
    """One message as the next hop got it."""

    mail_from: str
    rcpt_tos: list[str]
    wire: bytes  # the DATA section as sent, dot-stuffed, without the final ".\r\n"
    data: bytes  # unstuffed


def unstuff(wire: bytes) -> bytes:
    """Remove SMTP dot-stuffing (RFC 5321 4.5.2), by CRLF lines."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def _addr(line: bytes) -> str:
    """``MAIL FROM:<a@b> SIZE=1`` -> ``a@b`` (``<>`` for the null sender)."""
    arg = line.split(b":", 1)[1].strip() if b":" in line else b""
    arg = arg.split(b" ", 1)[0]
    s = arg.decode("utf-8", "surrogateescape")
    return "<>" if s == "<>" else s.strip("<>")


class RawSink:
    """The server: a listening socket and a thread per session."""

    def __init__(self) -> None:
        self.port = 0
        self.transactions: list[Transaction] = []
        self.commands: list[bytes] = []
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RawSink(port={self.port}, {len(self.transactions)} transactions)"

    def start(self) -> "RawSink":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(120)

        def line() -> bytes | None:
            nonlocal buf
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            i = buf.index(b"\n") + 1
            out, buf = buf[:i], buf[i:]
            return out

        mail_from, rcpts = "", []
        try:
            conn.sendall(b"220 raw.sink ESMTP\r\n")
            while True:
                cmd = line()
                if cmd is None:
                    return
                with self.lock:
                    self.commands.append(cmd)
                verb = cmd[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-raw.sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                                 b"250 SIZE 0\r\n")
                elif verb == b"MAIL":
                    mail_from, rcpts = _addr(cmd), []
                    conn.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    rcpts.append(_addr(cmd))
                    conn.sendall(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    # The end is CRLF "." CRLF; the data may be empty.
                    while True:
                        probe = b"\r\n" + buf
                        end = probe.find(b"\r\n.\r\n")
                        if end >= 0:
                            break
                        chunk = conn.recv(1 << 20)
                        if not chunk:
                            return
                        buf += chunk
                    wire = probe[2:end + 2]
                    buf = probe[end + 5:]
                    with self.lock:
                        self.transactions.append(Transaction(mail_from, rcpts, wire, unstuff(wire)))
                    conn.sendall(b"250 2.0.0 Ok: stored\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                elif verb in (b"RSET", b"NOOP", b"HELO"):
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                else:
                    conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def for_rcpt(self, rcpt: str) -> list[Transaction]:
        with self.lock:
            return [t for t in self.transactions if rcpt in t.rcpt_tos]

    def wait_for(self, rcpt: str, timeout: float = 30.0, count: int = 1,
                 give_up: Callable[[], str | None] | None = None) -> list[Transaction]:
        """Wait until ``count`` transactions for ``rcpt`` arrived. ``give_up``
        is polled too and may return a reason to stop early (e.g. the
        message was held)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.for_rcpt(rcpt)
            if len(got) >= count:
                return got
            reason = give_up() if give_up else None
            if reason:
                raise AssertionError(f"message for {rcpt} will not arrive: {reason}")
            if time.monotonic() > deadline:
                raise AssertionError(f"raw sink got {len(got)} message(s) for {rcpt}, expected {count} "
                                     f"within {timeout}s")
            time.sleep(0.05)
