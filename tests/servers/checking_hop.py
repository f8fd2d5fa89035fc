"""A next hop that checks mail as Amazon SES does: SPF and DKIM, from real software.

Postfix (tests/servers/postfix.py) receives on loopback and relays to a
sink; OpenDKIM (Debian ``opendkim``, verify mode) is its milter and adds
Authentication-Results for every signature; ``policyd-spf`` (Debian
``postfix-policyd-spf-python``) checks the MAIL FROM's SPF against the
connecting address, rejects a hard fail (as SES counts it against the
sender) and adds its own Authentication-Results.  Both resolve through the
tests' loopback DNS server (tests/servers/dns.py) without touching
/etc/resolv.conf:

- OpenDKIM is built with libunbound here: ``ResolverConfiguration`` names
  an unbound config that forwards every name to the test server's port
  (``do-not-query-localhost: no``, or unbound never asks 127.0.0.1; and
  ``local-zone: "test." nodefault``, or it answers NXDOMAIN for .test
  names itself).
- policyd-spf uses pyspf, which asks pydns (Debian 12) or dnspython: it runs
  under a wrapper that points either one's defaults at the test server.

``transport_maps`` send mail for ``bounce_domains`` (the gateway's SRS
domain) to ``bounce_port``, and make ``unknown_rcpt`` a 5.1.1 failure, so
this hop also bounces, to the message's envelope sender, as a platform does.
Everything lives in temporary directories; a daemon that does not come up
raises (a test never skips for it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from .ports import LOOPBACK, free_port, wait_for_port
from .postfix import PostfixInstance

OPENDKIM = "/usr/sbin/opendkim"
POLICYD_SPF_PYTHON = "/usr/bin/python3"  # Debian's policyd-spf is a dist-packages module

AUTHSERV_ID = "nexthop.test"

_SPF_WRAPPER = '''\
"""policyd-spf with its DNS pointed at the tests' server (no /etc/resolv.conf)."""
import sys

try:  # pyspf over dnspython, where Debian has it
    import dns.resolver
except ImportError:
    pass
else:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["{host}"]
    resolver.port = {port}
    dns.resolver.default_resolver = resolver
import spf  # with pydns (Debian 12), this reads /etc/resolv.conf; the defaults below win
try:
    import DNS
except ImportError:
    pass
else:
    DNS.defaults["server"] = ["{host}"]
    DNS.defaults["port"] = {port}
from spf_engine.policyd_spf import main
sys.exit(main())
'''


class CheckingHopError(RuntimeError):
    """OpenDKIM or Postfix did not start; the text says why."""


class CheckingHop:
    """Postfix + OpenDKIM + policyd-spf on loopback, relaying to ``relay_port``."""

    def __init__(self, relay_port: int, dns_port: int, *, bounce_domains: dict[str, int] | None = None,
                 unknown_rcpt: str = "unknown@contact.example", hostname: str = AUTHSERV_ID) -> None:
        self.relay_port = relay_port
        self.dns_port = dns_port
        self.bounce_domains = bounce_domains or {}
        self.unknown_rcpt = unknown_rcpt
        self.hostname = hostname
        self.milter_port = free_port()
        self.root: Path | None = None
        self.opendkim: subprocess.Popen[bytes] | None = None
        self.postfix: PostfixInstance | None = None

    @property
    def port(self) -> int:
        assert self.postfix is not None
        return self.postfix.port

    def start(self) -> "CheckingHop":
        for path in (OPENDKIM, POLICYD_SPF_PYTHON):
            if not os.path.exists(path):
                raise CheckingHopError(f"{path} not found: run scripts/install-test-deps.sh")
        self.root = Path(tempfile.mkdtemp(prefix="checking-hop-"))
        os.chmod(self.root, 0o755)  # policyd-spf runs as nobody and reads its files here
        try:
            self._start_opendkim()
            self._start_postfix()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_opendkim(self) -> None:
        assert self.root is not None
        unbound = self.root / "unbound.conf"
        # unbound answers the special-use "test." names itself (RFC 6761) unless told not to.
        unbound.write_text(f"server:\n  do-not-query-localhost: no\n  verbosity: 0\n"
                           f"  local-zone: \"test.\" nodefault\n"
                           f"forward-zone:\n  name: \".\"\n  forward-addr: {LOOPBACK}@{self.dns_port}\n")
        conf = self.root / "opendkim.conf"
        conf.write_text(f"Mode v\nSocket inet:{self.milter_port}@{LOOPBACK}\nAuthservID {self.hostname}\n"
                        f"ResolverConfiguration {unbound}\nAlwaysAddARHeader yes\nSyslog no\n"
                        f"PidFile {self.root / 'opendkim.pid'}\nBackground no\nUMask 022\n")
        self.log = open(self.root / "opendkim.log", "wb")
        self.opendkim = subprocess.Popen([OPENDKIM, "-f", "-x", str(conf), "-v"], stdout=self.log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(LOOPBACK, self.milter_port, 20)
        except RuntimeError as e:
            raise CheckingHopError(f"opendkim did not listen: {e}\n{self.opendkim_log()}") from e
        if self.opendkim.poll() is not None:
            raise CheckingHopError(f"opendkim exited {self.opendkim.returncode}:\n{self.opendkim_log()}")

    def _start_postfix(self) -> None:
        assert self.root is not None
        wrapper = self.root / "policyd_spf_wrapper.py"
        wrapper.write_text(_SPF_WRAPPER.format(host=LOOPBACK, port=self.dns_port))
        spf_conf = self.root / "policyd-spf.conf"
        # skip_addresses: the default skips 127.0.0.0/8, which is all these tests have.
        spf_conf.write_text("debugLevel = 1\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
                            "PermError_reject = False\nTempError_Defer = False\nskip_addresses = 192.0.2.255/32\n"
                            f"Header_Type = AR\nAuthserv_Id = {self.hostname}\nHide_Receiver = Yes\n")
        for p in (wrapper, spf_conf):
            p.chmod(0o644)
        transport = self.root / "transport"
        transport.write_text(f"{self.unknown_rcpt} error:5.1.1 no such mailbox here\n" + "".join(
            f"{d} smtp:[{LOOPBACK}]:{port}\n" for d, port in self.bounce_domains.items()))
        transport.chmod(0o644)
        self.postfix = PostfixInstance(
            self.relay_port, hostname=self.hostname,
            main_cf={"smtpd_milters": f"inet:{LOOPBACK}:{self.milter_port}", "milter_default_action": "tempfail",
                     "smtpd_recipient_restrictions": "check_policy_service unix:private/policyd-spf",
                     "policyd-spf_time_limit": "3600",
                     "transport_maps": f"texthash:{transport}",
                     # Bounces are the point here: send them at once.
                     "notify_classes": ""},
            master_cf_extra=(f"policyd-spf unix - n n - 0 spawn\n"
                             f"  user=nobody argv={POLICYD_SPF_PYTHON} {wrapper} {spf_conf}\n"))
        self.postfix.start()

    def opendkim_log(self) -> str:
        assert self.root is not None
        path = self.root / "opendkim.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def maillog(self) -> str:
        return self.postfix.maillog() if self.postfix is not None else ""

    def stop(self) -> None:
        if self.postfix is not None:
            self.postfix.stop()
            self.postfix = None
        if self.opendkim is not None:
            if self.opendkim.poll() is None:
                self.opendkim.terminate()
                try:
                    self.opendkim.wait(10)
                except subprocess.TimeoutExpired:
                    self.opendkim.kill()
                    self.opendkim.wait(10)
            self.opendkim = None
            self.log.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "CheckingHop":
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

