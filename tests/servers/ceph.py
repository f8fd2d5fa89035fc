"""A throwaway one-node Ceph cluster with radosgw: a real S3 server on loopback.

One monitor, one OSD on the in-memory object store and one radosgw, all under a
temporary directory, with authentication between the daemons turned off and
everything bound to 127.0.0.1.  It starts in seconds from an empty folder and
is stopped (and its folder removed) after.

radosgw is used because it checks what moto does not: SigV4 signatures
(403 SignatureDoesNotMatch on a changed URL), presigned-URL expiry (403) and
unsigned reads of a private bucket.  SSE-KMS works with the ``testing`` KMS
backend (one key, ``KMS_KEY_ID``) and is echoed by HeadObject; SSE-S3
(``AES256``) is accepted but not echoed by this release (Ceph 16).

Debian packages: ``radosgw ceph-mon ceph-osd`` (scripts/install-storage-deps.sh).

Usage::

    with CephRadosgw() as ceph:
        s3 = ceph.client()  # or boto3.client("s3", endpoint_url=ceph.endpoint_url, ...)
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from .ports import LOOPBACK, free_port, port_is_open, wait_for_port

# The one key the "testing" KMS backend knows; SSE-KMS requests must name it.
KMS_KEY_ID = "testkey-1"
_KMS_KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

ACCESS_KEY = "GATEWAYTESTACCESSKEY"
SECRET_KEY = "gateway-test-secret-key-0123456789abcdef"

_BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool")


class CephError(RuntimeError):
    """The cluster could not start; the message carries the daemons' log tails."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"  ({path.name}: no log)"
    return "\n".join(f"  {line}" for line in text[-lines:])


class CephRadosgw:
    """Start and stop a one-node Ceph cluster whose radosgw serves S3 on loopback.

    After ``start()``: ``endpoint_url``, ``access_key``/``secret_key`` of an S3
    user, ``region`` (the zonegroup name GetBucketLocation reports) and
    ``kms_key_id`` (usable with ``ServerSideEncryption="aws:kms"``).
    ``startup_seconds`` records how long the start took.
    """

    def __init__(self, memstore_bytes: int = 1 << 30, timeout: float = 90.0) -> None:
        self.memstore_bytes = memstore_bytes
        self.timeout = timeout
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.kms_key_id = KMS_KEY_ID
        self.region = "default"
        self.dir: Path | None = None
        self.rgw_port = 0
        self.startup_seconds = 0.0
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    # -- public -----------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, ``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.rgw_port}"

    def start(self) -> "CephRadosgw":
        """Create the cluster from nothing and wait until S3 answers."""
        missing = [b for b in _BINARIES if shutil.which(b) is None]
        if missing:
            raise CephError(f"Ceph is not installed (missing {', '.join(missing)}); "
                            "run scripts/install-storage-deps.sh as root")
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="gw-ceph-"))
        try:
            self._bootstrap()
        except BaseException as e:
            report = self._logs_report()
            self.stop()
            if isinstance(e, CephError):
                raise CephError(f"{e}\n{report}") from None
            raise CephError(f"Ceph failed to start: {e!r}\n{report}") from e
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop radosgw, the OSD and the monitor (in that order) and remove the folder."""
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self._procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def client(self) -> Any:
        """A plain boto3 S3 client of the test user (SigV4), to set up
        buckets and look at the server behind the gateway's back."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(signature_version="s3v4"))

    def radosgw_admin(self, *args: str) -> str:
        """Run ``radosgw-admin`` against this cluster and return its output."""
        return self._run("radosgw-admin", *args)

    def ceph(self, *args: str) -> str:
        """Run the ``ceph`` CLI against this cluster and return its output."""
        return self._run("ceph", *args)

    def __enter__(self) -> "CephRadosgw":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- internals --------------------------------------------------------

    def _conf(self) -> Path:
        assert self.dir is not None
        return self.dir / "ceph.conf"

    def _write_conf(self, fsid: str, mon_port: int) -> None:
        d = self.dir
        assert d is not None
        for sub in ("mon/a", "osd/0", "rgw", "run", "log", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self._conf().write_text(f"""\
[global]
fsid = {fsid}
mon initial members = a
mon host = [v2:{LOOPBACK}:{mon_port}]
public addr = {LOOPBACK}
cluster addr = {LOOPBACK}
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
# without this, clients with auth "none" wait 300 s for the monitor
ms mon client mode = crc secure
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
log to stderr = false
err to stderr = true
mon data = {d}/mon/$id
osd data = {d}/osd/$id
tmp dir = {d}/tmp
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd max object name len = 460
osd max object namespace len = 64
rgw data = {d}/rgw
rgw frontends = beast endpoint={LOOPBACK}:{self.rgw_port}
rgw enable usage log = false
rgw crypt require ssl = false
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = {KMS_KEY_ID}={_KMS_KEY}
rgw lc debug interval = 10
""")

    def _run(self, *cmd: str, timeout: float = 60.0) -> str:
        full = [cmd[0], "-c", str(self._conf()), *cmd[1:]]
        try:
            res = subprocess.run(full, capture_output=True, timeout=timeout, text=True,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CephError(f"{' '.join(cmd)}: no answer after {timeout:.0f}s") from None
        if res.returncode != 0:
            raise CephError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        return res.stdout

    def _spawn(self, name: str, *cmd: str) -> None:
        assert self.dir is not None
        out = open(self.dir / "log" / f"{name}.stderr", "wb")
        proc = subprocess.Popen([cmd[0], "-c", str(self._conf()), *cmd[1:]], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self._procs.append((name, proc))

    def _check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise CephError(f"{name} exited with status {proc.returncode}")

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            self._check_alive()
            try:
                if ready():
                    return
            except CephError:
                pass
            if time.monotonic() > deadline:
                raise CephError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _bootstrap(self) -> None:
        assert self.dir is not None
        d = self.dir
        fsid = str(uuid.uuid4())
        mon_port = free_port()
        self.rgw_port = free_port()
        self._write_conf(fsid, mon_port)

        # Monitor: a monmap with one member, then mkfs and run in the foreground.
        self._run("ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")
        monmap = str(d / "monmap")
        subprocess.run(["monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", "a",
                        f"[v2:{LOOPBACK}:{mon_port}]", monmap], check=True, capture_output=True)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--fsid", fsid, "--monmap", monmap,
                  "--keyring", str(d / "keyring"))
        self._spawn("mon.a", "ceph-mon", "-f", "-i", "a")
        wait_for_port(LOOPBACK, mon_port, timeout=self.timeout)
        self._wait("the monitor to form a quorum", lambda: '"quorum"' in self.ceph("quorum_status", "-f", "json",
                                                                                  "--connect-timeout", "5"),
                   timeout=self.timeout)

        # One OSD on the in-memory store.
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        if osd_id != "0":
            raise CephError(f"expected OSD id 0, got {osd_id!r}")
        self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._spawn("osd.0", "ceph-osd", "-f", "-i", "0")
        self._wait("the OSD to come up", lambda: '"num_up_osds":1' in self.ceph("osd", "stat", "-f", "json")
                   .replace(" ", ""), timeout=self.timeout)

        # radosgw creates its pools on first start; the S3 user is made after.
        self._spawn("rgw", "radosgw", "-f", "-n", "client.rgw.gw")
        self._wait("radosgw to listen", lambda: port_is_open(LOOPBACK, self.rgw_port), timeout=self.timeout)
        self.radosgw_admin("user", "create", "--uid", "gateway", "--display-name", "gateway tests",
                           "--access-key", self.access_key, "--secret-key", self.secret_key)

    def _logs_report(self) -> str:
        if self.dir is None:
            return ""
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            parts.append(f"--- {path.name} (last lines) ---\n{_tail(path)}")
        return "\n".join(parts)


if __name__ == "__main__":  # manual check: python -m tests.servers.ceph
    with CephRadosgw() as c:
        print(f"radosgw at {c.endpoint_url} after {c.startup_seconds:.1f}s")
        if os.environ.get("CEPH_HOLD"):
            time.sleep(float(os.environ["CEPH_HOLD"]))
