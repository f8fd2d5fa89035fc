"""The upload API that contact-centre flows call (Genesys Architect data
actions, CXone Studio scripts): ``POST /api/v1/upload/attachment`` and
``GET /api/v1/jobs/<jobId>``.

The contract follows the design guide: headers ``X-Filename``,
``X-CustomerId``, ``Authorization: Bearer <key>``; the body raw, or base64
with ``Content-Transfer-Encoding: base64``; the answer
``{downloadUrl, fileName, fileSize, s3Key}``.  The body is streamed into
staging (never held whole), then decided on by the route's policies and
disarmed as mail is (415 when refused; a PDF or Office file with active
content stored cleaned, the answer's ``cleaned`` saying what was removed:
gateway/uploads.py) and moved to its secure key with a link (200), or, with
``Prefer: respond-async`` or above ``api.async_threshold``, left to a job
(202).  Every answer is an audit event.  The bearer key is checked as for
every ``/api/v1`` route (gateway.http.apikeys).
"""
from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from aiohttp import web

from gateway import customers, logs
from gateway.config import Config
from gateway.http.apikeys import ApiKeys, error
from gateway.http.health import client_address
from gateway.jobs import PENDING, Job, JobRunner, load, save
from gateway.links.tokens import new_object_id
from gateway.mime import filenames
from gateway.storage.base import StorageError
from gateway.storage.bridge import BadEncoding, BodyTooLarge
from gateway.uploads import Refused, Uploads, declared_type

log = logs.get("api")

READ_CHUNK = 1 << 18


class UploadApi:
    """The two API endpoints."""

    def __init__(self, cfg: Config, keys: ApiKeys, uploads: Uploads, runner: JobRunner,
                 audit: logs.AuditLog) -> None:
        self.keys = keys
        self.uploads = uploads
        self.runner = runner
        self.audit = audit
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded config (its keys are ``ApiKeys``' to read)."""
        self.cfg = cfg

    # -- checks before the body ------------------------------------------

    def _precheck(self, request: web.Request) -> str | web.Response:
        """Key, headers and declared length, before any byte of the body."""
        who = self.keys.caller(request)
        if isinstance(who, web.Response):
            return who
        for name in ("X-Filename", "X-CustomerId"):
            if not request.headers.get(name, "").strip():
                return error(400, f"Missing {name} header")
        try:
            customers.checked(request.headers["X-CustomerId"])
        except customers.InvalidCustomerId as e:
            return error(400, f"Invalid X-CustomerId header: {e}")
        cte = request.headers.get("Content-Transfer-Encoding", "").strip().lower()
        if cte not in ("", "binary", "8bit", "base64"):
            return error(400, f"Unsupported Content-Transfer-Encoding {cte!r}: expected base64 or binary")
        length = request.content_length
        if length == 0:
            return error(400, "Empty file")
        if length is not None and cte != "base64" and length > self.cfg.api.max_upload_size:
            return error(413, f"File larger than {self.cfg.api.max_upload_size} bytes", Connection="close")
        return who

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse before the client sends the body."""
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            checked = self._precheck(request)
            if isinstance(checked, web.Response):
                return checked
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    def _audit(self, request: web.Request, result: str, details: str, **fields: Any) -> None:
        self.audit.event("FileCreated", result, EventSubType="Upload", EventResultDetails=details,
                         SrcIpAddr=client_address(request), HttpUserAgent=request.headers.get("User-Agent"), **fields)
        log.info("upload", result=result, details=details, client=client_address(request),
                 **logs.log_fields({k: v for k, v in fields.items()
                                    if k in ("QueueId", "CustomerId", "TargetFilePath")}))

    # -- POST /api/v1/upload/attachment ----------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        checked = self._precheck(request)
        if isinstance(checked, web.Response):
            if checked.status in (401, 403):
                self._audit(request, "Failure", checked.text or "", ActorUsername=None)
            return checked
        key_id = checked
        name = filenames.display_name(request.headers["X-Filename"])
        # As the flow gave it (checked above); the object key uses its sanitised form.
        customer = customers.checked(request.headers["X-CustomerId"])
        b64 = request.headers.get("Content-Transfer-Encoding", "").strip().lower() == "base64"
        ctype = declared_type(name, request.headers.get("Content-Type"))
        job_id = new_object_id()
        store = self.uploads.store_for(None)
        staging = f"staging/api/{job_id}"
        fields = dict(QueueId=job_id, CustomerId=customer, TargetFileName=name, ActorUsername=f"api-key:{key_id}")
        try:
            staged = await self.uploads.stage(store, staging, request.content.iter_chunked(READ_CHUNK),
                                              self.cfg.api.max_upload_size, b64)
        except BodyTooLarge as e:
            self._audit(request, "Failure", str(e), **fields)
            return error(413, f"File larger than {self.cfg.api.max_upload_size} bytes", Connection="close")
        except BadEncoding as e:
            self._audit(request, "Failure", str(e), **fields)
            return error(400, str(e))
        except StorageError as e:
            log.error("staging failed", job_id=job_id, error=str(e))
            self._audit(request, "Failure", f"storage error: {e}", **fields)
            return error(503, "Storage is unavailable; try again later", **{"Retry-After": "30"})
        except (ConnectionError, asyncio.IncompleteReadError, web.HTTPException) as e:
            self._audit(request, "Failure", f"upload interrupted: {e}", **fields)
            return error(400, "Upload interrupted")
        if staged.size == 0:
            await store.delete(staging)
            self._audit(request, "Failure", "empty file", **fields)
            return error(400, "Empty file")
        wants_async = "respond-async" in request.headers.get("Prefer", "").lower()
        if wants_async or staged.size > self.cfg.api.async_threshold:
            now = time.time()
            job = Job(job_id=job_id, status=PENDING, created=now, updated=now,
                      lease_until=now + self.cfg.api.job_lease, route=self.uploads.route.name, file_name=name,
                      customer_id=customer, content_type=ctype, staging_key=staging, size=staged.size,
                      sha256=staged.sha256, head=base64.b64encode(staged.head).decode())
            try:
                await save(store, job)
                await asyncio.to_thread(self.runner.mark, job_id)
                self.runner.kick()
            except (StorageError, OSError) as e:
                await store.delete(staging)
                return error(503, f"Cannot queue the job: {e}", **{"Retry-After": "30"})
            self._audit(request, "Success", "queued", TargetFileSize=staged.size, **fields)
            url = self._status_url(job_id)
            return web.json_response({"jobId": job_id, "statusUrl": url}, status=202,
                                     headers={"Location": url, "Preference-Applied": "respond-async"}
                                     if wants_async else {"Location": url})
        try:
            stored = await self.uploads.finish(staging=[staging], filename=name, customer=customer, ctype=ctype,
                                               size=staged.size, sha256=staged.sha256, reference=job_id,
                                               source="Upload", actor=f"api-key:{key_id}",
                                               client=client_address(request))
        except Refused as e:
            self._audit(request, "Failure", f"refused: {e}", TargetFileSize=staged.size, **fields)
            return error(415, f"File refused: {e}")
        except StorageError as e:
            await store.delete(staging)
            self._audit(request, "Failure", f"storage error: {e}", **fields)
            return error(503, "Storage is unavailable; try again later", **{"Retry-After": "30"})
        self._audit(request, "Success", "stored", TargetFilePath=stored.key, TargetFileSize=stored.size,
                    TargetFileSHA256=stored.sha256, **fields)
        return web.json_response(stored.answer(), headers={"Cache-Control": "no-store"})

    def _status_url(self, job_id: str) -> str:
        return f"{self.cfg.http.base_url}/api/v1/jobs/{job_id}"

    # -- GET /api/v1/jobs/<jobId> ----------------------------------------

    async def job(self, request: web.Request) -> web.Response:
        who = self.keys.caller(request)
        if isinstance(who, web.Response):
            return who
        job_id = request.match_info["job_id"]
        if not job_id.replace("-", "").replace("_", "").isalnum() or len(job_id) > 64:
            return error(404, "No such job")
        store = self.uploads.store_for(None)
        try:
            job = await load(store, job_id)
        except StorageError as e:
            return error(503, f"Storage is unavailable: {e}", **{"Retry-After": "5"})
        if job is None:
            return error(404, "No such job")
        if job.status == PENDING and job.lease_until < time.time():
            # Whoever had it is gone (or slow): let a runner on this node's spool finish it.
            job.lease_until = time.time() + self.cfg.api.job_lease
            await save(store, job)
            await asyncio.to_thread(self.runner.mark, job_id)
            self.runner.kick()
            log.warning("job taken over", job_id=job_id)
        return web.json_response(job.answer(self._status_url(job_id)), headers={"Cache-Control": "no-store"})
