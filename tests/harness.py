"""Test harness: the gateway as a real process, and a real SMTP next hop.

``GatewayProcess`` writes a config file into a temporary directory and runs
``attachment-gateway serve`` on loopback ports, exactly as an administrator
would; tests talk to it with smtplib and urllib only.  ``SmtpSink`` is an
aiosmtpd server in a thread that records what it receives, byte for byte,
and can be taken down and brought back to play a next hop that fails.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Self

from aiosmtpd.controller import Controller

from tests.servers.ports import free_port, port_is_open

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
GATEWAY = [sys.executable, "-m", "gateway"]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
               what: str = "the condition") -> None:
    """Return as soon as ``predicate()`` is true; fail with ``what`` after
    ``timeout`` seconds.  Tests wait on what they expect, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def toml_value(v: Any) -> str:
    """A Python value as TOML (enough for test configs)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        # A key that is not bare (a MIME type, an agent id such as ann@contact.example) is quoted.
        return "{ " + ", ".join(f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', k) else json.dumps(k)} = {toml_value(x)}"
                                for k, x in v.items()) + " }"
    raise TypeError(v)


def render_config(sections: dict[str, Any]) -> str:
    """Render {"gateway": {...}, "storage.local": {...}, "routes": [{...}]}."""
    out = []
    for name, body in sections.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{name}]]")
                out.extend(f"{k} = {toml_value(v)}" for k, v in item.items())
                out.append("")
        else:
            out.append(f"[{name}]")
            out.extend(f"{k} = {toml_value(v)}" for k, v in body.items())
            out.append("")
    return "\n".join(out)


@dataclass
class Received:
    """One message as the sink got it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes


class _SinkHandler:
    def __init__(self, sink: "SmtpSink") -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.reply_data:
            return self.sink.reply_data
        with self.sink.lock:
            self.sink.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                               envelope.original_content))
        return "250 2.0.0 Ok: stored"


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message."""

    port: int = field(default_factory=free_port)
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reply_data: str | None = None  # e.g. "451 4.3.0 try later" to refuse
    tls_context: Any = None  # an ssl.SSLContext: STARTTLS is offered
    require_starttls: bool = False  # refuse mail over a connection without TLS
    _controller: Controller | None = None

    def start(self) -> "SmtpSink":
        self._controller = Controller(_SinkHandler(self), hostname="127.0.0.1", port=self.port,
                                      data_size_limit=None, tls_context=self.tls_context,
                                      require_starttls=self.require_starttls)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        """Wait until ``count`` messages have arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"sink got {len(self.messages)} message(s), expected {count} within {timeout}s")


class GatewayProcess:
    """``attachment-gateway serve`` in a temporary directory on loopback ports."""

    def __init__(self, tmp: Path, *, next_hop: str | None = None, threshold: int | str = "10MiB",
                 route: dict[str, Any] | None = None, sections: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.outbox = tmp / "outbox"
        self.objects = tmp / "objects"
        self.spool = tmp / "spool"
        self.log_path = tmp / "gateway.log"
        self.audit_path = tmp / "audit.jsonl"
        r = {"name": "contact", "domains": ["contact.example"], "next_hop": next_hop or f"maildir:{self.outbox}",
             "storage": "local", "offload_threshold": threshold}
        r.update(route or {})
        cfg: dict[str, Any] = {
            "gateway": {"hostname": "gw.test", "spool_dir": str(self.spool), "audit_log": str(self.audit_path),
                        "log_level": "info"},
            "smtp": {"listen": f"127.0.0.1:{self.smtp_port}"},
            "http": {"listen": f"127.0.0.1:{self.http_port}", "base_url": f"http://127.0.0.1:{self.http_port}"},
            "links": {"keys": [{"id": "k1", "file": str(tmp / "link.key"), "create_missing": True}]},
            "storage.local": {"backend": "filesystem", "path": str(self.objects)},
            "delivery": {"min_backoff": 1, "max_backoff": 2, "bounce_next_hop": f"maildir:{tmp / 'bounces'}"},
            "worker": {"scan_interval": 1},
        }
        for k, v in (sections or {}).items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        cfg["routes"] = [r]
        self.cfg = cfg
        self.config_path = tmp / "gateway.toml"
        self.config_path.write_text(render_config(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    def reload(self, sections: dict[str, Any], expect: str = "config reloaded", timeout: float = 15.0) -> None:
        """Merge ``sections`` into the config file, send SIGHUP, and wait until
        every serving process has logged ``expect``."""
        assert self.proc is not None
        for k, v in sections.items():
            self.cfg[k] = {**self.cfg[k], **v} if isinstance(v, dict) and isinstance(self.cfg.get(k), dict) else v
        self.config_path.write_text(render_config(self.cfg))
        pids = {e["pid"] for e in self.log_events() if e.get("event") == "ready"}
        done = len([e for e in self.log_events() if e.get("event") == expect])
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while len([e for e in self.log_events() if e.get("event") == expect]) < done + len(pids):
            assert time.monotonic() < deadline, f"not every process reloaded:\n{self.log()}"
            time.sleep(0.05)

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an ``attachment-gateway`` subcommand against this config."""
        return subprocess.run([*GATEWAY, "-c", str(self.config_path), *args], capture_output=True, text=True,
                              cwd=self.tmp, timeout=60)

    def start(self, roles: list[str] | None = None) -> "GatewayProcess":
        args = [*GATEWAY, "-c", str(self.config_path), "serve"]
        if roles:
            args += ["--only", *roles]
        ports = []
        if roles is None or "smtp" in roles:
            ports.append(self.smtp_port)
        if roles is None or "http" in roles:
            ports.append(self.http_port)
        return self._launch(args, ports)

    def _launch(self, args: list[str], ports: list[int]) -> Self:
        """Start ``args`` and wait until it listens on every one of ``ports``."""
        self._log = open(self.log_path, "ab")
        # Its own process group: with several processes ``serve`` is a
        # supervisor and forked children, and a kill must reach them all.
        self.proc = subprocess.Popen(args, cwd=self.tmp, stdout=self._log, stderr=self._log,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        deadline = time.monotonic() + 30
        for port in ports:
            while not port_is_open("127.0.0.1", port):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not listen on {port}:\n{self.log()}")
                time.sleep(0.05)
        if not ports:
            time.sleep(0.5)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                # A crash takes the whole service down: SIGKILL to the
                # supervisor alone would leave its children serving the ports.
                self._kill_group()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever of the group outlived the supervisor (a child it could not
        # stop) must not keep serving after the test.
        self._kill_group()
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself (after a signal the test
        sent); return its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        self.proc = None
        return code

    def metrics(self) -> str:
        """The Prometheus exposition from ``/metrics``."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]

    def wait_audit(self, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for an audit event matching ``predicate`` (a download is
        audited when its last byte has gone, which may be after the client
        has it); return all events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.audit()
            if any(predicate(e) for e in events):
                return events
            time.sleep(0.05)
        raise AssertionError(f"no matching audit event in {self.audit()}")

    def outbox_messages(self) -> list[bytes]:
        new = self.outbox / "new"
        if not new.exists():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def wait_outbox(self, count: int = 1, timeout: float = 30.0) -> list[bytes]:
        """Wait for ``count`` messages in the Maildir outbox; strip the two
        envelope headers Maildir delivery adds, return the messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.outbox_messages()
            if len(msgs) >= count:
                return [strip_maildir_headers(m) for m in msgs]
            time.sleep(0.05)
        raise AssertionError(f"outbox has {len(self.outbox_messages())} message(s), expected {count}\n{self.log()}")

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the spool's incoming and active queues are empty and no
        delivered message is still being removed (it leaves ``active`` for
        ``tmp/ID.PID.done`` a moment before its directory is parked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [p for q in ("incoming", "active") for p in (self.spool / q).glob("*")]
            busy += list((self.spool / "tmp").glob("*.done"))
            if not busy:
                return
            time.sleep(0.05)
        raise AssertionError(f"spool not idle after {timeout}s\n{self.log()[-4000:]}")

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def strip_maildir_headers(data: bytes) -> bytes:
    for prefix in (b"Return-Path:", b"X-Envelope-To:"):
        if data.startswith(prefix):
            data = data[data.index(b"\r\n") + 2:]
            while data[:1] in (b" ", b"\t"):  # a folded field's continuation lines
                data = data[data.index(b"\r\n") + 2:]
    return data


def strip_trace(data: bytes) -> bytes:
    """The message without the Received and X-Attachment-Offload headers the
    gateway put on top."""
    if data.startswith(b"Received: "):
        i = data.index(b"\r\nX-Attachment-Offload: ")
        data = data[i + 2:]
    if data.startswith(b"X-Attachment-Offload: "):
        data = data[data.index(b"\r\n") + 2:]
    return data


def to_wire(data: bytes) -> bytes:
    """Message bytes as SMTP carries them: every line ending CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


