"""The spool: where a message lives from "250 queued" until its next hop takes it.

Directory queues in the Postfix manner, one directory per message::

    tmp/ID/         being received (never acknowledged) or being removed
    incoming/ID/    acknowledged, waiting for a worker
    active/ID/      claimed by a worker (which holds ID/lock)
    deferred/ID/    waiting for a retry (state.json says when and why)
    hold/ID/        set aside by an administrator or by the worker
    corrupt/ID/     unreadable envelope; kept, never deleted by the gateway

A message directory holds ``message.eml`` (the bytes as received),
``envelope.json`` (written once at reception), ``state.json`` (attempts,
next attempt, last error: rewritten atomically), and after processing
``rewritten.eml`` and ``result.json``, so a retry never offloads twice.

Every file is written to a temporary name, fsynced and renamed; the
directory is fsynced after every rename.  A directory moves between queues by
one rename, which is atomic, so a crash leaves each message in exactly one
queue.  Whoever works on a message holds an exclusive flock on its ``lock``
file; a lock that can be taken belongs to a dead process, which is how
``recover()`` tells a crashed worker's message from a live one's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

QUEUES = ("incoming", "active", "deferred", "hold", "corrupt")
MESSAGE = "message.eml"
ENVELOPE = "envelope.json"
STATE = "state.json"
REWRITTEN = "rewritten.eml"
RESULT = "result.json"
LOCK = "lock"

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


class SpoolError(Exception):
    """The spool cannot do what was asked (disk full, read-only, missing)."""


class Locked(SpoolError):
    """Another live process holds the message."""


def new_queue_id() -> str:
    """A short, unique, roughly time-ordered queue id such as ``4KX9TQ2M7BCD1F``."""
    n = time.time_ns() // 1000
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    stamp = "".join(reversed(out))
    return stamp + "".join(_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(4))


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class Envelope:
    """The SMTP envelope and reception facts, fixed when the message is queued."""

    queue_id: str
    mail_from: str
    rcpt_tos: list[str]
    route: str
    received_at: float
    client_addr: str = ""
    client_name: str = ""
    helo: str = ""
    size: int = 0
    smtputf8: bool = False
    body_8bit: bool = False
    tls: str = ""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        raw = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class State:
    """Delivery progress, rewritten as a whole at each change."""

    attempts: int = 0
    first_attempt: float = 0.0
    next_attempt: float = 0.0
    last_error: str = ""
    # Recipients still to deliver; empty means "all of the envelope's".
    pending: list[str] = field(default_factory=list)
    # Why a message is on hold.
    hold_reason: str = ""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "State":
        raw = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class Handle:
    """A message directory this process holds the lock on."""

    def __init__(self, spool: "Spool", queue: str, queue_id: str, lock_fd: int) -> None:
        self.spool = spool
        self.queue = queue
        self.queue_id = queue_id
        self._lock_fd = lock_fd

    @property
    def path(self) -> Path:
        return self.spool.root / self.queue / self.queue_id

    def file(self, name: str) -> Path:
        return self.path / name

    def envelope(self) -> Envelope:
        return Envelope.from_json(self.file(ENVELOPE).read_bytes())

    def state(self) -> State:
        try:
            return State.from_json(self.file(STATE).read_bytes())
        except FileNotFoundError:
            return State()

    def save_state(self, state: State) -> None:
        write_atomic(self.file(STATE), state.to_json())

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def move(self, queue: str, durable: bool = True) -> None:
        """Move the message to another queue; ``durable`` makes the move
        survive a power cut (a claim into ``active`` need not: either place
        is recovered the same way)."""
        src, dst = self.path, self.spool.root / queue / self.queue_id
        os.rename(src, dst)
        if durable:
            fsync_dir(dst.parent)
            fsync_dir(src.parent)
        self.queue = queue

    def remove(self) -> None:
        """Delete the message (delivered or given up): rename out of the queues
        first, so a crash mid-delete never leaves half a message in a queue."""
        trash = self.spool.root / "tmp" / f"{self.queue_id}.done"
        os.rename(self.path, trash)
        fsync_dir(trash.parent.parent / self.queue)
        shutil.rmtree(trash, ignore_errors=True)
        self.queue = "tmp"
        self.release()

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _try_lock(path: Path) -> int:
    """Take the message's lock without waiting; raise Locked if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Locked(str(path)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class Reception:
    """A message being received: written to ``tmp/ID/message.eml`` as it arrives.

    Nothing of it is acknowledged until ``commit`` returns, which is when the
    file and every directory entry leading to it are on disk.
    """

    def __init__(self, spool: "Spool") -> None:
        self.spool = spool
        self.queue_id = new_queue_id()
        self.path = spool.root / "tmp" / self.queue_id
        self.size = 0
        self._fd = -1
        self._lock_fd = -1
        os.mkdir(self.path, 0o700)
        try:
            self._lock_fd = _try_lock(self.path / LOCK)
            self._fd = os.open(self.path / MESSAGE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | memoryview) -> None:
        """Append received bytes (blocking: call from a thread for big writes)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(data)

    def commit(self, envelope: Envelope) -> None:
        """Make the message durable and put it in ``incoming`` (blocking)."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        write_atomic(self.path / ENVELOPE, envelope.to_json())
        dst = self.spool.root / "incoming" / self.queue_id
        os.rename(self.path, dst)
        fsync_dir(dst.parent)
        self.path = dst
        os.close(self._lock_fd)
        self._lock_fd = -1

    def abort(self) -> None:
        """Forget a reception that was never acknowledged."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path.parent.name == "tmp":
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class Spool:
    """The queue directories under one root, shared by every gateway process."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def create(self) -> None:
        """Make the queue directories (idempotent)."""
        for q in ("tmp", *QUEUES):
            (self.root / q).mkdir(parents=True, exist_ok=True, mode=0o700)

    def check_writable(self, min_free: int = 0) -> int:
        """Raise SpoolError when the spool cannot take a new message; return
        the bytes free beyond ``min_free``."""
        try:
            st = os.statvfs(self.root)
        except OSError as e:
            raise SpoolError(f"spool {self.root}: {e.strerror}") from None
        if st.f_flag & os.ST_RDONLY:
            raise SpoolError(f"spool {self.root} is read-only")
        free = st.f_bavail * st.f_frsize - min_free
        if free <= 0:
            raise SpoolError(f"spool {self.root} has less than {min_free} bytes free")
        return free

    def receive(self) -> Reception:
        """Start receiving a message (blocking: creates its directory)."""
        try:
            return Reception(self)
        except OSError as e:
            raise SpoolError(f"cannot create a message in {self.root}/tmp: {e.strerror}") from e

    def ids(self, queue: str) -> list[str]:
        """Queue ids in a queue, oldest first (ids sort by time)."""
        try:
            names = os.listdir(self.root / queue)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    def claim(self, queue_id: str, src: str, dst: str) -> Handle:
        """Lock a message and move it from ``src`` to ``dst``; raise Locked when
        another process has it, FileNotFoundError when it is gone."""
        path = self.root / src / queue_id
        if not path.is_dir():
            raise FileNotFoundError(path)
        fd = _try_lock(path / LOCK)
        handle = Handle(self, src, queue_id, fd)
        try:
            if not handle.path.is_dir():  # moved by someone between our check and lock
                raise FileNotFoundError(path)
            if dst != src:
                handle.move(dst, durable=dst != "active")
        except BaseException:
            handle.release()
            raise
        return handle

    def find(self, queue_id: str) -> str | None:
        """Which queue holds ``queue_id``, if any."""
        for q in QUEUES:
            if (self.root / q / queue_id).is_dir():
                return q
        return None

    def recover(self, tmp_min_age: float = 0.0) -> dict[str, int]:
        """Put back what dead processes left behind: on start, and from time
        to time while running (a worker process may die alone).

        Messages in ``active`` whose lock can be taken go back to ``incoming``
        (or ``deferred`` when already processed, so they keep their retry
        state); unacknowledged receptions in ``tmp`` older than
        ``tmp_min_age`` seconds whose lock is free are removed (the age keeps
        a reception that has made its directory but not yet locked it).
        """
        counts = {"requeued": 0, "removed_tmp": 0}
        for qid in self.ids("active"):
            try:
                h = self.claim(qid, "active", "active")
            except (Locked, FileNotFoundError):
                continue
            with h:
                h.move("deferred" if h.has(REWRITTEN) else "incoming")
                counts["requeued"] += 1
        now = time.time()
        for name in self.ids("tmp"):
            path = self.root / "tmp" / name
            try:
                if tmp_min_age and now - path.stat().st_mtime < tmp_min_age:
                    continue
            except FileNotFoundError:
                continue
            try:
                fd = _try_lock(path / LOCK) if (path / LOCK).exists() else -1
            except Locked:
                continue
            try:
                shutil.rmtree(path, ignore_errors=True)
                counts["removed_tmp"] += 1
            finally:
                if fd >= 0:
                    os.close(fd)
        return counts

    def entries(self, queues: tuple[str, ...] = QUEUES) -> Iterator[dict[str, Any]]:
        """What ``queue list`` shows: one dict per message."""
        for q in queues:
            for qid in self.ids(q):
                path = self.root / q / qid
                try:
                    env = Envelope.from_json((path / ENVELOPE).read_bytes())
                except (OSError, ValueError, TypeError):
                    yield {"queue_id": qid, "queue": q, "error": "unreadable envelope"}
                    continue
                try:
                    state = State.from_json((path / STATE).read_bytes())
                except (OSError, ValueError, TypeError):
                    state = State()
                yield {
                    "queue_id": qid,
                    "queue": q,
                    "mail_from": env.mail_from,
                    "rcpt_tos": env.rcpt_tos,
                    "route": env.route,
                    "received_at": env.received_at,
                    "size": env.size,
                    "attempts": state.attempts,
                    "next_attempt": state.next_attempt or None,
                    "last_error": state.last_error or None,
                    "hold_reason": state.hold_reason or None,
                    "processed": (path / REWRITTEN).exists(),
                }

    def counts(self) -> dict[str, int]:
        """Messages per queue, for metrics and ``queue list``."""
        return {q: len(self.ids(q)) for q in QUEUES}


def is_disk_full(err: BaseException) -> bool:
    """Whether an error means the spool cannot take more (452, not 451)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return True
        err = err.__cause__
    return False


@contextlib.contextmanager
def suppress_missing() -> Iterator[None]:
    with contextlib.suppress(FileNotFoundError):
        yield
