"""Authentication through the gateway (issue 7): DKIM, SPF and DMARC
verified on arrival, Authentication-Results on top, an ARC set over what
leaves, optional DKIM signing, and DNS failure failing open.

Keys are made in the test; DNS is a real server on loopback
(tests/servers/dns.py) that the gateway's own resolver asks; the next hop
is a real SMTP sink, and what it received is checked with dkimpy.
"""
from __future__ import annotations

import base64
import hashlib
import random
import re
import smtplib
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import dkim
import pytest

from tests.certs import dkim_key
from tests.harness import GatewayProcess, SmtpSink
from tests.messages import links, message, parse, pdf_bytes, send
from tests.servers.dns import DnsServer

MiB = 1 << 20
AUTHSERV = "gw.test"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def keys(dns: DnsServer, tmp_path: Path) -> dict[str, Any]:
    """The sender's DKIM key, an upstream ARC sealer's key and the gateway's
    own key, all published in the loopback DNS; SPF and DMARC for the sender."""
    sender_pem, sender_txt = dkim_key()
    upstream_pem, upstream_txt = dkim_key()
    gw_pem, gw_txt = dkim_key()
    dns.add_txt("s1._domainkey.example.net", sender_txt)
    dns.add_txt("up._domainkey.upstream.example", upstream_txt)
    dns.add_txt("gw._domainkey.gw.test", gw_txt)
    dns.add_txt("example.net", "v=spf1 ip4:127.0.0.1 -all")
    dns.add_txt("_dmarc.example.net", "v=DMARC1; p=reject")
    key_file = tmp_path / "gw-dkim.pem"
    key_file.write_bytes(gw_pem)
    return {"sender": sender_pem, "upstream": upstream_pem, "gw_file": key_file}


def offline(dns: DnsServer):
    """A dkimpy dnsfunc reading the same table the loopback server serves."""
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        values = dns.records.get((name.decode().rstrip(".").lower(), "TXT"))
        return values[0].encode() if values else None
    return lookup


def auth_gateway(make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any], *, dkim_sign: bool = False,
                 dns_timeout: float = 2, **kwargs: Any) -> GatewayProcess:
    signing = {"domain": "gw.test", "selector": "gw", "key_file": str(keys["gw_file"])}
    auth = {"verify": True, "authserv_id": AUTHSERV, "dns_servers": [f"127.0.0.1:{dns.port}"],
            "dns_timeout": dns_timeout, "arc": signing}
    if dkim_sign:
        auth["dkim"] = signing
    return make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}", sections={"auth": auth}, **kwargs)


def signed(keys: dict[str, Any], msg: bytes) -> bytes:
    return dkim.sign(msg, b"s1", b"example.net", keys["sender"], linesep=b"\r\n") + msg


def ar_headers(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    return [h for h in unfolded.split("\r\n") if h.lower().startswith("authentication-results:")]


def test_signed_message_with_large_attachment_gets_dkim_pass_and_a_verifying_arc_seal(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    gw = auth_gateway(make_gateway, sink, dns, keys, threshold="1MiB")
    pdf = pdf_bytes(3 * MiB)
    raw = signed(keys, message("See the invoice.\n", attachments=[(pdf, "application/pdf", "invoice.pdf")],
                               From="Customer <customer@example.net>").as_bytes())
    # A forged result under our own name, added after signing, must not survive.
    forged = b"Authentication-Results: gw.test; dkim=pass header.d=bank.example; dmarc=pass\r\n"
    send(gw.smtp_port, forged + raw, sender="customer@example.net")
    [got] = sink.wait(1)
    assert len(got.data) < 64 * 1024 and pdf not in got.data and links(got.data)
    [ar] = ar_headers(got.data)
    assert ar.startswith("Authentication-Results: gw.test;")
    assert "dkim=pass header.d=example.net header.s=s1" in ar
    assert "spf=pass smtp.mailfrom=example.net" in ar and "dmarc=pass" in ar and "bank.example" not in ar
    assert got.data.startswith(b"ARC-Seal: i=1; cv=none;")
    cv, results, reason = dkim.arc_verify(got.data, dnsfunc=offline(dns))
    assert cv == b"pass", (reason, results)
    # The sender's own signature no longer holds over the rewritten body:
    # that is why the results travel in the seal.
    assert not dkim.verify(got.data, dnsfunc=offline(dns))


@pytest.mark.parametrize("claim", [rb"(a\) b) gw.test", b'"gw.test"', b"(x (y) z) GW.test 1"])
def test_a_forged_result_under_our_name_written_another_rfc_way_does_not_survive(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any], claim: bytes) -> None:
    """RFC 8601 section 5: whatever claims our authserv-id is cut, however
    the claim is written (an escaped parenthesis in a comment, a quoted id)
    as long as an RFC parser downstream reads it as ours."""
    gw = auth_gateway(make_gateway, sink, dns, keys, dns_timeout=0.5)
    forged = b"Authentication-Results: " + claim + b"; dkim=pass header.d=bank.example; dmarc=pass\r\n"
    other = b"Authentication-Results: mx.upstream.example; spf=pass smtp.mailfrom=example.net\r\n"
    send(gw.smtp_port, forged + other + b"From: customer@example.net\r\nTo: support@contact.example\r\n"
                       b"Subject: x\r\n\r\nhi\r\n", sender="customer@example.net")
    [got] = sink.wait(1, timeout=30)
    ars = ar_headers(got.data)
    assert b"bank.example" not in got.data, ars
    assert len(ars) == 2 and ars[0].startswith("Authentication-Results: gw.test;"), ars
    assert ars[1] == other.decode().strip()  # another server's results stay


def test_body_altered_before_the_gateway_shows_dkim_fail_and_still_goes(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    gw = auth_gateway(make_gateway, sink, dns, keys)
    raw = signed(keys, b"From: customer@example.net\r\nTo: support@contact.example\r\nSubject: pay\r\n\r\n"
                       b"Please pay 100 EUR.\r\n")
    send(gw.smtp_port, raw.replace(b"100 EUR", b"900 EUR"), sender="customer@example.net")
    [got] = sink.wait(1)
    [ar] = ar_headers(got.data)
    assert "dkim=fail" in ar and "body hash mismatch" in ar
    assert "dmarc=pass" in ar  # SPF still aligns for example.net
    assert dkim.arc_verify(got.data, dnsfunc=offline(dns))[0] == b"pass"
    assert got.data.endswith(b"Please pay 900 EUR.\r\n")


def test_existing_arc_set_is_chained_as_instance_2_and_verifies(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    gw = auth_gateway(make_gateway, sink, dns, keys, threshold=1000)
    raw = signed(keys, message("Forwarded by a list.\n", attachments=[(pdf_bytes(5000), "application/pdf", "a.pdf")],
                               From="customer@example.net").as_bytes())
    upstream_ar = b"Authentication-Results: mx.upstream.example; dkim=pass header.d=example.net\r\n"
    sealed = dkim.arc_sign(upstream_ar + raw, b"up", b"upstream.example", keys["upstream"], b"mx.upstream.example",
                           linesep=b"\r\n")
    assert sealed
    send(gw.smtp_port, b"".join(sealed) + upstream_ar + raw, sender="customer@example.net")
    [got] = sink.wait(1)
    [ar] = ar_headers(got.data)[:1]
    assert "arc=pass" in ar and "dkim=pass" in ar
    assert got.data.startswith(b"ARC-Seal: i=2; cv=pass;")
    cv, results, reason = dkim.arc_verify(got.data, dnsfunc=offline(dns))
    assert cv == b"pass", reason
    assert [r["instance"] for r in results] == [2, 1]


def test_dkim_signing_of_the_forwarded_message(make_gateway, sink: SmtpSink, dns: DnsServer,
                                               keys: dict[str, Any]) -> None:
    gw = auth_gateway(make_gateway, sink, dns, keys, dkim_sign=True, threshold=1000)
    send(gw.smtp_port, message(attachments=[(pdf_bytes(4000), "application/pdf", "b.pdf")]))
    [got] = sink.wait(1)
    assert b"\r\nDKIM-Signature: " in got.data and b"d=gw.test" in got.data
    assert dkim.verify(got.data, dnsfunc=offline(dns))
    assert dkim.arc_verify(got.data, dnsfunc=offline(dns))[0] == b"pass"


def test_dns_failure_gives_temperror_and_the_message_goes(make_gateway, sink: SmtpSink, dns: DnsServer,
                                                          keys: dict[str, Any]) -> None:
    gw = auth_gateway(make_gateway, sink, dns, keys, dns_timeout=0.5)
    dns.mode = "silent"
    raw = signed(keys, b"From: customer@example.net\r\nTo: support@contact.example\r\nSubject: x\r\n\r\nhi\r\n")
    send(gw.smtp_port, raw, sender="customer@example.net")
    [got] = sink.wait(1, timeout=30)
    [ar] = ar_headers(got.data)
    assert "dkim=temperror" in ar and "spf=temperror" in ar and "dmarc=temperror" in ar
    assert dns.queries  # the gateway did ask our server
    dns.mode = "servfail"
    send(gw.smtp_port, raw, sender="customer@example.net")
    got2 = sink.wait(2)[1]
    assert "dkim=temperror" in ar_headers(got2.data)[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}/metrics", timeout=10) as r:
        exposition = r.read().decode()
    assert re.search(r'gateway_authentication_results_total\{method="dkim",result="temperror"\} 2\.0', exposition)


def test_spf_fail_and_dmarc_fail_are_reported_and_a_large_untouched_message_goes_unsealed(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    dns.add_txt("forged.example", "v=spf1 ip4:192.0.2.1 -all")
    dns.add_txt("_dmarc.forged.example", "v=DMARC1; p=quarantine")
    signing = {"domain": "gw.test", "selector": "gw", "key_file": str(keys["gw_file"])}
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}",
                      sections={"auth": {"verify": True, "authserv_id": AUTHSERV, "dns_timeout": 2,
                                         "dns_servers": [f"127.0.0.1:{dns.port}"], "arc": signing,
                                         "sign_max_size": "16KiB"}})
    send(gw.smtp_port, b"From: boss@forged.example\r\nTo: support@contact.example\r\nSubject: wire\r\n\r\n"
                       b"Pay now.\r\n", sender="boss@forged.example")
    [got] = sink.wait(1)
    [ar] = ar_headers(got.data)
    assert "dkim=none" in ar and "spf=fail smtp.mailfrom=forged.example" in ar
    assert "dmarc=fail (p=quarantine) header.from=forged.example" in ar
    assert dkim.arc_verify(got.data, dnsfunc=offline(dns))[0] == b"pass"
    # Nothing to offload and above sign_max_size: results, but no seal.
    big = message("x" * 40000 + "\n").as_bytes()
    send(gw.smtp_port, big)
    got = sink.wait(2)[1]
    assert ar_headers(got.data) and b"ARC-Seal:" not in got.data
    assert any(e.get("event") == "message too large to seal; forwarded unsealed" for e in gw.log_events())


def test_invalid_security_settings_name_the_key(tmp_path: Path) -> None:
    def check(name: str, **kwargs: Any) -> str:
        (tmp_path / name).mkdir()
        r = GatewayProcess(tmp_path / name, **kwargs).command("check-config")
        assert r.returncode == 78, r.stderr
        return r.stderr

    err = check("a", route={"tls": "sometimes"},
                sections={"auth": {"dns_timeout": 0}, "smtp": {"tls_cert_file": str(tmp_path / "x.crt")}})
    assert "routes[0].tls: 'sometimes'" in err and "auth.dns_timeout: 0" in err
    assert "tls_cert_file and smtp.tls_key_file go together" in err
    err = check("b", sections={"auth": {"arc": {"domain": "gw.test", "selector": "gw", "key_file": "k.pem"}}})
    assert "auth.arc needs auth.verify = true" in err
    err = check("c", sections={"smtp": {"tls_cert_file": str(tmp_path / "x.crt"),
                                        "tls_key_file": str(tmp_path / "x.key")}})
    assert f"smtp.tls_cert_file: '{tmp_path / 'x.crt'}': expected a readable file" in err


def test_no_auto_reply_to_a_sender_its_domain_disowns_nor_a_second_to_one_mailbox(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    """A refused file answers its sender, but not one SPF says is forged
    (the reply would be backscatter: the forger's subject sent to someone
    who never wrote), unless a DKIM signature of the sender's domain passed;
    and ``victim+1@`` and ``victim+2@`` are one mailbox for the rate."""
    dns.add_txt("victim.example", "v=spf1 -all")
    dns.add_txt("soft.example", "v=spf1 ~all")
    other_pem, other_txt = dkim_key()
    dns.add_txt("other.example", "v=spf1 -all")
    dns.add_txt("s1._domainkey.other.example", other_txt)
    route = {"autoreply": {"from": "Support <support@contact.example>", "next_hop": f"smtp://127.0.0.1:{sink.port}",
                           "interval": "1h"}}
    gw = auth_gateway(make_gateway, sink, dns, keys, route=route)
    program = (b"MZ\x90\x00" + bytes(range(256)) * 8, "application/octet-stream", "tool.exe")

    def bad(sender: str) -> bytes:
        return message("Here it is.\n", attachments=[program], From=sender, Subject="BUY NOW").as_bytes()

    send(gw.smtp_port, bad("victim+1@victim.example"), sender="victim+1@victim.example")
    send(gw.smtp_port, bad("ann@soft.example"), sender="ann@soft.example")
    vouched = bad("bo@other.example")
    send(gw.smtp_port, dkim.sign(vouched, b"s1", b"other.example", other_pem, linesep=b"\r\n") + vouched,
         sender="bo@other.example")
    send(gw.smtp_port, bad("customer+1@example.net"), sender="customer+1@example.net")
    send(gw.smtp_port, bad("customer+2@example.net"), sender="customer+2@example.net")
    sink.wait(5 + 2)
    gw.wait_idle()
    replies = sorted(m.rcpt_tos[0] for m in sink.messages if m.mail_from == "<>")
    # Which of customer+1 and customer+2 is answered depends on which is
    # processed first; one of them is, never both.
    assert len(replies) == 2 and replies[0] == "bo@other.example", replies
    assert replies[1] in ("customer+1@example.net", "customer+2@example.net"), replies
    reasons = sorted(e["reason"] for e in gw.log_events() if e.get("event") == "no auto-reply")
    assert reasons == [
        "one went to this sender within 3600s",
        "sender not authenticated (spf=fail, no DKIM signature of its domain): a reply would be backscatter",
        "sender not authenticated (spf=softfail, no DKIM signature of its domain): a reply would be backscatter"]


def test_a_forged_result_under_our_name_goes_even_when_the_checks_break(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    """A From field nested a thousand comments deep makes Python's address
    parser recurse past its limit inside the checks; the message still goes
    (fail open), but never with a result that claims to be ours."""
    gw = auth_gateway(make_gateway, sink, dns, keys, dns_timeout=0.5)
    forged = b"Authentication-Results: gw.test; dkim=pass header.d=bank.example; dmarc=pass\r\n"
    deep = b"From: " + b"\r\n ".join([b"(" * 50] * 20) + b"customer@example.net\r\n"  # folded: lines stay short
    raw = forged + deep + b"To: support@contact.example\r\nSubject: deep\r\n\r\nHello.\r\n"
    send(gw.smtp_port, raw, sender="customer@example.net")
    [got] = sink.wait(1)
    assert b"bank.example" not in got.data
    [ar] = ar_headers(got.data)
    assert ar.startswith("Authentication-Results: gw.test;") and 'dmarc=permerror reason="From field unreadable"' in ar


# -- what the seal must not vouch for (sender authentication, round 2) --------


@pytest.fixture
def bank(dns: DnsServer) -> bytes:
    """A domain whose SPF does not name the test's client (127.0.0.1) and
    whose DMARC says reject: only its DKIM signature can make DMARC pass."""
    pem, txt = dkim_key()
    dns.add_txt("s1._domainkey.bank.example", txt)
    dns.add_txt("bank.example", "v=spf1 ip4:192.0.2.1 -all")
    dns.add_txt("_dmarc.bank.example", "v=DMARC1; p=reject")
    return pem


def aar(data: bytes) -> str:
    """Our ARC-Authentication-Results, unfolded: what the seal vouches for."""
    head = re.sub(r"\r\n[ \t]+", " ", data.split(b"\r\n\r\n", 1)[0].decode())
    [line] = [h for h in head.split("\r\n") if h.startswith("ARC-Authentication-Results: i=1; gw.test")]
    return line


def test_text_appended_after_a_signatures_body_length_is_not_vouched_for(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any], bank: bytes) -> None:
    """A signature with l= covers only the first l bytes of the body:
    anything an attacker appends to a genuine message (new bank details, a
    link, a file) would pass as the bank's, and our seal would say so."""
    gw = auth_gateway(make_gateway, sink, dns, keys)
    raw = (b"From: billing@bank.example\r\nTo: support@contact.example\r\nSubject: invoice 4711\r\n\r\n"
           b"Your invoice 4711 is due.\r\n")
    sig = dkim.sign(raw, b"s1", b"bank.example", bank, linesep=b"\r\n", length=True)
    assert b"l=" in sig
    send(gw.smtp_port, sig + raw + b"Our bank details changed: pay to XX00 EVIL 0000.\r\n",
         sender="billing@bank.example")
    [got] = sink.wait(1)
    assert got.data.endswith(b"pay to XX00 EVIL 0000.\r\n")  # it still goes, with honest results
    [ar] = ar_headers(got.data)
    assert "dkim=policy" in ar and "bytes of the body unsigned" in ar and "dkim=pass" not in ar, ar
    assert "dmarc=fail" in ar, ar
    assert "dkim=policy" in aar(got.data) and "dmarc=fail" in aar(got.data)
    assert dkim.arc_verify(got.data, dnsfunc=offline(dns))[0] == b"pass"


def test_a_second_subject_above_a_signed_one_is_not_vouched_for(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any], bank: bytes) -> None:
    """The signature covers one Subject, the bottom one (RFC 6376 section
    5.4.2); a mail client shows the top one.  A Subject (or To, Reply-To...)
    put above a genuine message must not ride on its dkim=pass."""
    gw = auth_gateway(make_gateway, sink, dns, keys)
    raw = (b"From: billing@bank.example\r\nTo: support@contact.example\r\nSubject: newsletter\r\n"
           b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nNews.\r\n")
    sig = dkim.sign(raw, b"s1", b"bank.example", bank, linesep=b"\r\n",
                    include_headers=[b"from", b"to", b"subject", b"date"])
    send(gw.smtp_port, b"Subject: URGENT: new bank details, reply with the card number\r\n" + sig + raw,
         sender="billing@bank.example")
    [got] = sink.wait(1)
    assert parse(got.data)["Subject"].startswith("URGENT")  # what the agent reads
    [ar] = ar_headers(got.data)
    assert "dkim=policy" in ar and "2 subject fields, 1 signed" in ar and "dmarc=fail" in ar, ar
    assert "dkim=pass" not in aar(got.data)


def test_a_second_from_field_is_a_dmarc_permerror(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any], bank: bytes) -> None:
    """Two From fields: the top one, an encoded word, has no address for
    DMARC to read but shows as ceo@bank.example; the bottom one is the
    attacker's own domain, which passes.  DMARC must not pass for a
    message whose shown sender it never judged (RFC 7489 section 6.6.1)."""
    dns.add_txt("evil.example", "v=spf1 ip4:127.0.0.1 -all")
    dns.add_txt("_dmarc.evil.example", "v=DMARC1; p=reject")
    gw = auth_gateway(make_gateway, sink, dns, keys)
    send(gw.smtp_port, b"From: =?utf-8?q?ceo=40bank.example?=\r\nFrom: me@evil.example\r\n"
                       b"To: support@contact.example\r\nSubject: wire\r\n\r\nPay now.\r\n", sender="me@evil.example")
    [got] = sink.wait(1)
    from email.header import decode_header, make_header
    assert str(make_header(decode_header(parse(got.data)["From"]))) == "ceo@bank.example"
    [ar] = ar_headers(got.data)
    assert 'dmarc=permerror reason="several From fields"' in ar and "dmarc=pass" not in aar(got.data), ar


def test_an_rsa_sha1_signature_is_not_a_pass(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any], bank: bytes) -> None:
    """RFC 8301: verifiers must not take rsa-sha1 signatures as valid (SHA-1
    collisions are within reach); dkimpy does."""
    gw = auth_gateway(make_gateway, sink, dns, keys)
    raw = b"From: billing@bank.example\r\nTo: support@contact.example\r\nSubject: sha1\r\n\r\nHi.\r\n"
    sig = dkim.sign(raw, b"s1", b"bank.example", bank, linesep=b"\r\n", signature_algorithm=b"rsa-sha1")
    send(gw.smtp_port, sig + raw, sender="billing@bank.example")
    [got] = sink.wait(1)
    [ar] = ar_headers(got.data)
    assert "dkim=policy" in ar and "rsa-sha1" in ar and "dmarc=fail" in ar, ar


def test_one_message_cannot_drive_many_key_lookups(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    """Each DKIM signature and ARC set is a DNS query at a name the sender
    chose: a header block of junk signatures made the gateway query any
    domain's name servers hundreds of times per message (and, against a
    silent server, hold a worker for the DNS timeout each time)."""
    gw = auth_gateway(make_gateway, sink, dns, keys, dns_timeout=0.5)
    junk = b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; d=victim%d.example; s=s%d; h=from; bh=AAAA; b=AAAA\r\n"
                    % (i, i) for i in range(60))
    arc = b"".join(b"ARC-Seal: i=%d; a=rsa-sha256; cv=%s; d=victim.example; s=as%d; b=AAAA\r\n"
                   b"ARC-Message-Signature: i=%d; a=rsa-sha256; d=victim.example; s=ams%d; h=from; bh=AAAA; b=AAAA\r\n"
                   b"ARC-Authentication-Results: i=%d; victim.example; none\r\n"
                   % (i, b"none" if i == 1 else b"pass", i, i, i, i) for i in range(1, 61))
    send(gw.smtp_port, junk + arc + b"From: customer@example.net\r\nTo: support@contact.example\r\n"
                                    b"Subject: many\r\n\r\nHi.\r\n")
    [got] = sink.wait(1, timeout=120)
    lookups = [q for q in dns.queries if "._domainkey." in q[0]]
    assert len(lookups) <= 24, len(lookups)
    [ar] = ar_headers(got.data)
    assert ar.count("dkim=") == 11 and "50 more signatures not checked" in ar, ar
    assert 'arc=fail reason="more than 50 ARC sets"' in ar, ar


def _sign_without_from(msg: bytes, pem: bytes) -> bytes:
    """A DKIM-Signature of bank.example whose h= leaves From out (dkimpy's
    signer refuses to make one; its parts make it as a careless signer would)."""
    from dkim.canonicalization import CanonicalizationPolicy
    from dkim.crypto import parse_pem_private_key

    d = dkim.DKIM(msg)
    d.signature_algorithm, d.hasher = b"rsa-sha256", hashlib.sha256
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    bh = base64.b64encode(hashlib.sha256(policy.canonicalize_body(d.body)).digest())
    fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", b"bank.example"),
              (b"s", b"s1"), (b"h", b"to : subject"), (b"bh", bh), (b"b", b"0" * 60)]
    return b"DKIM-Signature: " + d.gen_header(fields, (b"to", b"subject"), policy, b"DKIM-Signature",
                                              parse_pem_private_key(pem))


def test_a_signature_that_leaves_from_out_vouches_for_no_sender(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any], bank: bytes) -> None:
    """RFC 6376 section 6.1.1: a signature whose h= has no From is ignored
    (PERMFAIL); dkimpy verifies it, so any From in bank.example passed
    DMARC on it: the bank's newsletter became a message from its CEO."""
    gw = auth_gateway(make_gateway, sink, dns, keys)
    raw = b"From: news@bank.example\r\nTo: support@contact.example\r\nSubject: news\r\n\r\nNews.\r\n"
    sig = _sign_without_from(raw, bank)
    forged = raw.replace(b"From: news@bank.example", b"From: CEO <ceo@bank.example>")
    send(gw.smtp_port, sig + forged, sender="ceo@bank.example")
    [got] = sink.wait(1)
    [ar] = ar_headers(got.data)
    assert 'dkim=permerror reason="From field not signed"' in ar and "dmarc=fail" in ar, ar


def test_a_key_record_with_a_huge_exponent_does_not_freeze_the_gateway(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    """dkimpy checks an RSA signature with Python's pow(), which holds the
    interpreter lock until it returns: a key record (the sender's to
    publish) with a 12288-bit modulus and as large an exponent made each
    signature seconds of a frozen process, no SMTP banner, no HTTP."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    rng = random.Random(7)
    n = rng.getrandbits(12288) | (1 << 12287) | 1
    e = rng.getrandbits(12280) | 1
    der = RSAPublicNumbers(e, n).public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    dns.add_txt("slow._domainkey.heavy.example", "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}", sections={
        "gateway": {"processes": 1},  # one process: the one that checks is the one that answers
        "auth": {"verify": True, "authserv_id": AUTHSERV, "dns_servers": [f"127.0.0.1:{dns.port}"], "dns_timeout": 2,
                 "arc": {"domain": "gw.test", "selector": "gw", "key_file": str(keys["gw_file"])}}})
    b64 = base64.b64encode(rng.getrandbits(12280).to_bytes(1535, "big")).decode()
    b = "\r\n\t".join(b64[i:i + 76] for i in range(0, len(b64), 76))  # folded: lines stay short
    bh = base64.b64encode(hashlib.sha256(b"Hi.\r\n").digest()).decode()  # the body's
    sigs = f"DKIM-Signature: v=1; a=rsa-sha256; d=heavy.example; s=slow; h=from; bh={bh}; b={b}\r\n" * 3
    send(gw.smtp_port, sigs.encode() + b"From: x@heavy.example\r\nTo: support@contact.example\r\n"
                                       b"Subject: heavy\r\n\r\nHi.\r\n", sender="x@heavy.example")
    # While the message is checked, the gateway's SMTP listener answers a
    # NOOP in the slowest case within seconds, not after the key's pow().
    waited = 0.0
    deadline = time.monotonic() + 300
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=300) as s:
        s.ehlo("probe.test")
        while not sink.messages and time.monotonic() < deadline:
            started = time.monotonic()
            s.noop()
            waited = max(waited, time.monotonic() - started)
            time.sleep(0.05)
    [got] = sink.wait(1, timeout=300)
    assert waited < 5, f"the gateway answered SMTP after {waited:.1f}s"
    [ar] = ar_headers(got.data)
    assert "dkim=permerror" in ar and "RSA key beyond 16384 bits or its exponent beyond 64" in ar, ar


def test_a_signature_listing_thousands_of_fields_does_not_hold_the_cpu(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    """dkimpy finds each name of h= by scanning the header block from the
    bottom: three signatures (with a real key and the body's own hash, so
    the check gets that far) naming 8000 absent fields over 14000 fields
    were most of a minute of CPU for one message."""
    gw = auth_gateway(make_gateway, sink, dns, keys)
    bh = base64.b64encode(hashlib.sha256(b"Hi.\r\n").digest()).decode()
    names = "\r\n\t:".join(":".join(f"n{i}-{j}" for j in range(100)) for i in range(80))
    sigs = (f"DKIM-Signature: v=1; a=rsa-sha256; d=example.net; s=s1; h=from:{names};\r\n\tbh={bh}; b=AAAA\r\n"
            * 3).encode()
    filler = b"".join(b"X-F%d: v\r\n" % i for i in range(14000))
    send(gw.smtp_port, sigs + filler + b"From: customer@example.net\r\nTo: support@contact.example\r\n"
                                       b"Subject: wide\r\n\r\nHi.\r\n")
    sink.wait(1, timeout=600)
    [event] = [e for e in gw.log_events() if e.get("event") == "authentication"]
    assert event["seconds"] < 10, event
    assert event["dkim"] == "permerror", event


def test_an_arc_set_claiming_our_authserv_id_is_not_chained_as_a_pass(
        make_gateway, sink: SmtpSink, dns: DnsServer, keys: dict[str, Any]) -> None:
    """An ARC set the sender sealed with a key of its own, whose results
    say "gw.test; dkim=pass header.d=bank.example; dmarc=pass": the chain
    verifies, and we sealed it cv=pass, so the forwarded message carried
    results under our name that we never wrote, in a chain we vouched for."""
    gw = auth_gateway(make_gateway, sink, dns, keys)
    raw = b"From: ceo@bank.example\r\nTo: support@contact.example\r\nSubject: wire\r\n\r\nPay now.\r\n"
    claim = b"Authentication-Results: gw.test; dkim=pass header.d=bank.example; dmarc=pass\r\n"
    sealed = dkim.arc_sign(claim + raw, b"up", b"upstream.example", keys["upstream"], b"gw.test", linesep=b"\r\n")
    assert sealed
    send(gw.smtp_port, b"".join(sealed) + raw, sender="customer@example.net")
    [got] = sink.wait(1)
    [ar] = ar_headers(got.data)
    assert 'arc=fail reason="an ARC set claims our authserv-id"' in ar, ar
    assert got.data.startswith(b"ARC-Seal: i=2; cv=fail;"), got.data[:200]
