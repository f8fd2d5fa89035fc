"""TLS on both sides of the gateway (issue 7), with certificates made in the
test: STARTTLS on ingress (TLS 1.2 and 1.3 accepted, 1.0 and 1.1 refused,
checked with swaks and openssl s_client), TLS required for named clients,
certificates reloaded on SIGHUP, and the next hop's TLS level per route
(a failure to meet it defers, never downgrades)."""
from __future__ import annotations

import json
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest

from tests.certs import CertAuthority
from tests.harness import GatewayProcess, SmtpSink
from tests.messages import message, send


def tls_gateway(make_gateway, tmp_path: Path, **smtp: object) -> tuple[GatewayProcess, CertAuthority]:
    ca = CertAuthority(tmp_path / "pki")
    leaf = ca.issue()
    gw = make_gateway(sections={"smtp": {"tls_cert_file": str(leaf.cert), "tls_key_file": str(leaf.key), **smtp}})
    return gw, ca


def s_client(port: int, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-brief",
                           *flags], input="QUIT\r\n", capture_output=True, text=True, timeout=30)


def test_starttls_accepts_tls_1_2_and_1_3_and_refuses_1_0_and_1_1(make_gateway, tmp_path: Path) -> None:
    gw, ca = tls_gateway(make_gateway, tmp_path)
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        r = s_client(gw.smtp_port, flag, "-CAfile", str(ca.path), "-verify_return_error")
        assert r.returncode == 0 and f"Protocol version: {version}" in r.stderr, r.stderr
    for flag, version in (("-tls1", ssl.TLSVersion.TLSv1), ("-tls1_1", ssl.TLSVersion.TLSv1_1)):
        # The same client command does speak the old version to a server that
        # allows it, so what refuses it below is the gateway.
        assert _old_version_works(flag, version, ca)
        r = s_client(gw.smtp_port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
        assert r.returncode != 0 and "Protocol version:" not in r.stderr, r.stderr
    for proto in ("tlsv1_2", "tlsv1_3"):
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{gw.smtp_port}", "--from", "customer@example.net",
                            "--to", "support@contact.example", "--tls", "--tls-protocol", proto,
                            "--body", f"over {proto}"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "TLS started" in r.stdout
    msgs = gw.wait_outbox(2)
    assert all(b"with ESMTPS id" in m for m in msgs)


def _old_version_works(flag: str, version: ssl.TLSVersion, ca: CertAuthority) -> bool:
    """openssl s_client with ``flag`` against a plain TLS server that allows ``version``."""
    leaf = ca.issue("old")
    with warnings.catch_warnings():
        # Python warns about these versions (when set and at handshake).
        warnings.simplefilter("ignore", DeprecationWarning)
        return _old_version_handshake(flag, version, leaf)


def _old_version_handshake(flag: str, version: ssl.TLSVersion, leaf) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    ctx.load_cert_chain(leaf.cert, leaf.key)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError):
                pass
            finally:
                tls.close()

        t = threading.Thread(target=serve)
        t.start()
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief", flag,
                            "-cipher", "DEFAULT@SECLEVEL=0"], input="", capture_output=True, text=True, timeout=30)
        t.join()
    # The handshake completed (the server then closes without close_notify).
    assert "CONNECTION ESTABLISHED" in r.stderr and "Protocol version: TLSv1" in r.stderr, r.stderr
    return True


def test_named_client_must_starttls_before_mail(make_gateway, tmp_path: Path) -> None:
    gw, ca = tls_gateway(make_gateway, tmp_path, require_tls_from=["127.0.0.0/8"])
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
        s.ehlo()
        assert s.mail("customer@example.net")[0] == 530
        s.rset()
        s.starttls(context=ssl.create_default_context(cafile=str(ca.path)))
        s.ehlo()
        s.sendmail("customer@example.net", ["support@contact.example"], message("after STARTTLS\n").as_bytes())
    [out] = gw.wait_outbox()
    assert b"after STARTTLS" in out


def _peer_cert(port: int, ca: CertAuthority) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(ca.path)))
        return s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]


def test_certificate_is_reloaded_on_sighup(make_gateway, tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "pki")
    first, second = ca.issue("first"), ca.issue("second")
    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    gw = make_gateway(sections={"smtp": {"tls_cert_file": str(cert), "tls_key_file": str(key)}})
    assert _peer_cert(gw.smtp_port, ca) == first.der
    cert.write_bytes(second.cert.read_bytes())
    key.write_bytes(second.key.read_bytes())
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while not any(e.get("event") == "TLS certificate reloaded" for e in gw.log_events()):
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.1)
    assert _peer_cert(gw.smtp_port, ca) == second.der
    # A broken pair is refused and the one in force stays.
    key.write_bytes(first.key.read_bytes())
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while not any(e.get("event") == "TLS certificate reload failed; the old one stays in force"
                  for e in gw.log_events()):
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.1)
    assert _peer_cert(gw.smtp_port, ca) == second.der


def _deferred(gw: GatewayProcess, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = gw.command("queue", "list", "--json", "--queue", "deferred")
        rows = json.loads(r.stdout or "[]")
        if rows:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"nothing deferred\n{gw.log()[-3000:]}")


@pytest.fixture
def tls_sink(tmp_path: Path):
    ca = CertAuthority(tmp_path / "hop-pki", name="Next hop CA")
    leaf = ca.issue("hop")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    sink = SmtpSink(tls_context=ctx, require_starttls=True).start()
    yield sink, ca
    sink.stop()


def test_verified_tls_to_next_hop_defers_on_unknown_ca_and_goes_with_it(tls_sink, make_gateway) -> None:
    # The sink is set up first so that it is stopped last, after the
    # gateways have closed their pooled TLS connections to it.
    sink, ca = tls_sink
    hop = f"smtp://127.0.0.1:{sink.port}"
    strict = make_gateway(next_hop=hop, route={"tls": "verify"},
                          sections={"delivery": {"min_backoff": 3600, "max_backoff": 3600}})
    send(strict.smtp_port, message("needs a verified hop\n"))
    [row] = _deferred(strict)
    assert "certificate" in json.dumps(row) or "certificate" in strict.log()
    assert sink.messages == []
    trusted = make_gateway(next_hop=hop, route={"tls": "verify", "tls_ca_file": str(ca.path)})
    send(trusted.smtp_port, message("verified hop\n"))
    [got] = sink.wait(1)
    assert b"verified hop" in got.data
    # Opportunistic TLS to the same sink (which refuses clear text) also goes:
    # the certificate is not checked at that level, but TLS is used.
    loose = make_gateway(next_hop=hop)
    send(loose.smtp_port, message("opportunistic\n"))
    assert b"opportunistic" in sink.wait(2)[1].data


def test_required_tls_defers_when_the_next_hop_offers_none(make_gateway, sink: SmtpSink) -> None:
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}", route={"tls": "required"},
                      sections={"delivery": {"min_backoff": 3600, "max_backoff": 3600}})
    send(gw.smtp_port, message("no clear text\n"))
    _deferred(gw)
    assert "4.7.10 TLS is required" in gw.log()
    assert sink.messages == []
