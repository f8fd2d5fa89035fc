"""Asynchronous uploads: job records in the object store, run in the background.

``POST /api/v1/upload/attachment`` with ``Prefer: respond-async`` (or a body
above ``api.async_threshold``) stages the file, writes a PENDING job record
``jobs/<id>.json`` in the route's store and answers 202.  The record is the
job's only state that matters, so any node with the store answers
``GET /api/v1/jobs/<id>``.  The work (decide, copy to the secure key, mint
the link) is done by a ``JobRunner``, which runs in processes with the
worker role: each job also has a marker file in the spool's ``jobs/``
directory, so a process that dies mid-job leaves the marker and the next
runner on that spool finishes it; a node asked about a job whose lease has
run out writes a marker of its own and takes it over.  Finishing twice is
harmless: it only copies the staged file again and mints another link.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.spool.durable import write_atomic
from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage, StorageError
from gateway.uploads import Refused, Uploads

log = logs.get("jobs")

PENDING, COMPLETE, FAILED = "PENDING", "COMPLETE", "FAILED"


@dataclass
class Job:
    """One asynchronous upload, as kept in ``jobs/<id>.json``."""

    job_id: str
    status: str
    created: float
    updated: float
    lease_until: float
    route: str
    file_name: str
    customer_id: str
    content_type: str
    staging_key: str
    size: int
    sha256: str
    head: str  # base64 of the first bytes received (the policies judge the stored copy's own)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def answer(self, status_url: str) -> dict[str, Any]:
        """What ``GET /api/v1/jobs/<id>`` says."""
        out: dict[str, Any] = {"jobId": self.job_id, "status": self.status, "statusUrl": status_url}
        if self.status == COMPLETE:
            out.update(self.result)
        elif self.status == FAILED:
            out["error"] = self.error
        return out


def job_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


async def save(store: Storage, job: Job) -> None:
    job.updated = time.time()
    data = json.dumps(asdict(job)).encode()
    await store.put(job_key(job.job_id), [data], ObjectMeta(content_type="application/json"))


async def load(store: Storage, job_id: str) -> Job | None:
    """The job, or None when the store has no such job."""
    try:
        raw = b"".join([c async for c in store.open(job_key(job_id))])
    except ObjectNotFound:
        return None
    try:
        return Job(**json.loads(raw))
    except (ValueError, TypeError) as e:
        raise StorageError(f"unreadable job record {job_id}: {e}") from None


class JobRunner:
    """Finishes PENDING jobs whose markers are in ``<spool>/jobs``."""

    def __init__(self, spool_root: Path, uploads: Uploads, lease: int) -> None:
        self.dir = spool_root / "jobs"
        self.uploads = uploads
        self.lease = lease
        self.enabled = False  # only processes with the worker role run jobs
        self._kick = asyncio.Event()
        self._running: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    def mark(self, job_id: str) -> None:
        """Record durably that ``job_id`` needs running (blocking: call in a
        thread, then ``kick``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / job_id, b"")

    def kick(self) -> None:
        """Look at the markers now rather than at the next scan (loop thread only)."""
        self._kick.set()

    async def start(self) -> None:
        self.enabled = True
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._scan(), name="jobs")

    async def stop(self) -> None:
        for t in [self._task, *self._jobs]:
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._jobs] if t is not None), return_exceptions=True)

    async def _scan(self) -> None:
        while True:
            for job_id in await asyncio.to_thread(self._markers):
                if job_id not in self._running:
                    self._running.add(job_id)
                    t = asyncio.create_task(self._run(job_id))
                    self._jobs.add(t)
                    t.add_done_callback(self._jobs.discard)
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=1.0)
            except TimeoutError:
                pass

    def _markers(self) -> list[str]:
        try:
            return sorted(p.name for p in self.dir.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []

    async def _run(self, job_id: str) -> None:
        path = self.dir / job_id
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            self._running.discard(job_id)
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process on this spool has it
            await self.run(job_id)
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except asyncio.CancelledError:
            raise  # shutdown: the marker stays for the next start
        except Exception as e:  # noqa: BLE001 - a job is never dropped: keep the marker, retry later
            log.error("job not finished; will retry", job_id=job_id, error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(5)
        finally:
            os.close(fd)
            self._running.discard(job_id)

    async def run(self, job_id: str) -> None:
        """Finish one job: COMPLETE with the link, or FAILED with the reason."""
        job, store = await self._find(job_id)
        if job is None or job.status != PENDING:
            return
        job.lease_until = time.time() + self.lease
        await save(store, job)
        try:
            stored = await self.uploads.finish(
                staging=[job.staging_key], filename=job.file_name, customer=job.customer_id,
                ctype=job.content_type, size=job.size, sha256=job.sha256, reference=job.job_id, route_name=job.route,
                cleanup=False)
        except Refused as e:
            job.status, job.error = FAILED, f"refused: {e}"
        except ObjectNotFound:
            # Only a run that died after recording its result removes the
            # staged file, and then the job is no longer PENDING.
            job.status, job.error = FAILED, "the staged file is missing"
        else:
            job.status, job.result = COMPLETE, stored.answer()
        await save(store, job)
        # Staging goes only once the outcome is recorded, so a crash in
        # between is finished by the next run, not lost.
        await store.delete(job.staging_key)
        log.info("job finished", job_id=job_id, status=job.status, error=job.error or None)

    async def _find(self, job_id: str) -> tuple[Job | None, Storage]:
        """The job and its store (jobs live in the store of the API's route)."""
        store = self.uploads.store_for(None)
        return await load(store, job_id), store
