"""The retention plan and the lifecycle documents built from it (pure
functions: settings in, documents out).  The documents written to and read
back from real stores: tests/storage/test_admin.py."""
from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from gateway.storage.retention import (
    gcs_lifecycle_rules,
    gcs_rule_problems,
    is_gateway_gcs_rule,
    merge_s3_rules,
    plan,
    s3_lifecycle_rules,
    s3_rule_problems,
)
from gateway.storage.settings import StorageSettings

ADAPTER: TypeAdapter[Any] = TypeAdapter(StorageSettings)


def test_every_prefix_the_gateway_writes_has_a_retention_from_its_key() -> None:
    s = ADAPTER.validate_python({"backend": "filesystem", "retention_days": 45, "quarantine_retention_days": 60,
                                 "job_retention_days": 2})
    rules = plan(s, ["quarantine/", "held-files/"])
    assert [(r.name, r.prefix, r.days, r.key) for r in rules] == [
        ("uploads", "uploads/", 45, "retention_days"),
        ("quarantine", "quarantine/", 60, "quarantine_retention_days"),
        ("quarantine-held-files", "held-files/", 60, "quarantine_retention_days"),
        ("links", "links/", 45, "link_retention_days"),  # follows retention_days when not set
        ("pages", "pages/", 45, "link_retention_days"),
        ("revoked", "revoked/", 45, "link_retention_days"),
        ("invitations", "invitations/", 30, "invitation_retention_days"),
        ("jobs", "jobs/", 2, "job_retention_days"),
        ("upload-staging", "staging/", 1, "staging_retention_days"),
        ("check", "check/", 1, "staging_retention_days"),
        ("autoreply", "autoreply/", 7, "fleet_retention_days"),
        ("leases", "leases/", 7, "fleet_retention_days"),
    ]


def test_s3_rules_are_replaced_not_added_and_differences_are_named() -> None:
    s = ADAPTER.validate_python({"backend": "s3", "bucket": "b-1", "region": "eu-west-1", "prefix": "att/",
                                 "staging_bucket": "b-stage", "staging_retention_days": 2})
    docs = s3_lifecycle_rules(s, plan(s))
    assert set(docs) == {"b-1", "b-stage"}
    [staging] = docs["b-stage"]
    assert staging["Expiration"] == {"Days": 2} and staging["Filter"] == {"Prefix": ""}
    site = {"ID": "site", "Status": "Enabled", "Filter": {"Prefix": "x/"}, "Expiration": {"Days": 9}}
    old = {"ID": "attachment-gateway-uploads", "Status": "Enabled", "Filter": {"Prefix": "att/uploads/"},
           "Expiration": {"Days": 1}}
    merged = merge_s3_rules([site, old], docs["b-1"])
    assert merged[0] == site and old not in merged and len(merged) == 1 + len(docs["b-1"])
    assert s3_rule_problems("b-1", merged, docs["b-1"]) == []
    changed = [r if r["ID"] != "attachment-gateway-jobs" else {**r, "Expiration": {"Days": 99}} for r in merged]
    [problem] = s3_rule_problems("b-1", changed[1:], docs["b-1"])
    assert problem == ("bucket 'b-1' rule 'attachment-gateway-jobs' is (status, prefix, expiration days, abort "
                       "days) ('Enabled', 'att/jobs/', 99, None), the config asks for "
                       "('Enabled', 'att/jobs/', 7, None)")


def test_gcs_rules_of_the_site_are_kept_and_ours_recognised() -> None:
    s = ADAPTER.validate_python({"backend": "gcs", "bucket": "b-1", "prefix": "att/"})
    rules = plan(s)
    ours = gcs_lifecycle_rules(s, rules)
    site = {"action": {"type": "Delete"}, "condition": {"age": 400, "matchesPrefix": ["att/archive/"]}}
    assert not is_gateway_gcs_rule(site, s, rules)
    assert all(is_gateway_gcs_rule(r, s, rules) for r in ours)
    assert gcs_rule_problems("b-1", [site, *ours], ours) == []
    assert gcs_rule_problems("b-1", [site], ours)[0] == \
        "bucket 'b-1' has no Delete rule for prefix 'att/uploads/' after 30 days"
