"""Random access to a spooled message file without reading it whole.

The parser and the decoders work on byte offsets into ``message.eml``; this
reads windows with ``pread`` so a 100 MB message never sits in memory, and
untouched regions can later be copied to the output byte for byte.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

WINDOW = 1 << 20  # bytes read at a time when scanning


class Source:
    """A read-only view of a message file by offsets; ``size`` (when given)
    ends the view before the end of the file (a spooled message file carries
    its envelope after the message)."""

    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        if size is not None:
            self.size = min(self.size, size)

    @classmethod
    def from_fd(cls, fd: int) -> Source:
        self = cls.__new__(cls)
        self.path = f"<fd {fd}>"
        self._fd = fd
        self.size = os.fstat(fd).st_size
        return self

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; use only for regions known to be small."""
        end = min(end, self.size)
        if end <= start:
            return b""
        out = os.pread(self._fd, end - start, start)
        while len(out) < end - start:  # pread may return short on some filesystems
            more = os.pread(self._fd, end - start - len(out), start + len(out))
            if not more:
                break
            out += more
        return out

    def iter_range(self, start: int, end: int, window: int = WINDOW) -> Iterator[bytes]:
        """Yield ``[start, end)`` in windows."""
        pos = start
        end = min(end, self.size)
        while pos < end:
            chunk = self.read(pos, min(pos + window, end))
            if not chunk:
                return
            yield chunk
            pos += len(chunk)

    def find(self, needle: bytes, start: int, end: int) -> int:
        """Offset of the first ``needle`` wholly inside ``[start, end)``, or -1."""
        end = min(end, self.size)
        n = len(needle)
        pos = start
        while pos + n <= end:
            stop = min(pos + WINDOW, end)
            window = self.read(pos, stop)
            i = window.find(needle)
            if i >= 0:
                return pos + i
            if stop >= end:
                return -1
            pos = stop - n + 1
        return -1
