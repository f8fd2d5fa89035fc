"""rsyslog (Debian) on loopback ports as the syslog receiver for audit
tests: one TCP and one UDP input, RFC 5424 parsed by rsyslog itself, and
each message written as one line of the fields it parsed (PRI, timestamp,
hostname, APP-NAME, MSGID, structured data, MSG), so tests see what a real
collector understood, not the bytes we sent."""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.ports import LOOPBACK, free_port, port_is_open
from tests.servers.procs import ServerProcess

RSYSLOGD = "/usr/sbin/rsyslogd"
_SEP = "\x1f"  # unit separator between the parsed fields in each output line


class RsyslogError(RuntimeError):
    """rsyslogd did not start; the message says why."""


class Rsyslog(ServerProcess):
    """``rsyslogd -n`` with its own config, work directory and pid file."""

    def __init__(self, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        self.tcp_port = free_port()
        self.udp_port = free_port()
        # With a certificate and key, a third input speaks RFC 5425 (TLS) here.
        self.tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self.tls_port = free_port() if self.tls else None
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        assert self.dir is not None
        return self.dir / "received.log"

    def start(self) -> "Rsyslog":
        if not Path(RSYSLOGD).exists():
            raise RsyslogError(f"{RSYSLOGD} is missing; run scripts/install-test-deps.sh (Debian package rsyslog)")
        if self.tls is not None and not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
            raise RsyslogError("rsyslog's TLS driver is missing; run scripts/install-test-deps.sh "
                               "(Debian package rsyslog-gnutls)")
        self.dir = Path(tempfile.mkdtemp(prefix="gw-rsyslog-"))
        fields = "".join(f'property(name="{p}"{fmt}) constant(value="{_SEP}")\n' for p, fmt in (
            ("pri", ""), ("timereported", ' dateFormat="rfc3339"'), ("hostname", ""), ("app-name", ""),
            ("msgid", ""), ("structured-data", "")))
        conf = self.dir / "rsyslog.conf"
        tls_global = tls_input = ""
        if self.tls is not None:
            cert, key = self.tls
            # Debian's rsyslog-gnutls: the gtls stream driver, one TLS input
            # beside the plain ones; clients are not asked for certificates.
            tls_global = (f' defaultNetstreamDriverCAFile="{cert}" defaultNetstreamDriverCertFile="{cert}"'
                          f' defaultNetstreamDriverKeyFile="{key}"')
            tls_input = (f'input(type="imtcp" address="{LOOPBACK}" port="{self.tls_port}" '
                         f'streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")')
        conf.write_text(f"""
global(workDirectory="{self.dir}" maxMessageSize="64k"{tls_global})
module(load="imtcp")
module(load="imudp")
input(type="imtcp" address="{LOOPBACK}" port="{self.tcp_port}")
input(type="imudp" address="{LOOPBACK}" port="{self.udp_port}")
{tls_input}
template(name="parsed" type="list") {{
{fields}property(name="msg" droplastlf="on") constant(value="\\n")
}}
*.* action(type="omfile" file="{self.output}" template="parsed")
""")
        check = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RsyslogError(f"rsyslog config refused:\n{check.stdout}{check.stderr}")
        log = open(self.dir / "rsyslogd.log", "wb")
        self._proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.dir / "rsyslogd.pid")],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while not all(port_is_open(LOOPBACK, p) for p in (self.tcp_port, self.tls_port) if p):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                text = (self.dir / "rsyslogd.log").read_text(errors="replace")
                self.stop()
                raise RsyslogError(f"rsyslogd did not listen on {self.tcp_port}:\n{text}")
            time.sleep(0.05)
        return self

    def messages(self) -> list[dict[str, str]]:
        """Every message received so far, as the fields rsyslog parsed."""
        if self.dir is None or not self.output.exists():
            return []
        out = []
        for line in self.output.read_text(errors="replace").splitlines():
            parts = line.split(_SEP)
            if len(parts) == 7:
                out.append(dict(zip(("pri", "timestamp", "hostname", "app_name", "msgid", "sd", "msg"), parts)))
        return out

    def wait(self, count: int, timeout: float = 15.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"rsyslog received {len(self.messages())} message(s), expected {count}")

