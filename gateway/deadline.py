"""A deadline that moves often, kept by one event-loop timer.

An SMTP session moves its idle deadline at every command, and a delivery at
every reply it waits for.  Cancelling and re-arming a timer each time costs
more than the work it guards (and a cancelled timer stays in the loop's heap
until it is due); here a move is a float store, and the one timer, when it
fires before the deadline, re-arms itself for it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """Call ``expired`` once the loop's clock passes the deadline last set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], None]) -> None:
        self._loop = loop
        self._expired = expired
        self._at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def set(self, seconds: float) -> None:
        """The deadline is ``seconds`` from now (earlier or later than before)."""
        at = self._loop.time() + seconds
        self._at = at
        timer = self._timer
        if timer is None or at < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(at, self._fire)

    def cancel(self) -> None:
        """No call after all (until the next ``set``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        if self._loop.time() < self._at:
            self._timer = self._loop.call_at(self._at, self._fire)
        else:
            self._expired()
