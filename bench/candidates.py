"""The things the bench measures: four baselines and the gateway.

Each candidate is an SMTP server on a loopback port. Relays (Postfix, Postfix
with MIMEDefang, the gateway) forward to their own smtp-sink, whose counter and
dump directory tell when a message has fully arrived; the floor *is* an
smtp-sink; the aiosmtpd baseline is its own end point (the 250 reply is the end).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import ManagedProcess, descendants, hwm_by_pid, process_name
from tests.servers import PostfixInstance, SmtpSink, free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class CandidateUnavailable(Exception):
    """The candidate cannot run on this machine (e.g. its executable is missing)."""


class Candidate:
    """One SMTP server under test.

    Subclasses set ``name`` and ``label`` and implement ``start``, ``stop``,
    ``all_pids`` and ``log_paths``.
    """

    name = "candidate"
    label = "candidate"
    #: What every memory figure covers, in words (printed and saved): the same for all.
    memory_scope = "all its processes, summed"
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

    def all_pids(self) -> list[int]:
        """Every process of the candidate (not the downstream sink): what its
        memory and CPU figures count, the same way for every candidate."""
        raise NotImplementedError

    def receiving_pids(self) -> list[int]:
        """The processes whose peak memory is reset before a measured send (all of them)."""
        return self.all_pids()

    def peak_memory_kib(self) -> tuple[int, dict[str, int]]:
        """(peak RSS in KiB: VmHWM of every process summed, per-process detail ``{"name[pid]": KiB}``)."""
        roles = self.memory_pids()
        detail = {f"{roles.get(pid, name)}[{pid}]": kib for pid, (name, kib) in hwm_by_pid(roles).items()}
        return sum(detail.values()), detail

    #: What the *added* peak memory figure (100 MB message) covers, in words.
    added_memory_scope = "all its processes, summed"

    def cpu_pids(self) -> list[int]:
        """The processes whose CPU time counts for this candidate (all of them)."""
        return self.all_pids()

    def memory_pids(self) -> dict[int, str]:
        """``{pid: role}`` of every process of the candidate."""
        return {pid: process_name(pid) for pid in self.all_pids()}

    def added_memory_figure(self, added: dict[int, tuple[str, int]]) -> int:
        """The added-memory figure in KiB from ``{pid: (role, added KiB)}``: the sum over
        every process (a message that passes through three processes costs all three)."""
        return sum(kib for _, kib in added.values())

    def log_paths(self) -> list[Path]:
        """The candidate's own log files (what ``diagnose`` reads)."""
        return []

    def diagnose(self, lines: int = 6) -> str:
        """Why the candidate may have failed, in its own logs' words: the last
        ``lines`` lines of each log that report a problem (or its last lines)."""
        out = []
        for path in self.log_paths():
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            problems = [ln for ln in text if _DIAGNOSIS.search(ln)] or text
            if problems:
                out.append(f"{path.name}:\n" + "\n".join(f"  {ln[:300]}" for ln in problems[-lines:]))
        return "\n".join(out)

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

    def __init__(self, workdir: Path, dump: bool = True) -> None:
        super().__init__(workdir)
        self.dump = dump

    def start(self) -> None:
        sink = self._start_sink(self.dump)
        self.smtp_port = sink.port

    def stop(self) -> None:
        if self.arrival_sink is not None:
            self.arrival_sink.stop()

    def all_pids(self) -> list[int]:
        pid = self.arrival_sink.pid if self.arrival_sink else None
        return [pid] if pid is not None else []

    def log_paths(self) -> list[Path]:
        return [self.arrival_sink.log_path] if self.arrival_sink is not None else []


class AiosmtpdBaseline(Candidate):
    """Baseline (b): aiosmtpd whose handler only answers 250 (bench/baseline_aiosmtpd.py)."""

    name = "aiosmtpd"
    label = "aiosmtpd 250-only"

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

    def all_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.running() else []

    def log_paths(self) -> list[Path]:
        return [self.workdir / "aiosmtpd.log"]


class PlainPostfix(Candidate):
    """Baseline (c): a stock Postfix instance relaying everything to smtp-sink."""

    name = "postfix"
    label = "Postfix relay"
    relays = True

    def __init__(self, workdir: Path, sink_dump: bool = True) -> None:
        super().__init__(workdir)
        self.sink_dump = sink_dump
        self.mta: PostfixInstance | None = None
        #: Extra main.cf settings (the MIMEDefang baseline adds its milter here).
        self.main_cf: dict[str, str] = {}

    def start(self) -> None:
        sink = self._start_sink(self.sink_dump)
        self.mta = PostfixInstance(
            relay_port=sink.port, hostname=f"{self.name}-bench.localhost", main_cf=self.main_cf
        )
        self.mta.start()
        self.smtp_port = self.mta.port

    def stop(self) -> None:
        try:
            if self.mta is not None:
                self.mta.stop()
        finally:
            if self.arrival_sink is not None:
                self.arrival_sink.stop()

    def all_pids(self) -> list[int]:
        """Every process of the instance: master, qmgr, smtpd, cleanup, smtp and the rest."""
        return self.mta.pids() if self.mta is not None else []

    def log_paths(self) -> list[Path]:
        return [self.mta.maillog_path] if self.mta is not None else []


#: The filter the MIMEDefang baseline runs: every leaf part whose decoded size is
#: above the threshold is moved to DOC_ROOT and replaced by a text part with its URL
#: (MIMEDefang's own action_replace_with_url); everything else is accepted as is.
MIMEDEFANG_FILTER = """\
# Generated by bench/candidates.py: MIMEDefang's attachment-replacement action.
$AdminAddress = 'postmaster@localhost';
$AdminName = "gateway bench";
$DaemonAddress = 'mimedefang@localhost';
$AddWarningsInline = 0;
$Stupidity{{"NoMultipleInlines"}} = 0;

sub filter {{
    my($entity, $fname, $ext, $type) = @_;
    return if message_rejected();
    my $body = $entity->bodyhandle;
    if (defined($body) && defined($body->path)) {{
        my $size = (stat($body->path))[7];
        if ($size > {threshold}) {{
            return action_replace_with_url($entity, "{doc_root}", "{base_url}",
                "The attachment $fname was moved to a web server:\\n\\n\\t_URL_\\n");
        }}
    }}
    return action_accept();
}}

1;
"""

#: Where MIMEDefang lives on Debian (package ``mimedefang``).
MIMEDEFANG = "/usr/bin/mimedefang"
MIMEDEFANG_MULTIPLEXOR = "/usr/bin/mimedefang-multiplexor"
MIMEDEFANG_PL = "/usr/bin/mimedefang.pl"
MIMEDEFANG_USER = "defang"
MIMEDEFANG_INSTALL = "apt-get install -y --no-install-recommends mimedefang libnet-dns-perl"
#: What Debian's mimedefang needs and does not declare (scripts/install-test-deps.sh installs it).
MIMEDEFANG_PERL_INSTALL = "apt-get install -y --no-install-recommends libnet-dns-perl"
#: The gateway's default offload threshold (RouteSettings.offload_threshold): same for MIMEDefang.
OFFLOAD_THRESHOLD = 10 * 1024 * 1024


class PostfixMimedefang(PlainPostfix):
    """Baseline (d): Postfix relaying through MIMEDefang (milter) with its attachment-replacement
    action for parts above the gateway's threshold (10 MiB), to smtp-sink.

    A throwaway MIMEDefang: ``mimedefang-multiplexor`` (Debian's defaults: embedded Perl,
    2 to 10 workers, 600 s busy limit; plus a request queue, ``-q 40 -Q 60``, so a
    20-session burst waits instead of being tempfailed) on a unix socket in the temp dir,
    and the ``mimedefang`` milter (``-q``: queue rather than tempfail new sessions when
    every worker is busy) on a loopback inet socket; Postfix with ``smtpd_milters``,
    ``milter_default_action = tempfail`` and ``milter_protocol = 6``.
    """

    name = "mimedefang"
    label = "Postfix+MIMEDefang"

    def __init__(self, workdir: Path, sink_dump: bool = True) -> None:
        super().__init__(workdir, sink_dump)
        self.multiplexor: ManagedProcess | None = None
        self.milter: ManagedProcess | None = None
        self.milter_port = 0

    @staticmethod
    def missing() -> str | None:
        """Why MIMEDefang cannot run here (None when it can)."""
        for exe in (MIMEDEFANG, MIMEDEFANG_MULTIPLEXOR, MIMEDEFANG_PL):
            if not os.access(exe, os.X_OK):
                return f"{exe} is missing: install it with `{MIMEDEFANG_INSTALL}` (as root)"
        try:
            pwd.getpwnam(MIMEDEFANG_USER)
        except KeyError:
            return f"user {MIMEDEFANG_USER!r} is missing (the mimedefang package creates it): `{MIMEDEFANG_INSTALL}`"
        # Debian's mimedefang does not declare every Perl module its workers
        # load (Net::DNS: libnet-dns-perl); without them each worker dies at
        # start and Postfix answers every message 451. Compile it first.
        try:
            check = subprocess.run(["perl", "-c", MIMEDEFANG_PL], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return f"cannot run perl to check {MIMEDEFANG_PL}: {e}"
        if check.returncode != 0:
            first = next((ln for ln in check.stderr.splitlines() if ln.strip()), "no message")
            hint = f" (`{MIMEDEFANG_PERL_INSTALL}`)" if "Net/DNS" in check.stderr else ""
            return f"{MIMEDEFANG_PL} does not compile, so its workers cannot start: {first}{hint}"
        return None

    def start(self) -> None:
        why = self.missing()
        if why is not None:
            raise CandidateUnavailable(why)
        md = self.workdir / "mimedefang"
        spool, doc_root = md / "spool", md / "parts"
        for d in (md, spool, doc_root):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(md, 0o755)
        for d in (spool, doc_root):
            shutil.chown(d, user=MIMEDEFANG_USER, group=MIMEDEFANG_USER)
            os.chmod(d, 0o750)
        filter_path = md / "mimedefang-filter"
        filter_path.write_text(
            MIMEDEFANG_FILTER.format(
                threshold=OFFLOAD_THRESHOLD, doc_root=doc_root, base_url="http://127.0.0.1:8080/mail-parts"
            )
        )
        mx_socket = spool / "mimedefang-multiplexor.sock"
        env = dict(os.environ, LC_ALL="C", HOME=str(spool))
        self.multiplexor = ManagedProcess(
            "mimedefang-multiplexor",
            [
                MIMEDEFANG_MULTIPLEXOR, "-D", "-E", "-U", MIMEDEFANG_USER, "-z", str(spool), "-s", str(mx_socket),
                "-f", MIMEDEFANG_PL, "-F", str(filter_path), "-m", "2", "-x", "10", "-b", "600",
                "-q", "40", "-Q", "60",
            ],  # fmt: skip
            md / "multiplexor.log",
            env=env,
        ).start()
        deadline = time.monotonic() + 20
        while not mx_socket.exists():
            if not self.multiplexor.running():
                raise RuntimeError(f"mimedefang-multiplexor exited; log:\n{self.multiplexor.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mimedefang-multiplexor made no socket; log:\n{self.multiplexor.log_tail()}")
            time.sleep(0.05)
        self.milter_port = free_port()
        self.milter = ManagedProcess(
            "mimedefang",
            [
                MIMEDEFANG, "-D", "-q", "-U", MIMEDEFANG_USER, "-z", str(spool), "-m", str(mx_socket),
                "-p", f"inet:{self.milter_port}@{LOOPBACK}",
            ],  # fmt: skip
            md / "milter.log",
            env=env,
        ).start()
        _wait_ready(self.milter, self.milter_port, timeout=20)
        self.main_cf = {
            "smtpd_milters": f"inet:{LOOPBACK}:{self.milter_port}",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
        }
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for proc in (self.milter, self.multiplexor):
                if proc is not None:
                    proc.stop(grace=10)

    def _worker_pids(self) -> list[int]:
        if self.multiplexor is None or not self.multiplexor.running():
            return []
        return descendants(self.multiplexor.pid)

    def all_pids(self) -> list[int]:
        pids = super().all_pids()
        for proc in (self.milter, self.multiplexor):
            if proc is not None and proc.running():
                pids.append(proc.pid)
        return pids + self._worker_pids()

    def memory_pids(self) -> dict[int, str]:
        roles = {pid: process_name(pid) for pid in super().all_pids()}
        if self.milter is not None and self.milter.running():
            roles[self.milter.pid] = "milter"
        if self.multiplexor is not None and self.multiplexor.running():
            roles[self.multiplexor.pid] = "multiplexor"
        roles.update({pid: "md-worker" for pid in self._worker_pids()})
        return roles

    def log_paths(self) -> list[Path]:
        md = self.workdir / "mimedefang"
        return [*super().log_paths(), md / "multiplexor.log", md / "milter.log"]


GATEWAY_CONFIG = """\
[gateway]
hostname = "bench.localhost"
spool_dir = "{tmp}/spool"
audit_log = "{tmp}/audit.jsonl"
log_level = "warning"
[smtp]
listen = "127.0.0.1:{port_in}"
# Room for the 1 GB message (1.35 GB on the wire); the default is 150 MiB.
max_message_size = "2GiB"
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
[[routes]]
name = "clicks"
domains = ["clicks.example"]
next_hop = "smtp://127.0.0.1:{sink_port}"
storage = "local"
offload_threshold = "32KiB"
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
    relays = True

    def __init__(
        self, workdir: Path, executable: str | None, sink_dump: bool = True, requested: str | None = None,
        processes: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.executable = executable
        #: ``gateway.processes`` (None: the default, one per CPU).
        self.processes = processes
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
        if self.processes is not None:
            text = text.replace("[gateway]\n", f"[gateway]\nprocesses = {self.processes}\n", 1)
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

    def all_pids(self) -> list[int]:
        if self.proc is None or not self.proc.running():
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def log_paths(self) -> list[Path]:
        return [self.workdir / "gateway.log"]

    def memory_pids(self) -> dict[int, str]:
        if self.proc is None or not self.proc.running():
            return {}
        roles = {self.proc.pid: "supervisor"}
        roles.update({pid: "serve" for pid in descendants(self.proc.pid)})
        return roles

    def inspect(self) -> dict[str, object]:
        """What is left in the spool (message directories per queue) and the warnings and
        errors in the gateway's log (it runs at log_level = "warning")."""
        spool = self.workdir / "spool"
        queues: dict[str, int] = {}
        if spool.is_dir():
            for entry in sorted(spool.iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):  # .metrics: prometheus files
                    queues[entry.name] = sum(1 for _ in entry.iterdir())
        lines: list[str] = []
        try:
            lines = (self.workdir / "gateway.log").read_text(errors="replace").splitlines()
        except OSError:
            pass
        problems = [ln for ln in lines if _LOG_PROBLEM.search(ln)]
        # Where in the gateway's own code the tracebacks point ("gateway/http/links.py:103 in get": 16).
        frames: dict[str, int] = {}
        for ln in lines:
            m = _OWN_FRAME.search(ln)
            if m:
                key = f"{m.group(1)}:{m.group(2)} in {m.group(3)}"
                frames[key] = frames.get(key, 0) + 1
        return {
            "spool": queues,
            "log_lines": len(lines),
            "log_problems": len(problems),
            "log_sample": problems[:20],
            "traceback_frames": frames,
        }


_LOG_PROBLEM = re.compile(r"warn|error|critical|traceback|exception", re.IGNORECASE)
#: Lines of a candidate's log that say why it failed (Postfix: "fatal", "panic";
#: Perl: "Can't locate"; MIMEDefang: "died", "reject").
_DIAGNOSIS = re.compile(r"warn|error|fatal|panic|critical|can't|cannot|died|abort|reject|traceback|exception",
                        re.IGNORECASE)
_OWN_FRAME = re.compile(r'File "[^"]*/((?:gateway|policies)/[^"]+)", line (\d+), in (\w+)')


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
