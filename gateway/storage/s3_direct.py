"""Multipart uploads that a browser sends straight to S3 with presigned part URLs.

The customer upload page sends big files without the gateway in the data
path: the gateway creates a multipart upload at a staging key, hands the page
one presigned UploadPart URL per part when it asks (valid for minutes), and
when every part is in, lists the parts (ListParts: the store's word, not the
page's) and completes the upload; the completed object is copied to its
secure key and judged there like any upload (gateway/uploads.py).  A dropped connection costs at most the part in
flight: the page asks which parts the store holds and sends only the rest.

Kept beside ``s3.py`` rather than in it: the storage protocol stays five
operations, and only the page needs these; they use the S3 backend's client,
threads and error mapping.

A URL may bind the part's MD5 and SHA-256 (``Content-MD5`` and
``x-amz-checksum-sha256`` are then signed headers the browser must send with
those values; a changed value is a 403).  Every S3 store refuses a part
whose bytes do not match its Content-MD5 (400 BadDigest); AWS S3 also checks
the SHA-256, Ceph 16 (which predates S3's additional checksums) accepts a
part whose bytes do not match it and does not report it in ListParts.  The browser's PUT is cross-origin, so the
bucket needs a CORS rule allowing PUT from the gateway's origin (see
docs/CONFIG.md, ``[upload]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage, StorageError
from gateway.storage.cloudutil import store_key
from gateway.storage.s3 import S3Storage

# S3's smallest part (every part but the last) and its most parts per upload.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000


@dataclass(frozen=True)
class Part:
    """A part the store holds (ListParts)."""

    number: int  # 1-based, as S3 counts
    size: int
    etag: str


def part_size(wanted: int, size: int) -> int:
    """The part size for a file of ``size`` bytes: ``wanted``, raised to
    S3's minimum and to what keeps the upload within 10,000 parts."""
    return max(wanted, MIN_PART_SIZE, -(-size // MAX_PARTS))


def direct_uploads(store: Storage) -> S3DirectUploads | None:
    """Presigned part uploads for ``store``, or None when its backend has none."""
    return S3DirectUploads(store) if isinstance(store, S3Storage) else None


class S3DirectUploads:
    """CreateMultipartUpload, presigned UploadPart, ListParts, Complete, Abort."""

    def __init__(self, store: S3Storage) -> None:
        self.store = store
        self.bucket = store.settings.bucket

    def _key(self, key: str) -> str:
        return store_key(self.store.settings.prefix, key)

    async def _call(self, op: str, key: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return await self.store._runner.run(fn, Bucket=self.bucket, Key=self._key(key), **kwargs)
        except Exception as e:
            raise self.store._error(op, self.bucket, self._key(key), e) from None

    async def create(self, key: str, meta: ObjectMeta) -> str:
        """Start a multipart upload at ``key`` (encrypted as every object); its id."""
        c = self.store._c
        resp = await self._call("CreateMultipartUpload", key, c.create_multipart_upload,
                                ContentType=meta.content_type or "application/octet-stream",
                                **self.store._sse_args())
        return str(resp["UploadId"])

    async def part_url(self, key: str, upload_id: str, number: int, ttl: int, *, md5_b64: str = "",
                       sha256_b64: str = "") -> tuple[str, dict[str, str]]:
        """A presigned PUT for part ``number`` (1-based) valid ``ttl``
        seconds, and the headers the browser must send with it (the
        checksums given, which the signature then covers)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "UploadId": upload_id,
                                  "PartNumber": number}
        headers = {}
        if md5_b64:
            params["ContentMD5"] = headers["Content-MD5"] = md5_b64
        if sha256_b64:
            params["ChecksumSHA256"] = headers["x-amz-checksum-sha256"] = sha256_b64
        try:
            url = await self.store._runner.run(self.store._c.generate_presigned_url, "upload_part", Params=params,
                                               ExpiresIn=ttl)
        except Exception as e:
            raise self.store._error("presign UploadPart", self.bucket, self._key(key), e) from None
        return url, headers

    async def parts(self, key: str, upload_id: str) -> list[Part]:
        """The parts the store holds; ObjectNotFound when the upload is gone
        (completed or aborted)."""
        c = self.store._c
        out: list[Part] = []
        marker = 0
        while True:
            try:
                resp = await self._call("ListParts", key, c.list_parts, UploadId=upload_id,
                                        PartNumberMarker=marker)
            except StorageError as e:
                if "NoSuchUpload" in str(e) or "NoSuchKey" in str(e):
                    raise ObjectNotFound(f"multipart upload {upload_id} of {key} is gone") from None
                raise
            out += [Part(p["PartNumber"], p["Size"], p["ETag"]) for p in resp.get("Parts", [])]
            if not resp.get("IsTruncated"):
                return out
            marker = resp["NextPartNumberMarker"]

    async def complete(self, key: str, upload_id: str, parts: list[Part]) -> int:
        """Complete the upload from ``parts``; the object's size as the store reports it."""
        c = self.store._c
        await self._call("CompleteMultipartUpload", key, c.complete_multipart_upload, UploadId=upload_id,
                         MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]})
        head = await self._call("HeadObject", key, c.head_object)
        return int(head["ContentLength"])

    async def abort(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; an upload already gone is not an error."""
        try:
            await self._call("AbortMultipartUpload", key, self.store._c.abort_multipart_upload,
                             UploadId=upload_id)
        except StorageError as e:
            if "NoSuchUpload" not in str(e) and "NoSuchKey" not in str(e):
                raise

    async def origin(self) -> str:
        """The scheme://host[:port] the browser sends parts to (for the page's CSP)."""
        url, _ = await self.part_url("staging/origin", "x", 1, 60)
        u = urlsplit(url)
        return f"{u.scheme}://{u.netloc}"
