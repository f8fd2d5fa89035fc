"""Authenticated forwarding (issue 21), end to end through a next hop that
checks like Amazon SES: real Postfix with OpenDKIM (verify) and policyd-spf,
resolving through the tests' loopback DNS server.

The customer's MTA sends from 127.0.0.2, the gateway from 127.0.0.1; the
customer's domain publishes ``v=spf1 ip4:127.0.0.2 -all`` and signs with
DKIM; the gateway's SRS domain publishes ``v=spf1 ip4:127.0.0.1 -all`` and
its DKIM key is the one ``attachment-gateway dkim keygen`` made, published
as the command printed it.
"""
from __future__ import annotations

import email.utils
import re
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from gateway.authn import keygen
from tests.harness import GATEWAY, ROOT, GatewayProcess, SmtpSink
from tests.messages import message, pdf_bytes
from tests.servers.checking_hop import AUTHSERV_ID, CheckingHop
from tests.servers.dns import DnsServer

CUSTOMER_IP = "127.0.0.2"
SRS_SECRET = "an-srs-secret-for-the-tests-0123"


@dataclass
class World:
    dns: DnsServer
    platform: SmtpSink      # behind the checking hop: what the platform would keep
    customers: SmtpSink     # the customers' MX: DSNs to them arrive here
    hop: CheckingHop
    gateway: GatewayProcess
    customer_key: bytes


def _zone_records(text: str) -> list[tuple[str, str]]:
    """(name, value) of each TXT line ``dkim keygen`` printed."""
    out = []
    for m in re.finditer(r'^(\S+)\. IN TXT \( (.*) \)$', text, re.M):
        out.append((m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("authfwd")
    dns = DnsServer().start()
    platform, customers = SmtpSink().start(), SmtpSink().start()
    hop: CheckingHop | None = None
    gw: GatewayProcess | None = None
    try:
        # The customer's domain: SPF for its own MTA only, and a DKIM key.
        customer = keygen.generate("customer.example", "sel", tmp / "customer")
        dns.add_txt("customer.example", "v=spf1 ip4:127.0.0.2 -all")
        dns.add_txt(customer.dns_name, customer.dns_value)
        # The gateway's key and SRS SPF record, exactly as the command prints them.
        out = subprocess.run([*GATEWAY, "dkim", "keygen", "--domain", "gw.test", "--selector", "gw1",
                              "--out", str(tmp / "gwkeys"), "--srs-domain", "srs.gw.test", "--ip", "127.0.0.1"],
                             capture_output=True, text=True, timeout=60, cwd=tmp,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        records = _zone_records(out.stdout)
        assert [n for n, _ in records] == ["gw1._domainkey.gw.test", "srs.gw.test"]
        for name, value in records:
            dns.add_txt(name, value)
        assert (tmp / "gwkeys" / "gw1.private").stat().st_mode & 0o777 == 0o600

        (tmp / "gw").mkdir()
        gw = GatewayProcess(tmp / "gw", threshold="1MiB", route={"srs": True, "tls": "none"}, sections={
            "srs": {"domain": "srs.gw.test", "secret": {"file": str(tmp / "srs.key")}},
            "auth": {"verify": True, "dns_servers": [f"127.0.0.1:{dns.port}"],
                     "dkim": {"domain": "gw.test", "selector": "gw1", "key_file": str(tmp / "gwkeys/gw1.private")},
                     "arc": {"domain": "gw.test", "selector": "gw1", "key_file": str(tmp / "gwkeys/gw1.private")}},
            "delivery": {"min_backoff": 1, "max_backoff": 2,
                         "bounce_next_hop": f"smtp://127.0.0.1:{customers.port}"}})
        hop = CheckingHop(platform.port, dns.port, bounce_domains={"srs.gw.test": gw.smtp_port}).start()
        (tmp / "srs.key").write_text(SRS_SECRET)
        gw.cfg["routes"][0]["next_hop"] = f"smtp://127.0.0.1:{hop.port}"
        from tests.harness import render_config

        gw.config_path.write_text(render_config(gw.cfg))
        gw.start()
        yield World(dns, platform, customers, hop, gw, customer.private_path.read_bytes())
    finally:
        if gw is not None:
            gw.stop()
        if hop is not None:
            hop.stop()
        platform.stop()
        customers.stop()
        dns.stop()


def signed(world: World, subject: str, attachments: list[tuple[bytes, str, str]] = (),
           to: str = "help@contact.example") -> bytes:
    """A message from alice@customer.example, DKIM-signed by customer.example."""
    msg = message("Hello from a customer.\n", None, list(attachments), From="alice@customer.example", To=to,
                  Subject=subject, Date=email.utils.formatdate())
    data = msg.as_bytes()
    sig = dkim.sign(data, b"sel", b"customer.example", world.customer_key, linesep=b"\r\n",
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
                                     b"content-type"])
    return sig + data


def send_from(ip: str, port: int, mail_from: str, rcpts: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(ip, 0)) as s:
        s.sendmail(mail_from, rcpts, data)


def arrived(world: World, subject: str, timeout: float = 60) -> tuple[str, bytes]:
    """The envelope sender and bytes of the message with ``subject`` at the platform."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with world.platform.lock:
            for m in world.platform.messages:
                if f"Subject: {subject}".encode() in m.data:
                    return m.mail_from, m.data
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} did not reach the platform\n{world.hop.maillog()[-3000:]}\n"
                         f"{world.gateway.log()[-3000:]}")


def verdicts(data: bytes) -> list[str]:
    """The checking hop's results, one clause each ("dkim=pass header.d=gw.test ..."),
    without comments (which may hold semicolons)."""
    head = data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").decode()
    out = []
    for line in head.split("\r\n"):
        if line.lower().startswith("authentication-results:") and f": {AUTHSERV_ID};" in line:
            out += [c.strip() for c in re.sub(r"\([^()]*\)", "", line).split(";")[1:]]
    return out


def has(results: list[str], pattern: str) -> bool:
    """Whether one clause matches ``pattern`` (a regular expression)."""
    return any(re.search(pattern, c) for c in results)


def test_sent_directly_the_customers_mail_passes_spf_and_dkim(world: World) -> None:
    send_from(CUSTOMER_IP, world.hop.port, "alice@customer.example", ["help@contact.example"],
              signed(world, "direct"))
    mail_from, data = arrived(world, "direct")
    results = verdicts(data)
    assert has(results, r"spf=pass .*smtp\.mailfrom=customer\.example"), results
    # policyd-spf names the whole envelope sender in its comment.
    assert b"envelope-from=alice@customer.example" in data
    assert has(results, r"dkim=pass .*header\.d=customer\.example"), results


def test_from_the_gateways_address_the_customers_sender_fails_spf(world: World) -> None:
    # What the gateway would do without SRS: SES-like checking refuses it.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send_from("127.0.0.1", world.hop.port, "alice@customer.example", ["help@contact.example"],
                  signed(world, "spoofed"))
    [(code, text)] = e.value.recipients.values()
    assert code == 550 and b"SPF" in text


def test_through_the_gateway_with_an_offload_spf_and_the_gateways_dkim_pass(world: World) -> None:
    data = signed(world, "offloaded", [(pdf_bytes(2 << 20), "application/pdf", "invoice.pdf")])
    send_from(CUSTOMER_IP, world.gateway.smtp_port, "alice@customer.example", ["help@contact.example"], data)
    mail_from, out = arrived(world, "offloaded")
    assert len(out) < 200_000  # the PDF was offloaded: the body changed
    assert re.fullmatch(r"SRS0=[^=]+=[A-Z2-7]{2}=customer\.example=alice@srs\.gw\.test", mail_from), mail_from
    assert b"\nFrom: alice@customer.example\r\n" in out  # the From: header stays the customer's
    results = verdicts(out)
    assert has(results, r"spf=pass .*smtp\.mailfrom=srs\.gw\.test"), \
        results
    assert has(results, r"dkim=pass .*header\.d=gw\.test"), results
    # The customer's own signature no longer matches the changed body.
    assert has(results, r"dkim=fail .*header\.d=customer\.example"), results


def test_an_unchanged_message_keeps_the_customers_signature(world: World) -> None:
    send_from(CUSTOMER_IP, world.gateway.smtp_port, "alice@customer.example", ["help@contact.example"],
              signed(world, "unchanged"))
    mail_from, out = arrived(world, "unchanged")
    assert b"X-Attachment-Offload:" in out and b"Received: from" in out  # trace fields added on top
    results = verdicts(out)
    assert has(results, r"dkim=pass .*header\.d=customer\.example"), results
    assert has(results, r"dkim=pass .*header\.d=gw\.test"), results
    assert has(results, r"spf=pass .*smtp\.mailfrom=srs\.gw\.test"), results


def test_the_hops_bounce_to_the_srs_address_reaches_the_customer(world: World) -> None:
    send_from(CUSTOMER_IP, world.gateway.smtp_port, "alice@customer.example", ["unknown@contact.example"],
              signed(world, "bounced", to="unknown@contact.example"))
    [dsn] = world.customers.wait(1, timeout=60)
    assert dsn.rcpt_tos == ["alice@customer.example"]
    assert dsn.mail_from in ("", "<>")
    assert b"no such mailbox here" in dsn.data and b"Subject: bounced" in dsn.data
    assert not any(b"Subject: bounced" in m.data for m in world.platform.messages)
