"""The things the bench measures: three baselines and the gateway.

Each candidate is an SMTP server on a loopback port. Relays (Postfix, the gateway)
forward to their own smtp-sink, whose counter and dump directory tell when a
message has fully arrived; the floor *is* an smtp-sink; the aiosmtpd baseline is
its own end point (the 250 reply is the end).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import ManagedProcess, descendants, hwm_by_pid
from tests.servers import PostfixInstance, SmtpSink, free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class CandidateUnavailable(Exception):
    """The candidate cannot run on this machine (e.g. its executable is missing)."""


class Candidate:
    """One SMTP server under test.

    Subclasses set ``name``, ``label``, ``memory_scope`` and implement ``start``,
    ``stop`` and ``receiving_pids``.
    """

    name = "candidate"
    label = "candidate"
    #: What the peak-memory figure covers, in words (printed and saved).
    memory_scope = ""
    #: True when the 250 is not the end: the message goes on to ``arrival_sink``.
    relays = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.smtp_port = 0
        #: The smtp-sink where arriving messages are counted (None: the 250 is the end).
        self.arrival_sink: SmtpSink | None = None

    def start(self) -> None:
        """Start the candidate and wait until its SMTP port accepts connections."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every process the candidate started. Idempotent."""
        raise NotImplementedError

    def receiving_pids(self) -> list[int]:
        """Pids whose memory counts as the receiving side."""
        raise NotImplementedError

    def peak_memory_kib(self) -> tuple[int, dict[str, int]]:
        """(peak RSS figure in KiB, per-process detail ``{"name[pid]": KiB}``)."""
        detail = {f"{name}[{pid}]": kib for pid, (name, kib) in hwm_by_pid(self.receiving_pids()).items()}
        return sum(detail.values()), detail

    def _start_sink(self, dump: bool) -> SmtpSink:
        """Start the downstream smtp-sink (dumping into this candidate's workdir)."""
        dump_dir: bool | Path = self.workdir / "sink-dump" if dump else False
        sink = SmtpSink(dump=dump_dir, hostname=f"sink-{self.name}.localhost")
        sink.start()
        self.arrival_sink = sink
        return sink


class FloorSink(Candidate):
    """Baseline (a): smtp-source straight into smtp-sink. The floor: no server does less."""

    name = "floor"
    label = "smtp-sink (floor)"
    memory_scope = "smtp-sink process"

    def __init__(self, workdir: Path, dump: bool = True) -> None:
        super().__init__(workdir)
        self.dump = dump

    def start(self) -> None:
        sink = self._start_sink(self.dump)
        self.smtp_port = sink.port

    def stop(self) -> None:
        if self.arrival_sink is not None:
            self.arrival_sink.stop()

    def receiving_pids(self) -> list[int]:
        pid = self.arrival_sink.pid if self.arrival_sink else None
        return [pid] if pid is not None else []


class AiosmtpdBaseline(Candidate):
    """Baseline (b): aiosmtpd whose handler only answers 250 (bench/baseline_aiosmtpd.py)."""

    name = "aiosmtpd"
    label = "aiosmtpd 250-only"
    memory_scope = "the aiosmtpd process"

    def __init__(self, workdir: Path, python: str) -> None:
        super().__init__(workdir)
        self.python = python
        self.proc: ManagedProcess | None = None

    def start(self) -> None:
        self.smtp_port = free_port()
        script = REPO / "bench" / "baseline_aiosmtpd.py"
        self.proc = ManagedProcess(
            "aiosmtpd",
            [self.python, str(script), "--port", str(self.smtp_port)],
            self.workdir / "aiosmtpd.log",
        ).start()
        _wait_ready(self.proc, self.smtp_port, timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def receiving_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.running() else []


class PlainPostfix(Candidate):
    """Baseline (c): a stock Postfix instance relaying everything to smtp-sink."""

    name = "postfix"
    label = "Postfix relay"
    memory_scope = "largest smtpd + largest cleanup (the two processes a message passes through)"
    relays = True

    def __init__(self, workdir: Path, sink_dump: bool = True) -> None:
        super().__init__(workdir)
        self.sink_dump = sink_dump
        self.mta: PostfixInstance | None = None

    def start(self) -> None:
        sink = self._start_sink(self.sink_dump)
        self.mta = PostfixInstance(relay_port=sink.port, hostname="postfix-bench.localhost")
        self.mta.start()
        self.smtp_port = self.mta.port

    def stop(self) -> None:
        try:
            if self.mta is not None:
                self.mta.stop()
        finally:
            if self.arrival_sink is not None:
                self.arrival_sink.stop()

    def receiving_pids(self) -> list[int]:
        if self.mta is None:
            return []
        return [pid for pid, name in self.mta.processes().items() if name in ("smtpd", "cleanup")]

    def all_pids(self) -> list[int]:
        """Every process of the instance (for the 'whole Postfix' figure in the JSON)."""
        return self.mta.pids() if self.mta is not None else []

    def peak_memory_kib(self) -> tuple[int, dict[str, int]]:
        procs = hwm_by_pid(self.receiving_pids())
        detail = {f"{name}[{pid}]": kib for pid, (name, kib) in procs.items()}
        peak = 0
        for role in ("smtpd", "cleanup"):
            peak += max((kib for name, kib in procs.values() if name == role), default=0)
        return peak, detail


GATEWAY_CONFIG = """\
[gateway]
hostname = "bench.localhost"
spool_dir = "{tmp}/spool"
audit_log = "{tmp}/audit.jsonl"
log_level = "warning"
[smtp]
listen = "127.0.0.1:{port_in}"
[http]
listen = "127.0.0.1:{port_http}"
base_url = "http://127.0.0.1:{port_http}"
[links]
keys = [{{ id = "k1", file = "{tmp}/link.key", create_missing = true }}]
[storage.local]
backend = "filesystem"
path = "{tmp}/objects"
[[routes]]
name = "bench"
domains = ["contact.example"]
next_hop = "smtp://127.0.0.1:{sink_port}"
storage = "local"
"""


def find_gateway_executable(explicit: str | None = None) -> str | None:
    """The ``attachment-gateway`` executable: explicit path, the repo's .venv, or PATH."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    venv = REPO / ".venv" / "bin" / "attachment-gateway"
    if os.access(venv, os.X_OK):
        return str(venv)
    return shutil.which("attachment-gateway")


class Gateway(Candidate):
    """The candidate: ``attachment-gateway serve --config CONFIG`` relaying to smtp-sink."""

    name = "gateway"
    label = "attachment-gateway"
    memory_scope = "the gateway process and all its children"
    relays = True

    def __init__(
        self, workdir: Path, executable: str | None, sink_dump: bool = True, requested: str | None = None
    ) -> None:
        super().__init__(workdir)
        self.executable = executable
        #: The path given with --gateway, if any (for the "missing" message).
        self.requested = requested
        self.sink_dump = sink_dump
        self.proc: ManagedProcess | None = None
        self.config_path = self.workdir / "gateway.toml"
        self.argv: list[str] = []

    def write_config(self, sink_port: int) -> None:
        """Write the gateway's TOML config with this run's ports and temp paths."""
        self.smtp_port = free_port()
        self.http_port = free_port()
        text = GATEWAY_CONFIG.format(
            tmp=self.workdir, port_in=self.smtp_port, port_http=self.http_port, sink_port=sink_port
        )
        self.config_path.write_text(text)

    def command(self) -> list[str]:
        """``attachment-gateway serve --config CONFIG``, or ``--config CONFIG serve`` when
        ``--config`` is an option of the main command only (as ``serve --help`` tells)."""
        assert self.executable is not None
        try:
            help_text = subprocess.run(
                [self.executable, "serve", "--help"], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            help_text = ""
        if "--config" in help_text:
            return [self.executable, "serve", "--config", str(self.config_path)]
        return [self.executable, "--config", str(self.config_path), "serve"]

    def start(self) -> None:
        if self.executable is None:
            where = self.requested or "not in .venv/bin or PATH"
            raise CandidateUnavailable(f"attachment-gateway executable is missing ({where})")
        sink = self._start_sink(self.sink_dump)
        self.write_config(sink.port)
        self.argv = self.command()
        self.proc = ManagedProcess("gateway", self.argv, self.workdir / "gateway.log").start()
        _wait_ready(self.proc, self.smtp_port, timeout=30)

    def stop(self) -> None:
        try:
            if self.proc is not None:
                self.proc.stop(grace=15)  # SIGTERM first: a graceful drain
        finally:
            if self.arrival_sink is not None:
                self.arrival_sink.stop()

    def receiving_pids(self) -> list[int]:
        if self.proc is None or not self.proc.running():
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]


def _wait_ready(proc: ManagedProcess, port: int, timeout: float) -> None:
    """Wait for ``port`` to accept connections; fail early with the log if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.running():
            raise RuntimeError(f"{proc.name} exited during startup; log:\n{proc.log_tail()}")
        try:
            wait_for_port(LOOPBACK, port, 0.2)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{proc.name} not listening on {LOOPBACK}:{port} after {timeout:.0f}s; log:\n{proc.log_tail()}"
                ) from None


def default_python() -> str:
    """A Python with aiosmtpd: the repo's .venv if present, else this interpreter."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable
