"""Fixtures shared by the suite: a real gateway process and a real SMTP sink."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import GatewayProcess, SmtpSink


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
