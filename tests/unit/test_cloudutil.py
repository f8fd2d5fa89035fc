"""Helpers the cloud backends share: Content-Disposition, metadata, keys, parts."""
from __future__ import annotations

import threading
from typing import Iterator

import pytest

from gateway.storage.base import ObjectMeta, StorageError
from gateway.storage.cloudutil import (Cancelled, ascii_filename, content_disposition, decode_meta_value,
                                       encode_meta_value, iter_parts, store_key, object_metadata,
                                       read_metadata)
from tests.storage.helpers import disposition_filename, fallback_filename


@pytest.mark.parametrize("name, fallback", [
    ("invoice.pdf", "invoice.pdf"),
    ("Rechnung März.pdf", "Rechnung Marz.pdf"),
    ('a "quoted" name;.pdf', "a _quoted_ name_.pdf"),
    ("\u2713\u2713", "attachment"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\scan.jpg", "scan.jpg"),
    ("évé\r\nSet-Cookie: x=1.txt", "eveSet-Cookie: x=1.txt"),
    ("файл.docx", "attachment.docx"),
    ("100%.png", "100_.png"),
])
def test_content_disposition(name: str, fallback: str) -> None:
    value = content_disposition(name)
    assert value.isascii() and "\r" not in value and "\n" not in value
    assert fallback_filename(value) == fallback
    expected = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\r", "").replace("\n", "")
    assert disposition_filename(value) == expected
    assert value.startswith(f'attachment; filename="{fallback}"')


def test_content_disposition_plain_and_empty() -> None:
    assert content_disposition("a.pdf") == 'attachment; filename="a.pdf"'
    assert content_disposition("") == "attachment"
    assert len(ascii_filename("x" * 500 + ".pdf")) <= 200 and ascii_filename("x" * 500 + ".pdf").endswith(".pdf")


def test_metadata_round_trip() -> None:
    meta = ObjectMeta(filename="Grüße.pdf", metadata={"Queue-ID": "Q1", "customer id": "ü\r\nx", "n": "=?x"})
    stored = object_metadata(meta, {"gateway-sha256": "ab"})
    assert all(v.isascii() and "\n" not in v for v in stored.values())
    assert set(stored) == {"queue-id", "customer-id", "n", "filename", "gateway-sha256"}
    user, internal = read_metadata(stored)
    assert user == {"queue-id": "Q1", "customer-id": "ü\r\nx", "n": "=?x", "filename": "Grüße.pdf"}
    assert internal == {"gateway-sha256": "ab"}
    azure = object_metadata(meta, {"gateway-sha256": "ab"}, "_")
    assert set(azure) == {"queue_id", "customer_id", "n", "filename", "gateway_sha256"}
    assert read_metadata(azure, "_")[1] == {"gateway-sha256": "ab"}
    assert decode_meta_value(encode_meta_value("ö")) == "ö"


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a/", "a\x00b", "a\\b"])
def test_object_key_refuses(key: str) -> None:
    with pytest.raises(StorageError):
        store_key("p/", key)


def test_object_key() -> None:
    assert store_key("", "uploads/c/x.pdf") == "uploads/c/x.pdf"
    assert store_key("att/", "uploads/c/x.pdf") == "att/uploads/c/x.pdf"


def test_iter_parts_never_holds_more_than_a_part_and_a_chunk() -> None:
    held: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):
            yield bytes([i % 256]) * 1000

    sizes = []
    for part in iter_parts(chunks(), 4096):
        sizes.append(len(part))
        held.append(len(part))
    assert sizes == [4096] * 24 + [100000 - 24 * 4096]
    assert list(iter_parts([], 10)) == [b""]
    assert list(iter_parts([b"", b"abc"], 3)) == [b"abc"]
    assert b"".join(iter_parts([b"ab", b"cdefg", b"h"], 3)) == b"abcdefgh"


def test_iter_parts_stops_when_cancelled() -> None:
    cancel = threading.Event()
    parts = iter_parts((b"x" * 10 for _ in range(10)), 20, cancel)
    assert next(parts) == b"x" * 20
    cancel.set()
    with pytest.raises(Cancelled):
        next(parts)
