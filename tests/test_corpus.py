"""Every real-world message in ../shared/corpus goes through, twice, nothing lost.

The embedded route runs the default content policies, with quarantine on
(its default).  With the default threshold nothing in the corpus is large
enough to offload, so each message must arrive byte for byte as sent,
behind the two trace headers, unless the gateway says in its
``X-Attachment-Offload`` header that it refused, replaced or unpacked
something.  Those messages (and, with a threshold of one byte, every
message) are checked part by part: the test reads the originals with
Python's email package (an independent parser) and finds each decoded part
in the output, or in the store (offloaded, or quarantined when refused).
An empty attachment is accounted for by its notice; an Outlook TNEF by the
files tnefparse finds in it.  Refused bytes are counted, and must never be
in the output.
"""
from __future__ import annotations

import re
import smtplib
from pathlib import Path
from typing import Iterator

import pytest
import tnefparse

from tests.harness import CORPUS, GatewayProcess, strip_trace, to_wire
from tests.messages import deep_leaves, leaves, parse, payload, sha256, stored_objects

_NOT_MESSAGES = re.compile(r"(LICENSE|SOURCE\.txt|README|AUTHORS|\.json|\.key|\.dns|\.pub|\.private|\.pem|"
                           r"\.bind9|\.tinydns|\.gitattributes)$")
# What the gateway adds to an HTML body: notices of removed files, then links.
_LINK_BLOCK = re.compile(rb'(?:<div class="attachment-gateway-(?:notices|links)">.*?</div>)+\r?\n?', re.S)


def corpus_messages() -> list[Path]:
    """The message files of the corpus (keys, DNS records and licences left out)."""
    dirs = ["mail-gem", "cpython-test_email/data", "mimekit/messages", "mimekit/dkim", "dkim/dkimpy"]
    out = []
    for d in dirs:
        for p in sorted((CORPUS / d).rglob("*")):
            # dkimpy's test*.txt are DNS TXT records, not messages.
            dns_record = d == "dkim/dkimpy" and p.suffix == ".txt"
            if p.is_file() and not _NOT_MESSAGES.search(p.name) and not dns_record:
                out.append(p)
    return out


def wire(data: bytes) -> bytes:
    """What smtplib puts on the wire (and so what the gateway spools)."""
    data = to_wire(data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def run_corpus(gw: GatewayProcess, files: list[Path]) -> dict[Path, bytes]:
    """Send every file to its own recipient; return file -> what came out."""
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=120) as s:
        for i, path in enumerate(files):
            refused = s.sendmail("corpus@example.net", [f"m{i}@contact.example"], wire(path.read_bytes()))
            assert not refused
    gw.wait_outbox(len(files), timeout=240)
    gw.wait_idle()
    out: dict[Path, bytes] = {}
    for p in (gw.outbox / "new").iterdir():
        data = p.read_bytes()
        m = re.match(rb"Return-Path: <[^>]*>\r\nX-Envelope-To: m(\d+)@contact\.example\r\n", data)
        assert m, data[:200]
        out[files[int(m.group(1))]] = data[m.end():]
    assert len(out) == len(files)
    for q in ("incoming", "active", "deferred", "hold", "corrupt"):
        assert list((gw.spool / q).iterdir()) == [], f"messages stuck in {q}"
    return out


@pytest.fixture(scope="module")
def files() -> list[Path]:
    found = corpus_messages()
    assert len(found) > 150, f"corpus not found at {CORPUS}"
    return found


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


_EMPTY_NOTICE = b"Attachment was empty and could not be processed."
_TRACE = re.compile(rb"X-Attachment-Offload: ([^\r\n]*)")


def _trace(data: bytes) -> bytes:
    m = _TRACE.search(data)
    assert m, data[:300]
    return m.group(1)


def test_corpus_default_threshold_forwards_every_message_byte_for_byte(files: list[Path], module_tmp: Path) -> None:
    (module_tmp / "default").mkdir()
    with GatewayProcess(module_tmp / "default") as gw:
        out = run_corpus(gw, files)
        objects = stored_objects(gw.objects)
        audit = gw.audit()
    changed = [p for p, data in out.items() if strip_trace(data) != wire(p.read_bytes())]
    # A message changes only when the gateway refused, replaced or unpacked
    # something in it, and says so.
    unexplained = [str(p.relative_to(CORPUS)) for p in changed
                   if not re.search(rb"refused=|replaced=|disarmed=|tnef=unpacked", _trace(out[p]))]
    assert unexplained == []
    assert not [k for k in objects if k.startswith("uploads/")], "nothing in the corpus is over 10 MiB"
    missing = _missing(out, Store(list(objects.values())), only=changed)
    assert missing == [], missing
    refused = sum(int(m.group(1)) for d in out.values() for m in [re.search(rb"refused=(\d+)", _trace(d))] if m)
    assert refused == len([k for k in objects if k.startswith("quarantine/")])
    _no_refused_bytes_forwarded(out, objects, audit)


def _no_refused_bytes_forwarded(out: dict[Path, bytes], objects: dict[str, bytes],
                                audit: list[dict[str, object]]) -> None:
    """No file quarantined from a message appears as a part of that message
    as forwarded (the audit events say which message each came from)."""
    by_queue: dict[str, list[str]] = {}
    for e in audit:
        if e["EventType"] == "FileRefused" and e.get("TargetFilePath"):
            by_queue.setdefault(str(e["QueueId"]), []).append(str(e["TargetFilePath"]))
    assert sum(map(len, by_queue.values())) == len([k for k in objects if k.startswith("quarantine/")])
    for path, data in out.items():
        m = re.search(rb"with \w+ id (\w+)", data[:600])
        assert m, data[:300]
        keys = by_queue.get(m.group(1).decode(), [])
        assert (b"refused=" in _trace(data)) == bool(keys), path
        payloads = {sha256(payload(p)) for p in leaves(parse(strip_trace(data)))}
        for key in keys:
            assert sha256(objects[key]) not in payloads, f"{path.relative_to(CORPUS)}: refused {key} forwarded"


def _norm(data: bytes) -> bytes:
    """Bytes compared modulo line-ending form and the final line break,
    which Python's parser and a byte-range copy assign to different parts."""
    return data.replace(b"\r\n", b"\n").rstrip(b"\n")


class Store:
    """The stored objects, and what Python's parser makes of each when it
    is read as the body of a part of a given type (for message/* parts,
    which Python parses and can only re-serialise, not return raw)."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs
        self.hashes = {sha256(b) for b in blobs} | {sha256(_norm(b)) for b in blobs}
        self._as: dict[str, set[bytes]] = {}

    def holds(self, data: bytes) -> bool:
        return sha256(data) in self.hashes or sha256(_norm(data)) in self.hashes

    def holds_as(self, ctype: str, data: bytes) -> bool:
        if ctype not in self._as:
            self._as[ctype] = {_norm(payload(parse(f"Content-Type: {ctype}\r\n\r\n".encode() + b)))
                               for b in self.blobs}
        return _norm(data) in self._as[ctype]


def _is_tnef(part: object) -> bool:
    ctype = part.get_content_type()  # type: ignore[attr-defined]
    name = (part.get_filename() or "").lower()  # type: ignore[attr-defined]
    return ctype in ("application/ms-tnef", "application/vnd.ms-tnef") or name == "winmail.dat"


def _tnef_files(data: bytes) -> list[bytes] | None:
    """The files in a TNEF blob, or None when tnefparse cannot read any."""
    try:
        found = [bytes(a.data or b"") for a in tnefparse.TNEF(data).attachments]
    except Exception:  # noqa: BLE001 - an unreadable TNEF is forwarded as it is
        return None
    return found or None


_INLINE_LINK = re.compile(rb'<a href="https?://127\.0\.0\.1:\d+/a/[A-Za-z0-9._-]+">[^<]*</a> \([^)]*\)')
_IMG_CID = re.compile(rb"<img\b[^>]*?cid:[^>]*>", re.I)


def _html_out(data: bytes) -> bytes:
    """A forwarded HTML body with the gateway's additions taken out and its
    in-place image links back to a placeholder."""
    return _INLINE_LINK.sub(b"<img>", _IMG_CID.sub(b"<img>", _LINK_BLOCK.sub(b"", data)))


def _accounted(part_bytes: bytes, ctype: str, out_payloads: list[bytes], store: Store,
               notices: int = 0) -> bool:
    if notices and (not part_bytes or (ctype.startswith("message/") and not part_bytes.strip(b"\r\n"))):
        # An empty attachment, replaced by its notice.  Python's parser turns
        # an empty message/* body into a message whose serialisation is "\n".
        return True
    if not part_bytes.strip():
        return True  # nothing in it to lose (a blank multipart Python reads as a leaf)
    if notices and len(part_bytes) <= 3:
        # A body that is only padding or stray characters of its transfer
        # encoding: the gateway decodes it to nothing (replaced by the
        # empty-file notice) where Python's lenient decoder keeps a byte or two.
        return True
    if store.holds(part_bytes) or part_bytes in out_payloads or _norm(part_bytes) in {_norm(p) for p in out_payloads}:
        return True
    if ctype.startswith("message/") and store.holds_as(ctype, part_bytes):
        return True
    if ctype == "text/plain":
        return any(p.startswith(part_bytes.rstrip(b"\r\n")) for p in out_payloads)
    if ctype == "text/html":
        # An offloaded inline image's <img src="cid:..."> became a link in place.
        original = _IMG_CID.sub(b"<img>", part_bytes)
        return any(_html_out(p).replace(b"\r\n", b"\n") == original.replace(b"\r\n", b"\n")
                   or _html_out(p).rstrip(b"\r\n") == original.rstrip(b"\r\n")
                   for p in out_payloads)
    return False


def test_corpus_threshold_one_byte_offloads_every_attachment_and_loses_nothing(files: list[Path],
                                                                                module_tmp: Path) -> None:
    (module_tmp / "one").mkdir()
    with GatewayProcess(module_tmp / "one", threshold=1) as gw:
        out = run_corpus(gw, files)
        objects = stored_objects(gw.objects)
        audit = gw.audit()
    store = Store(list(objects.values()))
    assert _missing(out, store) == []
    offloaded = sum(data.count(b"moved to secure storage") for data in out.values())
    assert offloaded >= 100  # the corpus holds well over a hundred attachments
    _no_refused_bytes_forwarded(out, objects, audit)


def _in_quarantine(part_bytes: bytes, encoded: bytes, quarantine: list[bytes]) -> bool:
    """A part kept inside a quarantined object (a subtree the gateway did
    not examine is kept whole): its decoded or its encoded bytes in one.
    Short bodies must match a whole object (containment would be chance)."""
    for q in quarantine:
        if part_bytes and (q == part_bytes or (len(part_bytes) >= 16 and part_bytes in q)):
            return True
        # A short body kept with its own headers: the object ends with it.
        if part_bytes.strip() and _norm(q).endswith(b"\n\n" + _norm(part_bytes)):
            return True
        if len(encoded.strip()) >= 16 and encoded.strip() in q.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"):
            return True
    return False


def _missing(out: dict[Path, bytes], store: Store, only: list[Path] | None = None) -> list[str]:
    """Original parts found neither in the output nor in the store."""
    missing: list[str] = []
    for path, data in out.items():
        if only is not None and path not in only:
            continue
        if store.holds(wire(path.read_bytes())):
            continue  # quarantined whole: a message whose structure could not be examined
        original = parse(wire(path.read_bytes()))
        forwarded = parse(strip_trace(data))
        out_payloads = [payload(p) for p in deep_leaves(forwarded)]
        notices = sum(p.count(_EMPTY_NOTICE) for p in out_payloads)
        for part in deep_leaves(original):
            body = payload(part)
            ctype = part.get_content_type()
            if _is_tnef(part) and b"tnef=unpacked" in _trace(data):
                inner = _tnef_files(body)
                if inner is not None and all(_accounted(f, "application/octet-stream", out_payloads, store, notices)
                                             for f in inner):
                    continue
            raw = part.get_payload()
            encoded = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
            if not _accounted(body, ctype, out_payloads, store, notices) \
                    and not _in_quarantine(body, encoded, store.blobs):
                missing.append(f"{path.relative_to(CORPUS)}: {ctype} {len(body)} bytes")
    return missing
