"""Process helpers for the bench: start/kill subprocess groups, walk process trees,
read and reset peak resident memory (VmHWM)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO


class ManagedProcess:
    """A subprocess in its own session, logged to a file, killed with its whole group on stop."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (raises if not started)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self.proc.pid

    def start(self) -> ManagedProcess:
        """Start the process in a new session (so Ctrl-C handling stays with the bench)."""
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        return self

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the process's combined stdout/stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it. Idempotent."""
        try:
            if self.proc is not None:
                pids = [self.proc.pid, *descendants(self.proc.pid)]
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
                _signal_group(self.proc.pid, signal.SIGKILL)
                for pid in pids:  # children that left the group
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def children_map() -> dict[int, list[int]]:
    """``{ppid: [child pids]}`` for every process on the machine."""
    result: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        result.setdefault(int(fields[1]), []).append(int(entry.name))
    return result


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` (children, grandchildren, ...)."""
    tree = children_map()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def process_name(pid: int) -> str:
    """The short command name (``/proc/PID/comm``), '' if gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _status_kib(pid: int, field: str) -> int | None:
    """One ``field:  N kB`` line of ``/proc/PID/status`` in KiB, None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a process in KiB, None if it is gone."""
    return _status_kib(pid, "VmHWM:")


def vm_rss_kib(pid: int) -> int | None:
    """Current resident set size (VmRSS) of a process in KiB, None if it is gone."""
    return _status_kib(pid, "VmRSS:")


def reset_hwm(pids: Iterable[int]) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``). True if all worked."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            ok = False
    return ok


def hwm_by_pid(pids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """``{pid: (name, VmHWM KiB)}`` for the processes still alive."""
    result: dict[int, tuple[str, int]] = {}
    for pid in pids:
        hwm = vm_hwm_kib(pid)
        if hwm is not None:
            result[pid] = (process_name(pid), hwm)
    return result


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time (user + system) used so far by ``pids`` and by their children already reaped.

    Sum over the live processes of utime + stime + cutime + cstime: a daemon that
    exits between two readings moves from its own counters into its parent's
    c-counters, so the difference of two readings over the same process tree counts
    it once (as long as its parent is in ``pids``).
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is the state (field 3): utime..cstime are fields 14-17.
        total += sum(int(x) for x in fields[11:15])
    return total / _CLK_TCK


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def pss_kib(pid: int) -> int | None:
    """Proportional set size (``Pss`` of /proc/PID/smaps_rollup) in KiB: a
    process's share of the pages it shares, so a sum over processes that
    share libraries (Postfix's daemons) counts each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def resting_memory(pids: Iterable[int]) -> dict[str, object]:
    """Memory of a set of processes now: VmRSS and Pss summed, the largest
    single process, and per process ``{"name[pid]": RSS KiB}``."""
    rss: dict[str, int] = {}
    pss = 0
    for pid in pids:
        kib = vm_rss_kib(pid)
        if kib is None:
            continue
        rss[f"{process_name(pid)}[{pid}]"] = kib
        pss += pss_kib(pid) or 0
    return {"rss_sum_kib": sum(rss.values()), "pss_sum_kib": pss,
            "largest_process_kib": max(rss.values(), default=0), "processes": len(rss), "detail_kib": rss}


class MemorySampler:
    """Samples the summed VmRSS of ``pids()`` every ``interval`` seconds in a
    thread while in use; ``peak`` is the highest sum seen, ``peak_process``
    the highest single process."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.25) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = 0
        self.peak_process = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = [kib for pid in self.pids() if (kib := vm_rss_kib(pid)) is not None]
            if sizes:
                self.peak = max(self.peak, sum(sizes))
                self.peak_process = max(self.peak_process, max(sizes))
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
