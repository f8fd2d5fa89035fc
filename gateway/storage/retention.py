"""How long each prefix the gateway writes is kept, and the lifecycle
documents that say so to each backend.

One plan per store (``plan``): every prefix the gateway writes in it, the
days its objects are kept and the config key that sets them.  The builders
below turn a plan into S3 lifecycle rules, GCS lifecycle rules and an Azure
lifecycle management policy; the filesystem store enforces the same plan
itself (``gateway.storage.sweep``).  Everything here is pure (settings in,
documents out), so the docs, ``--dry-run``, ``storage check`` and the real
write all show the same rules.

Days count from an object's last write: S3 and GCS count from creation (an
object rewritten in place, such as an invitation's usage, is a new object),
Azure from the last modification, the filesystem sweep from the mtime.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.storage.settings import (
    AzureStorageSettings,
    GcsStorageSettings,
    S3StorageSettings,
    _Retained,
)

# Lifecycle rules the gateway writes carry this in their id (S3) or name
# (Azure); on a re-run they are replaced, every other rule is kept.
RULE_PREFIX = "attachment-gateway-"
# The prefixes the gateway writes besides uploads/ and quarantine (see
# gateway/links/records.py, revocations.py, invitations.py, jobs.py,
# http/api.py and http/upload_page.py, storage/admin.py).
LINKS, PAGES, REVOKED = "links/", "pages/", "revoked/"
INVITATIONS, JOBS, STAGING, CHECK = "invitations/", "jobs/", "staging/", "check/"
AUTOREPLY, LEASES = "autoreply/", "leases/"  # gateway/autoreply.py, gateway/fleet.py
# Every prefix above and uploads/: no quarantine prefix may be one of them
# (its files would take that prefix's retention, and erase would read them
# back as that prefix's records).
GATEWAY_PREFIXES = ("uploads/", LINKS, PAGES, REVOKED, INVITATIONS, JOBS, STAGING, CHECK, AUTOREPLY, LEASES)


@dataclass(frozen=True)
class PrefixRetention:
    """One prefix of a store and how long what is under it is kept."""

    name: str    # the rule's name after RULE_PREFIX: "uploads", "links", ...
    prefix: str  # the gateway's key prefix, before the store's own ``prefix``
    days: int
    key: str     # the config key that sets ``days``
    what: str    # what lives there, in words (docs, dry run)


def quarantine_prefixes(routes: Iterable[Any], store: str) -> list[str]:
    """The quarantine prefixes of the routes whose store is ``store``
    (enabled or not: files kept while it was on are still there)."""
    return sorted({r.quarantine.prefix for r in routes if r.storage == store})


def plan(s: _Retained, quarantine: Iterable[str] = ("quarantine/",)) -> list[PrefixRetention]:
    """Every prefix the gateway writes in a store with these settings."""
    out = [PrefixRetention("uploads", "uploads/", s.retention_days, "retention_days",
                           "attachments offloaded from mail and files stored over HTTP")]
    for q in quarantine:
        name = "quarantine" if q == "quarantine/" else "quarantine-" + re.sub(r"[^a-z0-9]+", "-", q).strip("-")
        out.append(PrefixRetention(name, q, s.quarantine_retention_days, "quarantine_retention_days",
                                   "refused files (never linked)"))
    out += [
        PrefixRetention("links", LINKS, s.link_days, "link_retention_days", "link records"),
        PrefixRetention("pages", PAGES, s.link_days, "link_retention_days", "landing-page records"),
        PrefixRetention("revoked", REVOKED, s.link_days, "link_retention_days", "revocation markers"),
        PrefixRetention("invitations", INVITATIONS, s.invitation_retention_days, "invitation_retention_days",
                        "upload-page invitations and their usage"),
        PrefixRetention("jobs", JOBS, s.job_retention_days, "job_retention_days", "asynchronous upload jobs"),
        PrefixRetention("upload-staging", STAGING, s.staging_retention_days, "staging_retention_days",
                        "uploads over HTTP not yet finished (API and upload page)"),
        PrefixRetention("check", CHECK, s.staging_retention_days, "staging_retention_days",
                        "objects storage check could not delete"),
        PrefixRetention("autoreply", AUTOREPLY, s.fleet_retention_days, "fleet_retention_days",
                        "automatic-reply claims shared by the fleet"),
        PrefixRetention("leases", LEASES, s.fleet_retention_days, "fleet_retention_days",
                        "turns of periodic work shared by the fleet"),
    ]
    return out


def plan_for(cfg: Any, store: str) -> list[PrefixRetention]:
    """The retention plan of the config's ``[storage.<store>]``."""
    return plan(cfg.storage[store], quarantine_prefixes(cfg.routes, store))


# -- S3 ---------------------------------------------------------------------------------


def s3_lifecycle_rules(s: S3StorageSettings, rules: list[PrefixRetention]) -> dict[str, list[dict[str, Any]]]:
    """The S3 lifecycle rules of a store, by bucket: one expiration rule per
    prefix; unfinished multipart uploads aborted after
    ``staging_retention_days``; with staging, the staging prefix expired
    and aborted after as long."""
    days = s.staging_retention_days
    out: dict[str, list[dict[str, Any]]] = {s.bucket: [
        *({"ID": RULE_PREFIX + r.name, "Status": "Enabled", "Filter": {"Prefix": s.prefix + r.prefix},
           "Expiration": {"Days": r.days}} for r in rules),
        {"ID": RULE_PREFIX + "incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": s.prefix},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days}},
    ]}
    if s.staging:
        # The staging prefix never overlaps ``prefix`` in one bucket (the
        # settings refuse it), so it needs its own abort rule.
        out.setdefault(s.staging_bucket or s.bucket, []).append(
            {"ID": RULE_PREFIX + "staging", "Status": "Enabled", "Filter": {"Prefix": s.staging_prefix or ""},
             "Expiration": {"Days": days}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days}})
    return out


def merge_s3_rules(existing: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bucket's rules with ours replacing any the gateway wrote before."""
    return [r for r in existing if not str(r.get("ID", "")).startswith(RULE_PREFIX)] + ours


def _s3_facts(rule: dict[str, Any]) -> tuple[Any, ...]:
    flt = rule.get("Filter") or {}
    prefix = flt.get("Prefix", (flt.get("And") or {}).get("Prefix", rule.get("Prefix", "")))
    return (rule.get("Status"), prefix, (rule.get("Expiration") or {}).get("Days"),
            (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation"))


def s3_rule_problems(bucket: str, existing: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[str]:
    """What in a bucket's lifecycle differs from the rules the config asks
    for (``storage check``), one sentence each; [] when all are there."""
    have = {str(r.get("ID", "")): r for r in existing}
    out = []
    for rule in ours:
        got = have.get(rule["ID"])
        want = _s3_facts(rule)
        if got is None:
            out.append(f"bucket {bucket!r} has no lifecycle rule {rule['ID']!r} (prefix {want[1]!r})")
        elif _s3_facts(got) != want:
            out.append(f"bucket {bucket!r} rule {rule['ID']!r} is (status, prefix, expiration days, abort days) "
                       f"{_s3_facts(got)}, the config asks for {want}")
    return out


# -- GCS --------------------------------------------------------------------------------


def gcs_lifecycle_rules(s: GcsStorageSettings, rules: list[PrefixRetention]) -> list[dict[str, Any]]:
    """The GCS lifecycle rules of a store: one Delete rule per prefix.
    (Resumable upload sessions expire on their own after a week; the
    gateway has no staging on GCS.)"""
    return [{"action": {"type": "Delete"}, "condition": {"age": r.days, "matchesPrefix": [s.prefix + r.prefix]}}
            for r in rules]


def is_gateway_gcs_rule(rule: dict[str, Any], s: GcsStorageSettings, rules: list[PrefixRetention]) -> bool:
    """Whether a bucket rule is one ``gcs_lifecycle_rules`` wrote (GCS rules
    have no ids: a Delete rule on exactly one of our prefixes is ours)."""
    cond = rule.get("condition") or {}
    ours = {s.prefix + r.prefix for r in rules} | {s.prefix + "uploads/"}
    prefixes = cond.get("matchesPrefix") or []
    return (rule.get("action") or {}).get("type") == "Delete" and len(prefixes) == 1 and prefixes[0] in ours


def gcs_rule_problems(bucket: str, existing: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[str]:
    """What the bucket's lifecycle lacks of the rules the config asks for."""
    def facts(r: dict[str, Any]) -> tuple[Any, ...]:
        cond = r.get("condition") or {}
        return ((r.get("action") or {}).get("type"), cond.get("age"), tuple(cond.get("matchesPrefix") or ()))

    have = {facts(r) for r in existing}
    by_prefix = {facts(r)[2]: facts(r) for r in existing}
    out = []
    for rule in ours:
        want = facts(rule)
        if want in have:
            continue
        got = by_prefix.get(want[2])
        out.append(f"bucket {bucket!r} has no Delete rule for prefix {want[2][0]!r} after {want[1]} days"
                   + (f" (it has one after {got[1]} days)" if got else ""))
    return out


# -- Azure ------------------------------------------------------------------------------


def azure_management_policy(s: AzureStorageSettings, rules: list[PrefixRetention]) -> dict[str, Any]:
    """The Azure Storage lifecycle management policy equivalent to the S3
    rules; it is set on the account through the management plane (Azure
    portal, ``az storage account management-policy create``), which the
    data-plane SDK the gateway uses cannot reach.  Uncommitted blocks of a
    failed upload are discarded by the service after 7 days on their own."""
    return {"rules": [{
        "enabled": True,
        "name": RULE_PREFIX + r.name,
        "type": "Lifecycle",
        "definition": {
            "filters": {"blobTypes": ["blockBlob"], "prefixMatch": [f"{s.container}/{s.prefix}{r.prefix}"]},
            "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": r.days}}},
        },
    } for r in rules]}
