"""Servers the end-to-end storage modules share: one of each per module
(module scope), started on loopback and stopped after (radosgw's ``ceph``
and ``s3`` are in tests/conftest.py, for the upload page's tests too).
test_s3, test_azure and test_gcs keep their own variants (with environment
secrets)."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.servers.azurite import Azurite
from tests.servers.gcs import GcsEmulator


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as a:
        yield a


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsEmulator]:
    with GcsEmulator(bucket="attachments") as g:
        yield g
