"""Stopping test servers and reporting why one did not start."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Self


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Ask ``proc`` to stop with ``sig`` (some servers only honour SIGINT),
    then kill it if it has not gone within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a server's log, for the error when it fails to start."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerProcess:
    """A test server run as a child process with a scratch directory of its
    own; used as a context manager, leaving it stops both."""

    #: The signal the server stops on (some only honour SIGINT).
    stop_signal: int = signal.SIGTERM
    dir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the process (then kill it), and remove its directory."""
        stop_process(self._proc, self.stop_signal)
        self._proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
