"""Blocking work from many tasks, done in as few thread calls as possible.

Each hop from the event loop to a thread and back costs a wake-up, and
every blocking call made in the thread hands the GIL back and forth; under
load, for a small message, that costs more than the work itself.  A
``Batch`` runs one thread call at a time: whatever is submitted while it
runs waits for the next call, which takes all of it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batch(Generic[T, R]):
    """Items submitted by many tasks, handed to ``run`` in a thread a list
    at a time; ``run`` returns one result or exception per item, in order."""

    def __init__(self, run: Callable[[list[T]], list[R | BaseException]],
                 abandoned: Callable[[T, R], None] | None = None) -> None:
        self._run_batch = run
        # What to do with the result of an item whose task went away (was
        # cancelled) while its batch ran: it would otherwise be dropped.
        self._abandoned = abandoned
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        # Running while there is something pending (held: the loop keeps
        # only a weak reference to a task).
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Run ``item`` in the next batch; its result, or raise its exception."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, done))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        # Ends when nothing is pending (no await between that test and the
        # end, so a submit meanwhile sees the task still running or done).
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._run_batch, [item for item, _ in batch])
            except asyncio.CancelledError:  # shutting down
                for _, done in batch:
                    done.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - each task answers for its own item
                results = [e] * len(batch)
            for (item, done), result in zip(batch, results, strict=True):
                if done.done():
                    if self._abandoned is not None and not isinstance(result, BaseException):
                        self._abandoned(item, result)
                elif isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)


def each(calls: list[Callable[[], R]]) -> list[R | BaseException]:
    """A ``Batch`` runner for plain callables: call each, keep its result or error."""
    results: list[R | BaseException] = []
    for call in calls:
        try:
            results.append(call())
        except Exception as e:  # noqa: BLE001 - handed back to the caller's task
            results.append(e)
    return results
