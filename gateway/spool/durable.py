"""Durable writes: a file or a rename is on disk before anything says so.

The one home of the rules rule 1 rests on: write to a temporary name,
fsync the file, rename, fsync the directory.  The spool, the delivery
writers (Maildir), the rewriter and the filesystem store use these.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file."""
    write_chunks_atomic(path, (data,))


def write_chunks_atomic(path: str | Path, chunks: Iterable[bytes]) -> int:
    """Write the bytes of ``chunks`` to ``path`` so that a crash leaves the
    old file or the whole new one: a temporary name, fsync, rename, fsync
    of the directory.  Returns the size written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            size += len(view)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size


def remove_tree(path: Path) -> None:
    """Remove a message directory (its files, then itself), or a stray file;
    whatever is in the way (a subdirectory) falls back to rmtree.  A
    symlink is removed itself: listing through it would delete the files
    of whatever directory it points at, outside the spool."""
    if os.path.islink(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    try:
        names = os.listdir(path)
    except NotADirectoryError:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except FileNotFoundError:
        return
    try:
        for name in names:
            os.unlink(path / name)
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def is_disk_full(err: BaseException | None) -> bool:
    """Whether an error means the spool cannot take more (452, not 451)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return True
        err = err.__cause__
    return False


@contextlib.contextmanager
def suppress_missing() -> Iterator[None]:
    """Ignore a file that is already gone."""
    with contextlib.suppress(FileNotFoundError):
        yield
