"""Every real-world message in ../shared/corpus goes through, twice, nothing lost.

With the default threshold nothing in the corpus is large enough to offload,
so each message must arrive byte for byte as sent, behind the two trace
headers.  With a threshold of one byte every attachment is offloaded, and
the forwarded bodies and the stored objects together must hold every
original part's bytes: the test reads the originals with Python's email
package (an independent parser) and finds each decoded part either in the
output or in the store.
"""
from __future__ import annotations

import re
import smtplib
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import CORPUS, GatewayProcess, strip_trace, to_wire
from tests.messages import leaves, parse, payload, sha256, stored_objects

_NOT_MESSAGES = re.compile(r"(LICENSE|SOURCE\.txt|README|AUTHORS|\.json|\.key|\.dns|\.pub|\.private|\.pem|"
                           r"\.bind9|\.tinydns|\.gitattributes)$")
_LINK_BLOCK = re.compile(rb'<div class="attachment-gateway-links">.*?</div>\r?\n?', re.S)


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


def test_corpus_default_threshold_forwards_every_message_byte_for_byte(files: list[Path], module_tmp: Path) -> None:
    (module_tmp / "default").mkdir()
    with GatewayProcess(module_tmp / "default") as gw:
        out = run_corpus(gw, files)
    changed = [str(p.relative_to(CORPUS)) for p, data in out.items() if strip_trace(data) != wire(p.read_bytes())]
    assert changed == []


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


def _accounted(part_bytes: bytes, ctype: str, out_payloads: list[bytes], store: Store) -> bool:
    if store.holds(part_bytes) or part_bytes in out_payloads or _norm(part_bytes) in {_norm(p) for p in out_payloads}:
        return True
    if ctype.startswith("message/") and store.holds_as(ctype, part_bytes):
        return True
    if ctype == "text/plain":
        return any(p.startswith(part_bytes.rstrip(b"\r\n")) for p in out_payloads)
    if ctype == "text/html":
        return any(_LINK_BLOCK.sub(b"", p).replace(b"\r\n", b"\n") == part_bytes.replace(b"\r\n", b"\n")
                   or _LINK_BLOCK.sub(b"", p).rstrip(b"\r\n") == part_bytes.rstrip(b"\r\n")
                   for p in out_payloads)
    return False


def test_corpus_threshold_one_byte_offloads_every_attachment_and_loses_nothing(files: list[Path],
                                                                                module_tmp: Path) -> None:
    (module_tmp / "one").mkdir()
    with GatewayProcess(module_tmp / "one", threshold=1) as gw:
        out = run_corpus(gw, files)
        objects = stored_objects(gw.objects)
    store = Store(list(objects.values()))
    missing: list[str] = []
    offloaded = 0
    for path, data in out.items():
        original = parse(wire(path.read_bytes()))
        forwarded = parse(strip_trace(data))
        out_payloads = [payload(p) for p in leaves(forwarded)]
        for part in leaves(original):
            body = payload(part)
            if not _accounted(body, part.get_content_type(), out_payloads, store):
                missing.append(f"{path.relative_to(CORPUS)}: {part.get_content_type()} {len(body)} bytes")
        offloaded += data.count(b"moved to secure storage")
    assert missing == []
    assert offloaded >= 100  # the corpus holds well over a hundred attachments
