"""The customer upload page on an S3 store: parts go straight to the store.

Ceph's radosgw on loopback is the store (it checks SigV4 signatures and URL
expiry); the bucket has the CORS rule the docs ask for, so real headless
Chromium PUTs each part cross-origin with a presigned part URL.  The gateway
is a real ``serve`` process whose route delivers to a real SMTP sink.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.harness import GatewayProcess, SmtpSink, wait_until
from tests.messages import fetch, leaves, links, parse, payload, pdf_bytes, sha256
from tests.servers.ceph import CephRadosgw
from tests.test_upload_page import ARTIFACTS, SCRIPT, _call, invite

MiB = 1 << 20


def s3_gateway(make_gateway: Any, tmp_path: Path, ceph: CephRadosgw, s3: Any, upload: dict[str, Any],
               **kwargs: Any) -> tuple[GatewayProcess, str]:
    """A started gateway whose route stores in a fresh bucket on radosgw,
    with the CORS rule of docs/CONFIG.md for the gateway's origin."""
    bucket = f"page-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    secret = tmp_path / "s3.secret"
    secret.write_text(ceph.secret_key)
    gw = make_gateway(start=False, route={"storage": "cloud", **kwargs.pop("route", {})}, sections={
        "gateway": {"processes": 1}, "upload": upload,
        "storage.cloud": {"backend": "s3", "bucket": bucket, "region": ceph.region, "prefix": "gw/",
                          "endpoint_url": ceph.endpoint_url, "addressing_style": "path",
                          "access_key_id": ceph.access_key, "secret_access_key_file": str(secret),
                          "encryption": "aws:kms", "kms_key_id": ceph.kms_key_id}}, **kwargs)
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
        "AllowedOrigins": [f"http://127.0.0.1:{gw.http_port}"], "AllowedMethods": ["PUT"],
        "AllowedHeaders": ["content-type", "content-md5", "x-amz-checksum-sha256"], "MaxAgeSeconds": 3600}]})
    return gw.start(), bucket


def test_a_50_mb_file_goes_straight_to_radosgw_in_presigned_parts_and_resumes_after_a_cut(
        make_gateway: Any, sink: SmtpSink, tmp_path: Path, ceph: CephRadosgw, s3: Any) -> None:
    gw, bucket = s3_gateway(make_gateway, tmp_path, ceph, s3,
                            {"chunk_size": "5MiB", "max_bytes_per_invitation": "60MiB"},
                            next_hop=f"smtp://127.0.0.1:{sink.port}", route={"tls": "none"})
    expired = invite(gw, "--ttl", "1")
    url = invite(gw, "--message-id", "<case-5678@example.net>")
    data = pdf_bytes(50 * MiB)
    file = tmp_path / "drone-survey.pdf"
    file.write_bytes(data)
    second = tmp_path / "extra.pdf"
    second.write_bytes(pdf_bytes(20 * MiB))
    ARTIFACTS.mkdir(exist_ok=True)
    time.sleep(1.1)
    run = subprocess.run(["node", str(SCRIPT), json.dumps({
        "url": url, "expiredUrl": expired, "file": str(file), "artifacts": str(ARTIFACTS), "cutAt": 0.3,
        "prefix": "upload-page-s3", "secondFile": str(second)})], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout)
    assert seen["final"]["state"] == "done", (seen["final"], gw.log()[-3000:])
    assert len({round(s, 2) for s in seen["samples"] if 0 < s < 1}) >= 5, seen["samples"]
    # Never back by more than the one 5 MiB part a cut can cost.
    assert all(b >= a - 0.11 for a, b in zip(seen["samples"], seen["samples"][1:])), seen["samples"]
    assert 0.3 <= seen["cut"] < 1 and seen["sawRetrying"]
    for name in ("offline", "done", "limit", "expired"):
        assert (ARTIFACTS / f"upload-page-s3-{name}.png").stat().st_size > 1000
    events = gw.log_events()
    # The bytes went to the store, not through the gateway: no chunk came
    # in; a URL was asked for each of the 10 parts, a second one only for
    # the part the cut interrupted.
    assert not [e for e in events if e.get("event") == "chunk stored"]
    issued = [e["chunk"] for e in events if e.get("event") == "part url issued"]
    assert sorted(set(issued)) == list(range(10)) and len(issued) <= 11, issued
    # Each URL binds the part's MD5 and SHA-256, computed in the browser.
    assert all(e["checksums"] == ["md5", "sha256"] for e in events if e.get("event") == "part url issued")
    [assembled] = [e for e in events if e.get("event") == "parts assembled"]
    assert assembled["parts"] == 10 and assembled["size"] == len(data)
    # The email in the customer's thread, with a link to the bytes.
    [mail] = sink.wait(1, timeout=60)
    msg = parse(mail.data)
    assert msg["In-Reply-To"] == "<case-5678@example.net>" and msg["X-CustomerId"] == "ACME-7"
    [link] = links(payload(leaves(msg)[0]))
    status, headers, body = fetch(link)  # follows the redirect to radosgw
    assert status == 200 and sha256(body) == sha256(data)
    # Nothing left in staging: no open multipart upload, no part object.
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    staged = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="gw/staging/").get("Contents", [])]
    assert all(k.endswith("/session.json") for k in staged), staged
    # The second file would pass the invitation's 60 MB: refused, and the page says why.
    assert seen["second"]["state"] == "error", seen["second"]
    assert "at most 60.0 MB in all" in seen["second"]["text"] and "new link" in seen["second"]["text"]
    assert seen["expired"]["status"] == 410
    print(f"\n50 MiB presigned upload in Chromium: {seen['seconds']:.1f} s including a 2.5 s cut")


def put(url: str, body: bytes, headers: dict[str, str]) -> int:
    """PUT to the store; the HTTP status."""
    req = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def test_the_store_refuses_a_changed_part_url_or_other_bytes_and_abandoned_uploads_are_aborted(
        make_gateway: Any, tmp_path: Path, ceph: CephRadosgw, s3: Any) -> None:
    gw, bucket = s3_gateway(make_gateway, tmp_path, ceph, s3,
                            {"chunk_size": "5MiB", "abandon_after": 3, "cleanup_interval": 1, "part_url_ttl": 60})
    url = invite(gw)
    status, s = _call("POST", url + "/files", json.dumps({"name": "scan.pdf", "size": 6 * MiB}).encode())
    assert status == 201 and s["direct"] and s["chunks"] == 2 and s["chunkSize"] == 5 * MiB
    files = f"{url}/files/{s['uploadId']}"
    data = pdf_bytes(5 * MiB)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    status, part = _call("POST", files + "/chunks/0/url", json.dumps({"md5": md5}).encode())
    assert status == 200 and part["headers"] == {"Content-MD5": md5}
    assert _call("POST", files + "/chunks/0/url", b'{"md5": "abc"}')[0] == 400
    assert _call("POST", files + "/chunks/-1/url", b"{}")[0] == 404
    assert _call("POST", files + "/chunks/2/url", b"{}")[0] == 404
    tampered = part["url"].replace("partNumber=1", "partNumber=2")
    other = data[:-1] + b"\0"
    # A changed URL or another Content-MD5: the signature fails (radosgw
    # answers before reading the body: send a short one).  Other bytes
    # under the signed MD5: BadDigest.  Then the real part.
    for target, body, headers, expected in ((tampered, b"x", {"Content-MD5": md5}, 403),
                                            (part["url"], b"x", {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}, 403),
                                            (part["url"], other, {"Content-MD5": md5}, 400),
                                            (part["url"], data, {"Content-MD5": md5}, 200)):
        assert put(target, body, headers) == expected
    # The store's list of parts is what the page resumes from.
    assert _call("GET", files)[1]["received"] == [0]
    assert _call("POST", files + "/complete")[1]["missing"] == [1]
    # What Ceph 16 cannot do: check x-amz-checksum-sha256 against the bytes
    # (AWS S3 would answer 400 here); the signed Content-MD5 is its check.
    last = pdf_bytes(1 * MiB)
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    last_md5 = base64.b64encode(hashlib.md5(last).digest()).decode()
    part = _call("POST", files + "/chunks/1/url", json.dumps({"md5": last_md5, "sha256": wrong}).encode())[1]
    assert put(part["url"], last, part["headers"]) == 200
    assert "ChecksumSHA256" not in s3.list_parts(Bucket=bucket, Key=f"gw/staging/page/{s['uploadId']}/file",
                                                 UploadId=s3.list_multipart_uploads(Bucket=bucket)["Uploads"][0]
                                                 ["UploadId"])["Parts"][1]
    [upload] = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert upload["Key"] == f"gw/staging/page/{s['uploadId']}/file"
    # Not completed within abandon_after (3 s): the sweeper aborts it.
    deadline = time.monotonic() + 20
    while s3.list_multipart_uploads(Bucket=bucket).get("Uploads") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), gw.log()[-3000:]
    # The abort is the sweeper's first step: the session record goes after
    # it, and the line is logged last.
    wait_until(lambda: [e for e in gw.log_events() if e.get("event") == "abandoned upload removed"], timeout=20,
               what="the abandoned upload logged")
    assert _call("GET", files)[0] == 404
    assert [e for e in gw.log_events() if e.get("event") == "abandoned upload removed"]
