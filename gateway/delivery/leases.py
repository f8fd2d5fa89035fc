"""Next hops in use: a next hop replaced by a SIGHUP is closed once the
deliveries using it have ended, so its pooled connections do not stay open
to a next hop the config no longer names."""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway import logs
from gateway.delivery import NextHop

log = logs.get("delivery")


class Leases:
    """Counts the deliveries in progress per next hop and closes retired
    ones when the count reaches zero."""

    def __init__(self) -> None:
        self._active: Counter[int] = Counter()  # by the hop's identity
        self._idle: dict[int, asyncio.Event] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def using(self, hop: NextHop) -> AsyncIterator[NextHop]:
        """Hold ``hop`` for one delivery."""
        key = id(hop)
        self._active[key] += 1
        try:
            yield hop
        finally:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
                event = self._idle.pop(key, None)
                if event is not None:
                    event.set()

    def retire(self, hop: NextHop) -> None:
        """Close ``hop`` once no delivery uses it (now, if none does)."""
        task = asyncio.get_running_loop().create_task(self._close_when_idle(hop))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_when_idle(self, hop: NextHop) -> None:
        while self._active[id(hop)]:
            await self._idle.setdefault(id(hop), asyncio.Event()).wait()
        try:
            await hop.close()
        except Exception as e:  # noqa: BLE001 - a connection that fails to close is gone anyway
            log.warning("closing a replaced next hop failed", next_hop=hop.name, error=str(e))
            return
        log.info("replaced next hop closed", next_hop=hop.name)

    async def drain(self) -> None:
        """Wait for the retired hops to be closed."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
