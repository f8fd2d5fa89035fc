"""``attachment-gateway storage apply-retention`` and ``storage check``, run as
subprocesses against real servers: Ceph's radosgw (S3), Azurite (Azure Blob)
and gcp-storage-emulator (GCS).

What each server can show:

- radosgw stores lifecycle configurations and runs them: the rules are read
  back with GetBucketLifecycleConfiguration, and with the fixture's
  ``rgw lc debug interval = 10`` a lifecycle "day" lasts 10 seconds, so a
  forced ``radosgw-admin lc process`` shows the server itself deleting
  expired uploads and leaving everything else.
- gcp-storage-emulator stores a bucket's ``lifecycle`` on PATCH and returns
  it on GET, but never runs it: the rules are read back, enforcement cannot
  be seen.
- Azurite has no management plane (lifecycle management policies are an
  account setting of Azure Resource Manager): the command prints the policy
  and applies nothing, and the test checks the policy document itself.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness import GatewayProcess
from tests.servers.azurite import Azurite
from tests.servers.ceph import CephRadosgw
from tests.servers.gcs import GcsEmulator
from tests.storage.helpers import secret_file

# -- servers (ceph, s3, azurite, gcs: conftest.py) ----------------------------------------


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"adm-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def s3_store(ceph: CephRadosgw, tmp_path: Path, bucket: str, **kw: Any) -> dict[str, Any]:
    return {"backend": "s3", "bucket": bucket, "region": ceph.region, "prefix": "attachments/",
            "endpoint_url": ceph.endpoint_url, "addressing_style": "path", "access_key_id": ceph.access_key,
            "secret_access_key_file": secret_file(tmp_path, "s3.secret", ceph.secret_key),
            "encryption": "aws:kms", "kms_key_id": ceph.kms_key_id, **kw}


def gateway_with(make_gateway: Any, store: dict[str, Any]) -> GatewayProcess:
    """A config (not started) with ``[storage.cloud]`` beside the default local store."""
    return make_gateway(start=False, route={"storage": "cloud"}, sections={"storage.cloud": store})


def run_json(gw: GatewayProcess, *args: str) -> tuple[int, dict[str, Any], str]:
    res = gw.command("storage", *args, "--json")
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout), res.stdout + res.stderr


def checks(report: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """{check: [(status, detail), ...]} of the one store in a report."""
    [store] = report["stores"]
    out: dict[str, list[tuple[str, str]]] = {}
    for c in store["checks"]:
        out.setdefault(c["check"], []).append((c["status"], c["detail"]))
    return out


# -- apply-retention ---------------------------------------------------------------------

# A retention per kind, each different, so every rule read back is told apart.
DAYS = {"retention_days": 2, "quarantine_retention_days": 9, "link_retention_days": 30,
        "invitation_retention_days": 8, "job_retention_days": 3, "staging_retention_days": 4,
        "fleet_retention_days": 6}
# rule name -> (prefix under the store's prefix, days)
EXPECTED = {"uploads": ("uploads/", 2), "quarantine": ("quarantine/", 9), "links": ("links/", 30),
            "pages": ("pages/", 30), "revoked": ("revoked/", 30), "invitations": ("invitations/", 8),
            "jobs": ("jobs/", 3), "upload-staging": ("staging/", 4), "check": ("check/", 4),
            "autoreply": ("autoreply/", 6), "leases": ("leases/", 6)}


def test_s3_retention_is_written_read_back_and_enforced_by_radosgw(make_gateway: Any, tmp_path: Path,
                                                                    ceph: CephRadosgw, s3: Any,
                                                                    bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "site-archive", "Status": "Enabled", "Filter": {"Prefix": "archive/"},
         "Expiration": {"Days": 400}}]})
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket, staging_prefix="staging/", **DAYS))

    dry = gw.command("storage", "apply-retention", "--store", "cloud", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "attachments/uploads/" in dry.stdout
    [site] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert site["ID"] == "site-archive"  # nothing written

    for _ in range(2):  # a second run replaces the gateway's rules, never adds to them
        res = gw.command("storage", "apply-retention", "--store", "cloud")
        assert res.returncode == 0, res.stdout + res.stderr
        rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        assert set(rules) == {"site-archive", "attachment-gateway-incomplete-uploads", "attachment-gateway-staging",
                              *(f"attachment-gateway-{name}" for name in EXPECTED)}
    # Read back through the S3 API: one expiration rule per prefix, with its days.
    for name, (prefix, days) in EXPECTED.items():
        rule = rules[f"attachment-gateway-{name}"]
        assert (rule["Status"], rule["Filter"]["Prefix"], rule["Expiration"]["Days"]) == \
            ("Enabled", "attachments/" + prefix, days), rule
    incomplete = rules["attachment-gateway-incomplete-uploads"]
    assert incomplete["Filter"]["Prefix"] == "attachments/"
    assert incomplete["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == DAYS["staging_retention_days"]
    staging = rules["attachment-gateway-staging"]
    assert staging["Filter"]["Prefix"] == "staging/" and staging["Expiration"]["Days"] == DAYS["staging_retention_days"]
    assert rules["site-archive"]["Expiration"]["Days"] == 400
    # storage check finds them as the config says.
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert checks(report)["retention"][0][0] == "ok", out

    # The server runs the rules: a lifecycle day is 10 s here, so after 3
    # "days" an upload has expired while link records, quarantine and the
    # site's own prefix stay.
    keys = ["attachments/uploads/cust-1/20261127T120000.000000Z-a.pdf", "attachments/links/x.json",
            "attachments/quarantine/cust-1/b.exe", "attachments/invitations/i.json", "archive/keep.txt"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    # Processed again and again until the upload is gone (2 "days": 20 s at
    # the earliest), rather than after a fixed wait.
    deadline = time.monotonic() + 90
    while True:
        ceph.radosgw_admin("lc", "process")
        left = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        if keys[0] not in left or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert left == set(keys[1:])


def test_gcs_retention_is_stored_by_the_emulator(make_gateway: Any, tmp_path: Path, gcs: GcsEmulator) -> None:
    """The emulator keeps the rules (read back through the API, per prefix),
    keeping a rule the site set itself; it never runs them, so expiry is
    not shown."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client  # type: ignore[attr-defined]

    client = gcs_client.Client(project="gateway-test", credentials=AnonymousCredentials(),  # type: ignore[attr-defined]
                               client_options={"api_endpoint": gcs.endpoint_url})
    try:
        b = client.get_bucket(gcs.bucket)
        b.lifecycle_rules = [{"action": {"type": "Delete"}, "condition": {"age": 400, "matchesPrefix": ["archive/"]}}]
        b.patch()
        gw = gateway_with(make_gateway, {"backend": "gcs", "bucket": gcs.bucket, "prefix": "attachments/",
                                         "endpoint_url": gcs.endpoint_url, "anonymous": True, **DAYS})
        for _ in range(2):
            code, report, _ = run_json(gw, "apply-retention", "--store", "cloud")
            assert code == 0 and report["stores"][0]["applied"] is True, report
            rules = [dict(r) for r in client.get_bucket(gcs.bucket).lifecycle_rules]
            assert len(rules) == 1 + len(EXPECTED), rules
        # Read back through the GCS API: one Delete rule per prefix, with its days.
        for prefix, days in EXPECTED.values():
            assert {"action": {"type": "Delete"},
                    "condition": {"age": days, "matchesPrefix": ["attachments/" + prefix]}} in rules, prefix
        assert {"action": {"type": "Delete"}, "condition": {"age": 400, "matchesPrefix": ["archive/"]}} in rules
        # storage check reads them back as the config says; another retention is a difference it names.
        code, report, out = run_json(gw, "check", "--store", "cloud")
        assert code == 0 and checks(report)["retention"][0][0] == "ok", out
        longer = gateway_with(make_gateway, {"backend": "gcs", "bucket": gcs.bucket, "prefix": "attachments/",
                                             "endpoint_url": gcs.endpoint_url, "anonymous": True,
                                             **{**DAYS, "job_retention_days": 5}})
        code, report, out = run_json(longer, "check", "--store", "cloud")
        assert code == 78 and [c["check"] for c in report["stores"][0]["checks"]][-1] == "retention", out
        assert "no Delete rule for prefix 'attachments/jobs/' after 5 days (it has one after 3 days)" in out
    finally:
        client.close()


def test_azure_retention_prints_the_management_policy(make_gateway: Any, tmp_path: Path, azurite: Azurite) -> None:
    """Azurite has no management plane, so nothing can be applied or read
    back: the command must say so and print a policy that deletes each
    prefix after its retention."""
    gw = gateway_with(make_gateway, {"backend": "azure", "account_url": azurite.account_url, "container": "mail",
                                     "prefix": "attachments/", **DAYS,
                                     "account_key_file": secret_file(tmp_path, "az.key", azurite.account_key)})
    code, report, _ = run_json(gw, "apply-retention", "--store", "cloud")
    [store] = report["stores"]
    assert code == 0 and store["applied"] is False
    rules = {r["name"]: r for r in store["management_policy"]["rules"]}
    assert set(rules) == {f"attachment-gateway-{name}" for name in EXPECTED}
    for name, (prefix, days) in EXPECTED.items():
        rule = rules[f"attachment-gateway-{name}"]
        assert rule["enabled"] is True and rule["type"] == "Lifecycle"
        assert rule["definition"] == {
            "filters": {"blobTypes": ["blockBlob"], "prefixMatch": [f"mail/attachments/{prefix}"]},
            "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": days}}}}
    text = gw.command("storage", "apply-retention", "--store", "cloud")
    assert text.returncode == 0 and "not applied" in text.stdout and "management-policy create" in text.stdout
    assert azurite.account_key not in text.stdout


def test_filesystem_retention_is_swept_by_the_command(make_gateway: Any) -> None:
    """The sweep itself, per prefix and with two at once: tests/test_lifecycle.py."""
    gw = make_gateway(start=False, sections={"storage.local": {"retention_days": 7, "link_retention_days": 7}})
    res = gw.command("storage", "apply-retention")
    assert res.returncode == 0, res.stderr
    assert f"swept {gw.objects} now" in res.stdout and "deleted: nothing" in res.stdout
    assert "uploads/             7 days  (retention_days:" in res.stdout


# -- check --------------------------------------------------------------------------------


def names(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(check, status) of the one store in a report, in order."""
    return [(c["check"], c["status"]) for c in report["stores"][0]["checks"]]


def test_s3_check_passes_with_kms_and_leaves_nothing(make_gateway: Any, tmp_path: Path, ceph: CephRadosgw,
                                                     s3: Any, bucket: str) -> None:
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket, staging_prefix="staging/"))
    assert gw.command("storage", "apply-retention", "--store", "cloud").returncode == 0
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 0 and report["ok"], out
    found = checks(report)
    assert found["credentials"][0][0] == "ok" and found["bucket"][0][0] == "ok"
    assert found["region"] == [("ok", f"bucket {bucket!r} is in region {ceph.region!r}, "
                                      f"the config says {ceph.region!r}")]
    assert found["retention"] == [("ok", f"lifecycle rules for {len(EXPECTED)} prefixes as the config says")]
    # The bucket's default encryption is a note; the check object's SSE, read back, decides.
    [bucket_note, obj] = found["encryption"]
    assert bucket_note[0] == "note" and bucket_note[1].startswith(f"bucket {bucket!r}: ")
    assert obj[0] == "ok" and obj[1].startswith("object check/") and obj[1].endswith(": aws:kms")
    assert found["round trip"][0][0] == "ok"
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")  # check object and staging copy gone
    text = gw.command("storage", "check", "--store", "cloud")
    assert text.returncode == 0 and "storage cloud (s3): OK" in text.stdout
    assert ceph.secret_key not in out + text.stdout + text.stderr


def test_s3_check_with_a_wrong_secret_fails_clearly_without_printing_it(make_gateway: Any, tmp_path: Path,
                                                                        ceph: CephRadosgw, bucket: str) -> None:
    wrong = "wrong-secret-" + uuid.uuid4().hex
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket,
                                             secret_access_key_file=secret_file(tmp_path, "bad", wrong)))
    res = gw.command("storage", "check", "--store", "cloud")
    # 69 (EX_UNAVAILABLE): the store cannot be used at all.
    assert res.returncode == 69, res.stdout + res.stderr
    assert "storage cloud (s3): FAILED at check 'credentials'; later checks not run" in res.stdout
    assert "FAIL  credentials" in res.stdout and "SignatureDoesNotMatch" in res.stdout
    assert "check the credentials" in res.stdout
    assert wrong not in res.stdout + res.stderr and ceph.secret_key not in res.stdout + res.stderr
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 69 and not report["ok"] and wrong not in out
    assert names(report) == [("credentials", "FAIL")]


def test_s3_check_stops_at_a_region_mismatch_and_writes_nothing(make_gateway: Any, tmp_path: Path,
                                                                ceph: CephRadosgw, s3: Any, bucket: str) -> None:
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket, region="eu-central-1"))
    code, report, out = run_json(gw, "check", "--store", "cloud")
    # 78 (EX_CONFIG): the store answers but is not what the config says.
    assert code == 78, out
    assert names(report) == [("credentials", "ok"), ("bucket", "ok"), ("region", "FAIL")]
    [(status, detail)] = checks(report)["region"]
    assert f"is in region {ceph.region!r}, the config says 'eu-central-1'" in detail
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")  # no test object, nothing at all
    text = gw.command("storage", "check", "--store", "cloud")
    assert text.returncode == 78 and "FAILED at check 'region'" in text.stdout


def test_s3_check_of_a_missing_bucket_stops_there_and_creates_nothing(make_gateway: Any, tmp_path: Path,
                                                                      ceph: CephRadosgw, s3: Any) -> None:
    missing = f"adm-missing-{uuid.uuid4().hex[:8]}"
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, missing))
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 78, out
    assert names(report) == [("bucket", "FAIL")]
    assert checks(report)["bucket"] == [("FAIL", f"s3://{missing} does not exist: expected the bucket the config "
                                                 f"names (bucket = {missing!r}) in region {ceph.region!r}")]
    assert missing not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_s3_check_stops_when_the_lifecycle_is_missing(make_gateway: Any, tmp_path: Path, ceph: CephRadosgw,
                                                      s3: Any, bucket: str) -> None:
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket))
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 78, out
    assert names(report)[-1] == ("retention", "FAIL") and ("round trip", "ok") not in names(report)
    [(_, detail)] = checks(report)["retention"]
    assert f"bucket {bucket!r} has no lifecycle rule 'attachment-gateway-uploads' (prefix 'attachments/uploads/')" \
        in detail and detail.endswith("(run attachment-gateway storage apply-retention)")
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")


def test_s3_check_fails_when_the_store_does_not_report_sse_s3(make_gateway: Any, tmp_path: Path,
                                                              ceph: CephRadosgw, s3: Any, bucket: str) -> None:
    """Ceph 16 accepts "AES256" but neither applies nor reports it: check
    must not call that encrypted, and takes its object away again."""
    store = s3_store(ceph, tmp_path, bucket, encryption="AES256")
    del store["kms_key_id"]
    gw = gateway_with(make_gateway, store)
    assert gw.command("storage", "apply-retention", "--store", "cloud").returncode == 0
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 78, out
    assert names(report)[-1] == ("encryption", "FAIL") and "round trip" not in dict(names(report))
    failed = [d for s, d in checks(report)["encryption"] if s == "FAIL"]
    assert failed and "the store reports encryption 'none', the config asks for 'AES256'" in failed[0]
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")


def test_azure_check_passes_and_a_wrong_key_fails(make_gateway: Any, tmp_path: Path, azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    container = f"adm-{uuid.uuid4().hex[:12]}"
    admin = BlobServiceClient(azurite.account_url, credential={"account_name": azurite.account_name,
                                                               "account_key": azurite.account_key})
    try:
        admin.create_container(container)
        store = {"backend": "azure", "account_url": azurite.account_url, "container": container,
                 "prefix": "attachments/", "account_key_file": secret_file(tmp_path, "az.key", azurite.account_key)}
        gw = gateway_with(make_gateway, store)
        code, report, out = run_json(gw, "check", "--store", "cloud")
        assert code == 0, out
        found = checks(report)
        assert [s for s, _ in found["encryption"]] == ["note", "ok"]
        assert found["round trip"][0][0] == "ok"
        # The management policy is not readable through the data plane (nor set in Azurite).
        assert found["retention"][0][0] == "note"
        assert not list(admin.get_container_client(container).list_blobs())

        missing = gateway_with(make_gateway, {**store, "container": f"adm-missing-{uuid.uuid4().hex[:8]}"})
        code, report, out = run_json(missing, "check", "--store", "cloud")
        assert code == 78 and names(report) == [("bucket", "FAIL")], out
        assert "does not exist" in out

        # A different key of the right shape: Azurite refuses the signature.
        import base64
        wrong = base64.b64encode(uuid.uuid4().bytes * 4).decode()
        bad = gateway_with(make_gateway, {**store, "account_key_file": secret_file(tmp_path, "bad.key", wrong)})
        res = bad.command("storage", "check", "--store", "cloud")
        assert res.returncode == 69 and "FAIL  credentials" in res.stdout and "403" in res.stdout, res.stdout
        assert wrong not in res.stdout + res.stderr and azurite.account_key not in res.stdout + res.stderr
    finally:
        admin.close()


def test_gcs_check_stops_at_a_location_mismatch_and_passes_otherwise(make_gateway: Any, tmp_path: Path,
                                                                     gcs: GcsEmulator) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client  # type: ignore[attr-defined]

    store = {"backend": "gcs", "bucket": gcs.bucket, "prefix": "chk/", "endpoint_url": gcs.endpoint_url,
             "anonymous": True}
    gw = gateway_with(make_gateway, {**store, "location": "EU"})
    code, report, out = run_json(gw, "check", "--store", "cloud")
    # The emulator puts every bucket in "US": the location pin fails, by name, and nothing is written.
    assert code == 78, out
    assert names(report) == [("credentials", "ok"), ("bucket", "ok"), ("region", "FAIL")]
    assert checks(report)["region"] == [("FAIL", "bucket is in location 'US', the config says 'EU' "
                                                 "(start-up would refuse: data residency)")]
    client = gcs_client.Client(project="gateway-test", credentials=AnonymousCredentials(),  # type: ignore[attr-defined]
                               client_options={"api_endpoint": gcs.endpoint_url})
    try:
        assert not list(client.list_blobs(gcs.bucket, prefix="chk/"))
    finally:
        client.close()
    ok = gateway_with(make_gateway, store)
    assert ok.command("storage", "apply-retention", "--store", "cloud").returncode == 0
    code, report, out = run_json(ok, "check", "--store", "cloud")
    assert code == 0, out
    assert checks(report)["round trip"][0][0] == "ok"


def test_check_of_an_unknown_store_is_a_usage_error(make_gateway: Any) -> None:
    gw = make_gateway(start=False)
    res = gw.command("storage", "check", "--store", "nope")
    assert res.returncode == 64 and "no [storage.nope] table (have: local)" in res.stderr
    res = gw.command("storage", "check")
    assert res.returncode == 0 and "storage local (filesystem): OK" in res.stdout


# -- erase --------------------------------------------------------------------------------


class Bucket:
    """A store's bucket or container seen through its own SDK: put, list, get."""

    def __init__(self, put: Any, keys: Any, get: Any) -> None:
        self.put, self.keys, self.get = put, keys, get


def backend_bucket(request: pytest.FixtureRequest, backend: str, tmp_path: Path,
                   prefix: str) -> tuple[dict[str, Any], Bucket, Any]:
    """The ``[storage.cloud]`` table, the bucket, and a closer, for one backend."""
    if backend == "s3":
        ceph, s3 = request.getfixturevalue("ceph"), request.getfixturevalue("s3")
        name = request.getfixturevalue("bucket")
        return (s3_store(ceph, tmp_path, name, prefix=prefix),
                Bucket(lambda k, b: s3.put_object(Bucket=name, Key=k, Body=b),
                       lambda: sorted(o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=name)
                                      for o in p.get("Contents", [])),
                       lambda k: s3.get_object(Bucket=name, Key=k)["Body"].read()), lambda: None)
    if backend == "azure":
        from azure.storage.blob import BlobServiceClient

        azurite: Azurite = request.getfixturevalue("azurite")
        admin = BlobServiceClient(azurite.account_url, credential={"account_name": azurite.account_name,
                                                                   "account_key": azurite.account_key})
        container = f"er-{uuid.uuid4().hex[:12]}"
        c = admin.create_container(container)
        return ({"backend": "azure", "account_url": azurite.account_url, "container": container, "prefix": prefix,
                 "account_key_file": secret_file(tmp_path, "az.key", azurite.account_key)},
                Bucket(lambda k, b: c.upload_blob(k, b, overwrite=True),
                       lambda: sorted(b.name for b in c.list_blobs()),
                       lambda k: c.download_blob(k).readall()), admin.close)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client  # type: ignore[attr-defined]

    gcs: GcsEmulator = request.getfixturevalue("gcs")
    client = gcs_client.Client(project="gateway-test", credentials=AnonymousCredentials(),  # type: ignore[attr-defined]
                               client_options={"api_endpoint": gcs.endpoint_url})
    b = client.bucket(gcs.bucket)
    return ({"backend": "gcs", "bucket": gcs.bucket, "prefix": prefix, "endpoint_url": gcs.endpoint_url,
             "anonymous": True},
            Bucket(lambda k, data: b.blob(k).upload_from_string(data),
                   lambda: sorted(x.name for x in client.list_blobs(gcs.bucket, prefix=prefix)),
                   lambda k: b.blob(k).download_as_bytes()), client.close)


def seed(bucket: Bucket, prefix: str, who: str, n: int, direct: Any = None) -> dict[str, str]:
    """What the gateway writes for a customer: a file and its link record, a
    quarantined file, a job and what it staged, an invitation, its usage and
    an upload started with it (``direct(key)``: as a multipart upload to
    the store, returning its id).  Returns kind -> key (without the prefix)."""
    oid, job, inv, uid = f"Link{n}AbCdEfGhIj", f"Job{n}AbCdEfGhIjK", f"Inv{n}AbCdEfGhIjK", f"Up{n}AbCdEfGhIjKl"
    upload = f"uploads/{who}/20261201T100000.000000Z-file{n}.pdf"
    keys = {
        "upload": upload, "quarantined": f"quarantine/{who}/20261201T100000.000000Z-tool{n}.exe",
        "link": f"links/{oid}.json", "job": f"jobs/{job}.json", "job staging": f"staging/api/{job}",
        "invitation": f"invitations/{inv}.json", "usage": f"invitations/{inv}.usage.json",
        "session": f"staging/page/{uid}/session.json", "chunk": f"staging/page/{uid}/000000",
    }
    bodies = {
        "link": {"object_id": oid, "key": upload, "filename": f"file{n}.pdf", "size": 1, "sha256": "0" * 64,
                 "content_type": "application/pdf", "customer_id": who, "queue_id": f"Q{n}",
                 "message_id": f"<m{n}@example.net>", "created": time.time(), "expires": int(time.time()) + 3600,
                 "revoked": False},
        "job": {"job_id": job, "status": "COMPLETE", "customer_id": who, "staging_key": f"staging/api/{job}"},
        "invitation": {"object_id": inv, "customer_id": who, "message_id": "", "notify": "support@contact.example",
                       "route": "contact", "created": time.time(), "expires": int(time.time()) + 3600},
        "usage": {"uploads": {uid: 10}},
        "session": {"uid": uid, "invitation": inv, "name": "scan.pdf", "size": 10},
    }
    if direct is not None:
        bodies["session"].update(mode="direct", s3_upload_id=direct(f"{prefix}staging/page/{uid}/file"))
    for kind, key in keys.items():
        bucket.put(prefix + key, json.dumps(bodies[kind]).encode() if kind in bodies else b"x")
    return keys


@pytest.mark.parametrize("backend", ["s3", "azure", "gcs"])
def test_erase_on_each_cloud_backend_removes_exactly_one_customer(make_gateway: Any, tmp_path: Path,
                                                                  request: pytest.FixtureRequest,
                                                                  backend: str) -> None:
    """erase through each backend's listing, deletes and record rewrite,
    read back through the backend's own SDK.  (The revoked page for a link
    already in an agent's mail, through a running gateway: test_lifecycle.py.)"""
    prefix = f"er{uuid.uuid4().hex[:8]}/"
    store, bucket, close = backend_bucket(request, backend, tmp_path, prefix)
    try:
        uploads: Any = None
        if backend == "s3":  # the upload page's direct uploads are multipart uploads to the bucket
            s3, name = request.getfixturevalue("s3"), request.getfixturevalue("bucket")

            def direct(key: str) -> str:
                return str(s3.create_multipart_upload(Bucket=name, Key=key)["UploadId"])

            def uploads() -> list[str]:
                return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=name).get("Uploads", []))
        alice = seed(bucket, prefix, "alice@a.example", 1, direct if uploads else None)
        bob = seed(bucket, prefix, "bob@b.example", 2, direct if uploads else None)
        gw = gateway_with(make_gateway, store)
        res = gw.command("erase", "--customer", "alice@a.example", "--store", "cloud", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        counts = {"links": 1, "pages": 0, "invitations": 1, "uploads_in_progress": 1, "jobs": 1, "files": 1,
                  "quarantined": 1}
        assert json.loads(res.stdout)["erased"] == counts
        # Bob's all there; of Alice's only the link record, now a tombstone naming no one.
        assert bucket.keys() == sorted([prefix + k for k in bob.values()] + [prefix + alice["link"]])
        tomb = json.loads(bucket.get(prefix + alice["link"]))
        assert tomb["revoked"] is True and tomb["customer_id"] == tomb["key"] == tomb["filename"] == ""
        assert json.loads(bucket.get(prefix + bob["link"]))["customer_id"] == "bob@b.example"
        if uploads:  # Alice's direct upload aborted, Bob's still open
            assert uploads() == [prefix + bob["session"].replace("session.json", "file")]
        [event] = [e for e in gw.audit() if e["EventType"] == "CustomerErased"]
        assert event["ErasedCounts"] == counts and event["ErasedByStore"] == {"cloud": counts}

        again = gw.command("erase", "--customer", "alice@a.example", "--store", "cloud", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["erased"] == dict.fromkeys(counts, 0)
        assert len(bucket.keys()) == len(bob) + 1
    finally:
        close()
