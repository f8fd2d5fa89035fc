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


def test_s3_retention_is_written_read_back_and_enforced_by_radosgw(make_gateway: Any, tmp_path: Path,
                                                                    ceph: CephRadosgw, s3: Any,
                                                                    bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "site-archive", "Status": "Enabled", "Filter": {"Prefix": "archive/"},
         "Expiration": {"Days": 400}}]})
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket, retention_days=2,
                                             staging_prefix="staging/"))

    dry = gw.command("storage", "apply-retention", "--store", "cloud", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "attachments/uploads/" in dry.stdout
    [site] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert site["ID"] == "site-archive"  # nothing written

    for _ in range(2):  # a second run replaces the gateway's rules, never adds to them
        res = gw.command("storage", "apply-retention", "--store", "cloud")
        assert res.returncode == 0, res.stdout + res.stderr
        rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        assert set(rules) == {"site-archive", "attachment-gateway-uploads", "attachment-gateway-incomplete-uploads",
                              "attachment-gateway-staging"}
    uploads = rules["attachment-gateway-uploads"]
    assert uploads["Filter"]["Prefix"] == "attachments/uploads/" and uploads["Expiration"]["Days"] == 2
    assert uploads["Status"] == "Enabled"
    incomplete = rules["attachment-gateway-incomplete-uploads"]
    assert incomplete["Filter"]["Prefix"] == "attachments/"
    assert incomplete["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    staging = rules["attachment-gateway-staging"]
    assert staging["Filter"]["Prefix"] == "staging/" and staging["Expiration"]["Days"] == 1
    assert rules["site-archive"]["Expiration"]["Days"] == 400

    # The server runs the rules: a lifecycle day is 10 s here, so after 3
    # "days" an upload has expired while link records, quarantine and the
    # site's own prefix stay.
    keys = ["attachments/uploads/cust-1/20261127T120000.000000Z-a.pdf", "attachments/links/x.json",
            "attachments/quarantine/cust-1/b.exe", "archive/keep.txt"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    time.sleep(31)
    deadline = time.monotonic() + 60
    while True:
        ceph.radosgw_admin("lc", "process")
        left = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        if keys[0] not in left or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert left == set(keys[1:])


def test_gcs_retention_is_stored_by_the_emulator(make_gateway: Any, tmp_path: Path, gcs: GcsEmulator) -> None:
    """The emulator keeps the rules (read back through the API), keeping a
    rule the site set itself; it never runs them, so expiry is not shown."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client  # type: ignore[attr-defined]

    client = gcs_client.Client(project="gateway-test", credentials=AnonymousCredentials(),  # type: ignore[attr-defined]
                               client_options={"api_endpoint": gcs.endpoint_url})
    try:
        b = client.get_bucket(gcs.bucket)
        b.lifecycle_rules = [{"action": {"type": "Delete"}, "condition": {"age": 400, "matchesPrefix": ["archive/"]}}]
        b.patch()
        gw = gateway_with(make_gateway, {"backend": "gcs", "bucket": gcs.bucket, "prefix": "attachments/",
                                         "endpoint_url": gcs.endpoint_url, "anonymous": True,
                                         "retention_days": 45})
        for _ in range(2):
            code, report, _ = run_json(gw, "apply-retention", "--store", "cloud")
            assert code == 0 and report["stores"][0]["applied"] is True, report
            rules = list(client.get_bucket(gcs.bucket).lifecycle_rules)
            assert len(rules) == 2, rules
        assert {"action": {"type": "Delete"}, "condition": {"age": 45, "matchesPrefix": ["attachments/uploads/"]}} \
            in rules
        assert {"action": {"type": "Delete"}, "condition": {"age": 400, "matchesPrefix": ["archive/"]}} in rules
    finally:
        client.close()


def test_azure_retention_prints_the_management_policy(make_gateway: Any, tmp_path: Path, azurite: Azurite) -> None:
    """Azurite has no management plane, so nothing can be applied or read
    back: the command must say so and print a policy that deletes exactly
    the uploads after retention_days."""
    gw = gateway_with(make_gateway, {"backend": "azure", "account_url": azurite.account_url, "container": "mail",
                                     "prefix": "attachments/", "retention_days": 60,
                                     "account_key_file": secret_file(tmp_path, "az.key", azurite.account_key)})
    code, report, _ = run_json(gw, "apply-retention", "--store", "cloud")
    [store] = report["stores"]
    assert code == 0 and store["applied"] is False
    [rule] = store["management_policy"]["rules"]
    assert rule["enabled"] is True and rule["type"] == "Lifecycle" and rule["name"] == "attachment-gateway-uploads"
    assert rule["definition"] == {
        "filters": {"blobTypes": ["blockBlob"], "prefixMatch": ["mail/attachments/uploads/"]},
        "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": 60}}}}
    text = gw.command("storage", "apply-retention", "--store", "cloud")
    assert text.returncode == 0 and "not applied" in text.stdout and "management-policy create" in text.stdout
    assert azurite.account_key not in text.stdout


def test_filesystem_retention_says_nothing_was_applied(make_gateway: Any) -> None:
    gw = make_gateway(start=False, sections={"storage.local": {"retention_days": 7}})
    res = gw.command("storage", "apply-retention")
    assert res.returncode == 0, res.stderr
    assert "not applied" in res.stdout
    assert f"e {gw.objects}/uploads - - - m:7d" in res.stdout
    assert f"find {gw.objects}/uploads -type f -mtime +7 -delete" in res.stdout
    assert not gw.objects.exists() or not any(gw.objects.iterdir())


# -- check --------------------------------------------------------------------------------


def test_s3_check_passes_with_kms_and_leaves_nothing(make_gateway: Any, tmp_path: Path, ceph: CephRadosgw,
                                                     s3: Any, bucket: str) -> None:
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket, staging_prefix="staging/"))
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 0 and report["ok"], out
    found = checks(report)
    assert found["credentials"][0][0] == "ok"
    assert found["region"] == [("ok", f"bucket {bucket!r} is in region {ceph.region!r}, "
                                      f"the config says {ceph.region!r}")]
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
    assert res.returncode == 1, res.stdout + res.stderr
    assert "storage cloud (s3): FAILED" in res.stdout
    assert "FAIL  credentials" in res.stdout and "SignatureDoesNotMatch" in res.stdout
    assert "check the credentials" in res.stdout
    assert wrong not in res.stdout + res.stderr and ceph.secret_key not in res.stdout + res.stderr
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 1 and not report["ok"] and wrong not in out
    assert [c["check"] for c in report["stores"][0]["checks"]] == ["credentials"]


def test_s3_check_names_a_region_mismatch(make_gateway: Any, tmp_path: Path, ceph: CephRadosgw,
                                          bucket: str) -> None:
    gw = gateway_with(make_gateway, s3_store(ceph, tmp_path, bucket, region="eu-central-1"))
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 1, out
    [(status, detail)] = checks(report)["region"]
    assert status == "FAIL" and f"is in region {ceph.region!r}, the config says 'eu-central-1'" in detail


def test_s3_check_fails_when_the_store_does_not_report_sse_s3(make_gateway: Any, tmp_path: Path,
                                                              ceph: CephRadosgw, bucket: str) -> None:
    """Ceph 16 accepts "AES256" but neither applies nor reports it: check
    must not call that encrypted."""
    store = s3_store(ceph, tmp_path, bucket, encryption="AES256")
    del store["kms_key_id"]
    gw = gateway_with(make_gateway, store)
    code, report, out = run_json(gw, "check", "--store", "cloud")
    assert code == 1, out
    failed = [d for s, d in checks(report)["encryption"] if s == "FAIL"]
    assert failed and "the store reports encryption 'none', the config asks for 'AES256'" in failed[0]
    assert checks(report)["round trip"][0][0] == "ok"


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
        assert not list(admin.get_container_client(container).list_blobs())

        # A different key of the right shape: Azurite refuses the signature.
        import base64
        wrong = base64.b64encode(uuid.uuid4().bytes * 4).decode()
        bad = gateway_with(make_gateway, {**store, "account_key_file": secret_file(tmp_path, "bad.key", wrong)})
        res = bad.command("storage", "check", "--store", "cloud")
        assert res.returncode == 1 and "FAIL  credentials" in res.stdout and "403" in res.stdout, res.stdout
        assert wrong not in res.stdout + res.stderr and azurite.account_key not in res.stdout + res.stderr
    finally:
        admin.close()


def test_gcs_check_passes_against_the_emulator(make_gateway: Any, tmp_path: Path, gcs: GcsEmulator) -> None:
    gw = gateway_with(make_gateway, {"backend": "gcs", "bucket": gcs.bucket, "prefix": "chk/",
                                     "endpoint_url": gcs.endpoint_url, "anonymous": True, "location": "EU"})
    code, report, out = run_json(gw, "check", "--store", "cloud")
    # The emulator puts every bucket in "US": the location pin fails, by name.
    assert code == 1
    found = checks(report)
    assert found["region"] == [("FAIL", "bucket is in location 'US', the config says 'EU' "
                                        "(start-up would refuse: data residency)")]
    assert found["round trip"][0][0] == "ok" and found["credentials"][0][0] == "ok"
    ok = gateway_with(make_gateway, {"backend": "gcs", "bucket": gcs.bucket, "prefix": "chk/",
                                     "endpoint_url": gcs.endpoint_url, "anonymous": True})
    code, report, out = run_json(ok, "check", "--store", "cloud")
    assert code == 0, out


def test_check_of_an_unknown_store_is_a_usage_error(make_gateway: Any) -> None:
    gw = make_gateway(start=False)
    res = gw.command("storage", "check", "--store", "nope")
    assert res.returncode == 64 and "no [storage.nope] table (have: local)" in res.stderr
    res = gw.command("storage", "check")
    assert res.returncode == 0 and "storage local (filesystem): OK" in res.stdout
