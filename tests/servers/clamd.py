"""clamd (ClamAV's daemon, from Debian) on a unix socket in a temporary
directory, with a signature database the test writes.

No downloaded signatures are needed: ``Clamd(tmp, {"Name": b"bytes"})``
writes one MD5 signature (``.hdb``: ``md5:size:name``) per file, so clamd
flags exactly those bytes.  Starts in well under a second.
"""
from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

CLAMD = "/usr/sbin/clamd"


class Clamd:
    """A throwaway clamd; ``address`` is what the gateway's config takes."""

    def __init__(self, directory: Path, signatures: dict[str, bytes]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "clamd.sock"
        self.log = self.dir / "clamd.log"
        db = self.dir / "db"
        db.mkdir(exist_ok=True)
        lines = [f"{hashlib.md5(data).hexdigest()}:{len(data)}:{name}" for name, data in signatures.items()]
        (db / "gateway-test.hdb").write_text("\n".join(lines) + "\n")
        self.conf = self.dir / "clamd.conf"
        self.conf.write_text(
            f"LocalSocket {self.socket}\nDatabaseDirectory {db}\nForeground yes\nLogFile {self.log}\n"
            f"TemporaryDirectory {self.dir}\nUser root\nStreamMaxLength 25M\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def start(self, timeout: float = 30.0) -> "Clamd":
        self.proc = subprocess.Popen([CLAMD, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited with {self.proc.returncode}:\n{self._log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"clamd did not answer PING within {timeout}s:\n{self._log()}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def _log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def __enter__(self) -> "Clamd":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
