"""What ``attachment-gateway storage check`` does.

An administrator command, run by hand or from a deployment pipeline, never
by ``serve``.  It asks each store, in this order, what it would otherwise
only find out on the first message: whether the credentials work, whether
the bucket exists and is where the config says (S3 region, GCS location),
whether the lifecycle rules ``storage apply-retention`` writes are there as
the config says (``gateway.storage.retention``), then whether a small object
goes in, comes back the same, is encrypted as configured and can be
deleted.  It stops at the first failed check: nothing is ever written into
a bucket the check has just found wrong.

Backends do the talking: each cloud backend has ``inspect`` (its findings
in order, ending at its first failure), ``retention_problems`` where the
lifecycle can be read back, and ``encryption_problem``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any

from gateway.storage.base import ObjectMeta, Storage, StorageError
from gateway.storage.keys import utc_stamp
from gateway.storage.retention import CHECK, PrefixRetention

# Where the round trip of ``check`` writes, under the store's prefix.
CHECK_PREFIX = CHECK
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


def failed(findings: list[Finding]) -> Finding | None:
    """The first failed check, or None."""
    return next((f for f in findings if f.status == FAIL), None)


# -- check ------------------------------------------------------------------------


async def check_store(store: Storage, rules: list[PrefixRetention]) -> list[Finding]:
    """Every check of one store, in order, up to and including the first
    that fails."""
    inspect = getattr(store, "inspect", None)
    try:
        if inspect is not None:
            findings: list[Finding] = list(await inspect())
        else:
            await store.start()
            findings = [Finding("access", OK, f"{getattr(store, 'root', store.name)} is writable")]
    except StorageError as e:
        return [Finding("credentials", FAIL, str(e))]
    if failed(findings):
        return findings
    findings.append(await retention_finding(store, rules))
    if failed(findings):
        return findings
    return findings + await round_trip(store)


async def retention_finding(store: Storage, rules: list[PrefixRetention]) -> Finding:
    """Whether the store holds the lifecycle rules the config asks for."""
    read = getattr(store, "retention_problems", None)
    if read is None:
        if hasattr(store, "root"):
            return Finding("retention", OK, "enforced by the gateway itself: the worker processes delete what "
                                            "is older than its prefix's retention (storage.sweep)")
        return Finding("retention", NOTE, "not checked: this store's lifecycle cannot be read through its data "
                                          "plane (see storage apply-retention)")
    try:
        problems: list[str] = await read(rules)
    except StorageError as e:
        return Finding("retention", FAIL, f"lifecycle not readable: {e}")
    if problems:
        return Finding("retention", FAIL, "; ".join(problems) + " (run attachment-gateway storage apply-retention)")
    return Finding("retention", OK, f"lifecycle rules for {len(rules)} prefixes as the config says")


async def round_trip(store: Storage) -> list[Finding]:
    """Put a small object under ``check/``, read it back, compare, look at
    its encryption, delete it and see it gone; stop at the first failure
    (deleting the object first)."""
    data = os.urandom(_CHECK_SIZE)
    sha = hashlib.sha256(data).hexdigest()
    key = f"{CHECK_PREFIX}{utc_stamp()}-{sha[:12]}.bin"
    meta = ObjectMeta(content_type="application/octet-stream", filename="check.bin",
                      metadata={"purpose": "attachment-gateway storage check"})
    try:
        stored = await store.put(key, [data], meta)
    except StorageError as e:
        return [Finding("write", FAIL, f"write {key}: {e}")]
    try:
        back = b"".join([c async for c in store.open(key)])
        stat = await store.stat(key)
    except StorageError as e:
        await _delete_quietly(store, key)
        return [Finding("round trip", FAIL, f"read {key}: {e}")]
    if back != data or stored.sha256 != sha:
        await _delete_quietly(store, key)
        return [Finding("round trip", FAIL, f"{key} came back different: {len(back)} bytes, "
                                            f"SHA-256 {hashlib.sha256(back).hexdigest()}, expected "
                                            f"{len(data)} bytes, SHA-256 {sha}")]
    problem = encryption_problem(store, stat.extra if stat else {})
    if not hasattr(store, "encryption_problem"):
        enc = Finding("encryption", NOTE, "not checked: this backend writes files as they are (encrypt the disk)")
    elif stat is None:
        enc = Finding("encryption", FAIL, f"{key} was written but the store does not report it")
    elif problem:
        enc = Finding("encryption", FAIL, f"object {key}: {problem}")
    else:
        enc = Finding("encryption", OK, f"object {key}: {stat.extra.get('encryption') or 'n/a'}")
    if enc.status == FAIL:
        await _delete_quietly(store, key)
        return [enc]
    try:
        await store.delete(key)
        gone = await store.stat(key) is None
    except StorageError as e:
        return [enc, Finding("round trip", FAIL, f"delete {key}: {e}")]
    if not gone:
        return [enc, Finding("round trip", FAIL, f"{key} is still there after the delete")]
    return [enc, Finding("round trip", OK, f"wrote {len(data)} bytes to {key}, read them back identical "
                                           f"(SHA-256 {sha[:16]}...), deleted")]


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
