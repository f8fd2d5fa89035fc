"""Sender Rewriting Scheme (issue 21): the scheme itself, and the gateway
forwarding with an SRS sender and taking the platform's bounces back,
through real SMTP on loopback."""
from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from gateway.srs import Srs, SrsError
from tests.harness import GatewayProcess, SmtpSink
from tests.messages import message

SECRET = "an-srs-secret-0123456789"
DAY = 86400.0
NOW = 1_800_000_000.0


def make(clock: float = NOW, secrets: list[bytes] | None = None, **kw: object) -> Srs:
    return Srs("srs.gw.test", secrets or [SECRET.encode()], clock=lambda: clock, **kw)  # type: ignore[arg-type]


def test_round_trip_keeps_the_sender_and_puts_it_in_our_domain() -> None:
    srs = make()
    out = srs.forward("Alice.Smith+tag@Customer.Example")
    assert out.startswith("SRS0=") and out.endswith("@srs.gw.test")
    assert srs.reverse(out) == "Alice.Smith+tag@Customer.Example"
    # MTAs may fold the local part's case: still ours.
    assert srs.reverse(out.lower()) == "Alice.Smith+tag@Customer.Example".lower()


def test_null_sender_and_unrepresentable_senders_are_never_rewritten() -> None:
    srs = make()
    assert srs.forward("") == ""
    assert srs.forward('"a b"@customer.example') == '"a b"@customer.example'
    assert srs.forward("a@[192.0.2.1]") == "a@[192.0.2.1]"
    # Already ours (a loop): not wrapped again.
    mine = srs.forward("alice@customer.example")
    assert srs.forward(mine) == mine


def test_another_forwarders_srs0_becomes_srs1_and_reverses_to_it() -> None:
    srs = make()
    theirs = "SRS0=abcd=TT=orig.example=bob@fwd.example"
    out = srs.forward(theirs)
    assert out.startswith("SRS1=") and out.endswith("@srs.gw.test")
    assert srs.reverse(out) == theirs
    # A third hop keeps the first hop's part.
    other = Srs("srs.other.test", [b"another-secret-0123456789"])
    assert srs.reverse(srs.forward(other.forward(theirs).replace("srs.other.test", "srs.other.test"))) == theirs


@pytest.mark.parametrize("tamper", [
    lambda a: a.replace("=customer.example=", "=evil.example="),     # another domain, same hash
    lambda a: a.replace("=alice@", "=mallory@"),                      # another mailbox
    lambda a: "SRS0=" + a.split("=", 2)[1][:1] + "=" + a.split("=", 2)[2],  # a one-character hash
    lambda a: "SRS0=AAAAAA=" + a.split("=", 2)[2],                    # a guessed hash
    lambda a: a.replace("SRS0=", "SRS2="),                            # not the scheme
])
def test_forged_addresses_are_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    srs = make()
    with pytest.raises(SrsError):
        srs.reverse(tamper(srs.forward("alice@customer.example")))


def test_age_is_checked_across_the_1024_day_wrap() -> None:
    for start in (NOW, NOW + (1023 - (NOW // DAY) % 1024) * DAY):  # a day just before the wrap too
        address = make(start).forward("alice@customer.example")
        assert make(start + 21 * DAY).reverse(address) == "alice@customer.example"
        with pytest.raises(SrsError, match="expired"):
            make(start + 22 * DAY).reverse(address)
        with pytest.raises(SrsError, match="expired"):
            make(start - 2 * DAY).reverse(address)  # from the future


def test_a_previous_secret_still_reverses_and_a_foreign_one_does_not() -> None:
    old = make(secrets=[b"the-old-secret-0123456789"]).forward("alice@customer.example")
    assert make(secrets=[b"the-new-secret-0123456789", b"the-old-secret-0123456789"]).reverse(old) \
        == "alice@customer.example"
    with pytest.raises(SrsError, match="hash"):
        make(secrets=[b"the-new-secret-0123456789"]).reverse(old)


# -- through the gateway -------------------------------------------------------


@pytest.fixture
def sinks() -> tuple[SmtpSink, SmtpSink]:
    platform, customers = SmtpSink().start(), SmtpSink().start()
    yield platform, customers  # type: ignore[misc]
    platform.stop()
    customers.stop()


def srs_gateway(tmp_path: Path, platform: SmtpSink, customers: SmtpSink, **srs: object) -> GatewayProcess:
    (tmp_path / "srs.key").write_text(SECRET)
    return GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{platform.port}", route={"srs": True, "tls": "none"},
                          sections={"srs": {"domain": "srs.gw.test", "secret": {"file": str(tmp_path / "srs.key")},
                                            **srs},
                                    "delivery": {"min_backoff": 1, "max_backoff": 2,
                                                 "bounce_next_hop": f"smtp://127.0.0.1:{customers.port}"}})


def rcpt(port: int, mail_from: str, to: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("platform.test")
        s.mail(mail_from)
        return s.rcpt(to)


def test_forwarded_with_srs_sender_and_the_bounce_reaches_the_customer(
        tmp_path: Path, sinks: tuple[SmtpSink, SmtpSink]) -> None:
    platform, customers = sinks
    with srs_gateway(tmp_path, platform, customers) as gw:
        msg = message("Hello", None, [], From="alice@customer.example", To="help@contact.example").as_bytes()
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
            s.sendmail("alice@customer.example", ["help@contact.example"], msg)
        [got] = platform.wait(1)
        # The envelope sender is ours; the From: header stays the customer's.
        assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith("=customer.example=alice@srs.gw.test")
        assert b"\nFrom: alice@customer.example\r\n" in got.data
        srs_address = got.mail_from

        # The platform's bounce to that address comes back to the customer.
        dsn = (b"From: MAILER-DAEMON@platform.test\r\nTo: " + srs_address.encode() +
               b"\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain\r\n\r\nThe mailbox does not exist.\r\n")
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
            s.sendmail("", [srs_address], dsn)
        [bounce] = customers.wait(1)
        assert bounce.rcpt_tos == ["alice@customer.example"]
        assert bounce.mail_from in ("", "<>")  # the null sender stays null (aiosmtpd says "<>")
        assert b"The mailbox does not exist." in bounce.data
        assert len(platform.messages) == 1  # not forwarded to the platform again

        # Forged, expired, foreign-domain-swapped and non-bounce mail is refused.
        forged = srs_address.replace("=alice@", "=mallory@")
        assert rcpt(gw.smtp_port, "", forged)[0] == 550
        code, text = rcpt(gw.smtp_port, "", forged)
        assert code == 550 and text.startswith(b"5.1.1") and b"hash" in text
        expired = Srs("srs.gw.test", [SECRET.encode()], clock=lambda: __import__("time").time() - 30 * DAY) \
            .forward("alice@customer.example")
        code, text = rcpt(gw.smtp_port, "", expired)
        assert code == 550 and b"expired" in text
        code, text = rcpt(gw.smtp_port, "spammer@elsewhere.example", srs_address)
        assert code == 550 and b"null sender" in text
        assert rcpt(gw.smtp_port, "", "anything@srs.gw.test")[0] == 550

        # Mail with the null sender is forwarded with the null sender.
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
            s.sendmail("", ["help@contact.example"], msg)
        got = platform.wait(2)[1]
        assert got.mail_from in ("", "<>")


def test_any_sender_when_the_config_says_so(tmp_path: Path, sinks: tuple[SmtpSink, SmtpSink]) -> None:
    platform, customers = sinks
    with srs_gateway(tmp_path, platform, customers, accept="any") as gw:
        address = Srs("srs.gw.test", [SECRET.encode()]).forward("alice@customer.example")
        assert rcpt(gw.smtp_port, "auto@platform.test", address)[0] == 250


def test_a_route_without_srs_keeps_the_customers_sender(tmp_path: Path, sinks: tuple[SmtpSink, SmtpSink]) -> None:
    platform, customers = sinks
    gw = srs_gateway(tmp_path, platform, customers)
    gw.cfg["routes"][0]["srs"] = False
    gw.cfg["routes"].append({"name": "other", "domains": ["other.example"], "storage": "local", "srs": True,
                             "next_hop": f"smtp://127.0.0.1:{platform.port}", "tls": "none"})
    from tests.harness import render_config

    gw.config_path.write_text(render_config(gw.cfg))
    with gw:
        msg = message("Hello", None, [], From="alice@customer.example", To="help@contact.example").as_bytes()
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
            s.sendmail("alice@customer.example", ["help@contact.example"], msg)
        [got] = platform.wait(1)
        assert got.mail_from == "alice@customer.example"


def test_config_refuses_srs_without_a_table_and_the_reserved_route_name(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, route={"srs": True})
    out = gw.command("check-config")
    assert out.returncode == 78 and "routes[0].srs: true needs an [srs] table" in out.stderr
    gw = GatewayProcess(tmp_path, route={"name": "srs-bounces"})
    out = gw.command("check-config")
    assert out.returncode == 78 and "reserved" in out.stderr
    # A secret that cannot be read is named.
    gw = GatewayProcess(tmp_path, route={"srs": True},
                        sections={"srs": {"domain": "srs.gw.test", "secret": {"env": "NO_SUCH_SRS_SECRET"}}})
    out = gw.command("check-config")
    assert out.returncode == 78 and "srs.secret: environment variable NO_SUCH_SRS_SECRET" in out.stderr


def test_check_config_warns_when_changed_mail_goes_unsigned_over_smtp(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, next_hop="smtp://127.0.0.1:2599")
    out = gw.command("check-config")
    assert out.returncode == 0 and "warning: routes[0] (contact): forwards changed mail to an SMTP next hop " \
        "without DKIM signing" in out.stderr
    assert "OK (1 route(s)" in out.stdout
    # A Maildir next hop (the demo) is not warned about.
    (tmp_path / "m").mkdir()
    gw = GatewayProcess(tmp_path / "m")
    assert "warning" not in gw.command("check-config").stderr


def test_mail_to_an_srs_address_is_not_signed_with_the_gateways_dkim_key(
        tmp_path: Path, sinks: tuple[SmtpSink, SmtpSink]) -> None:
    """The SRS address of a sender comes back to that sender (the platform's
    bounces quote it), and mail to it goes out as it came, to whoever the
    address names.  Signed there with the gateway's key, anything an
    attacker sends to their own SRS address (From: the contact centre's
    domain, a link, a file) would reach them carrying a valid DKIM signature
    of the gateway's domain, to replay to anyone: a signing oracle."""
    import dkim

    from tests.certs import dkim_key
    from tests.servers.dns import DnsServer

    platform, customers = sinks
    pem, txt = dkim_key()
    (tmp_path / "dkim.pem").write_bytes(pem)
    dns = DnsServer().start()
    try:
        dns.add_txt("gw._domainkey.gw.test", txt)
        gw = srs_gateway(tmp_path, platform, customers)
        gw.cfg["auth"] = {"dns_servers": [f"127.0.0.1:{dns.port}"], "dns_timeout": 2,
                          "dkim": {"domain": "gw.test", "selector": "gw", "key_file": str(tmp_path / "dkim.pem")}}
        from tests.harness import render_config

        gw.config_path.write_text(render_config(gw.cfg))

        def lookup(name: bytes, timeout: float = 5) -> bytes | None:
            values = dns.records.get((name.decode().rstrip(".").lower(), "TXT"))
            return values[0].encode() if values else None

        with gw:
            # Mail forwarded to the platform is signed, as configured.
            msg = message("Hello", None, [], From="mallory@attacker.example", To="help@contact.example")
            with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
                s.sendmail("mallory@attacker.example", ["help@contact.example"], msg.as_bytes())
            [forwarded] = platform.wait(1)
            assert dkim.verify(forwarded.data, dnsfunc=lookup)
            own_srs = forwarded.mail_from  # what the platform's bounce shows the attacker

            forged = (b"From: Payments <payments@gw.test>\r\nTo: victim@elsewhere.example\r\n"
                      b"Subject: new bank details\r\nMessage-ID: <forged@gw.test>\r\nMIME-Version: 1.0\r\n"
                      b"Content-Type: text/plain\r\n\r\nPay to IBAN XX00 EVIL.\r\n")
            with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
                s.sendmail("", [own_srs], forged)
            [back] = customers.wait(1)
            assert back.rcpt_tos == ["mallory@attacker.example"]
            assert b"Pay to IBAN XX00 EVIL." in back.data
            assert b"DKIM-Signature:" not in back.data
            assert not dkim.verify(back.data, dnsfunc=lookup)
    finally:
        dns.stop()


def test_an_address_made_for_one_sender_cannot_be_split_anew_to_relay_elsewhere(
        tmp_path: Path, sinks: tuple[SmtpSink, SmtpSink]) -> None:
    """The hash ran the fields together (``TT`` + ``bank.co`` + ``mbob``), so
    the address made for mbob@bank.co, seen once by its sender (an
    auto-reply quotes it), held as well for bob@bank.com: whoever owns a
    domain could relay through us to every domain beginning with it."""
    platform, customers = sinks
    with srs_gateway(tmp_path, platform, customers) as gw:
        msg = message("Hello", None, [], From="mbob@bank.co", To="help@contact.example").as_bytes()
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
            s.sendmail("mbob@bank.co", ["help@contact.example"], msg)
        [got] = platform.wait(1)
        assert got.mail_from.endswith("=bank.co=mbob@srs.gw.test"), got.mail_from
        tag, digest, ts = got.mail_from.split("=")[:3]
        forged = f"{tag}={digest}={ts}=bank.com=bob@srs.gw.test"
        spam = b"From: x@bank.co\r\nTo: bob@bank.com\r\nSubject: relayed\r\n\r\nRelayed through the gateway.\r\n"
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
            refused = None
            try:
                s.sendmail("", [forged], spam)
            except smtplib.SMTPRecipientsRefused as e:
                refused = e.recipients[forged]
        if refused is None:
            [relayed] = customers.wait(1)
            pytest.fail(f"relayed to {relayed.rcpt_tos} through the bounce route")
        assert refused[0] == 550 and b"hash" in refused[1], refused
        # The honest address still reverses to its sender.
        assert rcpt(gw.smtp_port, "", got.mail_from)[0] == 250


def test_a_legacy_address_still_reverses_and_an_srs0_hash_is_no_srs1s() -> None:
    """SRS0 addresses hashed the old way (in flight at the upgrade) still
    reverse until they expire; an SRS0 address's hash does not make an SRS1
    address (``SRS1=HASH=TT==host=local``) that reverses."""
    import base64
    import hashlib
    import hmac

    srs = make()
    ts = srs._timestamp(NOW)
    old = base64.b64encode(hmac.new(SECRET.encode(), f"{ts}customer.examplealice".lower().encode(),
                                    hashlib.sha1).digest()).decode()[:6]
    assert srs.reverse(f"SRS0={old}={ts}=customer.example=alice@srs.gw.test") == "alice@customer.example"
    new = srs.forward("alice@customer.example")
    digest = new.split("=")[1]
    with pytest.raises(SrsError, match="hash"):
        srs.reverse(f"SRS1={digest}={ts}==customer.example=alice@srs.gw.test")


def test_guessing_srs_hashes_costs_a_second_a_guess(tmp_path: Path, sinks: tuple[SmtpSink, SmtpSink]) -> None:
    """A hash of 6 case-folded base64 characters is one chance in 2^30 a
    guess; refused at once, pipelined RCPTs made a valid address for any
    chosen recipient (an open relay) a matter of a day.  Each refused SRS
    address now costs its session a second; a valid one costs nothing."""
    import time

    platform, customers = sinks
    with srs_gateway(tmp_path, platform, customers) as gw:
        valid = Srs("srs.gw.test", [SECRET.encode()]).forward("alice@customer.example")
        digest = valid.split("=")[1]
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as s:
            s.ehlo("guesser.test")
            s.mail("")
            started = time.monotonic()
            for guess in ("aaaaaa", "aaaaab", "aaaaac"):
                assert s.rcpt(valid.replace(f"={digest}=", f"={guess}="))[0] == 550
            guessing = time.monotonic() - started
            started = time.monotonic()
            assert s.rcpt(valid)[0] == 250
            honest = time.monotonic() - started
        assert guessing >= 2.9, f"three wrong guesses answered in {guessing:.2f}s"
        assert honest < 1.0, honest
