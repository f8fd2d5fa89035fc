"""Agent links through real interfaces: sign-in at a real OpenID Connect
provider (npm oidc-provider), clicks over HTTPS to the gateway process,
redirects to a real storage server (Azurite) that checks its SAS, and the
audit events each leaves (issue 6)."""
from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.certs import self_signed
from tests.harness import GatewayProcess, strip_maildir_headers
from tests.messages import leaves, links, message, parse, payload, pdf_bytes, png_bytes, send
from tests.servers.azurite import Azurite
from tests.servers.oidc import OidcProvider, follow
from tests.servers.ports import free_port

AZ_KEY_ENV = "GW_TEST_AZURE_KEY"
CLIENT_ID, CLIENT_SECRET = "attachment-gateway", "client-secret-for-tests-0123456789"


def offload_one(gw: GatewayProcess, data: bytes, **headers: str) -> str:
    """Send a message with one attachment above the threshold; the link."""
    before = gw.outbox_messages()
    send(gw.smtp_port, message(attachments=[(data, "application/pdf", "scan.pdf")], **headers))
    gw.wait_outbox(len(before) + 1)
    [out] = [strip_maildir_headers(m) for m in gw.outbox_messages() if m not in before]
    text = next(p for p in leaves(parse(out)) if p.get_content_type() == "text/plain")
    [url] = links(payload(text))
    assert len(url) < 200
    return url


@contextlib.contextmanager
def running(gw: GatewayProcess) -> Iterator[GatewayProcess]:
    """The gateway started, and stopped after even when starting failed
    half-way (``with gw:`` would leave a process that never listened)."""
    try:
        yield gw.start()
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as az:
        yield az


@pytest.fixture
def oidc_gateway(tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[tuple[GatewayProcess, OidcProvider, Path]]:
    """A gateway on HTTPS signing agents in at a real OIDC provider, with a
    static authorisation map (ann serves customer@example.net; bob does
    not) and Azure storage (Azurite), so a click is a redirect to a SAS URL."""
    from azure.storage.blob import BlobServiceClient

    container = f"gw-{uuid.uuid4().hex[:12]}"
    BlobServiceClient(azurite.account_url, credential={"account_name": azurite.account_name,
                                                       "account_key": azurite.account_key}
                      ).create_container(container)
    monkeypatch.setenv(AZ_KEY_ENV, azurite.account_key)
    monkeypatch.setenv("GW_TEST_OIDC_SECRET", CLIENT_SECRET)
    cert, key = self_signed(tmp_path)
    (tmp_path / "session.key").write_text("s" * 20 + uuid.uuid4().hex + "\n")
    http_port = free_port()
    base = f"https://127.0.0.1:{http_port}"
    with OidcProvider(CLIENT_ID, CLIENT_SECRET, [base + "/auth/callback"]) as idp:
        gw = GatewayProcess(tmp_path, threshold=1000, route={"storage": "az"}, sections={
            "http": {"listen": f"127.0.0.1:{http_port}", "base_url": base, "tls_cert": str(cert),
                     "tls_key": str(key)},
            "storage.az": {"backend": "azure", "account_url": azurite.account_url, "account_key_env": AZ_KEY_ENV,
                           "container": container, "url_ttl": "2m"},
            "agents": {"auth": "oidc", "session_key": {"file": str(tmp_path / "session.key")},
                       "oidc": {"issuer": idp.issuer, "client_id": CLIENT_ID,
                                "client_secret": {"env": "GW_TEST_OIDC_SECRET"}}},
            "authorization": {"mode": "static", "agents": {"ann": ["customer@example.net"]},
                              "contact": "the CRM team (crm@contact.example)"},
        })
        gw.http_port = http_port
        with running(gw):
            yield gw, idp, cert


def sign_in_and_click(url: str, agent: str, cert: Path) -> tuple[requests.Session, requests.Response]:
    """Click ``url`` in a fresh browser session, sign in as ``agent``; the
    gateway's answer to the click that follows sign-in."""
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=
    s.verify = str(cert)
    first = s.get(url, allow_redirects=False)
    assert first.status_code == 302 and "code_challenge_method=S256" in first.headers["Location"]
    assert first.headers["Strict-Transport-Security"].startswith("max-age=")
    base = url.split("/a/")[0]
    return s, follow(s, first, agent, stop_at=base + "/a/")


def test_signed_in_agent_is_redirected_to_a_working_storage_url_and_others_get_403(oidc_gateway: Any) -> None:
    gw, idp, cert = oidc_gateway
    data = pdf_bytes(5000)
    url = offload_one(gw, data)

    s, click = sign_in_and_click(url, "ann", cert)
    assert click.status_code == 302, click.text
    storage_url = click.headers["Location"]
    assert storage_url.startswith(gw_azure_prefix(gw)) and "sig=" in storage_url
    got = requests.get(storage_url, timeout=30)
    assert got.status_code == 200 and got.content == data
    [cookie] = [c for c in s.cookies if c.name == "agw_session"]
    assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"
    # The session is kept: a second click needs no sign-in.
    again = s.get(url, allow_redirects=False)
    assert again.status_code == 302 and again.headers["Location"].startswith(gw_azure_prefix(gw))

    _, denied = sign_in_and_click(url, "bob", cert)
    assert denied.status_code == 403
    assert "crm@contact.example" in denied.text and "bob" in denied.text

    events = gw.wait_audit(lambda e: e.get("ActorUsername") == "bob")
    clicks = [e for e in events if e.get("EventOriginalType") == "click"]
    ok = [e for e in clicks if e["EventResult"] == "Success"]
    no = [e for e in clicks if e["EventResult"] == "Failure"]
    assert {e["ActorUsername"] for e in ok} == {"ann"} and len(ok) == 2
    assert [e["ActorUsername"] for e in no] == ["bob"]
    for e in ok + no:
        assert e["CustomerId"] == "customer@example.net"
        assert e["TargetFilePath"].startswith("uploads/customer@example.net/")
        assert e["QueueId"] and e["InternetMessageId"] and e["TokenKeyId"] == "k1"
        assert e["SrcIpAddr"] == "127.0.0.1" and e["EventType"] == "FileAccessed"
        assert "sig=" not in str(e)  # the storage URL is never in the audit trail
    assert "denied" in no[0]["EventResultDetails"]
    signins = [e for e in events if e.get("EventOriginalType") == "sign-in"]
    assert {e["ActorUsername"] for e in signins} == {"ann", "bob"}
    assert "sig=" not in gw.log()


def gw_azure_prefix(gw: GatewayProcess) -> str:
    text = gw.config_path.read_text()
    return text.split('account_url = "')[1].split('"')[0]


def test_embedded_default_config_works_end_to_end_with_anonymous_agents(tmp_path: Path) -> None:
    """conf/gateway.toml as shipped (only its two loopback ports moved to
    free ones, since other gateways may run on this machine)."""
    from tests.harness import ROOT

    smtp_port, http_port = free_port(), free_port()
    text = (ROOT / "conf" / "gateway.toml").read_text()
    assert 'auth = "none"' in text and 'mode = "allow-all"' in text
    text = text.replace("127.0.0.1:2525", f"127.0.0.1:{smtp_port}").replace("127.0.0.1:8025", f"127.0.0.1:{http_port}")
    gw = GatewayProcess(tmp_path)  # only for its helpers; the config is the shipped one
    conf = tmp_path / "shipped.toml"
    conf.write_text(text)
    gw.config_path, gw.smtp_port, gw.http_port = conf, smtp_port, http_port
    gw.outbox, gw.audit_path = tmp_path / "var" / "outbox", tmp_path / "var" / "log" / "audit.jsonl"
    gw.spool = tmp_path / "var" / "spool"
    with running(gw):
        data = pdf_bytes(11 << 20)
        url = offload_one(gw, data)
        with requests.get(url, timeout=30) as r:
            assert r.status_code == 200 and r.content == data
        events = gw.wait_audit(lambda e: e.get("EventResult") == "Success")
    [click] = [e for e in events if e.get("EventOriginalType") == "click"]
    assert click["ActorUsername"] == "anonymous" and click["EventResultDetails"] == "streamed (allow-all)"
    assert any(e.get("event") == "authorisation is allow-all: every agent sees every customer's files"
               for e in gw.log_events())


def test_identity_provider_down_is_a_503_and_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_OIDC_SECRET", CLIENT_SECRET)
    (tmp_path / "session.key").write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    dead = free_port()  # no provider listens here
    with running(GatewayProcess(tmp_path, threshold=1000, sections={
            "agents": {"auth": "oidc", "session_key": {"file": str(tmp_path / "session.key")},
                       "oidc": {"issuer": f"http://127.0.0.1:{dead}", "client_id": CLIENT_ID, "timeout": 2,
                                "client_secret": {"env": "GW_TEST_OIDC_SECRET"}}},
            "authorization": {"mode": "allow-all"}})) as gw:
        url = offload_one(gw, pdf_bytes(2000))
        r = requests.get(url, allow_redirects=False, timeout=30)
        assert r.status_code == 503 and "Sign-in is not possible right now" in r.text
        [event] = [e for e in gw.wait_audit(lambda e: e.get("EventOriginalType") == "click")
                   if e.get("EventOriginalType") == "click"]
    assert event["EventResult"] == "Failure" and event["EventResultDetails"].startswith("sign-in provider unavailable")
    assert event["CustomerId"] == "customer@example.net"


def test_landing_page_one_link_lists_every_file_and_each_download_works(make_gateway) -> None:
    import re

    gw = make_gateway(threshold=1000, route={"landing_page": True}, sections={
        "authorization": {"mode": "static", "agents": {"anonymous": ["customer@example.net"]}}})
    pdf, png = pdf_bytes(3000), png_bytes(5000)
    send(gw.smtp_port, message(attachments=[(pdf, "application/pdf", "invoice.pdf"), (png, "image/png", "photo.png")],
                               Message_ID="<two-files@example.net>"))
    [out] = gw.wait_outbox()
    text = next(p for p in leaves(parse(out)) if p.get_content_type() == "text/plain" and not p.get_filename()
                and p.get("Content-Disposition") is None)
    assert links(payload(text)) == []  # no link per file
    [url] = [u.decode() for u in re.findall(rb"https?://127\.0\.0\.1:\d+/p/[A-Za-z0-9._-]+", payload(text))]
    assert len(url) < 200 and b"Secure Attachments: 2 files" in payload(text)
    # A file token is not a page token, and the other way round.
    token = url.rsplit("/", 1)[1]
    assert requests.get(url.replace("/p/", "/a/"), timeout=30).status_code == 403
    r = requests.get(url, timeout=30)
    assert r.status_code == 200
    for name, size, kind in (("invoice.pdf", "2.9 KB", "application/pdf"), ("photo.png", "4.9 KB", "image/png")):
        assert re.search(rf"<td>{re.escape(name)}</td><td>[^<]+</td><td>{re.escape(kind)}</td>", r.text), r.text
    downloads = re.findall(r'<a class="download" href="([^"]+)">Download</a>', r.text)
    assert len(downloads) == 2 and all("/a/" in d for d in downloads)
    got = sorted(requests.get(d.replace("&amp;", "&"), timeout=30).content for d in downloads)
    assert got == sorted([pdf, png])
    events = gw.wait_audit(lambda e: sum(1 for x in gw.audit() if x.get("EventOriginalType") == "click"
                                         and x["EventResult"] == "Success") >= 2)
    [view] = [e for e in events if e.get("EventOriginalType") == "page" and e["EventResult"] == "Success"]
    assert view["InternetMessageId"] == "<two-files@example.net>" and view["CustomerId"] == "customer@example.net"
    assert view["ActorUsername"] == "anonymous" and view["EventSubType"] == "LandingPage"
    assert token not in json.dumps(events)  # tokens are bearer secrets: never in the audit trail
    # One attachment: an ordinary link, no page.
    send(gw.smtp_port, message(attachments=[(pdf, "application/pdf", "one.pdf")]))
    second = gw.wait_outbox(2)
    assert any("/a/" in u for m in second for p in leaves(parse(m)) if p.get_content_type() == "text/plain"
               for u in links(payload(p)))


def test_an_unverified_email_never_names_an_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``agent_claim = "email"``, an account at the provider whose
    owner typed ann's address without proving it (``email_verified``
    false) signed in as ann and got ann's customers' files."""
    monkeypatch.setenv("GW_TEST_OIDC_SECRET", CLIENT_SECRET)
    cert, key = self_signed(tmp_path)
    (tmp_path / "session.key").write_text("s" * 20 + uuid.uuid4().hex + "\n")
    http_port = free_port()
    base = f"https://127.0.0.1:{http_port}"
    with OidcProvider(CLIENT_ID, CLIENT_SECRET, [base + "/auth/callback"]) as idp:
        gw = GatewayProcess(tmp_path, threshold=1000, sections={
            "http": {"listen": f"127.0.0.1:{http_port}", "base_url": base, "tls_cert": str(cert),
                     "tls_key": str(key)},
            "agents": {"auth": "oidc", "session_key": {"file": str(tmp_path / "session.key")},
                       "oidc": {"issuer": idp.issuer, "client_id": CLIENT_ID, "agent_claim": "email",
                                "client_secret": {"env": "GW_TEST_OIDC_SECRET"}}},
            "authorization": {"mode": "static", "agents": {"ann@contact.example": ["customer@example.net"]}},
        })
        gw.http_port = http_port
        with running(gw):
            data = pdf_bytes(4000)
            url = offload_one(gw, data)

            def sign_in(login: str) -> tuple[requests.Session, requests.Response]:
                s = requests.Session()
                s.trust_env = False
                s.verify = str(cert)
                first = s.get(url, allow_redirects=False)
                assert first.status_code == 302
                return s, follow(s, first, login, stop_at=base + "/auth/callback")

            s, back = sign_in("mallory~ann")
            then = s.get(url, allow_redirects=False)
            assert data not in then.content and then.status_code == 302  # still asked to sign in
            assert back.status_code == 403 and not [c for c in s.cookies if c.name == "agw_session"]
            s, back = sign_in("ann")  # ann's own, verified address
            assert back.status_code == 302
            got = s.get(url, allow_redirects=False)
            assert got.status_code == 200 and got.content == data
            events = gw.wait_audit(lambda e: e.get("EventOriginalType") == "click" and e["EventResult"] == "Success")
    signins = [e for e in events if e.get("EventOriginalType") == "sign-in"]
    assert [(e["EventResult"], e.get("ActorUsername")) for e in signins] == [
        ("Failure", None), ("Success", "ann@contact.example")], signins
    assert "email_verified" in signins[0]["EventResultDetails"]


def test_the_landing_page_shows_file_names_as_the_message_does(make_gateway) -> None:
    """The landing page listed each file under the sender's name as given:
    ``claim<U+202E>gnp.pdf``, a PDF, read there as ``claimfdp.png``, and a
    link-shaped name stayed whole; the message body shows both defused
    (display_name), and so does the page now."""
    import re

    gw = make_gateway(threshold=1000, route={"landing_page": True})
    pdf, png = pdf_bytes(3000), png_bytes(5000)
    send(gw.smtp_port, message(attachments=[(pdf, "application/pdf", "claim\u202egnp.pdf"),
                                            (png, "image/png", "www.evil.example.png")]))
    [out] = gw.wait_outbox()
    [url] = [u.decode() for u in re.findall(rb"https?://127\.0\.0\.1:\d+/p/[A-Za-z0-9._-]+", out)]
    page = requests.get(url, timeout=30)
    assert page.status_code == 200
    names = re.findall(r"<tr><td>([^<]*)</td>", page.text)
    assert names == ["claimgnp.pdf", "www[.]evil.example.png"], names
