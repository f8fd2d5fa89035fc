"""Postfix's ``smtp-sink`` as a next hop on loopback: accepts everything, counts it,
and optionally dumps each message to a file so a test can read what arrived.

``smtp-sink`` runs with ``-c``, so it prints a running ``sess=N quit=N mesg=N``
counter that :meth:`SmtpSink.received_count` reads; with ``dump=True`` (or a
directory) it also runs with ``-d DIR/`` and writes one file per message, which
:meth:`SmtpSink.messages` parses into :class:`SinkMessage` objects.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import IO

from .procs import stop_process
from .ports import LOOPBACK, free_port, wait_for_port

SMTP_SINK = "/usr/sbin/smtp-sink"

_COUNTER = re.compile(rb"mesg=(\d+)")


@dataclass
class SinkMessage:
    """One message as smtp-sink dumped it.

    ``content`` is the message exactly as the client sent it (headers and body,
    dot-stuffing undone, lines ending in LF as smtp-sink writes them).
    """

    path: Path
    mail_from: str
    rcpt_to: list[str]
    helo: str | None
    content: bytes
    sink_headers: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> SinkMessage:
        """Parse a dump file: smtp-sink's X-* records and Received header, then the message."""
        raw = path.read_bytes()
        sink_headers: dict[str, list[str]] = {}
        pos = 0
        in_received = False
        while pos < len(raw):
            end = raw.find(b"\n", pos)
            if end < 0:
                end = len(raw)
            line = raw[pos:end].decode("utf-8", errors="replace")
            if in_received and line[:1] not in (" ", "\t"):
                break  # first line after smtp-sink's three-line Received header
            name, _, value = line.partition(":")
            if name == "Received":
                in_received = True
            if not in_received or name == "Received":
                sink_headers.setdefault(name, []).append(value.strip())
            pos = end + 1
        content = raw[pos:]
        # smtp-sink appends one empty line after each message.
        if content.endswith(b"\n\n"):
            content = content[:-1]
        return cls(
            path=path,
            mail_from=_strip_args(sink_headers.get("X-Mail-Args", [""])[0]),
            rcpt_to=[_strip_args(v) for v in sink_headers.get("X-Rcpt-Args", [])],
            helo=sink_headers["X-Helo-Args"][0] if sink_headers.get("X-Helo-Args") else None,
            content=content,
            sink_headers=sink_headers,
        )

    def email(self) -> EmailMessage:
        """The content parsed with the standard library (policy ``default``)."""
        msg = email.message_from_bytes(self.content, _class=EmailMessage, policy=email.policy.default)
        return msg


def _strip_args(args: str) -> str:
    """``<a@b> SIZE=12 BODY=8BITMIME`` -> ``a@b``."""
    first = args.split(" ", 1)[0]
    return first[1:-1] if first.startswith("<") and first.endswith(">") else first


class SmtpSink:
    """``smtp-sink`` on 127.0.0.1:``port``, counting (and optionally dumping) what it receives.

    - ``dump``: False (count only, fastest), True (dump into a temporary directory)
      or a directory path to dump into.
    - ``hostname``: name in the greeting and EHLO reply.
    - ``max_concurrency``: smtp-sink's ``-m`` (simultaneous connections).
    - ``extra_args``: more smtp-sink options, e.g. ``("-f", "RCPT")`` to refuse RCPT.

    As root, smtp-sink needs ``-u nobody``; the dump directory is then handed to
    ``nobody`` so the sink can write into it.
    """

    def __init__(
        self,
        port: int | None = None,
        dump: bool | str | Path = False,
        hostname: str = "smtp-sink.localhost",
        max_concurrency: int = 256,
        backlog: int = 256,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.hostname = hostname
        self.max_concurrency = max_concurrency
        self.backlog = backlog
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self._dump_arg = dump
        self.dump_dir: Path | None = None
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._purged = 0

    @property
    def pid(self) -> int | None:
        """The smtp-sink process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        """Where smtp-sink's stdout/stderr (the ``-c`` counters) go."""
        if self.workdir is None:
            raise RuntimeError("SmtpSink not started")
        return self.workdir / "smtp-sink.out"

    def command(self) -> list[str]:
        """The smtp-sink command line for this configuration."""
        cmd = [SMTP_SINK, "-c", "-h", self.hostname, "-m", str(self.max_concurrency)]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        if self.dump_dir is not None:
            # The template goes through strftime(3): escape '%'. A trailing '/'
            # makes each file DIR/<random hex>.
            cmd += ["-d", str(self.dump_dir).replace("%", "%%") + "/"]
        cmd += list(self.extra_args)
        cmd += [f"{LOOPBACK}:{self.port}", str(self.backlog)]
        return cmd

    def start(self) -> SmtpSink:
        """Start smtp-sink and wait until it accepts connections."""
        if self.proc is not None:
            return self
        if not os.path.exists(SMTP_SINK):
            raise RuntimeError(f"{SMTP_SINK} not found: run scripts/install-test-deps.sh")
        self.workdir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        os.chmod(self.workdir, 0o755)  # nobody must reach the dump directory inside
        if self._dump_arg is True:
            self.dump_dir = self.workdir / "dump"
        elif self._dump_arg:
            self.dump_dir = Path(self._dump_arg)
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.dump_dir, user="nobody")
        self._log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + self.start_timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"smtp-sink exited with {self.proc.returncode}: {self._log_text().strip()}"
                    )
                try:
                    wait_for_port(LOOPBACK, self.port, 0.2)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"smtp-sink did not listen on {LOOPBACK}:{self.port}: {self._log_text().strip()}"
                        ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop smtp-sink (SIGTERM, then SIGKILL) and remove its temporary directory.

        A dump directory passed in by the caller is left in place.
        """
        try:
            stop_process(self.proc, timeout=5)
        finally:
            self.proc = None
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ inspection
    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def received_count(self) -> int:
        """Messages received so far (smtp-sink's ``mesg=`` counter, bumped at the final '.')."""
        try:
            with open(self.log_path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - 256))
                tail = fh.read()
        except (OSError, RuntimeError):
            return 0
        counts = _COUNTER.findall(tail)
        return int(counts[-1]) if counts else 0

    def _open_files(self) -> set[str]:
        """Paths smtp-sink holds open right now (dump files of transactions in progress)."""
        if self.proc is None:
            return set()
        fd_dir = f"/proc/{self.proc.pid}/fd"
        paths: set[str] = set()
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return paths
        for fd in fds:
            try:
                paths.add(os.readlink(f"{fd_dir}/{fd}"))
            except OSError:
                continue
        return paths

    def completed_dump_paths(self) -> list[Path]:
        """Dump files of messages fully received (files smtp-sink no longer holds open), oldest first."""
        if self.dump_dir is None:
            raise RuntimeError("this SmtpSink does not dump messages (pass dump=True)")
        # List first, then look at open files: a file created in between is not
        # listed, so it cannot be mistaken for a finished one.
        files = [p for p in self.dump_dir.rglob("*") if p.is_file()]
        open_now = self._open_files()
        done = [p for p in files if str(p) not in open_now]
        return sorted(done, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def purge(self) -> int:
        """Delete the finished dump files (keeps the directory small between bench rounds).

        Purged messages still count in :meth:`wait_for_count`. Returns how many went.
        """
        removed = 0
        for path in self.completed_dump_paths():
            try:
                path.unlink()
                removed += 1
            except OSError:
                continue
        self._purged += removed
        return removed

    def messages(self) -> list[SinkMessage]:
        """Every message fully received so far and not purged, parsed (needs ``dump``)."""
        return [SinkMessage.from_file(p) for p in self.completed_dump_paths()]

    def wait_for_count(self, count: int, timeout: float, poll: float = 0.01) -> float:
        """Block until at least ``count`` messages were received; return the monotonic time seen.

        With dumping on, also waits until ``count`` dump files are closed.
        Raises TimeoutError saying how many arrived.
        """
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            got = self.received_count()
            if got >= count and (
                self.dump_dir is None or len(self.completed_dump_paths()) + self._purged >= count
            ):
                return now
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"smtp-sink exited early: {self._log_text()[-500:]}")
            if now >= deadline:
                raise TimeoutError(
                    f"smtp-sink on port {self.port}: {got} of {count} messages after {timeout:.1f}s"
                )
            time.sleep(poll)

    def wait_for_messages(self, count: int, timeout: float) -> list[SinkMessage]:
        """Block until ``count`` messages arrived (dumping on) and return them all, parsed."""
        self.wait_for_count(count, timeout)
        return self.messages()
