"""Agents reach their links through a real reverse proxy (Debian's nginx,
tests/servers/nginx.py) that terminates TLS in front of the gateway
(issue 17, item 5), as docs/integrations/reverse-proxy.md sets it up; and
that recipe's nginx configuration passes `nginx -t`.

- ``trusted-header``: the proxy signs the agent in and names them in
  X-Forwarded-User, overwriting any copy the client sent; the gateway
  believes that header only from the proxy's address (``http.trusted_proxies``)
  and refuses it, audited, from anyone else.
- ``oidc``: the gateway signs agents in at a real OpenID Connect provider
  (tests/servers/oidc.py) through the proxy; the redirect URI is the proxy's
  https URL (``http.base_url``), never the gateway's own address.
"""
from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.certs import self_signed
from tests.harness import ROOT, GatewayProcess
from tests.messages import pdf_bytes
from tests.servers.nginx import NGINX, PROXY_ADDRESS, Nginx
from tests.servers.oidc import OidcProvider, follow
from tests.servers.ports import free_port
from tests.test_agent_links import CLIENT_ID, CLIENT_SECRET, offload_one, running

AGENTS = {"ann": "ann-password-1", "bob": "bob-password-2"}
AUTHZ = {"mode": "static", "agents": {"ann": ["customer@example.net"]}, "contact": "the CRM team"}


def session(cert: Path) -> requests.Session:
    """A client that trusts the proxy's test certificate and nothing from
    the environment (REQUESTS_CA_BUNDLE, proxies)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(cert)
    return s


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Nginx, Path]]:
    """nginx with basic authentication (the proxy's sign-in) in front of a
    gateway in ``trusted-header`` mode that trusts only the proxy's address."""
    tmp = tmp_path_factory.mktemp("proxy")
    cert, key = self_signed(tmp / "tls")
    http_port = free_port()
    with Nginx(f"127.0.0.1:{http_port}", cert, key, users=AGENTS) as nginx:
        gw = GatewayProcess(tmp, threshold=1000, sections={
            "http": {"listen": f"127.0.0.1:{http_port}", "base_url": nginx.base_url,
                     "trusted_proxies": [f"{PROXY_ADDRESS}/32"]},
            "agents": {"auth": "trusted-header"},
            "authorization": AUTHZ,
        })
        gw.http_port = http_port
        with running(gw):
            yield gw, nginx, cert


def test_agent_signed_in_at_the_proxy_gets_the_file_over_tls_and_another_agent_403(proxied: Any) -> None:
    gw, nginx, cert = proxied
    data = pdf_bytes(6000)
    url = offload_one(gw, data)
    assert url.startswith(nginx.base_url + "/a/")  # the link names the proxy's https URL

    before = len(gw.audit())
    got = session(cert).get(url, auth=("ann", AGENTS["ann"]), timeout=30)
    assert got.status_code == 200 and got.content == data, (got.status_code, got.text[:300])
    # HSTS because the trusted proxy said https (X-Forwarded-Proto).
    assert got.headers["Strict-Transport-Security"].startswith("max-age=")
    denied = session(cert).get(url, auth=("bob", AGENTS["bob"]), timeout=30)
    assert denied.status_code == 403 and "bob" in denied.text and "the CRM team" in denied.text
    # No sign-in at the proxy: the proxy answers, the gateway never sees it.
    anonymous = session(cert).get(url, timeout=30)
    assert anonymous.status_code == 401 and "agw" not in anonymous.text
    wrong = session(cert).get(url, auth=("ann", "not-her-password"), timeout=30)
    assert wrong.status_code == 401
    # Outside the agents' links (health, the upload page, the API) the proxy
    # asks no sign-in; /metrics stays for this machine only, not for clients
    # the proxy forwards.
    assert session(cert).get(nginx.base_url + "/healthz", timeout=30).status_code == 200
    assert session(cert).get(nginx.base_url + "/metrics", timeout=30).status_code in (403, 404)

    gw.wait_audit(lambda e: e.get("ActorUsername") == "bob")
    new = [e for e in gw.audit()[before:] if e.get("EventOriginalType") == "click"]
    assert [(e["ActorUsername"], e["EventResult"]) for e in new] == [("ann", "Success"), ("bob", "Failure")]
    assert all(e["SrcIpAddr"] == "127.0.0.1" for e in new)  # the client's, from the proxy's X-Forwarded-For


def test_identity_header_sent_by_the_client_through_the_proxy_is_overwritten(proxied: Any) -> None:
    gw, _, cert = proxied
    data = pdf_bytes(4000)
    url = offload_one(gw, data)
    before = len(gw.audit())
    # bob signs in at the proxy and claims to be ann: nginx replaces the header.
    forged = session(cert).get(url, auth=("bob", AGENTS["bob"]), headers={"X-Forwarded-User": "ann"}, timeout=30)
    assert forged.status_code == 403 and data not in forged.content
    # Without signing in, the claim alone gets nothing past the proxy.
    bare = session(cert).get(url, headers={"X-Forwarded-User": "ann"}, timeout=30)
    assert bare.status_code == 401
    # A client's X-Forwarded-For is replaced too: the audit names the real client.
    spoofed = session(cert).get(url, auth=("bob", AGENTS["bob"]),
                                headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-User": "ann"}, timeout=30)
    assert spoofed.status_code == 403
    gw.wait_audit(lambda e: sum(1 for x in gw.audit()[before:] if x.get("EventOriginalType") == "click") >= 2)
    new = [e for e in gw.audit()[before:] if e.get("EventOriginalType") == "click"]
    assert [(e["ActorUsername"], e["EventResult"]) for e in new] == [("bob", "Failure")] * 2
    assert {e["SrcIpAddr"] for e in new} == {"127.0.0.1"}


def test_identity_header_straight_to_the_gateway_is_refused_and_audited(proxied: Any) -> None:
    gw, _, _ = proxied
    data = pdf_bytes(3000)
    url = offload_one(gw, data)
    token = url.rsplit("/", 1)[1]
    direct = f"http://127.0.0.1:{gw.http_port}/a/{token}"
    before = len(gw.audit())
    # Not through the proxy's address: the header is not believed, whatever
    # forwarding headers claim about the path the request took.
    r = requests.get(direct, headers={"X-Forwarded-User": "ann", "X-Forwarded-For": PROXY_ADDRESS,
                                      "X-Forwarded-Proto": "https"}, timeout=30)
    assert r.status_code == 403 and data not in r.content
    assert "Strict-Transport-Security" not in r.headers  # X-Forwarded-Proto ignored from an untrusted peer
    plain = requests.get(direct, timeout=30)
    assert plain.status_code == 403
    gw.wait_audit(lambda e: sum(1 for x in gw.audit()[before:] if x.get("EventOriginalType") == "click") >= 2)
    new = [e for e in gw.audit()[before:] if e.get("EventOriginalType") == "click"]
    assert [e["EventResult"] for e in new] == ["Failure", "Failure"]
    assert "X-Forwarded-User header from untrusted address 127.0.0.1" in new[0]["EventResultDetails"]
    assert "did not come through a trusted proxy" in new[1]["EventResultDetails"]
    assert all(e.get("ActorUsername") != "ann" for e in new)  # the claimed name is never taken as the agent


def test_oidc_sign_in_through_the_proxy_uses_its_https_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_OIDC_SECRET", CLIENT_SECRET)
    cert, key = self_signed(tmp_path / "tls")
    (tmp_path / "session.key").write_text("s" * 20 + uuid.uuid4().hex + "\n")
    http_port = free_port()
    with Nginx(f"127.0.0.1:{http_port}", cert, key) as nginx, \
            OidcProvider(CLIENT_ID, CLIENT_SECRET, [nginx.base_url + "/auth/callback"]) as idp:
        gw = GatewayProcess(tmp_path, threshold=1000, sections={
            "http": {"listen": f"127.0.0.1:{http_port}", "base_url": nginx.base_url,
                     "trusted_proxies": [f"{PROXY_ADDRESS}/32"]},
            "agents": {"auth": "oidc", "session_key": {"file": str(tmp_path / "session.key")},
                       "oidc": {"issuer": idp.issuer, "client_id": CLIENT_ID,
                                "client_secret": {"env": "GW_TEST_OIDC_SECRET"}}},
            "authorization": AUTHZ,
        })
        gw.http_port = http_port
        with running(gw):
            data = pdf_bytes(5000)
            url = offload_one(gw, data)
            s = session(cert)
            first = s.get(url, allow_redirects=False, timeout=30)
            assert first.status_code == 302, first.text
            query = parse_qs(urlsplit(first.headers["Location"]).query)
            assert query["redirect_uri"] == [nginx.base_url + "/auth/callback"]
            # The callback URL comes from http.base_url, never from the Host
            # or X-Forwarded-Host a request carries through the proxy.
            spoofed = session(cert).get(url, allow_redirects=False, timeout=30,
                                        headers={"Host": "files.attacker.example"})
            assert spoofed.status_code == 302
            assert parse_qs(urlsplit(spoofed.headers["Location"]).query)["redirect_uri"] == [
                nginx.base_url + "/auth/callback"]
            got = follow(s, first, "ann", stop_at=nginx.base_url + "/a/")
            assert got.status_code == 200 and got.content == data
            [cookie] = [c for c in s.cookies if c.name == "agw_session"]
            assert cookie.secure and cookie.domain.startswith("127.0.0.1")
            # The session holds: the next click needs no sign-in.
            again = s.get(url, allow_redirects=False, timeout=30)
            assert again.status_code == 200 and again.content == data

            other = session(cert)
            denied = follow(other, other.get(url, allow_redirects=False, timeout=30), "bob",
                            stop_at=nginx.base_url + "/a/")
            assert denied.status_code == 403 and "bob" in denied.text
            events = gw.wait_audit(lambda e: e.get("ActorUsername") == "bob"
                                   and e.get("EventOriginalType") == "click")
    signins = [e for e in events if e.get("EventOriginalType") == "sign-in"]
    assert {e["ActorUsername"] for e in signins} == {"ann", "bob"}
    done = [(e["ActorUsername"], e["EventResult"]) for e in events if e.get("EventOriginalType") == "click"]
    assert done == [("ann", "Success"), ("ann", "Success"), ("bob", "Failure")]


def test_the_recipes_nginx_server_blocks_pass_nginx_t(tmp_path: Path) -> None:
    """The nginx configuration docs/integrations/reverse-proxy.md shows is
    accepted by nginx itself (``nginx -t``), with a test certificate."""
    cert, key = self_signed(tmp_path / "tls")
    doc = (ROOT / "docs" / "integrations" / "reverse-proxy.md").read_text()
    trusted, oidc = re.findall(r"```nginx\n(.*?)```", doc, re.S)
    trusted = (trusted.replace("/etc/ssl/files.example.com.crt", str(cert))
               .replace("/etc/ssl/files.example.com.key", str(key)).replace("listen 443 ssl", "listen 127.0.0.1:1 ssl"))
    oidc = f"server {{\n listen 127.0.0.1:2 ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n{oidc}}}\n"
    temps = "".join(f"    {kind}_temp_path {tmp_path}/{kind};\n"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{\n    access_log off;\n{temps}{trusted}{oidc}}}\n")
    r = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr


def test_uploads_through_the_proxy_are_audited_with_the_customers_address(proxied: Any) -> None:
    """The upload page's and the upload API's events named the peer, which
    behind a proxy is the proxy: every customer upload, refused invitation
    or limit hit read as coming from 127.0.0.2, the client unknowable."""
    gw, nginx, cert = proxied
    out = gw.command("invite", "--customer", "ACME-7", "--to", "support@contact.example")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.startswith(nginx.base_url + "/upload/")
    s = session(cert)
    before = len(gw.audit())
    assert s.get(url[:-2] + ("AA" if not url.endswith("AA") else "BB"), timeout=30).status_code == 403
    data = pdf_bytes(3000)
    started = s.post(url + "/files", json={"name": "plan.pdf", "size": len(data)}, timeout=30)
    assert started.status_code == 201, started.text
    files = f"{url}/files/{started.json()['uploadId']}"
    assert s.put(files + "/chunks/0", data=data, headers={"Content-Type": "application/octet-stream"},
                 timeout=30).status_code == 200
    assert s.post(files + "/complete", timeout=30).status_code == 200
    gw.wait_audit(lambda e: e.get("EventType") == "FileCreated" and e.get("EventResult") == "Success")
    new = [e for e in gw.audit()[before:] if e["EventType"] in ("UploadPageOpened", "FileStored", "FileCreated")]
    assert [e["EventType"] for e in new] == ["UploadPageOpened", "FileStored", "FileCreated"], new
    assert [e.get("SrcIpAddr") for e in new] == ["127.0.0.1"] * 3, new
