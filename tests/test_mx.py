"""Next hops by domain: MX lookup, preference order, failover, the address
fallback, and the bracketed form that skips the lookup (Postfix's ``[host]``).

The gateway is a real ``attachment-gateway serve`` process whose ``[auth]
dns_servers`` point at the loopback DNS server (tests/servers/dns.py); the
mail exchangers are real SMTP servers (aiosmtpd) on other loopback
addresses, 127.0.0.2 and up, all on one port, as MX targets on port 25 are.
"""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.harness import SmtpSink, _SinkHandler, wait_until
from tests.messages import message, send
from tests.servers.dns import DnsServer
from tests.servers.ports import free_port

DOMAIN = "platform.test"


@dataclass
class HostSink(SmtpSink):
    """The harness sink, listening on another loopback address."""

    host: str = "127.0.0.2"

    def start(self) -> HostSink:
        self._controller = Controller(_SinkHandler(self), hostname=self.host, port=self.port,
                                      data_size_limit=None)
        self._controller.start()
        return self


class BusyGreeter:
    """An SMTP server that greets with ``421`` and hangs up (a mail
    exchanger that is overloaded)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port))
        self.greeted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"421 4.3.2 mx1 is busy, try another\r\n")
                self.greeted += 1

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    server = DnsServer().start()
    yield server
    server.stop()


def _gateway(make_gateway: Any, dns: DnsServer, next_hop: str) -> Any:
    return make_gateway(next_hop=next_hop,
                        sections={"auth": {"dns_servers": [f"127.0.0.1:{dns.port}"], "dns_timeout": 2}})


def _deferred(gw: Any) -> list[dict[str, Any]]:
    return [e for e in gw.log_events() if e.get("event") == "deferred"]


def test_mail_goes_to_the_preferred_mx_and_fails_over_to_the_next(make_gateway, dns: DnsServer) -> None:
    port = free_port()
    # Listed out of order: preference decides, not the order of the answer.
    dns.add_mx(DOMAIN, 20, "mx2.platform.test")
    dns.add_mx(DOMAIN, 10, "mx1.platform.test")
    dns.add_a("mx1.platform.test", "127.0.0.2")
    dns.add_a("mx2.platform.test", "127.0.0.3")
    mx1 = HostSink(port=port, host="127.0.0.2").start()
    mx2 = HostSink(port=port, host="127.0.0.3").start()
    try:
        gw = _gateway(make_gateway, dns, f"smtp://{DOMAIN}:{port}")
        send(gw.smtp_port, message(Subject="to the preferred MX"))
        mx1.wait(1)
        assert mx2.messages == []
        assert (DOMAIN, "MX") in dns.queries

        # The preferred MX goes down: the next message goes to the second.
        mx1.stop()
        send(gw.smtp_port, message(Subject="failover"))
        got = mx2.wait(1)
        assert b"Subject: failover" in got[0].data
        assert len(mx1.messages) == 1
        failed = [e for e in gw.log_events() if e.get("event") == "mail exchanger failed"]
        assert failed and failed[0]["mx"] == "mx1.platform.test" and failed[0]["address"] == "127.0.0.2", failed
        assert _deferred(gw) == [], "a failover is not a deferral"
    finally:
        mx1.stop()
        mx2.stop()


def test_a_4xx_greeting_moves_on_to_the_next_mx(make_gateway, dns: DnsServer) -> None:
    port = free_port()
    dns.add_mx(DOMAIN, 10, "mx1.platform.test")
    dns.add_mx(DOMAIN, 20, "mx2.platform.test")
    dns.add_a("mx1.platform.test", "127.0.0.2")
    dns.add_a("mx2.platform.test", "127.0.0.3")
    busy = BusyGreeter("127.0.0.2", port)
    mx2 = HostSink(port=port, host="127.0.0.3").start()
    try:
        gw = _gateway(make_gateway, dns, f"smtp://{DOMAIN}:{port}")
        send(gw.smtp_port, message(Subject="busy primary"))
        mx2.wait(1)
        assert busy.greeted >= 1
        assert _deferred(gw) == []
    finally:
        busy.stop()
        mx2.stop()


def test_every_mx_down_defers_naming_each_then_delivers(make_gateway, dns: DnsServer) -> None:
    port = free_port()
    dns.add_mx(DOMAIN, 10, "mx1.platform.test")
    dns.add_mx(DOMAIN, 20, "mx2.platform.test")
    dns.add_a("mx1.platform.test", "127.0.0.2")
    dns.add_a("mx2.platform.test", "127.0.0.3")
    gw = _gateway(make_gateway, dns, f"smtp://{DOMAIN}:{port}")
    send(gw.smtp_port, message(Subject="all down"))
    wait_until(lambda: _deferred(gw), what="a deferral")
    reason = _deferred(gw)[0]["reason"]
    assert reason.startswith(f"4.4.1 connect to smtp://{DOMAIN}:{port} failed"), reason
    assert "mx1.platform.test[127.0.0.2]" in reason and "mx2.platform.test[127.0.0.3]" in reason, reason
    mx2 = HostSink(port=port, host="127.0.0.3").start()
    try:
        mx2.wait(1)
    finally:
        mx2.stop()


def test_a_domain_without_mx_records_is_its_own_mail_exchanger(make_gateway, dns: DnsServer) -> None:
    port = free_port()
    dns.add_a(DOMAIN, "127.0.0.4")  # an A record and no MX: NODATA for MX (RFC 5321 section 5.1)
    sink = HostSink(port=port, host="127.0.0.4").start()
    try:
        gw = _gateway(make_gateway, dns, f"smtp://{DOMAIN}:{port}")
        send(gw.smtp_port, message(Subject="implicit MX"))
        sink.wait(1)
        assert (DOMAIN, "MX") in dns.queries and (DOMAIN, "A") in dns.queries
    finally:
        sink.stop()


def test_a_failed_lookup_defers_with_the_reason_and_delivers_once_dns_answers(make_gateway,
                                                                            dns: DnsServer) -> None:
    port = free_port()
    dns.add_mx(DOMAIN, 10, "mx1.platform.test")
    dns.add_a("mx1.platform.test", "127.0.0.2")
    dns.mode = "servfail"
    sink = HostSink(port=port, host="127.0.0.2").start()
    try:
        gw = _gateway(make_gateway, dns, f"smtp://{DOMAIN}:{port}")
        send(gw.smtp_port, message(Subject="dns down"))
        wait_until(lambda: _deferred(gw), what="a deferral")
        reason = _deferred(gw)[0]["reason"]
        assert reason.startswith(f"4.4.3 MX lookup for {DOMAIN} failed"), reason
        rows = json.loads(gw.command("queue", "list", "--json").stdout)
        assert len(rows) == 1 and "4.4.3 MX lookup" in json.dumps(rows), rows
        assert sink.messages == []
        dns.mode = "answer"
        sink.wait(1)
    finally:
        sink.stop()


def test_a_domain_with_no_address_defers_with_4_4_4(make_gateway, dns: DnsServer) -> None:
    port = free_port()
    dns.add_mx(DOMAIN, 10, "mx1.platform.test")  # the exchanger has no A or AAAA record
    gw = _gateway(make_gateway, dns, f"smtp://{DOMAIN}:{port}")
    send(gw.smtp_port, message(Subject="nowhere"))
    wait_until(lambda: _deferred(gw), what="a deferral")
    reason = _deferred(gw)[0]["reason"]
    assert reason.startswith(f"4.4.4 no address for {DOMAIN} (MX mx1.platform.test)"), reason


def test_a_host_in_brackets_is_connected_to_without_mx_lookup(make_gateway, dns: DnsServer) -> None:
    port = free_port()
    # localhost as a mail domain has this MX; in brackets it is just the host.
    dns.add_mx("localhost", 10, "mx1.platform.test")
    dns.add_a("mx1.platform.test", "127.0.0.2")
    exchanger = HostSink(port=port, host="127.0.0.2").start()
    host = HostSink(port=port, host="127.0.0.1").start()
    try:
        by_domain = _gateway(make_gateway, dns, f"smtp://localhost:{port}")
        send(by_domain.smtp_port, message(Subject="by domain"))
        exchanger.wait(1)
        assert host.messages == []
        queries = len(dns.queries)

        bracketed = _gateway(make_gateway, dns, f"smtp://[localhost]:{port}")
        send(bracketed.smtp_port, message(Subject="bracketed"))
        got = host.wait(1)
        assert b"Subject: bracketed" in got[0].data and len(exchanger.messages) == 1
        assert dns.queries[queries:] == [], "no lookup through the configured DNS for a bracketed host"
    finally:
        host.stop()
        exchanger.stop()


def test_check_config_names_the_next_hop_forms(make_gateway) -> None:
    gw = make_gateway(start=False, next_hop="smtp://[platform.test:25")
    done = gw.command("check-config")
    assert done.returncode == 78, done
    assert "smtp://DOMAIN[:PORT]" in done.stderr + done.stdout and "[HOST]" in done.stderr + done.stdout, done
