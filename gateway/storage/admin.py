"""What ``attachment-gateway storage check`` and ``storage apply-retention`` do.

Both are administrator commands, run by hand or from a deployment pipeline,
never by ``serve``.  ``check`` asks each store what it would otherwise only
find out on the first message: whether the credentials work, whether the
bucket is where the config says (S3 region, GCS location), what encryption
the bucket and a freshly written object report, and whether a small object
goes in, comes back the same and can be deleted.  ``apply-retention`` turns
``retention_days`` into the store's own lifecycle rules; the gateway never
deletes attachments itself.

The rule builders here are pure (settings in, the store's document out), so
that the documentation, the dry run and the real write show the same rules.
Backends do the talking: each cloud backend has ``inspect``,
``encryption_problem`` and ``apply_retention`` (Azure: ``management_policy``),
the filesystem backend has nothing to apply and says so.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any

from gateway.storage.base import ObjectMeta, Storage, StorageError
from gateway.storage.keys import utc_stamp
from gateway.storage.settings import (
    AzureStorageSettings,
    FilesystemStorageSettings,
    GcsStorageSettings,
    S3StorageSettings,
)

# Lifecycle rules the gateway writes carry this in their id (S3) or name
# (Azure); on a re-run they are replaced, every other rule is kept.
RULE_PREFIX = "attachment-gateway-"
# Staging objects and unfinished multipart uploads are garbage after a day.
STAGING_DAYS = 1
INCOMPLETE_UPLOAD_DAYS = 1
# Where the round trip of ``check`` writes, under the store's prefix.
CHECK_PREFIX = "check/"
_CHECK_SIZE = 1024

OK, FAIL, NOTE = "ok", "FAIL", "note"


@dataclass(frozen=True)
class Finding:
    """One line of ``storage check``: what was checked, how it went, why."""

    check: str
    status: str  # OK, FAIL or NOTE (a fact worth knowing that decides nothing)
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# -- lifecycle documents ------------------------------------------------------------


def s3_lifecycle_rules(s: S3StorageSettings) -> dict[str, list[dict[str, Any]]]:
    """The S3 lifecycle rules of a store, by bucket: uploads expire after
    ``retention_days``, staging after a day, unfinished multipart uploads
    are aborted after a day."""
    rules: dict[str, list[dict[str, Any]]] = {s.bucket: [
        {"ID": RULE_PREFIX + "uploads", "Status": "Enabled", "Filter": {"Prefix": s.prefix + "uploads/"},
         "Expiration": {"Days": s.retention_days}},
        {"ID": RULE_PREFIX + "incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": s.prefix},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": INCOMPLETE_UPLOAD_DAYS}},
    ]}
    if s.staging:
        # The staging prefix never overlaps ``prefix`` in one bucket (the
        # settings refuse it), so it needs its own abort rule.
        rules.setdefault(s.staging_bucket or s.bucket, []).append(
            {"ID": RULE_PREFIX + "staging", "Status": "Enabled", "Filter": {"Prefix": s.staging_prefix or ""},
             "Expiration": {"Days": STAGING_DAYS},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": INCOMPLETE_UPLOAD_DAYS}})
    return rules


def merge_s3_rules(existing: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bucket's rules with ours replacing any the gateway wrote before."""
    return [r for r in existing if not str(r.get("ID", "")).startswith(RULE_PREFIX)] + ours


def gcs_lifecycle_rules(s: GcsStorageSettings) -> list[dict[str, Any]]:
    """The GCS lifecycle rules of a store: uploads deleted after
    ``retention_days``.  (Resumable upload sessions expire on their own
    after a week; the gateway has no staging on GCS.)"""
    return [{"action": {"type": "Delete"},
             "condition": {"age": s.retention_days, "matchesPrefix": [s.prefix + "uploads/"]}}]


def is_gateway_gcs_rule(rule: dict[str, Any], s: GcsStorageSettings) -> bool:
    """Whether a bucket rule is one ``gcs_lifecycle_rules`` wrote (GCS rules
    have no ids: a Delete rule on exactly our uploads prefix is ours)."""
    cond = rule.get("condition") or {}
    return (rule.get("action") or {}).get("type") == "Delete" and \
        cond.get("matchesPrefix") == [s.prefix + "uploads/"]


def azure_management_policy(s: AzureStorageSettings) -> dict[str, Any]:
    """The Azure Storage lifecycle management policy equivalent to the S3
    rules; it is set on the account through the management plane (Azure
    portal, ``az storage account management-policy create``), which the
    data-plane SDK the gateway uses cannot reach.  Uncommitted blocks of a
    failed upload are discarded by the service after 7 days on their own."""
    return {"rules": [{
        "enabled": True,
        "name": RULE_PREFIX + "uploads",
        "type": "Lifecycle",
        "definition": {
            "filters": {"blobTypes": ["blockBlob"], "prefixMatch": [f"{s.container}/{s.prefix}uploads/"]},
            "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": s.retention_days}}},
        },
    }]}


def filesystem_retention(s: FilesystemStorageSettings, root: str) -> dict[str, Any]:
    """What would enforce ``retention_days`` on a filesystem store: the
    gateway deletes nothing itself; a systemd-tmpfiles rule (or a cron'd
    find) does it."""
    uploads = os.path.join(root, "uploads")
    return {
        "applied": False,
        "why": "the filesystem backend has no lifecycle of its own and the gateway deletes no attachment itself",
        "systemd_tmpfiles": f"e {uploads} - - - m:{s.retention_days}d",
        "find": f"find {uploads} -type f -mtime +{s.retention_days} -delete",
    }


# -- check ------------------------------------------------------------------------


async def check_store(store: Storage) -> list[Finding]:
    """Every check of one store, in order; a failed connection ends the list."""
    inspect = getattr(store, "inspect", None)
    try:
        if inspect is not None:
            findings: list[Finding] = list(await inspect())
        else:
            await store.start()
            findings = [Finding("access", OK, f"{getattr(store, 'root', store.name)} is writable")]
    except StorageError as e:
        return [Finding("credentials", FAIL, str(e))]
    if any(f.status == FAIL and f.check == "credentials" for f in findings):
        return findings
    findings += await round_trip(store)
    return findings


async def round_trip(store: Storage) -> list[Finding]:
    """Put a small object under ``check/``, read it back, compare, look at
    its encryption, delete it and see it gone."""
    data = os.urandom(_CHECK_SIZE)
    sha = hashlib.sha256(data).hexdigest()
    key = f"{CHECK_PREFIX}{utc_stamp()}-{sha[:12]}.bin"
    meta = ObjectMeta(content_type="application/octet-stream", filename="check.bin",
                      metadata={"purpose": "attachment-gateway storage check"})
    out: list[Finding] = []
    try:
        stored = await store.put(key, [data], meta)
    except StorageError as e:
        return [Finding("round trip", FAIL, f"write {key}: {e}")]
    try:
        back = b"".join([c async for c in store.open(key)])
        stat = await store.stat(key)
    except StorageError as e:
        await _delete_quietly(store, key)
        return [Finding("round trip", FAIL, f"read {key}: {e}")]
    problem = encryption_problem(store, stat.extra if stat else {})
    if not hasattr(store, "encryption_problem"):
        out.append(Finding("encryption", NOTE, "not checked: this backend writes files as they are "
                                               "(encrypt the disk)"))
    elif stat is None:
        out.append(Finding("encryption", FAIL, f"{key} was written but the store does not report it"))
    elif problem:
        out.append(Finding("encryption", FAIL, f"object {key}: {problem}"))
    else:
        out.append(Finding("encryption", OK, f"object {key}: {stat.extra.get('encryption') or 'n/a'}"))
    if back != data or stored.sha256 != sha:
        await _delete_quietly(store, key)
        out.append(Finding("round trip", FAIL, f"{key} came back different: {len(back)} bytes, "
                                               f"SHA-256 {hashlib.sha256(back).hexdigest()}, expected "
                                               f"{len(data)} bytes, SHA-256 {sha}"))
        return out
    try:
        await store.delete(key)
        gone = await store.stat(key) is None
    except StorageError as e:
        out.append(Finding("round trip", FAIL, f"delete {key}: {e}"))
        return out
    if not gone:
        out.append(Finding("round trip", FAIL, f"{key} is still there after the delete"))
    else:
        out.append(Finding("round trip", OK, f"wrote {len(data)} bytes to {key}, read them back identical "
                                             f"(SHA-256 {sha[:16]}...), deleted"))
    return out


def encryption_problem(store: Storage, extra: Any) -> str:
    """Why the encryption a store reports on an object is not what the
    config asks for, or ""."""
    judge = getattr(store, "encryption_problem", None)
    return judge(extra) if judge is not None else ""


async def _delete_quietly(store: Storage, key: str) -> None:
    try:
        await store.delete(key)
    except StorageError:
        pass


# -- what each backend needs installed ----------------------------------------------

# backend -> (the setup.cfg extra that installs its SDK, the modules it imports).
# boto3 (S3) is a core dependency; the filesystem needs nothing.
BACKEND_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "azure": ("azure", ("azure.storage.blob", "azure.identity")),
    "gcs": ("gcs", ("google.cloud.storage", "google.auth")),
    "s3": ("", ("boto3",)),
}


def missing_sdk(backend: str) -> tuple[str, list[str]] | None:
    """The extra to install and the modules missing for ``backend``, or
    None when it can be used.  Each module is imported, not only looked up,
    so a broken install (a dependency of the SDK missing) is found too."""
    import importlib

    extra, modules = BACKEND_EXTRAS.get(backend, ("", ()))
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return (extra, missing) if missing else None
