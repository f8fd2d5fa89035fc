"""From an HTTP request stream to a store's blocking chunk iterator, and back.

A backend's ``put`` consumes a *blocking* iterator in a thread.  An upload
arrives on the event loop.  ``StreamBridge`` reads the body on the loop
(decoding base64 when asked, counting, hashing, keeping the first bytes for
type detection, enforcing the size limit) and hands the chunks over through
a bounded queue, so at most a few chunks of a body are ever in memory and a
slow store slows the client down instead of filling memory.
``blocking_chunks`` does the reverse for reading an object back inside a
``put`` (staging to the secure key).
"""
from __future__ import annotations

import asyncio
import binascii
import hashlib
from collections.abc import AsyncIterator, Iterable, Iterator

from gateway.partfacts import HEAD_BYTES

QUEUE_DEPTH = 4  # chunks in flight between the loop and the store's thread
_END = object()


class BodyTooLarge(Exception):
    """The decoded body passed the configured limit (413)."""


class BadEncoding(Exception):
    """A body declared base64 is not valid base64 (400)."""


class Base64Decoder:
    """Incremental base64: whitespace ignored, any other stray byte an error."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + bytes(data).translate(None, b" \t\r\n")
        n = len(data) // 4 * 4
        self._rest = data[n:]
        try:
            return binascii.a2b_base64(data[:n], strict_mode=True)
        except binascii.Error as e:
            raise BadEncoding(f"invalid base64: {e}") from None

    def finish(self) -> None:
        if self._rest:
            raise BadEncoding("invalid base64: truncated input")


class StreamBridge:
    """Feeds ``chunks()`` (blocking, for a store's thread) from ``source`` (async)."""

    def __init__(self, source: AsyncIterator[bytes], limit: int, base64: bool = False) -> None:
        self._source = source
        self._limit = limit
        self._decoder = Base64Decoder() if base64 else None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_DEPTH)
        self.size = 0
        self.head = b""
        self._sha = hashlib.sha256()
        # Why reading stopped early (too large, bad base64, client gone).
        self.failure: Exception | None = None
        self._task = asyncio.create_task(self._produce())

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    async def _produce(self) -> None:
        try:
            async for raw in self._source:
                data = self._decoder.feed(raw) if self._decoder else bytes(raw)
                if not data:
                    continue
                self.size += len(data)
                if self.size > self._limit:
                    raise BodyTooLarge(f"body larger than {self._limit} bytes")
                self._sha.update(data)
                if len(self.head) < HEAD_BYTES:
                    self.head += data[:HEAD_BYTES - len(self.head)]
                await self._queue.put(data)
            if self._decoder:
                self._decoder.finish()
            await self._queue.put(_END)
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self.failure = e
            await self._queue.put(e)

    def chunks(self) -> Iterator[bytes]:
        """The body's decoded bytes; blocking, for the store's thread only."""
        while True:
            item = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop).result()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    async def close(self) -> None:
        """Stop reading (the store gave up early, or we are done)."""
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)



def blocking_chunks(loop: asyncio.AbstractEventLoop, sources: Iterable[AsyncIterator[bytes]]) -> Iterator[bytes]:
    """The bytes of several async streams in order, read from a worker thread
    by asking the loop for each chunk."""
    for agen in sources:
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(agen.__anext__(), loop).result()  # type: ignore[arg-type]
            except StopAsyncIteration:
                break
