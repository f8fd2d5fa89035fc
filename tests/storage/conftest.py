"""Servers the end-to-end storage modules share: one of each per module
(module scope), started on loopback and stopped after.  test_s3, test_azure
and test_gcs keep their own variants (with environment secrets)."""
from __future__ import annotations

from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config

from tests.servers.azurite import Azurite
from tests.servers.ceph import CephRadosgw
from tests.servers.gcs import GcsEmulator


@pytest.fixture(scope="module")
def ceph() -> Iterator[CephRadosgw]:
    with CephRadosgw() as c:
        yield c


@pytest.fixture(scope="module")
def s3(ceph: CephRadosgw) -> Iterator[Any]:
    """A plain boto3 client, to look at the server behind the gateway's back."""
    client = boto3.client("s3", endpoint_url=ceph.endpoint_url, aws_access_key_id=ceph.access_key,
                          aws_secret_access_key=ceph.secret_key, region_name="us-east-1",
                          config=Config(signature_version="s3v4"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as a:
        yield a


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsEmulator]:
    with GcsEmulator(bucket="attachments") as g:
        yield g
