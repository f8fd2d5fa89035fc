"""Objects as files under a local directory: the embedded default.

Writes go to a temporary file beside the target, are fsynced and renamed, so
an object is visible only when complete.  Metadata sits in a JSON sidecar
(``KEY.meta.json``).  There are no storage URLs: the link endpoint streams
the file through ``open``.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import BinaryIO

from gateway.spool.durable import fsync_dir
from gateway.storage.base import ObjectMeta, ObjectNotFound, StorageError, StoredObject
from gateway.storage.settings import FilesystemStorageSettings

_META = ".meta.json"


READ_SIZE = 1 << 18


def _open_and_read(path: Path) -> tuple[BinaryIO, bytes]:
    f = open(path, "rb")
    try:
        return f, f.read(READ_SIZE)
    except BaseException:
        f.close()
        raise


def _create(tmp: Path) -> BinaryIO:
    """Open ``tmp`` for writing, making its directory; once more if the
    retention sweep removed that directory, found empty, in between."""
    for _ in range(3):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            return open(tmp, "wb")
        except FileNotFoundError:
            continue
    return open(tmp, "wb")


def _through_link(root: Path, prefix: str) -> bool:
    """Whether the directory of ``prefix`` is reached through a symlink
    below its first segment.  A top-level directory (``uploads/``) may be a
    link an operator made on purpose (another disk); a link further down
    was planted, and walking it would list and delete what it points at,
    outside the store."""
    path = root
    for i, part in enumerate(p for p in prefix.strip("/").split("/") if p):
        path = path / part
        if i > 0 and path.is_symlink():
            return True
    return False


class FilesystemStorage:
    """A directory tree as an object store."""

    def __init__(self, name: str, settings: FilesystemStorageSettings, base_dir: Path) -> None:
        self.name = name
        root = Path(settings.path)
        self.root = root if root.is_absolute() else base_dir / root

    def _path(self, key: str) -> Path:
        # Keys are built by the gateway from sanitised parts, but check anyway:
        # nothing may escape the root.
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.endswith(_META):
            raise StorageError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage directory {self.root} is not writable")

    async def close(self) -> None:
        return None

    def _put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        h = hashlib.sha256()
        size = 0
        try:
            with _create(tmp) as f:
                for chunk in chunks:
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            stored = StoredObject(key=key, size=size, sha256=h.hexdigest(), content_type=meta.content_type,
                                  metadata={**meta.metadata, "filename": meta.filename})
            side = path.with_name(path.name + _META)
            side_tmp = side.with_name("." + side.name + ".part")
            side_tmp.write_text(json.dumps({"size": size, "sha256": stored.sha256,
                                            "content_type": meta.content_type,
                                            "metadata": dict(stored.metadata)}))
            os.replace(side_tmp, side)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from e
        except BaseException:
            # The chunks' source failed (an upload cut off, a body too large):
            # leave no partial file behind.
            tmp.unlink(missing_ok=True)
            raise
        return stored

    async def put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        return await asyncio.to_thread(self._put, key, chunks, meta)

    def _create_if_absent(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                # link(2) fails when the name exists and never shows a partial
                # file: the atomic create-if-absent (O_EXCL alone would let a
                # reader see the file before its bytes are written).
                os.link(tmp, path)
            except FileExistsError:
                # A retry of one's own create (a caller's) finds its bytes.
                try:
                    return path.read_bytes() == data
                except FileNotFoundError:
                    return False
            side = path.with_name(path.name + _META)
            side_tmp = side.with_name(f".{side.name}.{os.getpid()}.part")
            side_tmp.write_text(json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                            "content_type": meta.content_type,
                                            "metadata": {**meta.metadata, "filename": meta.filename}}))
            os.replace(side_tmp, side)
            fsync_dir(path.parent)
            return True
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)

    async def create(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        return await asyncio.to_thread(self._create_if_absent, key, data, meta)

    async def signed_url(self, key: str, filename: str, ttl: int) -> str | None:
        return None

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            # Opened and first read in one thread call: a link record, and
            # most attachments a click streams, are one read long.
            f, chunk = await asyncio.to_thread(_open_and_read, path)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        try:
            while chunk:
                yield chunk
                if len(chunk) < READ_SIZE:
                    break  # a short read of a regular file is its end: no hop to learn it
                chunk = await asyncio.to_thread(f.read, READ_SIZE)
        finally:
            f.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def _delete() -> None:
            path.unlink(missing_ok=True)
            path.with_name(path.name + _META).unlink(missing_ok=True)

        await asyncio.to_thread(_delete)

    async def list(self, prefix: str) -> list[str]:
        """The keys of every object under ``prefix`` (sidecars and
        unfinished writes left out)."""
        def _list() -> list[str]:
            base = self.root / prefix.rstrip("/") if prefix.endswith("/") else self.root
            if prefix.endswith("/") and _through_link(self.root, prefix):
                return []
            out = []
            for dirpath, _, files in os.walk(base):
                rel = os.path.relpath(dirpath, self.root)
                for name in files:
                    if name.endswith(_META) or name.startswith("."):
                        continue
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix):
                        out.append(key)
            return sorted(out)

        return await asyncio.to_thread(_list)

    async def prune(self, prefix: str) -> None:
        """Remove the empty directories under ``prefix`` and the prefix's
        own (erase: a directory named after a customer must not outlive
        their files).  A writer that loses its directory makes it again."""
        def _prune() -> None:
            base = self.root / prefix.rstrip("/")
            if _through_link(self.root, prefix):
                return
            for dirpath, _, _ in os.walk(base, topdown=False):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass  # not empty, or gone already

        if prefix.endswith("/") and prefix.strip("/"):
            await asyncio.to_thread(_prune)

    async def stat(self, key: str) -> StoredObject | None:
        path = self._path(key)

        def _stat() -> StoredObject | None:
            try:
                raw = json.loads(path.with_name(path.name + _META).read_text())
                size = path.stat().st_size
            except FileNotFoundError:
                return None
            return StoredObject(key=key, size=size, sha256=raw.get("sha256", ""),
                                content_type=raw.get("content_type", "application/octet-stream"),
                                metadata=raw.get("metadata", {}))

        return await asyncio.to_thread(_stat)
