"""Object storage backends behind one small protocol (see ``base``).

``build`` maps a ``[storage.NAME]`` table to its backend; each backend is one
module, imported only when a config uses it, so a deployment on the
filesystem needs none of the cloud SDKs.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage, StorageError, StoredObject

__all__ = ["ObjectMeta", "ObjectNotFound", "Storage", "StorageError", "StoredObject", "build"]

# backend name in the config -> "module:Class"
BACKENDS = {
    "filesystem": "gateway.storage.filesystem:FilesystemStorage",
    "s3": "gateway.storage.s3:S3Storage",
    "azure": "gateway.storage.azure:AzureBlobStorage",
    "gcs": "gateway.storage.gcs:GcsStorage",
}


def build(name: str, settings: object, base_dir: Path) -> Storage:
    """Construct the backend a ``[storage.NAME]`` table asks for."""
    module, _, cls = BACKENDS[settings.backend].partition(":")  # type: ignore[attr-defined]
    backend = getattr(importlib.import_module(module), cls)
    return backend(name, settings, base_dir)
