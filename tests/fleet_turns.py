"""A node's periodic sweep, stood in for: ``python -m tests.fleet_turns
CONFIG STORE NAME INTERVAL SECONDS OUT`` runs ``gateway.fleet.Periodic``
on the store a gateway config names for ``SECONDS``, with a job that
appends "<pid> <slot>" to ``OUT``.  Several of these over one store show
whether a sweep runs once per interval across the fleet (tests/test_fleet.py)."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from gateway import config, fleet, storage


async def main(config_path: str, store_name: str, name: str, interval: float, seconds: float, out: str) -> None:
    cfg = config.load(config_path)
    store = storage.build(store_name, cfg.storage[store_name], Path(cfg.base_dir))
    await store.start()
    periodic: fleet.Periodic

    async def job() -> None:
        # One write with O_APPEND: lines from several processes never interleave.
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()} {periodic.slot}\n".encode())
        finally:
            os.close(fd)

    periodic = fleet.Periodic(name, interval, store, job)
    periodic.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await periodic.stop()
        await store.close()


if __name__ == "__main__":
    c, s, n, i, secs, o = sys.argv[1:7]
    asyncio.run(main(c, s, n, float(i), float(secs), o))
