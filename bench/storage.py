"""Storage section of the bench: upload throughput to a real S3 server beside
writing the same bytes to a local file, in the same run.

The S3 server is Ceph's radosgw (tests/servers/ceph.py: one monitor, one OSD
on the in-memory object store, radosgw, all on loopback).  Rows, each putting
one object of ``size`` bytes read in 256 KiB chunks from one file on disk (in
the page cache after the first round), as the worker feeds a store from the
spool:

- ``file``: the gateway's filesystem backend (temporary file, fsync, rename):
  the floor, what the same bytes cost without a network or a server.
- ``s3-sdk``: boto3's own ``upload_fileobj`` (8 MiB parts, 10 threads, no
  encryption requested, no checksums of ours): what the SDK alone gets from
  this server.
- ``s3-seq``: the gateway's S3 backend with ``part_concurrency = 1``: 8 MiB
  parts sent one after another, each with its MD5 and SHA-256, then a
  HeadObject check (what the backend did before parts went in parallel).
- ``s3``: the gateway's S3 backend, default settings (SSE-S3 requested;
  Ceph 16 accepts it without encrypting or echoing it; 8 MiB parts, 4 at a
  time).
- ``s3-kms``: the same with SSE-KMS, which radosgw really encrypts (its
  ``testing`` KMS backend).

After one warm-up round (not recorded), rounds are interleaved (file,
s3-sdk, s3-seq, s3, s3-kms, file, ...) and every object
is deleted after its round, so the in-memory OSD never fills.  Figures are
medians over the rounds, in MB/s (10^6 bytes per second).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.storage.base import ObjectMeta, Storage
from gateway.storage.filesystem import FilesystemStorage
from gateway.storage.s3 import S3Storage
from gateway.storage.settings import FilesystemStorageSettings, S3StorageSettings
from tests.servers.ceph import CephRadosgw

CHUNK = 256 * 1024
ROWS = ("file", "s3-sdk", "s3-seq", "s3", "s3-kms")
LABELS = {
    "file": "local file (filesystem backend)",
    "s3-sdk": "radosgw, boto3 upload_fileobj",
    "s3-seq": "radosgw, S3 backend, 1 part a time",
    "s3": "radosgw, S3 backend (SSE-S3)",
    "s3-kms": "radosgw, S3 backend (SSE-KMS)",
}
META = ObjectMeta(content_type="application/pdf", filename="bench.pdf", metadata={"queue-id": "BENCH"})
SECRET_ENV = "GW_BENCH_S3_SECRET"


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _make_source(workdir: Path, size: int) -> tuple[Path, str]:
    path = workdir / "storage-source.bin"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            h.update(block)
            f.write(block)
            left -= len(block)
    return path, h.hexdigest()


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_storage(workdir: Path, size: int, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Start radosgw, run the rounds, stop it; return the figures and every round."""
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    source, sha256 = _make_source(workdir, size)
    out: dict[str, Any] = {"object_bytes": size, "chunk_bytes": CHUNK, "rounds": rounds,
                           "labels": LABELS, "runs": {r: [] for r in ROWS}}
    # radosgw frees deleted objects' data only on its garbage-collection
    # pass (hours later by default), so every byte uploaded stays in the
    # in-memory OSD for the whole run: size it for all of them (a full OSD
    # makes radosgw stall, not fail).
    s3_rows = sum(1 for r in ROWS if r != "file")
    memstore = max(1 << 30, 2 * (rounds + 1) * s3_rows * size + (256 << 20))
    with CephRadosgw(memstore_bytes=memstore) as ceph:
        out["server"] = f"Ceph radosgw ({_ceph_version()}), memstore OSD, loopback"
        out["server_startup_s"] = round(ceph.startup_seconds, 1)
        log(f"radosgw at {ceph.endpoint_url} after {ceph.startup_seconds:.1f}s")
        os.environ[SECRET_ENV] = ceph.secret_key
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        client = boto3.client("s3", endpoint_url=ceph.endpoint_url, aws_access_key_id=ceph.access_key,
                              aws_secret_access_key=ceph.secret_key, region_name="us-east-1",
                              config=Config(signature_version="s3v4", request_checksum_calculation="when_required"))
        client.create_bucket(Bucket=bucket)
        common: dict[str, Any] = dict(backend="s3", bucket=bucket, region=ceph.region, endpoint_url=ceph.endpoint_url,
                                      addressing_style="path", access_key_id=ceph.access_key,
                                      secret_access_key_env=SECRET_ENV)
        stores: dict[str, Storage] = {
            "file": FilesystemStorage("file", FilesystemStorageSettings(backend="filesystem",
                                                                          path=str(workdir / "objects")), workdir),
            "s3-seq": S3Storage("s3-seq", S3StorageSettings(**common, part_concurrency=1), workdir),
            "s3": S3Storage("s3", S3StorageSettings(**common), workdir),
            "s3-kms": S3Storage("s3-kms", S3StorageSettings(**common, encryption="aws:kms",
                                                            kms_key_id=ceph.kms_key_id), workdir),
        }
        transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=10)

        async def go() -> None:
            for store in stores.values():
                await store.start()
            try:
                # Round 0 is a warm-up, not recorded: connections, radosgw's
                # first writes to a new bucket, the page cache of the source.
                for rnd in range(rounds + 1):
                    for row in ROWS:
                        key = f"uploads/bench/{rnd}-{row}.bin"
                        if row == "s3-sdk":
                            def sdk(key: str = key) -> None:  # bound now, though it runs in this iteration
                                with open(source, "rb") as f:
                                    client.upload_fileobj(f, bucket, key, Config=transfer)
                            seconds = await asyncio.to_thread(_timed, sdk)
                            got = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
                            assert got == size, f"{row}: {got} bytes stored, expected {size}"
                            client.delete_object(Bucket=bucket, Key=key)
                        else:
                            store = stores[row]
                            t0 = time.perf_counter()
                            stored = await store.put(key, _chunks(source), META)
                            seconds = time.perf_counter() - t0
                            assert stored.size == size and stored.sha256 == sha256, f"{row}: stored object differs"
                            await store.delete(key)
                        mb_s = size / seconds / 1e6
                        if rnd == 0:
                            log(f"storage warm-up {LABELS[row]:34s} {seconds:6.3f}s  {mb_s:7.1f} MB/s")
                            continue
                        out["runs"][row].append({"seconds": round(seconds, 4), "mb_per_s": round(mb_s, 1)})
                        log(f"storage {rnd}/{rounds} {LABELS[row]:34s} {seconds:6.3f}s  {mb_s:7.1f} MB/s")
            finally:
                for store in stores.values():
                    await store.close()

        try:
            asyncio.run(go())
        finally:
            client.close()
            os.environ.pop(SECRET_ENV, None)
    out["median_mb_per_s"] = {r: round(statistics.median(x["mb_per_s"] for x in runs), 1)
                              for r, runs in out["runs"].items() if runs}
    return out


def format_storage(result: dict[str, Any]) -> str:
    """The storage figures as a Markdown table, with the ratio to the local file."""
    med = result["median_mb_per_s"]
    floor = med.get("file")
    lines = [f"object {result['object_bytes']:,} bytes, {result['rounds']} rounds; {result['server']}",
             "| upload to | MB/s (median) | vs local file |", "|---|---:|---:|"]
    for row in ROWS:
        if row in med:
            ratio = f"{med[row] / floor:.2f}x" if floor else ""
            lines.append(f"| {LABELS[row]} | {med[row]:,.1f} | {ratio} |")
    return "\n".join(lines)


def _ceph_version() -> str:
    import subprocess

    try:
        res = subprocess.run(["radosgw", "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    words = res.stdout.split()
    return words[2] if len(words) > 2 else "unknown"
