"""Object storage end to end: SMTP into ``attachment-gateway serve``, the
attachment into a real store, the link clicked, the storage URL fetched.

For each backend (S3 on Ceph radosgw, Azure Blob on Azurite, GCS on
gcp-storage-emulator) a 30 MB attachment sent over SMTP must end up in the
store byte for byte under ``<prefix>uploads/<customer>/<UTC time>-<name>``
with the expected encryption read back from the object; the link in the
forwarded message, clicked, must redirect to a storage URL minted for that
click with the backend's ``url_ttl``, which returns the bytes under the
original filename.  Where the server checks signatures (Ceph, Azurite) a
tampered and an expired storage URL are refused by the server itself.

Then the failures: a store answering 500, or down, while a 12 MB attachment
is processed (fail open on availability), and start-up refused for a region
mismatch and for encryption turned off.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import GATEWAY, GatewayProcess, wait_until
from tests.messages import leaves, links, message, parse, payload, pdf_bytes, send
from tests.servers.azurite import Azurite
from tests.servers.broken_s3 import BrokenS3
from tests.servers.ceph import CephRadosgw
from tests.servers.gcs import GcsEmulator
from tests.servers.ports import free_port, port_is_open
from tests.storage.helpers import disposition_filename, http_get, secret_file

MiB = 1 << 20
SIZE_30MB = 30 * 1000 * 1000
FILENAME = "Rechnung März 2026.pdf"
KEY_NAME = "Rechnung_Marz_2026.pdf"  # the sanitised name in the object key
CUSTOMER = "cust-42"
PREFIX = "attachments/"
KEY_RE = re.compile(r"attachments/uploads/cust-42/(\d{8}T\d{6})\.\d{6}Z-" + re.escape(KEY_NAME))
# Short enough to watch a storage URL expire within the test.
SHORT_TTL = 3


# -- servers: ceph, s3, azurite, gcs from conftest.py; a key to sign GCS URLs -------


@pytest.fixture(scope="module")
def service_account(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service-account key made here, to sign GCS V4 URLs offline; its
    token_uri is a closed loopback port, so nothing can leave the machine."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path_factory.mktemp("gcs-sa") / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "gateway-test", "private_key_id": "e2e-key",
        "private_key": pem, "client_email": "gateway-e2e@gateway-test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "http://127.0.0.1:9/token",
    }))
    return path


# -- helpers ------------------------------------------------------------------------


def cloud_gateway(make_gateway: Any, tmp_path: Path, storage: dict[str, Any],
                  route: dict[str, Any] | None = None) -> GatewayProcess:
    """A started gateway whose route offloads into ``[storage.cloud]``.

    One process: with several, the SMTP port opens when the first child
    listens, while another may still be checking its store; a test that
    then takes the store down would stop that child's start (and the
    service) rather than test processing."""
    # The test client names the customer (X-CustomerId) from loopback, as a
    # CRM that injects mail would: trusted to.
    return make_gateway(route={"storage": "cloud", "customer_id": {"trusted_networks": ["127.0.0.1/32"]},
                               **(route or {})},
                        sections={"storage.cloud": storage, "gateway": {"processes": 1}})


def click(gw: GatewayProcess, url: str) -> tuple[int, str]:
    """GET the link without following the redirect: (status, Location)."""
    path = urlsplit(url).path
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location") or ""
    finally:
        conn.close()


def send_30mb(gw: GatewayProcess) -> tuple[bytes, bytes, dt.datetime, dt.datetime]:
    """Send the 30 MB attachment; return (attachment, forwarded message,
    UTC time before sending, UTC time after it was forwarded)."""
    data = pdf_bytes(SIZE_30MB)
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    send(gw.smtp_port, message("Please find the invoice attached.\n",
                               attachments=[(data, "application/pdf", FILENAME)], X_CustomerId=CUSTOMER))
    [out] = gw.wait_outbox(timeout=120)
    after = dt.datetime.now(dt.timezone.utc)
    return data, out, before, after


def check_forwarded(out: bytes) -> str:
    """The forwarded message is slim and carries one link; return it."""
    assert len(out) < 64 * 1024
    assert b"X-Attachment-Offload: offloaded=1 bytes=30000000\r\n" in out
    text, notice = leaves(parse(out))
    assert text.get_content_type() == "text/plain" and b"moved to secure storage" in payload(notice)
    [url] = links(payload(text))
    return url


def check_key(key: str, before: dt.datetime, after: dt.datetime) -> None:
    m = KEY_RE.fullmatch(key)
    assert m, key
    stamp = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
    assert before <= stamp <= after, (before, stamp, after)


def check_download(url: str, data: bytes) -> None:
    got = http_get(url, timeout=60)
    assert got.status == 200, got.body[:500]
    assert got.body == data
    assert disposition_filename(got.headers["Content-Disposition"]) == FILENAME


def tampered(url: str) -> str:
    """The URL with one character of its signature changed."""
    m = re.search(r"(?:X-Amz-Signature|sig|X-Goog-Signature)=([^&]+)", url)
    assert m, f"no signature in {url}"
    i = m.start(1) + 4
    return url[:i] + ("A" if url[i] != "A" else "B") + url[i + 1:]


# -- S3 on Ceph radosgw --------------------------------------------------------------


def test_s3_30mb_over_smtp_to_radosgw_and_back_through_the_link(make_gateway: Any, tmp_path: Path,
                                                                  ceph: CephRadosgw, s3: Any) -> None:
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    gw = cloud_gateway(make_gateway, tmp_path, {
        "backend": "s3", "bucket": bucket, "region": ceph.region, "prefix": PREFIX,
        "endpoint_url": ceph.endpoint_url, "addressing_style": "path", "access_key_id": ceph.access_key,
        "secret_access_key_file": secret_file(tmp_path, "s3.secret", ceph.secret_key),
        "encryption": "aws:kms", "kms_key_id": ceph.kms_key_id, "url_ttl": SHORT_TTL,
    })
    data, out, before, after = send_30mb(gw)
    url = check_forwarded(out)

    [obj] = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "uploads/")["Contents"]
    check_key(obj["Key"], before, after)
    got = s3.get_object(Bucket=bucket, Key=obj["Key"])
    assert got["Body"].read() == data
    # Encryption as configured, read back from the object (Ceph echoes SSE-KMS).
    assert got["ServerSideEncryption"] == "aws:kms" and got["SSEKMSKeyId"] == ceph.kms_key_id
    assert got["Metadata"]["customer-id"] == CUSTOMER and got["ContentType"] == "application/pdf"

    status, location = click(gw, url)
    assert status == 302 and location.startswith(f"{ceph.endpoint_url}/{bucket}/{obj['Key'].split('/')[0]}/")
    # Minted now, with the backend's url_ttl.
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == [str(SHORT_TTL)]
    check_download(location, data)
    # radosgw checks the signature: one changed character is a 403.
    assert http_get(tampered(location)).status == 403
    # Each click mints its own URL.
    time.sleep(1.1)
    status, second = click(gw, url)
    assert status == 302 and second != location
    time.sleep(SHORT_TTL + 1)
    expired = http_get(location)
    assert expired.status == 403 and b"AccessDenied" in expired.body
    clicks = [e for e in gw.audit() if e["EventType"] == "FileAccessed"]
    # Anonymous agents on the loopback listener: allowed by allow-all, named in the event.
    assert [e["EventResultDetails"] for e in clicks] == [f"redirected (allow-all; URL valid {SHORT_TTL}s)"] * 2
    assert clicks[0]["TargetFilePath"] == obj["Key"].removeprefix(PREFIX)
    assert location not in gw.log() and location not in gw.audit_path.read_text()


# -- Azure Blob on Azurite -----------------------------------------------------------


def test_azure_30mb_over_smtp_to_azurite_and_back_through_the_link(make_gateway: Any, tmp_path: Path,
                                                                     azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    container = f"e2e-{uuid.uuid4().hex[:12]}"
    admin = BlobServiceClient(azurite.account_url, credential={"account_name": azurite.account_name,
                                                               "account_key": azurite.account_key})
    try:
        admin.create_container(container)
        gw = cloud_gateway(make_gateway, tmp_path, {
            "backend": "azure", "account_url": azurite.account_url, "container": container, "prefix": PREFIX,
            "account_key_file": secret_file(tmp_path, "azure.key", azurite.account_key), "url_ttl": SHORT_TTL,
        })
        data, out, before, after = send_30mb(gw)
        url = check_forwarded(out)

        cc = admin.get_container_client(container)
        [name] = [b.name for b in cc.list_blobs(name_starts_with=PREFIX + "uploads/")]
        check_key(name, before, after)
        blob = cc.get_blob_client(name)
        assert blob.download_blob().readall() == data
        props = blob.get_blob_properties()
        # No encryption scope configured: the account's server encryption.
        assert props.server_encrypted is True and props.encryption_scope is None
        assert props.blob_type == "BlockBlob" and props.content_settings.content_type == "application/pdf"
        assert CUSTOMER in props.metadata.values()

        status, location = click(gw, url)
        assert status == 302 and location.startswith(f"{azurite.account_url}/{container}/")
        q = parse_qs(urlsplit(location).query)
        assert q["sp"] == ["r"]
        expiry = dt.datetime.fromisoformat(q["se"][0].replace("Z", "+00:00"))
        left = (expiry - dt.datetime.now(dt.timezone.utc)).total_seconds()
        assert 0 < left <= SHORT_TTL + 1, left
        check_download(location, data)
        # Azurite checks the SAS: a changed signature is a 403.
        assert http_get(tampered(location)).status == 403
        time.sleep(SHORT_TTL + 1.5)
        assert http_get(location).status == 403
        status, fresh = click(gw, url)
        assert status == 302 and fresh != location
        got = http_get(fresh, timeout=60)
        assert got.status == 200 and got.body == data
    finally:
        admin.close()


# -- GCS on gcp-storage-emulator -----------------------------------------------------


def test_gcs_30mb_over_smtp_to_the_emulator_and_back_through_the_link(make_gateway: Any, tmp_path: Path,
                                                                      gcs: GcsEmulator,
                                                                      service_account: Path) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client  # type: ignore[attr-defined]

    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    gw = cloud_gateway(make_gateway, tmp_path, {
        "backend": "gcs", "bucket": gcs.bucket, "prefix": prefix, "endpoint_url": gcs.endpoint_url,
        "anonymous": True, "credentials_file": str(service_account),
        # Longer than the link endpoint's old fixed 900 s: the URL must
        # follow the backend's own setting.
        "url_ttl": "30m",
    })
    data, out, before, after = send_30mb(gw)
    url = check_forwarded(out)

    client = gcs_client.Client(project="gateway-test", credentials=AnonymousCredentials(),  # type: ignore[attr-defined]
                               client_options={"api_endpoint": gcs.endpoint_url})
    try:
        bucket = client.bucket(gcs.bucket)
        [name] = [b.name for b in client.list_blobs(gcs.bucket, prefix=prefix + "uploads/")]
        check_key(PREFIX + name.removeprefix(prefix), before, after)
        blob = bucket.get_blob(name)
        assert blob.download_as_bytes() == data
        # No CMEK configured: Google-managed encryption, no KMS key on the object.
        assert blob.kms_key_name is None
        assert blob.content_type == "application/pdf" and blob.metadata["customer-id"] == CUSTOMER
    finally:
        client.close()

    status, location = click(gw, url)
    assert status == 302 and location.startswith(f"{gcs.endpoint_url}/{gcs.bucket}/{prefix}uploads/")
    q = parse_qs(urlsplit(location).query)
    assert q["X-Goog-Expires"] == ["1800"] and q["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    # The emulator checks no signature (tests/storage/test_gcs.py checks the
    # signer on its own); it does honour the filename.
    check_download(location, data)


# -- fail open ------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["500", "down"])
def test_store_failing_while_processing_forwards_the_original_when_it_fits(make_gateway: Any, tmp_path: Path,
                                                                            failure: str) -> None:
    """What the agent sees: the message with its 12 MB attachment as sent
    (it fits the next hop's 25 MiB); what the customer sees: nothing unusual,
    no bounce.  The failure is in the log, with the queue id."""
    with BrokenS3(region="eu-west-3") as broken:
        gw = cloud_gateway(make_gateway, tmp_path, {
            "backend": "s3", "bucket": "attachments", "region": "eu-west-3", "endpoint_url": broken.endpoint_url,
            "addressing_style": "path", "access_key_id": "AKIDTEST",
            "secret_access_key_file": secret_file(tmp_path, "s3.secret", "not-a-real-secret"),
            "max_attempts": 2, "connect_timeout": 2, "read_timeout": 5,
        })
        if failure == "down":
            broken.stop()
        data = pdf_bytes(12 * 1000 * 1000)
        send(gw.smtp_port, message("Invoice attached.\n", attachments=[(data, "application/pdf", "invoice.pdf")],
                                   X_CustomerId=CUSTOMER))
        [out] = gw.wait_outbox(timeout=90)
        if failure == "500":
            # Bounded retries: max_attempts requests for the upload, no more.
            assert broken.requests["POST"] == 2, broken.requests
    [att] = [p for p in leaves(parse(out)) if p.get_filename() == "invoice.pdf"]
    assert att.get_payload(decode=True) == data
    assert not links(out)
    assert b"X-Attachment-Offload: offloaded=0 bytes=0; 1 not stored, forwarded as is\r\n" in out
    assert not (gw.tmp / "bounces").exists() or not any((gw.tmp / "bounces").rglob("*.*"))
    # "delivered" is logged after the outbox file is written and the message
    # has left the spool: wait for the line, not just for the file.
    wait_until(lambda: any(e.get("event") == "delivered" for e in gw.log_events()), timeout=30,
               what="the delivery logged")
    events = gw.log_events()
    failed = [e for e in events if e.get("event") == "offload failed; failing open"]
    assert len(failed) == 1 and failed[0]["level"] == "error"
    qid = failed[0]["queue_id"]
    assert "s3://attachments/uploads/cust-42/" in failed[0]["error"]
    assert "not-a-real-secret" not in gw.log()
    forwarded = [e for e in events if e.get("event", "").startswith("storage failed; attachment forwarded as is")]
    assert forwarded and forwarded[0]["filename"] == "invoice.pdf" and forwarded[0]["queue_id"] == qid
    assert [e for e in events if e.get("event") == "delivered" and e.get("queue_id") == qid]
    assert not [e for e in gw.audit() if e["EventType"] == "FileRefused"]
    # Counted, too: the failure is on the Prometheus endpoint.
    scraped = http_get(f"http://127.0.0.1:{gw.http_port}/metrics").body.decode()
    assert re.search(r'^gateway_offload_failures_total\{store="cloud"\} 1\.0$', scraped, re.M), scraped[-3000:]


def test_store_failing_with_a_next_hop_too_small_replaces_the_file_with_a_notice(make_gateway: Any,
                                                                                  tmp_path: Path) -> None:
    """The same failure on a route whose next hop takes at most 8 MiB: the
    agent sees a notice naming the file instead of it; the refusal is an
    audit event; the message still goes (no bounce to the customer)."""
    with BrokenS3(region="eu-west-3") as broken:
        gw = cloud_gateway(make_gateway, tmp_path, {
            "backend": "s3", "bucket": "attachments", "region": "eu-west-3", "endpoint_url": broken.endpoint_url,
            "addressing_style": "path", "access_key_id": "AKIDTEST",
            "secret_access_key_file": secret_file(tmp_path, "s3.secret", "not-a-real-secret"), "max_attempts": 1,
        }, route={"next_hop_max_size": "8MiB"})
        data = pdf_bytes(12 * 1000 * 1000)
        send(gw.smtp_port, message("Invoice attached.\n", attachments=[(data, "application/pdf", "invoice.pdf")],
                                   X_CustomerId=CUSTOMER))
        [out] = gw.wait_outbox(timeout=90)
    assert len(out) < 64 * 1024
    assert b"X-Attachment-Offload: offloaded=0 bytes=0; 1 not stored, replaced by a notice\r\n" in out
    notice = [p for p in leaves(parse(out)) if b"could not be stored" in (p.get_payload(decode=True) or b"")]
    assert notice and b'"invoice.pdf"' in notice[0].get_payload(decode=True)
    refused = gw.wait_audit(lambda e: e["EventType"] == "FileRefused")
    [event] = [e for e in refused if e["EventType"] == "FileRefused"]
    assert event["EventResult"] == "Failure" and event["TargetFileName"] == "invoice.pdf"
    assert event["CustomerId"] == CUSTOMER and event["EventResultDetails"] == "storage unavailable, too large to forward"
    warned = [e for e in gw.log_events() if "replaced by a notice" in e.get("event", "")]
    assert warned and warned[0]["queue_id"] == event["QueueId"]
    assert not (gw.tmp / "bounces").exists() or not any((gw.tmp / "bounces").rglob("*.*"))


# -- start-up refused --------------------------------------------------------------------


def serve_refused(gw: GatewayProcess) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` and watch its ports until it exits; it must exit
    non-zero without ever listening."""
    log = gw.tmp / "serve.out"
    with open(log, "w") as f:
        proc = subprocess.Popen([*GATEWAY, "-c", str(gw.config_path), "serve"], cwd=gw.tmp, stdout=f,
                                stderr=subprocess.STDOUT, text=True)
        listened = False
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            listened = listened or port_is_open("127.0.0.1", gw.smtp_port, 0.05) or \
                port_is_open("127.0.0.1", gw.http_port, 0.05)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise AssertionError(f"serve did not exit:\n{log.read_text()}")
    assert not listened, "serve listened before refusing to start"
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def test_region_mismatch_stops_start_up(make_gateway: Any, tmp_path: Path, ceph: CephRadosgw, s3: Any) -> None:
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    gw = make_gateway(start=False, route={"storage": "cloud"}, sections={"storage.cloud": {
        "backend": "s3", "bucket": bucket, "region": "eu-central-1", "endpoint_url": ceph.endpoint_url,
        "addressing_style": "path", "access_key_id": ceph.access_key,
        "secret_access_key_file": secret_file(tmp_path, "s3.secret", ceph.secret_key)}})
    res = serve_refused(gw)
    assert res.returncode == 78, res.stdout
    assert (f"storage cloud: bucket '{bucket}' is in region '{ceph.region}', but the config says "
            "region = 'eu-central-1'; refusing to start (data residency)") in res.stdout
    assert ceph.secret_key not in res.stdout


def test_encryption_none_stops_start_up(make_gateway: Any) -> None:
    gw = make_gateway(start=False, route={"storage": "cloud"}, sections={"storage.cloud": {
        "backend": "s3", "bucket": "attachments", "region": "eu-west-3", "encryption": "none"}})
    res = serve_refused(gw)
    assert res.returncode == 78, res.stdout
    assert "storage.cloud.encryption: 'none': encryption at rest cannot be turned off" in res.stdout
    check = gw.command("check-config")
    assert check.returncode == 78 and "encryption at rest cannot be turned off" in check.stderr


def test_store_failing_with_a_next_hop_too_small_sends_the_customer_an_auto_reply(make_gateway: Any,
                                                                                    tmp_path: Path,
                                                                                    sink: Any) -> None:
    """Failing open on availability in full: the file that could be neither stored nor
    forwarded is replaced by a notice for the agent, and the customer gets
    an RFC 3834 reply in plain words, under the same rate limit and
    suppression rules as a refusal: a second message within the interval
    gets none, nor does list mail."""
    with BrokenS3(region="eu-west-3") as broken:
        gw = cloud_gateway(make_gateway, tmp_path, {
            "backend": "s3", "bucket": "attachments", "region": "eu-west-3", "endpoint_url": broken.endpoint_url,
            "addressing_style": "path", "access_key_id": "AKIDTEST",
            "secret_access_key_file": secret_file(tmp_path, "s3.secret", "not-a-real-secret"), "max_attempts": 1,
        }, route={"next_hop_max_size": "8MiB", "autoreply": {
            "from": "Support <support@contact.example>", "next_hop": f"smtp://127.0.0.1:{sink.port}",
            "interval": "1h", "upload_url": "https://upload.contact.example/"}})
        data = pdf_bytes(12 * 1000 * 1000)

        def send_one(sender: str, **headers: str) -> None:
            send(gw.smtp_port, message("Invoice attached.\n", attachments=[(data, "application/pdf", "invoice.pdf")],
                                       From=sender, Subject="My invoice", X_CustomerId=CUSTOMER, **headers),
                 sender=sender)

        send_one("customer@example.net")
        [out] = gw.wait_outbox(timeout=90)
        [reply] = sink.wait(1)
        send_one("customer@example.net")  # within the interval
        send_one("news@example.net", List_Id="<news.example.net>")  # list mail
        outs = gw.wait_outbox(count=3, timeout=90)
    # What the agent sees: a notice instead of the file, the message slim.
    assert len(out) < 64 * 1024 and b"1 not stored, replaced by a notice" in out
    # What the customer sees: one automatic reply, in plain words.
    assert reply.mail_from == "<>" and reply.rcpt_tos == ["customer@example.net"]
    r = parse(reply.data)
    assert r["Auto-Submitted"] == "auto-replied" and r["Subject"] == "We could not store your attachment"
    body = payload(r).decode().replace("\r\n", "\n")
    assert '"My invoice"' in body and "- invoice.pdf" in body
    assert "we could not" in body and "store the following file(s)" in body
    assert "problem on our side" in body
    assert "Please send the file(s)\nagain, or use our upload page:\n\n  https://upload.contact.example/\n" in body
    assert "not-a-real-secret" not in body
    assert all(b"1 not stored, replaced by a notice" in o for o in outs)
    events = gw.log_events()
    skipped = [e.get("reason", "") for e in events if e.get("event") == "no auto-reply"]
    assert len(skipped) == 2, skipped
    assert any("within 3600s" in s for s in skipped) and any("List-Id" in s for s in skipped)
    # The rate is claimed in the S3 store, which fails: the spool's files
    # decide instead (fail open), once per claim.
    fallback = [e for e in events if e.get("event") == "auto-reply rate claimed on this node only"]
    assert len(fallback) == 2 and all(e["store"] == "cloud" for e in fallback), fallback
    time.sleep(1)
    assert len(sink.messages) == 1
