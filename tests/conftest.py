"""Fixtures shared by the suite: a real gateway process, a real SMTP sink,
and (one per test module that asks) a one-node Ceph cluster whose radosgw
is a real S3 server, with a boto3 client of its test user."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness import GatewayProcess, SmtpSink
from tests.hostile_messages import RawSink
from tests.servers.ceph import CephRadosgw


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """An SMTP next hop on loopback that records what it receives."""
    s = SmtpSink().start()
    yield s
    s.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """The embedded default shape (Maildir outbox, filesystem storage) on
    loopback ports in a temporary directory."""
    with GatewayProcess(tmp_path) as gw:
        yield gw


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[callable]:
    """Build a gateway with a custom route or config; stopped after the test."""
    made: list[GatewayProcess] = []

    def make(start: bool = True, **kwargs: object) -> GatewayProcess:
        sub = tmp_path / f"gw{len(made)}"
        sub.mkdir(exist_ok=True)
        gw = GatewayProcess(sub, **kwargs)  # type: ignore[arg-type]
        made.append(gw)
        return gw.start() if start else gw

    yield make
    for gw in made:
        gw.stop()


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephRadosgw]:
    """One Ceph cluster with radosgw for the whole run (it takes 13-16 s to
    start); every test makes a bucket of its own.  2 GiB of memstore: the
    modules' uploads add up to several hundred MB."""
    with CephRadosgw(memstore_bytes=2 << 30) as c:
        yield c


@pytest.fixture(scope="module")
def s3(ceph: CephRadosgw) -> Iterator[Any]:
    client = ceph.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def raw_sink() -> Iterator[RawSink]:
    """A raw SMTP next hop that keeps the bytes exactly as they came over
    the wire (tests/hostile_messages.py), one per test module."""
    s = RawSink().start()
    yield s
    s.stop()
