"""The GCS backend against gcp-storage-emulator on loopback, and its V4 URL
signer checked on its own.

The emulator round-trips uploads (simple and resumable), content type,
disposition and metadata, and honours ``response-content-disposition``, but
it checks no signature and ignores CMEK keys.  So the V4 signature is
verified here independently (canonical request rebuilt from the URL, RSA
signature checked with the public half of a service-account key made in the
test: google-auth signs offline), and the CMEK key is checked on the upload
requests sent.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs_client  # type: ignore[attr-defined]

from gateway.storage.base import ObjectMeta, ObjectNotFound, StorageError
from gateway.storage.gcs import GcsStorage
from gateway.storage.settings import GcsStorageSettings
from tests.servers.gcs import GcsEmulator
from tests.storage.helpers import FILENAME, Attachment, disposition_filename, http_get

BUCKET = "attachments"
KEY = "uploads/cust-42/20261127T101500.000001Z-invoice.pdf"
META = ObjectMeta(content_type="application/pdf", filename=FILENAME,
                  metadata={"queue-id": "4XyZ0aB1", "customer-id": "cust-42"})
SA_EMAIL = "gateway-signer@gateway-test.iam.gserviceaccount.com"
CMEK = "projects/gateway-test/locations/europe-west3/keyRings/gateway/cryptoKeys/attachments"


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    with GcsEmulator(bucket=BUCKET) as g:
        yield g


@pytest.fixture(scope="module")
def service_account(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, rsa.RSAPublicKey]:
    """A service-account key file made here (never known to Google); its
    token_uri points at a closed loopback port so nothing can leave the machine."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path_factory.mktemp("gcs") / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "gateway-test", "private_key_id": "test-key-1",
        "private_key": pem, "client_email": SA_EMAIL, "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }))
    return path, key.public_key()


@pytest.fixture(scope="module")
def admin(emulator: GcsEmulator) -> Iterator[Any]:
    client = gcs_client.Client(project="gateway-test", credentials=AnonymousCredentials(),  # type: ignore[attr-defined]
                               client_options={"api_endpoint": emulator.endpoint_url})
    yield client.bucket(BUCKET)
    client.close()


def settings(emulator: GcsEmulator, sa: tuple[Path, Any], **kw: Any) -> GcsStorageSettings:
    base: dict[str, Any] = dict(backend="gcs", bucket=BUCKET, prefix=f"t-{uuid.uuid4().hex[:8]}/",
                                endpoint_url=emulator.endpoint_url, anonymous=True,
                                credentials_file=str(sa[0]))
    base.update(kw)
    return GcsStorageSettings(**base)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_store(s: GcsStorageSettings, fn: Any) -> Any:
    store = GcsStorage("gcs", s, Path("."))
    await store.start()
    try:
        return await fn(store)
    finally:
        await store.close()


def test_30mb_resumable_put_streams_and_arrives_byte_for_byte_with_cmek(
        admin: Any, emulator: GcsEmulator, service_account: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud.storage._media.requests import ResumableUpload

    sent_chunks: list[int] = []
    upload_urls: list[str] = []
    original_transmit = ResumableUpload.transmit_next_chunk
    original_initiate = ResumableUpload.initiate

    def transmit(self: Any, *a: Any, **k: Any) -> Any:
        sent_chunks.append(att.pulled)
        return original_transmit(self, *a, **k)

    def initiate(self: Any, *a: Any, **k: Any) -> Any:
        upload_urls.append(self.upload_url)
        return original_initiate(self, *a, **k)

    monkeypatch.setattr(ResumableUpload, "transmit_next_chunk", transmit)
    monkeypatch.setattr(ResumableUpload, "initiate", initiate)
    seen_before_last: list[int] = []
    att = Attachment(before_last=lambda: seen_before_last.append(len(sent_chunks)))
    s = settings(emulator, service_account, kms_key_name=CMEK)

    async def go(store: GcsStorage) -> Any:
        stored = await store.put(KEY, att.chunks(), META)
        assert threading.get_ident() not in att.threads, "the chunk iterator ran on the event loop"
        return stored, await store.stat(KEY)

    stored, stat = run(_with_store(s, go))
    # Chunks went out while the attachment was still being read: never joined whole.
    assert seen_before_last and seen_before_last[0] >= 3
    assert len(sent_chunks) == 4  # 30 MB in 8 MiB pieces
    assert len(upload_urls) == 1 and f"kmsKeyName={quote(CMEK, safe='')}" in upload_urls[0]
    assert stored.key == KEY and stored.size == att.size and stored.sha256 == att.sha256()

    blob = admin.get_blob(s.prefix + KEY)
    body = blob.download_as_bytes()
    assert len(body) == att.size and hashlib.sha256(body).hexdigest() == att.sha256()
    assert blob.content_type == "application/pdf"
    assert disposition_filename(blob.content_disposition) == FILENAME
    assert blob.metadata["queue-id"] == "4XyZ0aB1"
    assert blob.metadata["gateway-sha256"] == att.sha256()  # added after the upload by a PATCH

    assert stat is not None and stat.sha256 == att.sha256() and stat.content_type == "application/pdf"
    assert stat.metadata["filename"] == FILENAME
    # The emulator ignores CMEK and reports none; real GCS reports the key version.
    assert stat.extra["encryption"] in (CMEK, "Google-managed")


def test_small_put_is_one_request_with_md5(emulator: GcsEmulator, service_account: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud.storage._media.requests import MultipartUpload

    urls: list[str] = []
    original = MultipartUpload.transmit

    def transmit(self: Any, *a: Any, **k: Any) -> Any:
        urls.append(self.upload_url)
        return original(self, *a, **k)

    monkeypatch.setattr(MultipartUpload, "transmit", transmit)

    async def go(store: GcsStorage) -> Any:
        return await store.put("links/x.json", [b'{"a":', b"1}"], ObjectMeta(content_type="application/json"))

    stored = run(_with_store(settings(emulator, service_account, kms_key_name=CMEK), go))
    assert len(urls) == 1 and "uploadType=multipart" in urls[0] and "kmsKeyName=" in urls[0]
    assert stored.size == 7 and stored.extra["md5"] == hashlib.md5(b'{"a":1}').hexdigest()
    assert stored.sha256 == hashlib.sha256(b'{"a":1}').hexdigest()


def test_signed_url_downloads_from_the_emulator_with_filename(emulator: GcsEmulator,
                                                              service_account: Any) -> None:
    att = Attachment(size=1024 * 1024 + 5)

    async def go(store: GcsStorage) -> str | None:
        await store.put(KEY, att.chunks(), META)
        return await store.signed_url(KEY, FILENAME, 300)

    url = run(_with_store(settings(emulator, service_account), go))
    assert url is not None
    ok = http_get(url)
    assert ok.status == 200 and hashlib.sha256(ok.body).hexdigest() == att.sha256()
    assert disposition_filename(ok.headers["Content-Disposition"]) == FILENAME


# -- the V4 signer, checked independently ----------------------------------------------------


def verify_v4(url: str, public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """Rebuild the V4 canonical request and string-to-sign from ``url`` and
    check its RSA-SHA256 signature; return the query.  Raises InvalidSignature."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    q = dict(params)
    signature = bytes.fromhex(q["X-Goog-Signature"])
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                               for k, v in sorted(params) if k != "X-Goog-Signature")
    canonical_request = "\n".join(["GET", parts.path, canonical_query, f"host:{parts.netloc}\n", "host",
                                   "UNSIGNED-PAYLOAD"])
    scope = q["X-Goog-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(["GOOG4-RSA-SHA256", q["X-Goog-Date"], scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    public_key.verify(signature, string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    return q


def test_v4_signature_expiry_and_disposition_fields(emulator: GcsEmulator, service_account: Any) -> None:
    _, public_key = service_account
    s = settings(emulator, service_account, url_ttl=600)

    async def go(store: GcsStorage) -> tuple[str | None, str | None]:
        return await store.signed_url(KEY, FILENAME, 300), await store.signed_url(KEY, "x.pdf", 86400)

    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    url, capped = run(_with_store(s, go))
    assert url is not None and capped is not None
    after = dt.datetime.now(dt.timezone.utc)

    q = verify_v4(url, public_key)
    assert q["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert q["X-Goog-Expires"] == "300"
    assert q["X-Goog-SignedHeaders"] == "host"
    email, date, location, service, kind = q["X-Goog-Credential"].split("/")
    assert (email, location, service, kind) == (SA_EMAIL, "auto", "storage", "goog4_request")
    signed_at = dt.datetime.strptime(q["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    assert before <= signed_at <= after and date == signed_at.strftime("%Y%m%d")
    assert len(q["X-Goog-Signature"]) == 512  # hex of a 2048-bit RSA signature
    assert disposition_filename(q["response-content-disposition"]) == FILENAME
    assert urlsplit(url).path == f"/{BUCKET}/{quote(s.prefix + KEY)}"
    assert verify_v4(capped, public_key)["X-Goog-Expires"] == "600"  # capped at url_ttl

    # Any change breaks the signature: the filename, the expiry, the object.
    parts = urlsplit(url)
    for changed, path in ((dict(q, **{"response-content-disposition": 'attachment; filename="evil.html"'}),
                           parts.path),
                          (dict(q, **{"X-Goog-Expires": "604800"}), parts.path),
                          (q, parts.path + "x")):
        tampered = urlunsplit((parts.scheme, parts.netloc, path, urlencode(changed, quote_via=quote), ""))
        with pytest.raises(InvalidSignature):
            verify_v4(tampered, public_key)


def test_signing_without_credentials_is_a_clear_error(emulator: GcsEmulator, service_account: Any) -> None:
    s = settings(emulator, service_account, credentials_file=None)

    async def go(store: GcsStorage) -> str | None:
        return await store.signed_url(KEY, "a.pdf", 60)

    with pytest.raises(StorageError, match="no credentials to sign URLs"):
        run(_with_store(s, go))


# -- start-up checks and the rest of the protocol ---------------------------------------------


def test_location_mismatch_refuses_to_start(emulator: GcsEmulator, service_account: Any, admin: Any) -> None:
    async def noop(store: GcsStorage) -> None:
        return None

    have = admin.client.get_bucket(BUCKET).location
    run(_with_store(settings(emulator, service_account, location=have.lower()), noop))
    with pytest.raises(StorageError) as e:
        run(_with_store(settings(emulator, service_account, location="EUROPE-WEST3"), noop))
    assert f"is in location {have!r}" in str(e.value) and "EUROPE-WEST3" in str(e.value)
    with pytest.raises(StorageError, match="bucket does not exist"):
        run(_with_store(settings(emulator, service_account, bucket="gw-no-such-bucket"), noop))


def test_failed_stream_leaves_nothing(emulator: GcsEmulator, service_account: Any) -> None:
    att = Attachment()

    async def go(store: GcsStorage) -> Any:
        with pytest.raises(StorageError, match="spool file vanished"):
            await store.put(KEY, att.chunks(fail_after=20 * 1000 * 1000), META)
        return await store.stat(KEY)

    assert run(_with_store(settings(emulator, service_account), go)) is None


def test_open_stat_delete_round_trip(emulator: GcsEmulator, service_account: Any) -> None:
    async def go(store: GcsStorage) -> None:
        assert await store.stat(KEY) is None
        with pytest.raises(ObjectNotFound):
            [c async for c in store.open(KEY)]
        stored = await store.put(KEY, [b"hello ", b"", b"world"], META)
        assert stored.size == 11
        assert b"".join([c async for c in store.open(KEY)]) == b"hello world"
        st = await store.stat(KEY)
        assert st is not None and st.sha256 == stored.sha256
        await store.delete(KEY)
        await store.delete(KEY)
        assert await store.stat(KEY) is None
        assert (await store.put("empty", [], ObjectMeta())).size == 0

    run(_with_store(settings(emulator, service_account), go))


def test_a_store_that_is_down_fails_fast_with_a_clear_error(emulator: GcsEmulator, service_account: Any) -> None:
    import time

    from tests.servers.ports import free_port

    s = settings(emulator, service_account, endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=2)

    async def noop(store: GcsStorage) -> None:
        return None

    t0 = time.monotonic()
    with pytest.raises(StorageError, match="ConnectionError|Connection refused|RetryError"):
        run(_with_store(s, noop))
    assert time.monotonic() - t0 < 30


def test_create_if_absent_sends_the_generation_precondition(emulator: GcsEmulator, service_account: Any) -> None:
    # gcp-storage-emulator ignores preconditions (a second create
    # overwrites), so what is checked here is the request: an upload with
    # ifGenerationMatch=0, which real GCS answers with 412 when the object
    # exists (tests/storage/helpers.check_create runs on the other backends).
    s = settings(emulator, service_account)
    assert run(_with_store(s, lambda store: store.create("leases/test/1", b"node 0", ObjectMeta()))) is True
    assert emulator.dir is not None
    log = (emulator.dir / "emulator.log").read_text()
    sent = rf"POST /upload/storage/v1/b/{BUCKET}/o\?uploadType=multipart&ifGenerationMatch=0 "
    assert re.search(sent, log), log[-2000:]
