"""The fleet's agreements through a shared store, on the in-memory store:
the auto-reply claim per sender per interval and the turn per interval.
The same code against real radosgw and real gateway processes is in
tests/test_fleet.py."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from gateway import autoreply, fleet
from gateway.storage.base import ObjectMeta, StorageError, StoredObject
from tests.unit.memory import MemoryStore

INTERVAL = 100


def test_one_claim_per_slot_and_none_closer_than_the_interval_across_a_slot_boundary() -> None:
    async def go() -> None:
        rates = autoreply.SharedRateStore(MemoryStore())
        a = "Customer@Example.net"
        assert await rates.claim(a, INTERVAL, now=1010) == autoreply.SharedRateStore.key(a, 10)
        assert await rates.claim(a.lower(), INTERVAL, now=1090) is None   # same slot
        assert await rates.claim(a, INTERVAL, now=1105) is None            # next slot, 95 s later
        assert await rates.claim(a, INTERVAL, now=1111) is not None        # next slot, 101 s later
        assert await rates.claim("other@example.net", INTERVAL, now=1111) is not None
    asyncio.run(go())


def test_a_hold_from_the_next_slot_stops_a_late_claim_in_the_previous_one() -> None:
    async def go() -> None:
        rates = autoreply.SharedRateStore(MemoryStore())
        a = "customer@example.net"
        # A node in slot 11 got there first; a node whose clock is still in slot 10 loses.
        assert await rates.claim(a, INTERVAL, now=1101) is not None
        assert await rates.claim(a, INTERVAL, now=1099) is None
    asyncio.run(go())


def test_a_released_claim_lets_the_next_reply_go() -> None:
    async def go() -> None:
        rates = autoreply.SharedRateStore(MemoryStore())
        a = "customer@example.net"
        key = await rates.claim(a, INTERVAL, now=1010)
        assert key is not None
        await rates.release(key)
        assert await rates.claim(a, INTERVAL, now=1020) is not None
    asyncio.run(go())


class DownStore(MemoryStore):
    """A store that does not answer."""

    async def create(self, key: str, data: bytes, meta: ObjectMeta) -> bool:
        raise StorageError("connection refused")

    async def put(self, key: str, chunks: Iterable[bytes], meta: ObjectMeta) -> StoredObject:
        raise StorageError("connection refused")

    async def open(self, key: str) -> AsyncIterator[bytes]:
        raise StorageError("connection refused")
        yield b""


def test_an_unavailable_store_falls_back_to_the_spool_files_and_the_reply_still_goes(tmp_path: Path) -> None:
    async def go() -> None:
        rates = autoreply.Rates(autoreply.RateStore(tmp_path / "autoreply"), {"cloud": DownStore("cloud")})
        first = await rates.claim("cloud", "customer@example.net", INTERVAL)
        assert first is not None and first.key is None
        # The limit still holds on this node.
        assert await rates.claim("cloud", "customer@example.net", INTERVAL) is None
        await rates.release(first)
        assert await rates.claim("cloud", "customer@example.net", INTERVAL) is not None
    asyncio.run(go())


def test_one_turn_per_interval_however_many_nodes_try() -> None:
    async def go() -> None:
        store = MemoryStore()
        won = [await fleet.take_turn(store, "retention", 60, now=6000 + i) for i in range(5)]
        assert won == [100, None, None, None, None]
        assert await fleet.take_turn(store, "retention", 60, now=6060) == 101
        assert await fleet.take_turn(store, "retention", 60, now=6120) == 102
        # The winner deletes the turn of two intervals before.
        assert sorted(store.under(fleet.PREFIX)) == ["leases/retention/101", "leases/retention/102"]
        runs: list[int] = []

        async def job() -> int:
            runs.append(1)
            return len(runs)

        nodes = [fleet.Periodic("sweep", 60, store, job) for _ in range(3)]
        assert [await n.run_once(now=7201) for n in nodes] == [True, False, False]
        assert runs == [1]
    asyncio.run(go())


def test_the_filesystem_store_creates_if_absent(tmp_path: Path) -> None:
    from gateway.storage.filesystem import FilesystemStorage
    from gateway.storage.settings import FilesystemStorageSettings
    from tests.storage.helpers import check_create

    store = FilesystemStorage("local", FilesystemStorageSettings(backend="filesystem", path=str(tmp_path)), tmp_path)
    asyncio.run(store.start())
    asyncio.run(check_create(store))
    assert not [p for p in tmp_path.rglob(".*.part")]  # no temporary file left
