"""The spool: where a message lives from "250 queued" until its next hop takes it.

Directory queues in the Postfix manner, one directory per message::

    tmp/ID/         being received (never acknowledged) or being removed
    incoming/ID/    acknowledged, waiting for a worker
    active/ID/      claimed by a worker (which holds ID/lock)
    deferred/ID/    waiting for a retry (state.json says when and why)
    hold/ID/        set aside by an administrator or by the worker
    corrupt/ID/     unreadable envelope; kept, never deleted by the gateway

A message directory holds ``message.eml``: the bytes as received, then the
envelope (JSON) in a fixed framing at its end (``ENVELOPE_FOOTER``), so a
reception creates one file and fsyncs it once; ``state.json`` (attempts,
next attempt, last error: rewritten atomically); and after processing
``rewritten.eml`` and ``result.json``, so a retry never offloads twice.  A
directory from before the framing has an ``envelope.json`` beside a bare
``message.eml``, and is read as such.  Read the message through
``message_source()`` (or ``Handle.message()``), which stops before the
envelope.

Every file is written to a temporary name, fsynced and renamed (the message
file is written in place: its whole directory is still in ``tmp/`` and is
renamed into ``incoming/`` once the file and the directory are fsynced);
the directory is fsynced after every rename.  A directory moves between queues by
one rename, which is atomic, so a crash leaves each message in exactly one
queue.

A delivered message's directory is not deleted but emptied (its
``message.eml`` truncated) and parked in ``.free/``, and the next reception
of the same process renames it into ``tmp/``: reusing the directory and the
file saves creating two inodes per message, which on ext4 costs more than
anything else the spool does (the allocator scans for recently freed
inodes).  ``.free/`` holds no mail; ``recover()`` at start empties it.

Whoever works on a message holds an exclusive flock on its directory,
from the moment it appears in ``tmp/`` until it is parked in ``.free/`` or
gone; a lock that can be taken belongs to no live process's work, which is
how ``recover()`` tells a crashed worker's message from a live one's.  An
entry in ``tmp/`` carries its owner's pid in its name (``ID.PID`` while
received, ``ID.PID.done`` while removed), so a recovery can say whose it
was and whether that process is still alive.
"""
from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.mime.source import Source
from gateway.spool.durable import fsync_dir, remove_tree, write_atomic
from gateway.spool.envelope import Envelope, State, new_queue_id

QUEUES = ("incoming", "active", "deferred", "hold", "corrupt")
MESSAGE = "message.eml"
ENVELOPE = "envelope.json"
STATE = "state.json"
REWRITTEN = "rewritten.eml"
RESULT = "result.json"
FREE = ".free"
# Parked directories per process: enough for a burst of receptions.
FREE_MAX = 256
# The end of message.eml: b"\n", the envelope JSON's length in 10 digits, then
# this; the JSON is just before it.  A message received over SMTP ends in
# CRLF, so its own bytes never end like this (bare LF after "v1").
ENVELOPE_FOOTER = b" envelope v1\n"
_FOOTER_SIZE = 1 + 10 + len(ENVELOPE_FOOTER)
# The largest pid Linux hands out (pid_max is at most 2**22).
_PID_MAX = 1 << 22



@dataclass
class Found:
    """One entry ``Spool.recover()`` took back or removed, and why."""

    queue: str
    name: str
    # Seconds since it came into its queue (its ctime).
    age: float
    # The process that put it there, when its name says (entries in tmp/).
    owner_pid: int | None
    owner_alive: bool | None
    action: str
    reason: str

    @property
    def entry(self) -> str:
        """Where it was, relative to the spool: ``tmp/ID.PID``."""
        return f"{self.queue}/{self.name}"

    def fields(self) -> dict[str, Any]:
        """For a log line."""
        return {"entry": self.entry, "age_s": round(self.age, 1), "owner_pid": self.owner_pid,
                "owner_alive": self.owner_alive, "action": self.action, "reason": self.reason}


@dataclass
class Recovery:
    """What one ``Spool.recover()`` found."""

    found: list[Found] = field(default_factory=list)

    @property
    def requeued(self) -> int:
        return sum(1 for f in self.found if f.queue == "active")

    @property
    def removed_tmp(self) -> int:
        return sum(1 for f in self.found if f.queue == "tmp")

    def counts(self) -> dict[str, int]:
        return {"requeued": self.requeued, "removed_tmp": self.removed_tmp}

    def __bool__(self) -> bool:
        return bool(self.found)


def _age(path: str | Path) -> float:
    try:
        return max(0.0, time.time() - os.stat(path).st_ctime)
    except OSError:
        return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def _tmp_finding(name: str, age: float) -> Found:
    """What a removed ``tmp/`` entry was, from its name (``ID.PID`` a
    reception, ``ID.PID.done`` a removal; older or foreign names say less)."""
    parts = name.split(".")
    kind = "a removal" if parts[-1] == "done" else "a reception (never acknowledged)"
    # Only what a pid can be (ASCII digits, within pid_max's range): a name
    # made by hand must not stop recovery (kill(2) overflows, int() refuses
    # other Unicode digits) nor signal a process group (0).
    pid = int(parts[1]) if len(parts) > 1 and re.fullmatch(r"[1-9][0-9]{0,9}", parts[1]) else None
    if pid is not None and pid > _PID_MAX:
        pid = None
    if pid is None:
        return Found("tmp", name, age, None, None, "removed",
                     f"{kind} whose lock no process holds; its name does not say whose it was")
    alive = _pid_alive(pid)
    if not alive:
        why = f"{kind} of pid {pid}, which is no longer running: it stopped before finishing it"
    elif pid == os.getpid():
        why = f"{kind} of this process (pid {pid}, alive), left unlocked: it let it go without removing it"
    else:
        why = (f"{kind} of pid {pid}, which is alive but no longer holds its lock: "
               "it let it go without removing it (or the pid was reused)")
    return Found("tmp", name, age, pid, alive, "removed", why)


class SpoolError(Exception):
    """The spool cannot do what was asked (disk full, read-only, missing)."""


class Locked(SpoolError):
    """Another live process holds the message."""


class Handle:
    """A message directory this process holds the lock on."""

    def __init__(self, spool: Spool, queue: str, queue_id: str, lock_fd: int) -> None:
        self.spool = spool
        self.queue = queue
        self.queue_id = queue_id
        self._lock_fd = lock_fd
        self._message_size: int | None = None

    @property
    def path(self) -> Path:
        return Path(self._dir)

    @property
    def _dir(self) -> str:
        # Strings, not Paths, on the per-message path: building and
        # formatting Path objects was a tenth of the spool's CPU.
        return f"{self.spool.root_str}/{self.queue}/{self.queue_id}"

    def file(self, name: str) -> Path:
        return Path(f"{self._dir}/{name}")

    def envelope(self) -> Envelope:
        envelope, self._message_size = read_envelope(self._dir)
        return envelope

    @property
    def message_size(self) -> int:
        """Bytes of the message as received (the envelope after them excluded)."""
        if self._message_size is None:
            self.envelope()
        assert self._message_size is not None
        return self._message_size

    def message(self) -> Source:
        """The message as received (without the envelope after it)."""
        return Source(f"{self._dir}/{MESSAGE}", size=self.message_size)

    def state(self) -> State:
        try:
            with open(f"{self._dir}/{STATE}", "rb") as f:
                return State.from_json(f.read())
        except FileNotFoundError:
            return State()

    def save_state(self, state: State) -> None:
        write_atomic(self.file(STATE), state.to_json())

    def has(self, name: str) -> bool:
        return os.path.exists(f"{self._dir}/{name}")

    def move(self, queue: str, durable: bool = True) -> None:
        """Move the message to another queue; ``durable`` makes the move
        survive a power cut (a claim into ``active`` need not: either place
        is recovered the same way)."""
        root = self.spool.root_str
        os.rename(self._dir, f"{root}/{queue}/{self.queue_id}")
        if durable:
            fsync_dir(f"{root}/{queue}")
            fsync_dir(f"{root}/{self.queue}")
        self.queue = queue

    def remove(self) -> None:
        """Delete the message (delivered or given up): rename out of the queues
        first, so a crash mid-delete never leaves half a message in a queue;
        then empty its directory for a later reception (``.free/``)."""
        root = self.spool.root_str
        trash = f"{root}/tmp/{self.queue_id}.{os.getpid()}.done"
        os.rename(self._dir, trash)
        fsync_dir(f"{root}/{self.queue}")
        self.queue = "tmp"
        # Still locked until it is parked or gone: unlocked in tmp/, any
        # process's recover() would take it for a dead process's leftover
        # (a reused directory keeps an old mtime, so no age protects it).
        lock_fd, self._lock_fd = self._lock_fd, -1
        self.spool._recycle(trash, self.queue_id, lock_fd)

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _try_lock(path: str | Path) -> int:
    """Take the lock of the message directory ``path`` (an flock on the
    directory itself: it follows the directory from queue to queue) without
    waiting; raise Locked if it is held."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
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
    file (message and envelope) and every directory entry leading to it are
    on disk: one file fsync and two directory fsyncs.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.queue_id = new_queue_id()
        # The owner's pid in the name: recover() says whose it was.
        self._tmp = f"{spool.root_str}/tmp/{self.queue_id}.{os.getpid()}"
        self._where = self._tmp
        self.size = 0
        self._fd = -1
        self._lock_fd = spool._reuse(self._tmp)
        try:
            if self._lock_fd < 0:
                os.mkdir(self._tmp, 0o700)
                self._lock_fd = _try_lock(self._tmp)
            # O_TRUNC: a reused directory's message.eml is already empty,
            # unless a crash came between its rename and its truncation.
            self._fd = os.open(f"{self._tmp}/{MESSAGE}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except BaseException:
            self.abort()
            raise

    @property
    def path(self) -> Path:
        """The message's directory: in ``tmp/`` until committed, then in ``incoming/``."""
        return Path(self._where)

    def write(self, data: bytes | memoryview) -> None:
        """Append received bytes (blocking: call from a thread for big writes)."""
        self._write(data)
        self.size += len(data)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def commit(self, envelope: Envelope, keep: bool = False) -> Handle | None:
        """Make the message durable and put it in ``incoming`` (blocking).

        With ``keep``, put it in ``active`` instead and return it still
        locked, for this process's worker to take without claiming it (a
        rename and a thread call fewer); should the process die first, the
        lock goes with it and ``recover()`` moves it to ``incoming``.
        """
        [result] = commit_all([(self, envelope, keep)])
        if isinstance(result, OSError):
            raise result
        return result

    def _seal(self, envelope: Envelope, keep: bool) -> str:
        """Everything of a commit but the fsync of the queue directory it
        lands in, which is returned (``commit_all`` does one per batch)."""
        data = envelope.to_json()
        self._write(b"%s\n%010d%s" % (data, len(data), ENVELOPE_FOOTER))
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        fsync_dir(self._tmp)
        where = f"{self.spool.root_str}/{'active' if keep else 'incoming'}"
        os.rename(self._tmp, f"{where}/{self.queue_id}")
        self._where = f"{where}/{self.queue_id}"
        return where

    def _settle(self, keep: bool) -> Handle | None:
        lock_fd, self._lock_fd = self._lock_fd, -1
        if not keep:
            os.close(lock_fd)
            return None
        handle = Handle(self.spool, "active", self.queue_id, lock_fd)
        handle._message_size = self.size
        return handle

    def abort(self) -> None:
        """Forget a reception that was never acknowledged."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._where == self._tmp:
            remove_tree(Path(self._tmp))
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class Spool:
    """The queue directories under one root, shared by every gateway process."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root_str = str(self.root)
        # Directories this process parked in .free/ (list.append and
        # list.pop are atomic, so threads share it without a lock).
        self._free: list[str] = []

    def create(self) -> None:
        """Make the queue directories (idempotent)."""
        for q in ("tmp", *QUEUES, FREE):
            (self.root / q).mkdir(parents=True, exist_ok=True, mode=0o700)

    def _recycle(self, path: str, name: str, lock_fd: int) -> None:
        """Empty a removed message's directory ``path`` and park it in
        ``.free/`` for ``_reuse``; remove it when that cannot be done.
        ``lock_fd`` (its lock) is released once it has left ``tmp/``."""
        try:
            if len(self._free) < FREE_MAX:
                try:
                    names = os.listdir(path)
                    for n in names:
                        if n != MESSAGE:
                            os.unlink(f"{path}/{n}")
                    if MESSAGE in names:
                        os.truncate(f"{path}/{MESSAGE}", 0)
                    parked = f"{self.root_str}/{FREE}/{name}"
                    os.rename(path, parked)
                    # Unlocked before it is offered: the next reception
                    # locks it itself (a second lock of this process's
                    # would be refused while this one is held).
                    if lock_fd >= 0:
                        os.close(lock_fd)
                    lock_fd = -1
                    self._free.append(parked)
                    return
                except OSError:
                    pass  # a subdirectory, no .free/ (an old spool), removed meanwhile
            remove_tree(Path(path))
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)

    def _reuse(self, dst: str) -> int:
        """Move a parked directory to ``dst`` locked; its lock fd, or -1
        when there is none to take (the caller makes a new one)."""
        while self._free:
            try:
                parked = self._free.pop()
            except IndexError:  # another thread took the last one
                return -1
            try:
                # Locked before the rename, so recover() never sees it in
                # tmp/ unlocked.
                fd = _try_lock(parked)
            except (Locked, OSError):
                # Held a moment by another process's claim that lost a
                # race for the message it was; gone (an operator). Left
                # for the next start's recover().
                continue
            try:
                os.rename(parked, dst)
            except OSError:
                os.close(fd)
                continue
            return fd
        return -1

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
        try:
            fd = _try_lock(path)
        except NotADirectoryError:
            raise FileNotFoundError(path) from None
        handle = Handle(self, src, queue_id, fd)
        try:
            try:
                moved = os.stat(path).st_ino != os.fstat(fd).st_ino
            except FileNotFoundError:
                moved = True
            if moved:  # moved by someone between our open and lock
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

    def recover(self, tmp_min_age: float = 0.0) -> Recovery:
        """Put back what dead processes left behind: on start, and from time
        to time while running (a worker process may die alone).

        Messages in ``active`` whose lock can be taken go back to ``incoming``
        (or ``deferred`` when already processed, so they keep their retry
        state); unacknowledged receptions in ``tmp`` that have been there
        ``tmp_min_age`` seconds or more and whose lock is free are removed
        (the age keeps a reception that has made its directory but not yet
        locked it; it is the time since the entry came into ``tmp/``, its
        ctime, not its mtime: a reused directory keeps the mtime of its
        first use); at start (no ``tmp_min_age``), ``.free/`` is emptied.
        Each entry taken is a ``Found``: what, how old, whose, and why.
        """
        recovery = Recovery()
        for qid in self.ids("active"):
            try:
                h = self.claim(qid, "active", "active")
            except (Locked, FileNotFoundError):
                continue
            with h:
                age = _age(h._dir)
                dst = "deferred" if h.has(REWRITTEN) else "incoming"
                h.move(dst)
                recovery.found.append(Found(
                    "active", qid, age, None, None, f"requeued to {dst}",
                    "no process holds its lock: the one that claimed it exited, or let it go "
                    "unfinished (an error, a shutdown, a session that went away)"))
        # Parked directories are emptied at start (no age given) only: while
        # running, each belongs to a live process that will reuse it.
        for name in self.ids(FREE) if not tmp_min_age else []:
            path = self.root / FREE / name
            try:
                fd = _try_lock(path)
            except (Locked, OSError):  # taken by a reception, or gone meanwhile
                continue
            try:
                remove_tree(path)
            finally:
                os.close(fd)
        now = time.time()
        for name in self.ids("tmp"):
            path = self.root / "tmp" / name
            try:
                age = now - path.stat().st_ctime
            except FileNotFoundError:
                continue
            if tmp_min_age and age < tmp_min_age:
                continue
            try:
                fd = _try_lock(path)
            except Locked:
                continue
            except OSError:  # gone meanwhile, or not a directory (a stray file)
                fd = -1
            try:
                if fd >= 0 or os.path.lexists(path):
                    remove_tree(path)
                    recovery.found.append(_tmp_finding(name, age))
            finally:
                if fd >= 0:
                    os.close(fd)
        return recovery

    def entries(self, queues: tuple[str, ...] = QUEUES) -> Iterator[dict[str, Any]]:
        """What ``queue list`` shows: one dict per message."""
        for q in queues:
            for qid in self.ids(q):
                path = self.root / q / qid
                try:
                    env, _ = read_envelope(path)
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


def read_envelope(path: str | Path) -> tuple[Envelope, int]:
    """The envelope of the message directory ``path`` and the size of its
    message (the bytes before the envelope); ValueError when unreadable."""
    message, legacy = f"{path}/{MESSAGE}", f"{path}/{ENVELOPE}"
    if os.path.exists(legacy):
        with open(legacy, "rb") as f:
            return Envelope.from_json(f.read()), os.stat(message).st_size
    fd = os.open(message, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        footer = os.pread(fd, _FOOTER_SIZE, size - _FOOTER_SIZE) if size >= _FOOTER_SIZE else b""
        digits = footer[1:11]
        if len(footer) != _FOOTER_SIZE or footer[:1] != b"\n" or not digits.isdigit() \
                or not footer.endswith(ENVELOPE_FOOTER) or int(digits) > size - _FOOTER_SIZE:
            raise ValueError(f"{message}: no envelope at its end")
        n = int(digits)
        start = size - _FOOTER_SIZE - n
        return Envelope.from_json(os.pread(fd, n, start)), start
    finally:
        os.close(fd)


def commit_all(batch: list[tuple[Reception, Envelope, bool]]) -> list[Handle | None | OSError]:
    """Commit several receptions (``Reception.commit`` each, blocking) with
    one fsync per queue directory for all of them: a group commit, so
    sessions that end their DATA together share a thread call and the
    directory fsyncs.  One result per reception, in order: its Handle, None,
    or the OSError that kept it from being acknowledged."""
    results: list[Handle | None | OSError] = [None] * len(batch)
    landed: dict[str, list[int]] = {}
    for i, (reception, envelope, keep) in enumerate(batch):
        try:
            landed.setdefault(reception._seal(envelope, keep), []).append(i)
        except OSError as e:
            results[i] = e
    for where, indexes in landed.items():
        try:
            fsync_dir(where)
            error = None
        except OSError as e:
            error = e
        for i in indexes:
            reception, _, keep = batch[i]
            if error is None:
                results[i] = reception._settle(keep)
            else:
                reception._settle(False)
                results[i] = error
    return results


def message_source(path: Path) -> Source:
    """The message of the message directory ``path``, without its envelope."""
    _, size = read_envelope(path)
    return Source(path / MESSAGE, size=size)
