"""gcp-storage-emulator: a Google Cloud Storage JSON/XML API server on loopback.

Uploads (simple and resumable), downloads, content type, disposition and
metadata round-trip.  It does not check signed URLs at all, so the tests check
the V4 signer on its own with a service-account key made in the test.

It is a Python package (``pip install gcp-storage-emulator``, listed in
setup.cfg's [test] extra) run here as a subprocess of the same interpreter, with
its data in a temporary directory.

Usage::

    with GcsEmulator(bucket="attachments") as gcs:
        storage.Client(client_options={"api_endpoint": gcs.endpoint_url}, ...)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .procs import ServerProcess, log_tail
from .ports import LOOPBACK, free_port, port_is_open


class GcsEmulatorError(RuntimeError):
    """The emulator could not start; the message carries its log tail."""


class GcsEmulator(ServerProcess):
    """Start and stop gcp-storage-emulator with one bucket already made.

    After ``start()``: ``endpoint_url`` (``http://127.0.0.1:PORT``),
    ``bucket`` and ``startup_seconds``."""

    stop_signal = signal.SIGINT  # it ignores SIGTERM

    def __init__(self, bucket: str = "attachments", timeout: float = 30.0) -> None:
        self.bucket = bucket
        self.timeout = timeout
        self.port = 0
        self.dir: Path | None = None
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The emulator's base URL (for STORAGE_EMULATOR_HOST or api_endpoint)."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "GcsEmulator":
        """Run the emulator and wait until it accepts connections."""
        try:
            import gcp_storage_emulator  # noqa: F401
        except ImportError:
            raise GcsEmulatorError("gcp-storage-emulator is not installed; "
                                   "pip install -e .[test]") from None
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="gw-gcs-"))
        self.port = free_port()
        log = open(self.dir / "emulator.log", "wb")
        code = "from gcp_storage_emulator.__main__ import main; main()"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, "-d", str(self.dir / "data"), "start", "-H", LOOPBACK,
             "--port", str(self.port), "--default-bucket", self.bucket],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"},
        )
        log.close()
        deadline = time.monotonic() + self.timeout
        while not port_is_open(LOOPBACK, self.port):
            if self._proc.poll() is not None:
                self._fail(f"gcp-storage-emulator exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"gcp-storage-emulator did not listen on {LOOPBACK}:{self.port} "
                           f"within {self.timeout:.0f}s")
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _fail(self, why: str) -> None:
        tail = log_tail(self.dir / "emulator.log") if self.dir is not None else ""
        self.stop()
        raise GcsEmulatorError(f"{why}\n--- emulator.log (last lines) ---\n{tail}")



if __name__ == "__main__":  # manual check: python -m tests.servers.gcs
    with GcsEmulator() as g:
        print(f"gcs emulator at {g.endpoint_url} after {g.startup_seconds:.1f}s")
        if os.environ.get("GCS_HOLD"):
            time.sleep(float(os.environ["GCS_HOLD"]))
