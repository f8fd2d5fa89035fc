"""The S3 backend against a real S3 server: Ceph's radosgw on loopback.

radosgw checks SigV4 signatures and presigned-URL expiry, so the link
security tests mean something here.  Ceph 16 facts the tests account for:
SSE-KMS (``testing`` backend) is echoed by HeadObject, SSE-S3 ("AES256") is
accepted but not echoed; flexible SHA-256 checksums are ignored, Content-MD5
is verified.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import tracemalloc
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import pytest
from botocore.config import Config

from gateway.storage.base import ObjectMeta, ObjectNotFound, StorageError
from gateway.storage.s3 import S3Storage
from gateway.storage.settings import S3StorageSettings
from tests.servers.ceph import CephRadosgw
from tests.storage.helpers import FILENAME, Attachment, check_create, disposition_filename, http_get

SECRET_ENV = "GW_TEST_S3_SECRET"
KEY = "uploads/cust-42/20261127T101500.000001Z-invoice.pdf"
META = ObjectMeta(content_type="application/pdf", filename=FILENAME,
                  metadata={"queue-id": "4XyZ0aB1", "customer-id": "cust-42"})


@pytest.fixture(scope="module")
def ceph(ceph: CephRadosgw) -> Iterator[CephRadosgw]:
    """The run's radosgw (tests/conftest.py), its secret in the environment
    for this module's configs."""
    os.environ[SECRET_ENV] = ceph.secret_key
    yield ceph
    os.environ.pop(SECRET_ENV, None)


@pytest.fixture(scope="module")
def admin(ceph: CephRadosgw) -> Any:
    """A plain boto3 client, to look at the server behind the backend's back."""
    client = boto3.client("s3", endpoint_url=ceph.endpoint_url, aws_access_key_id=ceph.access_key,
                          aws_secret_access_key=ceph.secret_key, region_name="us-east-1",
                          config=Config(signature_version="s3v4"))
    yield client
    client.close()


@pytest.fixture
def bucket(admin: Any) -> str:
    """A fresh bucket for one test."""
    name = f"gw-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name)
    return name


def settings(ceph: CephRadosgw, bucket: str, **kw: Any) -> S3StorageSettings:
    base: dict[str, Any] = dict(backend="s3", bucket=bucket, region=ceph.region, prefix="attachments/",
                                endpoint_url=ceph.endpoint_url, access_key_id=ceph.access_key,
                                secret_access_key_env=SECRET_ENV)
    base.update(kw)
    return S3StorageSettings(**base)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def started(s: S3StorageSettings) -> S3Storage:
    store = S3Storage("s3", s, Path("."))
    await store.start()
    return store


def _open_uploads(admin: Any, bucket: str) -> list[dict[str, Any]]:
    return admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_region_is_reported_by_the_server(admin: Any, ceph: CephRadosgw, bucket: str) -> None:
    # The fixture's region is what GetBucketLocation says (the zonegroup).
    assert admin.get_bucket_location(Bucket=bucket)["LocationConstraint"] == ceph.region


def test_30mb_put_streams_in_parts_and_arrives_byte_for_byte_with_kms(admin: Any, ceph: CephRadosgw,
                                                                     bucket: str) -> None:
    # One part at a time, so that "3 parts done while the 4th is read" is
    # exact; parallel parts have their own test.
    s = settings(ceph, bucket, encryption="aws:kms", kms_key_id=ceph.kms_key_id, part_concurrency=1)
    seen_parts: list[int] = []

    def before_last() -> None:
        # The upload is under way before the last chunk is even read: parts
        # are on the server, so the chunks were never joined whole.
        uploads = _open_uploads(admin, bucket)
        assert len(uploads) == 1
        parts = admin.list_parts(Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])
        seen_parts.append(len(parts.get("Parts", [])))

    att = Attachment(before_last=before_last)

    async def go() -> Any:
        store = await started(s)
        try:
            loop_thread = threading.get_ident()
            stored = await store.put(KEY, att.chunks(), META)
            assert loop_thread not in att.threads, "the chunk iterator ran on the event loop"
            return stored, await store.stat(KEY)
        finally:
            await store.close()

    stored, stat = run(go())
    assert seen_parts and seen_parts[0] >= 3  # 30 MB in 8 MiB parts: 3 done, the 4th being read
    assert stored.key == KEY and stored.size == att.size and stored.sha256 == att.sha256()

    obj = admin.get_object(Bucket=bucket, Key="attachments/" + KEY)
    body = obj["Body"].read()
    assert len(body) == att.size
    assert hashlib.sha256(body).hexdigest() == att.sha256()
    assert obj["ContentType"] == "application/pdf"
    assert obj["ServerSideEncryption"] == "aws:kms"
    assert obj["SSEKMSKeyId"] == ceph.kms_key_id
    assert obj["Metadata"]["queue-id"] == "4XyZ0aB1"
    assert disposition_filename(obj["ContentDisposition"]) == FILENAME
    assert obj["ETag"].strip('"').endswith("-4")  # a multipart object, 4 parts

    assert stat is not None
    assert stat.extra["encryption"] == "aws:kms" and stat.extra["kms_key_id"] == ceph.kms_key_id
    assert stat.content_type == "application/pdf"
    assert stat.metadata["customer-id"] == "cust-42" and stat.metadata["filename"] == FILENAME
    assert stored.extra["verified"] in ("etag-md5", "sha256")
    assert _open_uploads(admin, bucket) == []


def test_aes256_is_requested_on_every_upload_request(ceph: CephRadosgw, bucket: str) -> None:
    # Ceph 16 accepts SSE-S3 but does not echo it, so check what was asked for.
    sent: list[tuple[str, str | None]] = []

    def record(request: Any, operation_name: str = "", **_: Any) -> None:
        sent.append((operation_name, request.headers.get("x-amz-server-side-encryption")))

    async def go() -> Any:
        store = await started(settings(ceph, bucket))
        store._client.meta.events.register("before-sign.s3.*", record)
        try:
            big = await store.put(KEY, Attachment(size=9 * 1024 * 1024).chunks(), META)
            small = await store.put("links/x.json", [b"{}"], ObjectMeta(content_type="application/json"))
            return big, small, await store.stat(KEY)
        finally:
            await store.close()

    big, small, stat = run(go())
    asked = {op: sse for op, sse in sent if op in ("PutObject", "CreateMultipartUpload")}
    assert asked == {"PutObject": "AES256", "CreateMultipartUpload": "AES256"}
    assert big.size == 9 * 1024 * 1024 and small.size == 2
    assert stat is not None and stat.extra["encryption"] in ("AES256", "")  # "" : Ceph 16 does not echo


def test_signed_url_downloads_with_filename_and_refuses_tampering_and_expiry(ceph: CephRadosgw,
                                                                            bucket: str) -> None:
    att = Attachment(size=3 * 1024 * 1024 + 7)

    async def go() -> tuple[str | None, str | None]:
        store = await started(settings(ceph, bucket, url_ttl=600))
        try:
            await store.put(KEY, att.chunks(), META)
            return await store.signed_url(KEY, FILENAME, 300), await store.signed_url(KEY, FILENAME, 1)
        finally:
            await store.close()

    url, short = run(go())
    assert url is not None and short is not None
    q = dict(parse_qsl(urlsplit(url).query))
    assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and q["X-Amz-Expires"] == "300"

    ok = http_get(url)
    assert ok.status == 200
    assert hashlib.sha256(ok.body).hexdigest() == att.sha256()
    assert disposition_filename(ok.headers["Content-Disposition"]) == FILENAME
    assert ok.headers["Content-Disposition"].startswith('attachment; filename="')

    parts = urlsplit(url)
    # A changed signature, a changed filename, another object: all refused.
    sig = q["X-Amz-Signature"]
    bad_sig = dict(q, **{"X-Amz-Signature": sig[:-1] + ("0" if sig[-1] != "0" else "1")})
    bad_name = dict(q, **{"response-content-disposition": 'attachment; filename="evil.html"'})
    for query, path in ((bad_sig, parts.path), (bad_name, parts.path), (q, parts.path + "x")):
        tampered = urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))
        assert http_get(tampered).status == 403, tampered
    # No signature at all: the bucket is private.
    assert http_get(urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))).status == 403

    time.sleep(2.5)
    assert http_get(short).status == 403  # expired


def test_ttl_is_capped_by_url_ttl(ceph: CephRadosgw, bucket: str) -> None:
    async def go() -> str | None:
        store = await started(settings(ceph, bucket, url_ttl=120))
        try:
            return await store.signed_url(KEY, "a.pdf", 86400)
        finally:
            await store.close()

    url = run(go())
    assert url is not None and dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == "120"


def test_region_mismatch_refuses_to_start(ceph: CephRadosgw, bucket: str) -> None:
    store = S3Storage("s3", settings(ceph, bucket, region="eu-central-1"), Path("."))

    async def go() -> None:
        try:
            await store.start()
        finally:
            await store.close()

    with pytest.raises(StorageError) as e:
        run(go())
    msg = str(e.value)
    assert f"is in region {ceph.region!r}" in msg and "region = 'eu-central-1'" in msg
    assert ceph.secret_key not in msg


def test_missing_bucket_and_bad_secret_are_clear_errors(ceph: CephRadosgw) -> None:
    async def go(s: S3StorageSettings) -> None:
        store = S3Storage("s3", s, Path("."))
        try:
            await store.start()
        finally:
            await store.close()

    with pytest.raises(StorageError, match="bucket does not exist"):
        run(go(settings(ceph, "gw-no-such-bucket")))
    os.environ["GW_TEST_S3_WRONG"] = "not-the-secret"
    try:
        with pytest.raises(StorageError) as e:
            run(go(settings(ceph, "gw-no-such-bucket", secret_access_key_env="GW_TEST_S3_WRONG")))
        assert "not-the-secret" not in str(e.value) and "SignatureDoesNotMatch" in str(e.value)
    finally:
        del os.environ["GW_TEST_S3_WRONG"]


def test_failed_stream_aborts_the_multipart_upload(admin: Any, ceph: CephRadosgw, bucket: str) -> None:
    att = Attachment()

    async def go() -> None:
        store = await started(settings(ceph, bucket))
        try:
            await store.put(KEY, att.chunks(fail_after=20 * 1000 * 1000), META)
        finally:
            await store.close()

    with pytest.raises(StorageError, match="spool file vanished"):
        run(go())
    assert _open_uploads(admin, bucket) == []
    assert admin.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_open_stat_delete_round_trip(ceph: CephRadosgw, bucket: str) -> None:
    async def go() -> None:
        store = await started(settings(ceph, bucket))
        try:
            assert await store.stat(KEY) is None
            with pytest.raises(ObjectNotFound):
                [c async for c in store.open(KEY)]
            stored = await store.put(KEY, [b"hello ", b"", b"world"], META)
            assert stored.size == 11
            assert b"".join([c async for c in store.open(KEY)]) == b"hello world"
            st = await store.stat(KEY)
            assert st is not None and st.sha256 == stored.sha256 and st.size == 11
            await store.delete(KEY)
            await store.delete(KEY)  # missing: not an error
            assert await store.stat(KEY) is None
            empty = await store.put("empty", [], ObjectMeta())
            assert empty.size == 0
            with pytest.raises(StorageError, match="invalid object key"):
                await store.put("../escape", [b"x"], META)
        finally:
            await store.close()

    run(go())


# -- staging ---------------------------------------------------------------------------


def test_staging_put_verifies_copies_and_cleans_up(admin: Any, ceph: CephRadosgw, bucket: str) -> None:
    staging = f"gw-stage-{uuid.uuid4().hex[:8]}"
    admin.create_bucket(Bucket=staging)
    s = settings(ceph, bucket, staging_bucket=staging, encryption="aws:kms", kms_key_id=ceph.kms_key_id,
                 copy_part_size=8 * 1024 * 1024)
    att = Attachment()

    async def go() -> Any:
        store = await started(s)
        try:
            return await store.put(KEY, att.chunks(), META), await store.stat(KEY)
        finally:
            await store.close()

    stored, stat = run(go())
    assert stored.sha256 == att.sha256() and stat is not None and stat.sha256 == att.sha256()
    assert admin.list_objects_v2(Bucket=staging).get("KeyCount", 0) == 0
    assert _open_uploads(admin, staging) == [] and _open_uploads(admin, bucket) == []
    obj = admin.get_object(Bucket=bucket, Key="attachments/" + KEY)
    assert hashlib.sha256(obj["Body"].read()).hexdigest() == att.sha256()
    assert obj["ServerSideEncryption"] == "aws:kms" and obj["ContentType"] == "application/pdf"
    assert disposition_filename(obj["ContentDisposition"]) == FILENAME
    assert obj["Metadata"]["customer-id"] == "cust-42"


def test_recover_finishes_or_cleans_up_interrupted_copies(admin: Any, ceph: CephRadosgw, bucket: str) -> None:
    s = settings(ceph, bucket, staging_prefix="staging/", staging_grace=0, encryption="aws:kms",
                 kms_key_id=ceph.kms_key_id)
    sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": ceph.kms_key_id}
    # 1. Crash after the staging upload, before the copy: finished at start.
    admin.put_object(Bucket=bucket, Key="staging/uploads/a.bin", Body=b"A" * 1000, ContentType="image/png",
                     Metadata={"customer-id": "c1"}, **sse)
    # 2. Crash after the copy, before the staging delete: only cleaned up.
    etag = admin.put_object(Bucket=bucket, Key="staging/uploads/b.bin", Body=b"B" * 10, **sse)["ETag"]
    admin.put_object(Bucket=bucket, Key="attachments/uploads/b.bin", Body=b"B" * 10,
                     Metadata={"gateway-staging-etag": etag}, **sse)
    # 3. Crash in the middle of a multipart upload to staging: aborted.
    admin.create_multipart_upload(Bucket=bucket, Key="staging/uploads/c.bin", **sse)
    time.sleep(1.1)  # LastModified has whole seconds; grace 0 means "older than now"

    async def go() -> tuple[dict[str, int] | None, dict[str, int]]:
        store = S3Storage("s3", s, Path("."))
        try:
            await store.start()  # runs recover()
            return store.last_recovery, await store.recover()  # a second run finds nothing left
        finally:
            await store.close()

    first, second = run(go())
    assert first == {"aborted": 1, "finished": 1, "cleaned": 1, "failed": 0}
    assert second == {"aborted": 0, "finished": 0, "cleaned": 0, "failed": 0}
    assert admin.list_objects_v2(Bucket=bucket, Prefix="staging/").get("KeyCount", 0) == 0
    assert _open_uploads(admin, bucket) == []
    a = admin.get_object(Bucket=bucket, Key="attachments/uploads/a.bin")
    assert a["Body"].read() == b"A" * 1000 and a["ContentType"] == "image/png"
    assert a["Metadata"]["customer-id"] == "c1" and a["ServerSideEncryption"] == "aws:kms"
    assert admin.get_object(Bucket=bucket, Key="attachments/uploads/b.bin")["Body"].read() == b"B" * 10


def test_a_store_that_is_down_fails_fast_with_a_clear_error(ceph: CephRadosgw, bucket: str) -> None:
    from tests.servers.ports import free_port

    s = settings(ceph, bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout=1,
                 max_attempts=2)

    async def go() -> None:
        store = S3Storage("s3", s, Path("."))
        try:
            await store.start()
        finally:
            await store.close()

    t0 = time.monotonic()
    with pytest.raises(StorageError, match="Could not connect"):
        run(go())
    assert time.monotonic() - t0 < 30


def test_cancelled_put_aborts_its_multipart_upload(admin: Any, ceph: CephRadosgw, bucket: str) -> None:
    started_parts = threading.Event()

    def slow() -> Iterator[bytes]:
        for i in range(400):  # 400 x 64 KiB = 25 MiB, slowly after the first part
            if i * 65536 > 9 * 1024 * 1024:
                started_parts.set()
                time.sleep(0.01)
            yield b"z" * 65536

    async def go() -> None:
        store = await started(settings(ceph, bucket))
        try:
            task = asyncio.ensure_future(store.put(KEY, slow(), META))
            while not started_parts.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            deadline = time.monotonic() + 20
            while _open_uploads(admin, bucket) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            await store.close()

    run(go())
    assert _open_uploads(admin, bucket) == []
    assert admin.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_an_http_upload_streams_through_staging_to_its_secure_key(admin: Any, ceph: CephRadosgw, bucket: str,
                                                                   tmp_path: Path) -> None:
    # The upload path (gateway/uploads.py) over S3: the request stream feeds
    # the backend's blocking iterator through the bridge, and the copy from
    # staging reads the staged object back through the loop.
    from gateway import config as config_mod, logs
    from gateway.links.tokens import Keyring
    from gateway.uploads import Uploads

    (tmp_path / "gw.toml").write_text(
        '[links]\nkeys = [{ id = "k1", file = "link.key", create_missing = true }]\n'
        '[storage.local]\nbackend = "filesystem"\n'
        '[[routes]]\nname = "r"\ndomains = ["contact.example"]\nnext_hop = "maildir:out"\nstorage = "local"\n'
        # The bytes are pseudo-random, no real PDF: this test is about the
        # staging path, so the route runs the size policy only.
        'policies = [{ name = "offload_large" }]\n')
    cfg = config_mod.load(tmp_path / "gw.toml", base_dir=str(tmp_path))
    data = Attachment(12 * 1024 * 1024)

    async def body() -> Any:
        for chunk in data.chunks():
            yield chunk

    audit = logs.AuditLog(tmp_path / "audit.jsonl", "test")

    async def go() -> None:
        store = await started(settings(ceph, bucket))
        try:
            uploads = Uploads(cfg, {"local": store}, Keyring(cfg.links.keys, tmp_path), audit)
            staged = await uploads.stage(store, "staging/api/job1", body(), limit=1 << 30)
            assert (staged.size, staged.sha256) == (data.size, data.sha256())
            stored = await uploads.finish(staging=[staged.key], filename="scan.pdf", customer="cust-42",
                                          ctype="application/pdf", size=staged.size, sha256=staged.sha256,
                                          reference="job1")
            got = admin.get_object(Bucket=bucket, Key="attachments/" + stored.key)["Body"].read()
            assert hashlib.sha256(got).hexdigest() == data.sha256()
            assert await store.stat("staging/api/job1") is None
            assert _open_uploads(admin, bucket) == []
        finally:
            await store.close()

    try:
        run(go())
    finally:
        audit.close()
    # The file stored is audited, under the id as given.
    [event] = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert event["EventType"] == "FileStored" and event["CustomerId"] == "cust-42"
    assert event["TargetFileSHA256"] == data.sha256() and event["StoreName"] == "s3"  # the store's own name


def test_parallel_parts_arrive_byte_for_byte_with_memory_bounded(admin: Any, ceph: CephRadosgw,
                                                                 bucket: str) -> None:
    """A 60 MB attachment in 5 MiB parts, 4 at a time: the parts really
    travel concurrently (counted on the client's UploadPart calls), the
    object arrives byte for byte with its SHA-256, radosgw verified every
    part's Content-MD5, and the memory the upload allocated at its peak
    (tracemalloc, all threads) stays near 4 parts, far below the object."""
    part, concurrency = 5 * 1024 * 1024, 4
    s = settings(ceph, bucket, encryption="aws:kms", kms_key_id=ceph.kms_key_id, multipart_chunk_size=part,
                 part_concurrency=concurrency)
    att = Attachment(size=60 * 1000 * 1000)
    lock = threading.Lock()
    calls = {"now": 0, "peak": 0}

    def before(**_: Any) -> None:
        with lock:
            calls["now"] += 1
            calls["peak"] = max(calls["peak"], calls["now"])

    def after(**_: Any) -> None:
        with lock:
            calls["now"] -= 1

    async def go() -> Any:
        store = await started(s)
        events = store._client.meta.events  # instrumenting boto3's own hooks, not replacing anything
        events.register("before-call.s3.UploadPart", before)
        events.register("after-call.s3.UploadPart", after)
        tracemalloc.start()
        try:
            stored = await store.put(KEY, att.chunks(), META)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await store.close()
        return stored, peak

    stored, peak = run(go())
    assert stored.size == att.size and stored.sha256 == att.sha256()
    assert stored.extra["verified"] in ("sha256", "etag-md5")
    obj = admin.get_object(Bucket=bucket, Key="attachments/" + KEY)
    assert hashlib.sha256(obj["Body"].read()).hexdigest() == att.sha256()
    assert obj["ServerSideEncryption"] == "aws:kms" and obj["ETag"].strip('"').endswith("-12")
    assert 1 < calls["peak"] <= concurrency, calls
    assert peak < (concurrency + 2) * part, f"peak {peak / 2**20:.1f} MiB"
    assert not _open_uploads(admin, bucket)


def test_create_if_absent_has_one_winner(ceph: CephRadosgw, bucket: str) -> None:
    # radosgw honours If-None-Match: * on PutObject (412 for the losers).
    async def go() -> None:
        store = await started(settings(ceph, bucket))
        try:
            await check_create(store)
        finally:
            await store.close()
    run(go())
