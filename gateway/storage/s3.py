"""AWS S3 and S3-compatible stores (Ceph radosgw, MinIO) through boto3.

Every boto3 call runs on the backend's own threads (``BlockingRunner``); a
``put`` runs whole on one of them, pulling the blocking chunk iterator there,
so the event loop never blocks.

Uploads.  Objects smaller than ``multipart_chunk_size`` go up in one
PutObject; bigger ones as a multipart upload whose parts are read from the
chunk iterator in order and sent ``part_concurrency`` at a time on a pool of
their own, never whole in memory: the parts travelling plus the one being
read are at most ``part_concurrency`` (with 1, one part is read, then sent),
plus ``iter_parts``' buffer for the part being assembled.  Each request
carries a Content-MD5 and an ``x-amz-checksum-sha256`` of its bytes: AWS S3
verifies both, Ceph 16 verifies the MD5 (refusing a mismatch with BadDigest)
and ignores the SHA-256.
After the upload the object's size is read back with HeadObject and the
checksum is checked as far as the store reports one: the SHA-256 checksums it
echoed, else its ETag against the MD5-based ETag we computed, else the
per-request Content-MD5 it already verified.  ``extra["verified"]`` says
which.  Any failure aborts the multipart upload, so nothing partial is left.

Encryption at rest is always requested (SSE-S3 or SSE-KMS) and ``stat``
reports what the store says is in force.  The bucket's region is checked at
``start`` (data residency).

Staging.  With ``staging_bucket``/``staging_prefix`` an object is uploaded to
the staging location, verified there, copied server-side to the secure
location (a multipart copy: UploadPartCopy in ``copy_part_size`` parts,
conditional on the staging object's ETag; see ``_copy`` for why never
CopyObject), checked again (size, encryption) and deleted from staging.
``recover`` (run by ``start``) finds copies that a crash interrupted; see its
docstring.

The full SHA-256 is kept in the ``gateway-sha256`` metadata entry whenever it
is known before the object is created: single PutObjects and copies from
staging.  A direct multipart upload must send its metadata first, so its
``stat().sha256`` is "" (``put`` still returns the hash it measured).
"""
from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.storage.base import ObjectMeta, ObjectNotFound, StorageError, StoredObject
from gateway.storage.cloudutil import (
    META_SHA256,
    META_STAGING_ETAG,
    BlockingRunner,
    Cancelled,
    content_disposition,
    iter_parts,
    object_metadata,
    read_metadata,
    read_secret,
    store_key,
)
from gateway.storage.settings import S3StorageSettings

# S3 allows at most this many parts in one multipart upload.
MAX_PARTS = 10_000
_READ_CHUNK = 1 << 20


def _region(constraint: str | None) -> str:
    """A bucket's region from its LocationConstraint: us-east-1 answers with
    an empty one, the oldest EU buckets with "EU"."""
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(constraint, constraint or "us-east-1")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


@dataclass
class _Upload:
    """What one upload sent, to check the store against."""

    size: int = 0
    sha256: str = ""
    etag: str = ""                      # the ETag we expect if the store uses MD5 ETags
    checksum_sha256: str = ""           # what S3 reports for the object (full or composite "-N")
    store_checksum: str = ""            # what the store echoed, "" when it did not
    parts: int = 0
    part_md5s: list[bytes] = field(default_factory=list)
    verified: str = ""                  # how the store's copy was checked: sha256, etag-md5, content-md5


@dataclass(frozen=True)
class _Part:
    """One part the store accepted."""

    number: int
    entry: dict[str, Any]               # for CompleteMultipartUpload
    md5: bytes
    sha256: bytes
    echoed: bool                        # the store answered with the SHA-256 we sent


class S3Storage:
    """Offloaded attachments as objects in one S3 bucket under a prefix."""

    def __init__(self, name: str, settings: S3StorageSettings, base_dir: Path) -> None:
        self.name = name
        self.settings = settings
        self._base_dir = base_dir
        self._client: Any = None
        self._runner = BlockingRunner(settings.max_connections, name)
        # The parts of multipart uploads, ``part_concurrency`` at a time per
        # upload.  Separate from the runner, whose threads wait on these.
        self._parts = ThreadPoolExecutor(max_workers=settings.max_connections,
                                         thread_name_prefix=f"storage-{name}-parts")
        self._staging_bucket = settings.staging_bucket or settings.bucket
        self._staging_prefix = settings.staging_prefix or ""
        # What the recover() run by start() did (None without staging).
        self.last_recovery: dict[str, int] | None = None

    # -- life cycle -------------------------------------------------------

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        secret = None
        if s.access_key_id is not None:
            secret = read_secret(f"storage {self.name}: secret access key", s.secret_access_key_file,
                                 s.secret_access_key_env, self._base_dir)
        config = Config(
            signature_version="s3v4",
            region_name=s.region,
            retries={"total_max_attempts": s.max_attempts, "mode": "standard"},
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            max_pool_connections=s.max_connections,
            s3={"addressing_style": s.addressing_style},
            # We send our own Content-MD5 and SHA-256 per request; boto3's
            # default CRC32 trailer (aws-chunked) is refused by many
            # S3-compatible stores, Ceph 16 among them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="attachment-gateway",
        )
        return boto3.session.Session().client("s3", endpoint_url=s.endpoint_url, config=config,
                                              aws_access_key_id=s.access_key_id, aws_secret_access_key=secret)

    async def start(self) -> None:
        """Build the client, check the bucket's region (and the staging
        bucket's) equals the configured region, then ``recover`` staging."""
        self._client = await self._runner.run(self._make_client)
        buckets = {self.settings.bucket}
        if self.settings.staging:
            buckets.add(self._staging_bucket)
        for bucket in sorted(buckets):
            region = await self._runner.run(self._bucket_region, bucket)
            if region != self.settings.region:
                raise StorageError(
                    f"storage {self.name}: bucket {bucket!r} is in region {region!r}, but the config says "
                    f"region = {self.settings.region!r}; refusing to start (data residency)")
        if self.settings.staging:
            self.last_recovery = await self.recover()

    async def close(self) -> None:
        """Close the HTTP connections and the thread pool."""
        if self._client is not None:
            client, self._client = self._client, None
            await self._runner.run(client.close)
        self._runner.close()
        self._parts.shutdown(wait=False, cancel_futures=True)

    def _bucket_region(self, bucket: str) -> str:
        try:
            loc = self._c.get_bucket_location(Bucket=bucket).get("LocationConstraint")
        except Exception as e:
            raise self._error("GetBucketLocation", bucket, "", e) from None
        return _region(loc)

    # -- helpers ----------------------------------------------------------

    @property
    def _c(self) -> Any:
        if self._client is None:
            raise StorageError(f"storage {self.name}: not started")
        return self._client

    def _error(self, op: str, bucket: str, key: str, e: Exception) -> StorageError:
        """A StorageError naming the operation and object, never credentials."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = err.get("Code") or status
            msg = err.get("Message") or ""
            detail = f"{code}" + (f": {msg}" if msg and msg != code else "")
            if code in ("NoSuchKey", "404") and op in ("GetObject", "HeadObject"):
                return ObjectNotFound(f"{where}: no such object")
            if code == "NoSuchBucket":
                detail = "the bucket does not exist"
            elif code in ("AccessDenied", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                detail += " (check the credentials and the IAM policy)"
            return StorageError(f"storage {self.name}: S3 {op} {where} failed: {detail}")
        if isinstance(e, BotoCoreError):
            return StorageError(f"storage {self.name}: S3 {op} {where} failed: {e}")
        if isinstance(e, StorageError):
            return e
        return StorageError(f"storage {self.name}: S3 {op} {where} failed: {type(e).__name__}: {e}")

    def _sse_args(self) -> dict[str, str]:
        s = self.settings
        args: dict[str, str] = {"ServerSideEncryption": s.encryption}
        if s.encryption == "aws:kms" and s.kms_key_id:
            args["SSEKMSKeyId"] = s.kms_key_id
        return args

    def _object_args(self, meta: ObjectMeta, extra_meta: dict[str, str] | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "ContentType": meta.content_type or "application/octet-stream",
            "Metadata": object_metadata(meta, extra_meta),
            **self._sse_args(),
        }
        if meta.filename:
            args["ContentDisposition"] = content_disposition(meta.filename)
        return args

    # -- put --------------------------------------------------------------

    async def put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        """Stream ``chunks`` into the bucket (through staging when configured)
        and return what was stored; raises StorageError, leaving nothing
        partial behind."""
        full = store_key(self.settings.prefix, key)
        self._c  # noqa: B018 - raises when not started
        return await self._runner.run_cancellable(lambda cancel: self._put(key, full, chunks, meta, cancel))

    def _put(self, key: str, full: str, chunks: Iterable[bytes], meta: ObjectMeta,
             cancel: threading.Event) -> StoredObject:
        s = self.settings
        if not s.staging:
            up = self._upload(s.bucket, full, chunks, meta, cancel)
            head = self._verify(s.bucket, full, up)
            return self._stored(key, up, meta, head)

        skey = store_key(self._staging_prefix, key)
        up = self._upload(self._staging_bucket, skey, chunks, meta, cancel)
        try:
            staged = self._verify(self._staging_bucket, skey, up)
            if cancel.is_set():
                raise Cancelled()
            self._copy(self._staging_bucket, skey, staged["ETag"], up.size, s.bucket, full,
                       self._object_args(meta, {META_SHA256: up.sha256, META_STAGING_ETAG: staged["ETag"]}))
            head = self._head(s.bucket, full)
            problem = self._copy_problem(staged, head, up.size)
            if problem:
                self._delete_quietly(s.bucket, full)
                raise StorageError(f"storage {self.name}: copy of s3://{s.bucket}/{full} from staging {problem}; "
                                   "deleted")
        finally:
            self._delete_quietly(self._staging_bucket, skey)
        return self._stored(key, up, meta, head)

    @staticmethod
    def _copy_problem(src: dict[str, Any], dst: dict[str, Any], size: int) -> str:
        """Why a copy from staging is not a faithful copy, or ""."""
        if dst["ContentLength"] != size:
            return f"has {dst['ContentLength']} bytes, expected {size}"
        for field_ in ("ServerSideEncryption", "SSEKMSKeyId"):
            if src.get(field_) and dst.get(field_) != src.get(field_):
                return f"has {field_} {dst.get(field_)!r}, the staging object {src.get(field_)!r}"
        return ""

    def _stored(self, key: str, up: _Upload, meta: ObjectMeta, head: dict[str, Any]) -> StoredObject:
        user, _ = read_metadata(head.get("Metadata"))
        extra = self._extra(head)
        extra["verified"] = up.verified
        return StoredObject(key=key, size=up.size, sha256=up.sha256,
                            content_type=head.get("ContentType") or meta.content_type,
                            metadata=user, extra=extra)

    def _upload(self, bucket: str, okey: str, chunks: Iterable[bytes], meta: ObjectMeta,
                cancel: threading.Event) -> _Upload:
        """One PutObject for a small object, else a multipart upload; the
        multipart upload is aborted on any error or cancellation."""
        part_size = self.settings.multipart_chunk_size
        whole = hashlib.sha256()
        up = _Upload()
        parts = iter_parts(chunks, part_size, cancel)
        try:
            first = next(parts)
            second = next(parts, None)
        except Cancelled:
            raise StorageError(f"storage {self.name}: upload of s3://{bucket}/{okey} cancelled") from None
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(f"storage {self.name}: reading the attachment for s3://{bucket}/{okey} "
                               f"failed: {type(e).__name__}: {e}") from e

        if second is None:
            whole.update(first)
            up.size, up.sha256, up.parts = len(first), whole.hexdigest(), 1
            md5 = hashlib.md5(first, usedforsecurity=False).digest()
            sha = hashlib.sha256(first).digest()
            up.etag, up.checksum_sha256 = md5.hex(), _b64(sha)
            try:
                resp = self._c.put_object(Bucket=bucket, Key=okey, Body=first, ContentMD5=_b64(md5),
                                          ChecksumSHA256=_b64(sha),
                                          **self._object_args(meta, {META_SHA256: up.sha256}))
            except Exception as e:
                raise self._error("PutObject", bucket, okey, e) from None
            up.store_checksum = resp.get("ChecksumSHA256") or ""
            return up

        try:
            mpu = self._c.create_multipart_upload(Bucket=bucket, Key=okey, ChecksumAlgorithm="SHA256",
                                                  **self._object_args(meta))
        except Exception as e:
            raise self._error("CreateMultipartUpload", bucket, okey, e) from None
        upload_id = mpu["UploadId"]
        sent: dict[int, _Part] = {}
        in_flight: dict[Future[_Part], int] = {}
        head: list[bytes] = [first, second]
        del first, second  # held by ``head`` only until sent, not for the whole upload

        def all_parts() -> Iterator[bytes]:
            while head:
                yield head.pop(0)
            yield from parts

        def collect(return_when: str) -> None:
            done, _ = wait(in_flight, return_when=return_when)
            for fut in done:
                del in_flight[fut]
                result = fut.result()  # raises the part's StorageError
                sent[result.number] = result

        try:
            for number, part in enumerate(all_parts(), start=1):
                if cancel.is_set():
                    raise Cancelled()
                if number > MAX_PARTS:
                    raise StorageError(f"storage {self.name}: s3://{bucket}/{okey} needs more than {MAX_PARTS} "
                                       f"parts of {part_size} bytes; raise multipart_chunk_size")
                if not part:
                    break  # an exact multiple of the part size ends with no extra part
                whole.update(part)
                up.size += len(part)
                in_flight[self._parts.submit(self._upload_part, bucket, okey, upload_id, number, part)] = number
                del part
                # The next part is read only into a free slot: parts travelling
                # plus the one being read never exceed part_concurrency.
                while len(in_flight) >= self.settings.part_concurrency:
                    collect(FIRST_COMPLETED)
            while in_flight:
                collect(FIRST_COMPLETED)
            if cancel.is_set():
                raise Cancelled()
            done = [sent[n].entry for n in sorted(sent)]
            try:
                resp = self._c.complete_multipart_upload(Bucket=bucket, Key=okey, UploadId=upload_id,
                                                         MultipartUpload={"Parts": done})
            except Exception as e:
                raise self._error("CompleteMultipartUpload", bucket, okey, e) from None
        except BaseException as e:
            # Parts still travelling finish (or fail) before the abort, so
            # that none lands after it.
            for fut in in_flight:
                fut.cancel()
            wait(in_flight)
            self._abort_quietly(bucket, okey, upload_id)
            if isinstance(e, Cancelled):
                raise StorageError(f"storage {self.name}: upload of s3://{bucket}/{okey} cancelled") from None
            if isinstance(e, StorageError) or not isinstance(e, Exception):
                raise
            raise StorageError(f"storage {self.name}: reading the attachment for s3://{bucket}/{okey} "
                               f"failed: {type(e).__name__}: {e}") from e
        ordered = [sent[n] for n in sorted(sent)]
        up.parts = len(ordered)
        up.part_md5s = [p.md5 for p in ordered]
        up.sha256 = whole.hexdigest()
        up.etag = hashlib.md5(b"".join(up.part_md5s), usedforsecurity=False).hexdigest() + f"-{up.parts}"
        up.checksum_sha256 = _b64(hashlib.sha256(b"".join(p.sha256 for p in ordered)).digest()) + f"-{up.parts}"
        store = resp.get("ChecksumSHA256") or ""
        up.store_checksum = store if (store and all(p.echoed for p in ordered)) else ""
        return up

    def _upload_part(self, bucket: str, okey: str, upload_id: str, number: int, part: bytes) -> _Part:
        """Send one part with its Content-MD5 and SHA-256 (on the parts pool)."""
        md5 = hashlib.md5(part, usedforsecurity=False).digest()
        sha = hashlib.sha256(part).digest()
        try:
            resp = self._c.upload_part(Bucket=bucket, Key=okey, UploadId=upload_id, PartNumber=number,
                                       Body=part, ContentMD5=_b64(md5), ChecksumSHA256=_b64(sha))
        except Exception as e:
            raise self._error(f"UploadPart {number}", bucket, okey, e) from None
        entry = {"ETag": resp["ETag"], "PartNumber": number, "ChecksumSHA256": _b64(sha)}
        return _Part(number, entry, md5, sha, resp.get("ChecksumSHA256") == _b64(sha))

    def _verify(self, bucket: str, okey: str, up: _Upload) -> dict[str, Any]:
        """Check the object the store now holds against what was sent: size
        always, the SHA-256 checksum when the store reports one.  A bad object
        is deleted before raising."""
        head = self._head(bucket, okey, checksums=True)
        problem = ""
        if head["ContentLength"] != up.size:
            problem = f"has {head['ContentLength']} bytes, expected {up.size}"
        reported = head.get("ChecksumSHA256") or up.store_checksum
        if not problem and reported:
            # S3 reports a composite checksum "b64-N" for multipart objects.
            if reported != up.checksum_sha256 and reported.split("-")[0] != up.checksum_sha256.split("-")[0]:
                problem = f"has SHA-256 checksum {reported}, expected {up.checksum_sha256}"
            up.store_checksum = reported
        if problem:
            self._delete_quietly(bucket, okey)
            raise StorageError(f"storage {self.name}: s3://{bucket}/{okey} {problem}; deleted")
        # Without a SHA-256 from the store: an MD5-based ETag equal to ours,
        # else the Content-MD5 of every request, which the store checked.
        up.verified = ("sha256" if up.store_checksum else
                       "etag-md5" if (head.get("ETag") or "").strip('"') == up.etag else "content-md5")
        return head

    def _copy(self, sbucket: str, skey: str, etag: str, size: int, bucket: str, okey: str,
              args: dict[str, Any]) -> None:
        """Server-side copy as a multipart copy (UploadPartCopy in
        ``copy_part_size`` parts, each conditional on the source's ETag),
        aborted on error.

        Not CopyObject, even for small objects: Ceph 16 answers NotImplemented
        for an encrypted source and silently drops the requested encryption
        on a copy of an unencrypted one; a multipart copy carries metadata and
        encryption from its CreateMultipartUpload on every store."""
        source = {"Bucket": sbucket, "Key": skey}
        part = self.settings.copy_part_size
        try:
            upload_id = self._c.create_multipart_upload(Bucket=bucket, Key=okey, **args)["UploadId"]
        except Exception as e:
            raise self._error("CreateMultipartUpload", bucket, okey, e) from None
        try:
            done = []
            for number, start in enumerate(range(0, max(size, 1), part), start=1):
                extra = {"CopySourceRange": f"bytes={start}-{min(start + part, size) - 1}"} if size else {}
                try:
                    resp = self._c.upload_part_copy(Bucket=bucket, Key=okey, UploadId=upload_id,
                                                    PartNumber=number, CopySource=source,
                                                    CopySourceIfMatch=etag, **extra)
                except Exception as e:
                    raise self._error(f"UploadPartCopy {number}", bucket, okey, e) from None
                done.append({"ETag": resp["CopyPartResult"]["ETag"], "PartNumber": number})
            try:
                self._c.complete_multipart_upload(Bucket=bucket, Key=okey, UploadId=upload_id,
                                                  MultipartUpload={"Parts": done})
            except Exception as e:
                raise self._error("CompleteMultipartUpload", bucket, okey, e) from None
        except BaseException:
            self._abort_quietly(bucket, okey, upload_id)
            raise

    def _head(self, bucket: str, okey: str, checksums: bool = False) -> dict[str, Any]:
        try:
            kwargs = {"ChecksumMode": "ENABLED"} if checksums else {}
            return dict(self._c.head_object(Bucket=bucket, Key=okey, **kwargs))
        except Exception as e:
            raise self._error("HeadObject", bucket, okey, e) from None

    def _abort_quietly(self, bucket: str, okey: str, upload_id: str) -> None:
        try:
            self._c.abort_multipart_upload(Bucket=bucket, Key=okey, UploadId=upload_id)
        except Exception:
            pass  # the lifecycle rule (AbortIncompleteMultipartUpload) and recover() catch leftovers

    def _delete_quietly(self, bucket: str, okey: str) -> None:
        try:
            self._c.delete_object(Bucket=bucket, Key=okey)
        except Exception:
            pass

    # -- staging recovery ---------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Finish or clean up staged uploads that a crash interrupted.

        Only things older than ``staging_grace`` are touched (younger ones may
        belong to a put still running in another process).  How each case is
        recognised:

        - A multipart upload still open under the staging prefix (an upload
          to staging) or under the secure prefix (an upload, or a multipart
          copy from staging) was interrupted before completion: it is aborted.
          Nothing of it was ever visible.
        - An object under the staging prefix is a complete upload (S3 shows an
          object only once complete, and puts never complete a partial
          stream) whose copy did not finish or whose staging delete was lost.
          If the secure object exists with the same size and its
          ``gateway-staging-etag`` metadata equals the staging object's ETag,
          the copy had finished: the staging object is deleted.  Otherwise
          the copy is done now (conditional on that ETag, metadata carried
          over), its size checked, and the staging object deleted.

        Returns counts: ``aborted``, ``finished``, ``cleaned``, ``failed``.
        Failures on single objects are counted, not raised; a failure to list
        raises StorageError.
        """
        return await self._runner.run(self._recover)

    def _recover(self) -> dict[str, int]:
        s = self.settings
        cutoff = time.time() - s.staging_grace
        counts = {"aborted": 0, "finished": 0, "cleaned": 0, "failed": 0}
        for bucket, prefix in {(self._staging_bucket, self._staging_prefix), (s.bucket, s.prefix)}:
            try:
                pages = self._c.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
                for page in pages:
                    for u in page.get("Uploads", []):
                        if u["Initiated"].timestamp() < cutoff:
                            self._abort_quietly(bucket, u["Key"], u["UploadId"])
                            counts["aborted"] += 1
            except Exception as e:
                raise self._error("ListMultipartUploads", bucket, prefix, e) from None
        try:
            pages = self._c.get_paginator("list_objects_v2").paginate(Bucket=self._staging_bucket,
                                                                     Prefix=self._staging_prefix)
            staged = [o for page in pages for o in page.get("Contents", [])
                      if o["LastModified"].timestamp() < cutoff]
        except Exception as e:
            raise self._error("ListObjectsV2", self._staging_bucket, self._staging_prefix, e) from None
        for obj in staged:
            skey = obj["Key"]
            okey = s.prefix + skey[len(self._staging_prefix):]
            try:
                src = self._head(self._staging_bucket, skey)
                etag = src["ETag"]
                try:
                    dst = self._head(s.bucket, okey)
                except ObjectNotFound:
                    dst = None
                if dst is not None and dst["ContentLength"] == src["ContentLength"] and \
                        read_metadata(dst.get("Metadata"))[1].get(META_STAGING_ETAG) == etag:
                    counts["cleaned"] += 1
                else:
                    user_meta = {k: v for k, v in (src.get("Metadata") or {}).items()}
                    user_meta[META_STAGING_ETAG] = etag
                    args: dict[str, Any] = {"ContentType": src.get("ContentType") or "application/octet-stream",
                                            "Metadata": user_meta, **self._sse_args()}
                    if src.get("ContentDisposition"):
                        args["ContentDisposition"] = src["ContentDisposition"]
                    self._copy(self._staging_bucket, skey, etag, src["ContentLength"], s.bucket, okey, args)
                    problem = self._copy_problem(src, self._head(s.bucket, okey), src["ContentLength"])
                    if problem:
                        self._delete_quietly(s.bucket, okey)
                        raise StorageError(f"copy of {skey} {problem}")
                    counts["finished"] += 1
                self._c.delete_object(Bucket=self._staging_bucket, Key=skey)
            except Exception:
                counts["failed"] += 1
        return counts

    # -- administration (storage check, storage apply-retention) ---------------

    async def inspect(self) -> list[Any]:
        """Build the client without ``start``'s refusals or staging recovery
        and report credentials, that each bucket exists, its region and its
        default encryption (``storage check``), ending at the first failure."""
        from gateway.storage.admin import FAIL, NOTE, OK, Finding

        try:
            self._client = await self._runner.run(self._make_client)
        except StorageError as e:
            return [Finding("credentials", FAIL, str(e))]
        s = self.settings
        findings: list[Finding] = []
        for bucket in sorted({s.bucket, self._staging_bucket}):
            what = "staging_bucket" if bucket != s.bucket else "bucket"
            try:
                answer = await self._runner.run(self._c.get_bucket_location, Bucket=bucket)
            except Exception as e:
                if getattr(e, "response", {}).get("Error", {}).get("Code") == "NoSuchBucket":
                    return [*findings, Finding("bucket", FAIL, f"s3://{bucket} does not exist: expected the "
                                                               f"bucket the config names ({what} = {bucket!r}) "
                                                               f"in region {s.region!r}")]
                return [*findings, Finding("credentials", FAIL,
                                           str(self._error("GetBucketLocation", bucket, "", e)))]
            region = _region(answer.get("LocationConstraint"))
            if not findings:
                findings.append(Finding("credentials", OK, f"GetBucketLocation on s3://{bucket} answered"))
            findings.append(Finding("bucket", OK, f"s3://{bucket} exists"))
            if region != s.region:
                return [*findings, Finding("region", FAIL, f"bucket {bucket!r} is in region {region!r}, the config "
                                                           f"says {s.region!r} (start-up would refuse: data "
                                                           "residency)")]
            findings.append(Finding("region", OK, f"bucket {bucket!r} is in region {region!r}, the config says "
                                                  f"{s.region!r}"))
            findings.append(Finding("encryption", NOTE, f"bucket {bucket!r}: {await self._bucket_encryption(bucket)}"))
        return findings

    async def retention_problems(self, rules: list[Any]) -> list[str]:
        """What the buckets' lifecycle lacks of the rules the config asks
        for (``storage check``); [] when every rule is there as configured."""
        from gateway.storage.retention import s3_lifecycle_rules, s3_rule_problems

        out: list[str] = []
        for bucket, ours in s3_lifecycle_rules(self.settings, rules).items():
            out += s3_rule_problems(bucket, await self._runner.run(self._lifecycle, bucket), ours)
        return out

    async def _bucket_encryption(self, bucket: str) -> str:
        """The bucket's default encryption, in words (it decides nothing: the
        gateway asks for its own on every object)."""
        try:
            conf = await self._runner.run(self._c.get_bucket_encryption, Bucket=bucket)
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            if code == "ServerSideEncryptionConfigurationNotFoundError":
                return f"no default encryption; every object is sent with SSE {self.settings.encryption}"
            return f"default encryption not readable ({self._error('GetBucketEncryption', bucket, '', e)})"
        rules = conf.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        sse = [r.get("ApplyServerSideEncryptionByDefault", {}) for r in rules]
        if not sse:
            return f"no default encryption; every object is sent with SSE {self.settings.encryption}"
        return "default encryption " + ", ".join(
            x.get("SSEAlgorithm", "?") + (f" with key {x['KMSMasterKeyID']}" if x.get("KMSMasterKeyID") else "")
            for x in sse)

    def encryption_problem(self, extra: Any) -> str:
        """Why an object's reported encryption is not the configured one, or ""."""
        s = self.settings
        have = extra.get("encryption", "")
        if have != s.encryption:
            return (f"the store reports encryption {have or 'none'!r}, the config asks for {s.encryption!r}"
                    + (" (a store that does not report it cannot be shown to apply it)" if not have else ""))
        key = extra.get("kms_key_id", "")
        if s.kms_key_id and not s.kms_key_id.startswith("alias/") and \
                not (key == s.kms_key_id or key.endswith("/" + s.kms_key_id)):
            return f"the store reports KMS key {key or 'none'!r}, the config asks for {s.kms_key_id!r}"
        return ""

    async def apply_retention(self, rules: list[Any], dry_run: bool) -> dict[str, Any]:
        """Write the store's lifecycle rules (``retention.s3_lifecycle_rules``
        of the plan ``rules``) to each bucket, keeping the bucket's other
        rules, and read them back; with ``dry_run`` only show what would be
        written."""
        from gateway.storage.retention import merge_s3_rules, s3_lifecycle_rules

        if self._client is None:
            self._client = await self._runner.run(self._make_client)
        out: dict[str, Any] = {}
        for bucket, ours in s3_lifecycle_rules(self.settings, rules).items():
            existing = await self._runner.run(self._lifecycle, bucket)
            rules = merge_s3_rules(existing, ours)
            if not dry_run:
                try:
                    await self._runner.run(self._c.put_bucket_lifecycle_configuration, Bucket=bucket,
                                           LifecycleConfiguration={"Rules": rules})
                except Exception as e:
                    raise self._error("PutBucketLifecycleConfiguration", bucket, "", e) from None
                rules = await self._runner.run(self._lifecycle, bucket)
            out[bucket] = {"Rules": rules}
        return out

    def _lifecycle(self, bucket: str) -> list[dict[str, Any]]:
        try:
            return list(self._c.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", []))
        except Exception as e:
            if getattr(e, "response", {}).get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise self._error("GetBucketLifecycleConfiguration", bucket, "", e) from None

    # -- create if absent ----------------------------------------------------

    async def create(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        """One PutObject with ``If-None-Match: *`` (AWS S3 since 2024, Ceph
        radosgw 16 and MinIO: 412 PreconditionFailed when the key exists,
        one winner among concurrent creates); never through staging."""
        full = store_key(self.settings.prefix, key)
        self._c  # noqa: B018 - raises when not started
        return await self._runner.run(self._create, full, data, meta)

    def _create(self, full: str, data: bytes, meta: ObjectMeta) -> bool:
        from botocore.exceptions import ClientError

        bucket = self.settings.bucket
        try:
            self._c.put_object(Bucket=bucket, Key=full, Body=data, IfNoneMatch="*",
                               ContentMD5=_b64(hashlib.md5(data, usedforsecurity=False).digest()),
                               **self._object_args(meta, {META_SHA256: hashlib.sha256(data).hexdigest()}))
            return True
        except ClientError as e:
            # 412: the key exists.  409 ConditionalRequestConflict (AWS): a
            # concurrent conditional write to the key is under way; it wins.
            if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise self._error("PutObject If-None-Match", bucket, full, e) from None
        except Exception as e:
            raise self._error("PutObject If-None-Match", bucket, full, e) from None
        # A retry after a lost answer finds its own first attempt.
        try:
            found = self._c.get_object(Bucket=bucket, Key=full)["Body"].read()
        except Exception as e:
            err = self._error("GetObject", bucket, full, e)
            if isinstance(err, ObjectNotFound):
                return False
            raise err from None
        return bool(found == data)

    # -- listing (erase) ----------------------------------------------------

    async def list(self, prefix: str) -> list[str]:
        """The keys (without the store's prefix) of every object under ``prefix``."""
        full = self.settings.prefix + prefix

        def _list() -> list[str]:
            pages = self._c.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=full)
            return [o["Key"][len(self.settings.prefix):] for page in pages for o in page.get("Contents", [])]

        try:
            return await self._runner.run(_list)
        except Exception as e:
            raise self._error("ListObjectsV2", self.settings.bucket, full, e) from None

    # -- reads ------------------------------------------------------------

    async def signed_url(self, key: str, filename: str, ttl: int) -> str | None:
        """A presigned SigV4 GET valid for ``ttl`` seconds (capped at
        ``url_ttl``) whose response carries ``filename`` in its
        Content-Disposition."""
        full = store_key(self.settings.prefix, key)
        expires = max(1, min(ttl, self.settings.url_ttl)) if ttl > 0 else self.settings.url_ttl
        params = {"Bucket": self.settings.bucket, "Key": full,
                  "ResponseContentDisposition": content_disposition(filename or key.rsplit("/", 1)[-1])}
        try:
            return await self._runner.run(self._c.generate_presigned_url, "get_object", Params=params,
                                          ExpiresIn=expires)
        except Exception as e:
            raise self._error("presign GetObject", self.settings.bucket, full, e) from None

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes; raises ObjectNotFound."""
        full = store_key(self.settings.prefix, key)
        try:
            resp = await self._runner.run(self._c.get_object, Bucket=self.settings.bucket, Key=full)
        except Exception as e:
            raise self._error("GetObject", self.settings.bucket, full, e) from None
        body = resp["Body"]
        try:
            while True:
                try:
                    chunk = await self._runner.run(body.read, _READ_CHUNK)
                except Exception as e:
                    raise self._error("GetObject", self.settings.bucket, full, e) from None
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        full = store_key(self.settings.prefix, key)
        try:
            await self._runner.run(self._c.delete_object, Bucket=self.settings.bucket, Key=full)
        except Exception as e:
            raise self._error("DeleteObject", self.settings.bucket, full, e) from None

    async def stat(self, key: str) -> StoredObject | None:
        """Size, type, metadata and the encryption in force (``extra``:
        ``encryption`` from ServerSideEncryption, "" when the store reports
        none; ``kms_key_id``; ``etag``), or None when the object is missing."""
        full = store_key(self.settings.prefix, key)
        try:
            head = await self._runner.run(self._head, self.settings.bucket, full, True)
        except ObjectNotFound:
            return None
        user, internal = read_metadata(head.get("Metadata"))
        return StoredObject(key=key, size=head["ContentLength"], sha256=internal.get(META_SHA256, ""),
                            content_type=head.get("ContentType") or "application/octet-stream",
                            metadata=user, extra=self._extra(head))

    def _extra(self, head: dict[str, Any]) -> dict[str, str]:
        extra = {"encryption": head.get("ServerSideEncryption") or "",
                 "etag": (head.get("ETag") or "").strip('"'),
                 "bucket": self.settings.bucket}
        if head.get("SSEKMSKeyId"):
            extra["kms_key_id"] = head["SSEKMSKeyId"]
        if head.get("ChecksumSHA256"):
            extra["checksum_sha256"] = head["ChecksumSHA256"]
        if head.get("ContentDisposition"):
            extra["content_disposition"] = head["ContentDisposition"]
        return extra
