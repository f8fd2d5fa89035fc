"""Azurite, Microsoft's Azure Storage emulator, as a real Blob server on loopback.

It checks Shared Key signatures and SAS tokens for real: a changed, expired,
missing or misapplied SAS answers 403.  It is installed from npm into the
project-local ``tests/servers/node/`` (scripts/install-storage-deps.sh runs
``npm ci`` there), keeps its data in a temporary directory, and stops on
SIGINT (not SIGTERM).

Usage::

    with Azurite() as az:
        BlobServiceClient(az.account_url, credential=az.credential)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ..certs import self_signed
from .procs import ServerProcess, log_tail
from .ports import LOOPBACK, free_port, port_is_open

NODE_DIR = Path(__file__).resolve().parent / "node"
AZURITE_BLOB = NODE_DIR / "node_modules" / ".bin" / "azurite-blob"

# Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    """Azurite could not start; the message carries its log tail."""


class Azurite(ServerProcess):
    """Start and stop an Azurite Blob service on a free loopback port.

    After ``start()``: ``account_url`` (path-style,
    ``http://127.0.0.1:PORT/devstoreaccount1``), ``account_name``,
    ``account_key``, ``connection_string`` and ``startup_seconds``.
    """

    stop_signal = signal.SIGINT  # it ignores SIGTERM

    def __init__(self, timeout: float = 60.0, tls: bool = False, oauth: bool = False) -> None:
        """``tls`` serves HTTPS with a self-signed certificate for 127.0.0.1
        (``ca_file`` trusts it); ``oauth`` (implies ``tls``, as Azurite
        allows bearer tokens only over HTTPS) accepts Microsoft Entra ID
        tokens, checking issuer, audience and lifetime but not the signature,
        and serves user-delegation keys."""
        self.timeout = timeout
        self.tls = tls or oauth
        self.oauth = oauth
        self.ca_file: Path | None = None
        self.account_name = ACCOUNT_NAME
        self.account_key = ACCOUNT_KEY
        self.port = 0
        self.dir: Path | None = None
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def account_url(self) -> str:
        """The Blob endpoint of the development account."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        """A connection string for the development account."""
        return (f"DefaultEndpointsProtocol={'https' if self.tls else 'http'};AccountName={self.account_name};AccountKey={self.account_key};"
                f"BlobEndpoint={self.account_url};")

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "azurite.log"

    def start(self) -> "Azurite":
        """Run azurite-blob and wait until it accepts connections."""
        if not AZURITE_BLOB.exists():
            raise AzuriteError(f"Azurite is not installed ({AZURITE_BLOB} is missing); "
                               "run scripts/install-storage-deps.sh")
        if shutil.which("node") is None:
            raise AzuriteError("node is not on PATH; Azurite needs Node.js 18 or later")
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="gw-azurite-"))
        self.port = free_port()
        extra: list[str] = []
        if self.tls:
            cert, key = self_signed(self.dir, "azurite test")
            self.ca_file = cert
            extra += ["--cert", str(cert), "--key", str(key)]
        if self.oauth:
            extra += ["--oauth", "basic"]
        log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [str(AZURITE_BLOB), "--blobHost", LOOPBACK, "--blobPort", str(self.port),
             "--location", str(self.dir / "data"),
             "--disableTelemetry", "--skipApiVersionCheck", *extra],
            cwd=NODE_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "AZURITE_ACCOUNTS": f"{self.account_name}:{self.account_key}"},
        )
        log.close()
        deadline = time.monotonic() + self.timeout
        while not port_is_open(LOOPBACK, self.port):
            if self._proc.poll() is not None:
                self._fail(f"azurite-blob exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"azurite-blob did not listen on {LOOPBACK}:{self.port} within {self.timeout:.0f}s")
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _fail(self, why: str) -> None:
        tail = log_tail(self.log_path) if self.dir is not None else ""
        self.stop()
        raise AzuriteError(f"{why}\n--- azurite.log (last lines) ---\n{tail}")



if __name__ == "__main__":  # manual check: python -m tests.servers.azurite
    with Azurite() as a:
        print(f"azurite at {a.account_url} after {a.startup_seconds:.1f}s")
        if os.environ.get("AZURITE_HOLD"):
            time.sleep(float(os.environ["AZURITE_HOLD"]))
