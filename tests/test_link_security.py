"""Link security through real interfaces (issue 6): audit events reaching a
real rsyslog and an HEC receiver, bounded loss when a sink is down, key
rotation and retired keys, revocation seen by every process at once,
identity headers from untrusted addresses, refresh of expired links, TLS
1.0/1.1 hellos refused, and the config rules for ``agents.auth``."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.certs import self_signed
from tests.harness import GatewayProcess, wait_until
from tests.messages import pdf_bytes
from tests.servers.hec import HecReceiver
from tests.servers.jsonhttp import JsonHandler
from tests.servers.ports import free_port
from tests.servers.rsyslog import Rsyslog
from tests.test_agent_links import offload_one

HEC_TOKEN = "hec-token-for-tests-9f1c"
# The fields every link audit event carries (issue 6: time, event, outcome,
# agent, customer, queue, Message-ID, object key, client address, user
# agent, token key id), by their ASIM FileEvent names.
LINK_FIELDS = ("TimeGenerated", "EventType", "EventOriginalType", "EventResult", "ActorUsername", "CustomerId",
               "QueueId", "InternetMessageId", "TargetFilePath", "SrcIpAddr", "HttpUserAgent", "TokenKeyId",
               "EventSchema", "EventSchemaVersion", "Dvc")


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET with a user agent of our own, over plain HTTP on loopback."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", "/" + rest, headers={"User-Agent": "agent-desktop/1.0", **headers})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def post(url: str, source: str = "127.0.0.1", **headers: str) -> tuple[int, dict[str, str], bytes]:
    host, _, rest = url.removeprefix("http://").partition("/")
    h, p = host.split(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=30, source_address=(source, 0))
    conn.request("POST", "/" + rest, body=b"", headers={"User-Agent": "agent-desktop/1.0", **headers})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def test_every_event_reaches_rsyslog_and_hec_with_all_fields(make_gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_HEC_TOKEN", HEC_TOKEN)
    with Rsyslog() as syslog, HecReceiver(HEC_TOKEN) as hec:
        gw = make_gateway(threshold=1000, sections={
            "audit": {"syslog": {"address": f"127.0.0.1:{syslog.tcp_port}", "transport": "tcp"},
                      "hec": {"url": hec.url, "token": {"env": "GW_TEST_HEC_TOKEN"}, "index": "contact"}}})
        url = offload_one(gw, pdf_bytes(4000), Message_ID="<audit-1@example.net>")
        assert get(url)[0] == 200
        token = url.rsplit("/", 1)[1]
        assert get(url[:-1] + ("A" if token[-1] != "A" else "B"))[0] == 403
        assert get(url.replace("/a/", "/a/zz."))[0] == 403
        gw.wait_audit(lambda e: e.get("EventResult") == "Success" and e.get("EventOriginalType") == "click")
        done = gw.command("links", "revoke", "--message-id", "<audit-1@example.net>", "--reason", "test")
        assert done.returncode == 0, done.stderr
        assert get(url)[0] == 410
        gw.wait_audit(lambda e: "revoked" in e.get("EventResultDetails", ""))
        gw.stop()  # flushes the sinks
        events = gw.audit()
        assert [e.get("EventOriginalType", e["EventType"]) for e in events] == [
            "FileStored", "click", "click", "click", "revoke", "click"]
        got_syslog = syslog.wait(len(events))
        got_hec = hec.wait(len(events))
    from_syslog = [json.loads(m["msg"]) for m in got_syslog]
    from_hec = [e["event"] for e in got_hec]
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, from_syslog)) == sorted(map(key, events))
    assert sorted(map(key, from_hec)) == sorted(map(key, events))
    ok = [e for e in events if e["EventResult"] == "Success" and e.get("EventOriginalType") == "click"][0]
    for f in LINK_FIELDS:
        assert f in ok, f
    assert ok["ActorUsername"] == "anonymous" and ok["HttpUserAgent"] == "agent-desktop/1.0"
    assert ok["InternetMessageId"] == "<audit-1@example.net>" and ok["TokenKeyId"] == "k1"
    assert all(e["SrcIpAddr"] == "127.0.0.1" for e in events if e.get("EventOriginalType") == "click")
    # rsyslog parsed each as RFC 5424: facility authpriv (10), warning for failures, MSGID the event type.
    by_msg = {m["msg"]: m for m in got_syslog}
    for e in events:
        m = by_msg[next(x for x in by_msg if json.loads(x) == e)]
        assert m["pri"] == str(10 * 8 + (6 if e["EventResult"] == "Success" else 4))
        assert m["app_name"] == "attachment-gateway" and m["hostname"] == "gw.test"
        assert m["msgid"] == e["EventType"] and m["timestamp"].startswith(e["TimeGenerated"][:19])
        if "CustomerId" in e:
            assert f'customer="{e["CustomerId"]}"' in m["sd"]
    assert all(h["sourcetype"] == "attachment-gateway:audit" and h["index"] == "contact" and h["host"] == "gw.test"
               for h in got_hec)


def test_udp_syslog_carries_the_events(make_gateway) -> None:
    with Rsyslog() as syslog:
        gw = make_gateway(threshold=1000, sections={
            "audit": {"syslog": {"address": f"127.0.0.1:{syslog.udp_port}", "transport": "udp"}}})
        url = offload_one(gw, pdf_bytes(2000))
        assert get(url)[0] == 200
        gw.wait_audit(lambda e: e.get("EventOriginalType") == "click" and e.get("EventResult") == "Success")
        got = syslog.wait(2)  # the file stored and the click
        assert sorted(x["msgid"] for x in got) == ["FileAccessed", "FileStored"]
        assert all(json.loads(x["msg"])["EventResult"] == "Success" for x in got)


def test_tls_syslog_carries_the_events_and_checks_the_collector_certificate(make_gateway, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with Rsyslog(tls_cert=cert, tls_key=key) as syslog:
        gw = make_gateway(threshold=1000, sections={
            "audit": {"syslog": {"address": f"127.0.0.1:{syslog.tls_port}", "transport": "tls",
                                 "ca_file": str(cert)}}})
        url = offload_one(gw, pdf_bytes(2000))
        assert get(url)[0] == 200
        gw.wait_audit(lambda e: e.get("EventOriginalType") == "click" and e.get("EventResult") == "Success")
        got = syslog.wait(2)  # the file stored and the click
        assert sorted(x["msgid"] for x in got) == ["FileAccessed", "FileStored"]
        assert all(x["app_name"] == "attachment-gateway" for x in got)
        # A collector whose certificate the gateway does not trust gets nothing.
        (tmp_path / "other").mkdir()
        other_cert, _ = self_signed(tmp_path / "other")
        gw2 = make_gateway(threshold=1000, sections={
            "audit": {"syslog": {"address": f"127.0.0.1:{syslog.tls_port}", "transport": "tls",
                                 "ca_file": str(other_cert)}}})
        url2 = offload_one(gw2, pdf_bytes(2000))
        assert get(url2)[0] == 200
        gw2.wait_audit(lambda e: e.get("EventOriginalType") == "click" and e.get("EventResult") == "Success")
        # The sink sends on its own task: wait until it has tried (and been
        # refused), not a fixed second, before counting what the collector got.
        wait_until(lambda: any(e.get("event") == "audit sink unavailable; retrying" and "CERTIFICATE_VERIFY_FAILED"
                               in e.get("error", "") for e in gw2.log_events()), timeout=20,
                   what="the untrusted collector refused")
        assert len(syslog.messages()) == 2
        assert any(e.get("event") == "audit sink unavailable; retrying" and "CERTIFICATE_VERIFY_FAILED"
                   in e.get("error", "") for e in gw2.log_events())


def test_a_sink_that_is_down_never_blocks_a_click_and_the_loss_is_counted(make_gateway, monkeypatch) -> None:
    monkeypatch.setenv("GW_TEST_HEC_TOKEN", HEC_TOKEN)
    dead = free_port()  # nothing listens here
    gw = make_gateway(threshold=1000, sections={
        "gateway": {"processes": 1},  # one process, one buffer to count
        "audit": {"buffer": 2, "hec": {"url": f"http://127.0.0.1:{dead}", "token": {"env": "GW_TEST_HEC_TOKEN"},
                                       "timeout": 1}}})
    url = offload_one(gw, pdf_bytes(2000))
    started = time.monotonic()
    for _ in range(6):
        assert get(url)[0] == 200
    assert time.monotonic() - started < 5
    gw.wait_audit(lambda e: sum(1 for x in gw.audit() if x.get("EventResult") == "Success") >= 7)
    gw.stop()
    assert len(gw.audit()) == 7  # the file sink has every event: the file stored and six clicks
    drops = [e for e in gw.log_events() if e.get("event") in ("audit events dropped",
                                                               "audit events dropped; sink buffer full")]
    assert drops and drops[-1]["sink"] == "hec" and drops[-1]["dropped"] == 7, drops


def test_key_rotation_old_key_verifies_until_retired_then_refused_and_audited(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k1").write_text("first-key-0123456789abcdef\n")
    (keys / "k2").write_text("second-key-0123456789abcdef\n")

    def gateway(key_list: list[dict[str, Any]], sub: str) -> GatewayProcess:
        d = tmp_path / sub
        d.mkdir()
        gw = GatewayProcess(d, threshold=1000, sections={"links": {"keys": key_list},
                                                         "storage.local": {"backend": "filesystem",
                                                                           "path": str(tmp_path / "objects")}})
        return gw.start()

    def at(url: str, gw: GatewayProcess) -> str:
        """The link as this gateway serves it (each run has its own port)."""
        return url.replace(url.split("/a/")[0], f"http://127.0.0.1:{gw.http_port}")

    gw = gateway([{"id": "k1", "file": str(keys / "k1")}], "one")
    old = offload_one(gw, pdf_bytes(2000))
    assert "/a/k1." in old
    gw.stop()

    # k2 signs now; k1 still verifies until its date.
    gw = gateway([{"id": "k2", "file": str(keys / "k2")},
                  {"id": "k1", "file": str(keys / "k1"), "retire": "2999-01-01"}], "two")
    assert get(at(old, gw))[0] == 200
    new = offload_one(gw, pdf_bytes(2000))
    assert "/a/k2." in new
    gw.stop()

    gw = gateway([{"id": "k2", "file": str(keys / "k2")},
                  {"id": "k1", "file": str(keys / "k1"), "retire": "2020-01-01T00:00:00Z"}], "three")
    assert get(at(old, gw))[0] == 403
    assert get(at(new, gw))[0] == 200
    events = gw.wait_audit(lambda e: e.get("EventOriginalType") == "click" and e["EventResult"] == "Success")
    refused = [e for e in events if e["EventResult"] == "Failure"]
    assert len(refused) == 1 and "retired" in refused[0]["EventResultDetails"]
    assert refused[0]["TokenKeyId"] == "k1" and refused[0]["SrcIpAddr"] == "127.0.0.1"
    gw.stop()


def test_revoked_links_answer_410_in_every_process_at_once_and_are_audited(make_gateway) -> None:
    gw = make_gateway(threshold=1000, sections={"gateway": {"processes": 2}},
                      route={"customer_id": {"trusted_networks": ["127.0.0.0/8"]}})
    by_object = offload_one(gw, pdf_bytes(2000), X_CustomerId="c-object")
    by_customer = offload_one(gw, pdf_bytes(2000), X_CustomerId="c-customer")
    by_message = offload_one(gw, pdf_bytes(2000), X_CustomerId="c-message", Message_ID="<revoke-me@example.net>")
    kept = offload_one(gw, pdf_bytes(2000), X_CustomerId="c-kept")
    for url in (by_object, by_customer, by_message, kept):
        for _ in range(4):  # both processes have seen (and cached) each record
            assert get(url)[0] == 200
    clicks = [e for e in gw.audit() if e.get("EventOriginalType") == "click"]
    object_key = next(e["TargetFilePath"] for e in clicks if e["CustomerId"] == "c-object")
    for args in (("--object", object_key), ("--customer", "c-customer"),
                 ("--message-id", "<revoke-me@example.net>")):
        r = gw.command("links", "revoke", *args, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["revoked"] == args[0].lstrip("-").replace("-id", "")
    for url in (by_object, by_customer, by_message):
        for _ in range(6):
            status, _, body = get(url)
            assert status == 410 and b"withdrawn" in body
    assert get(kept)[0] == 200
    events = gw.wait_audit(lambda e: sum(1 for x in gw.audit() if "revoked (" in x.get("EventResultDetails", ""))
                           >= 18)
    revokes = [e for e in events if e.get("EventOriginalType") == "revoke"]
    assert [e["EventType"] for e in revokes] == ["LinkRevoked"] * 3
    assert revokes[0]["TargetFilePath"] == object_key and revokes[1]["CustomerId"] == "c-customer"
    assert revokes[2]["InternetMessageId"] == "revoke-me@example.net"
    refused = [e for e in events if "revoked (" in e.get("EventResultDetails", "")]
    assert {e["EventResultDetails"] for e in refused} == {"revoked (object)", "revoked (customer)",
                                                          "revoked (message)"}
    assert all(e["EventResult"] == "Failure" and e["QueueId"] for e in refused)


def _behind_proxy(make_gateway) -> GatewayProcess:
    """A gateway that believes X-Forwarded-User from 127.0.0.2, where only
    ann may see customer@example.net's files."""
    return make_gateway(threshold=1000, sections={
        "http": {"trusted_proxies": ["127.0.0.2"]},
        "agents": {"auth": "trusted-header"},
        "authorization": {"mode": "static", "agents": {"ann": ["customer@example.net"]}}})


def test_identity_header_is_believed_only_from_a_trusted_proxy(make_gateway) -> None:
    gw = _behind_proxy(make_gateway)
    url = offload_one(gw, pdf_bytes(2000))
    # From an untrusted address (127.0.0.1) the header is refused.
    status, _, body = get(url, **{"X-Forwarded-User": "ann"})
    assert status == 403
    # Through the proxy (127.0.0.2) it is believed, and so is X-Forwarded-For.
    status, _, body = _get_from(url, "127.0.0.2", {"X-Forwarded-User": "ann", "X-Forwarded-For": "198.51.100.7"})
    assert status == 200 and body.startswith(b"%PDF")
    status, _, _ = _get_from(url, "127.0.0.2", {"X-Forwarded-User": "mallory"})
    assert status == 403
    events = gw.wait_audit(lambda e: e.get("ActorUsername") == "mallory")
    clicks = [e for e in events if e.get("EventOriginalType") == "click"]
    assert clicks[0]["EventResult"] == "Failure" and "untrusted address 127.0.0.1" in clicks[0]["EventResultDetails"]
    assert clicks[0]["SrcIpAddr"] == "127.0.0.1" and "ActorUsername" not in clicks[0]
    ok = [e for e in clicks if e["EventResult"] == "Success"]
    assert len(ok) == 1 and ok[0]["ActorUsername"] == "ann" and ok[0]["SrcIpAddr"] == "198.51.100.7"
    assert clicks[-1]["EventResult"] == "Failure" and "denied" in clicks[-1]["EventResultDetails"]
    # X-Forwarded-Proto too is believed only from the proxy: HSTS only for HTTPS.
    health = url.split("/a/")[0] + "/healthz"
    assert "Strict-Transport-Security" in _get_from(health, "127.0.0.2", {"X-Forwarded-Proto": "https"})[1]
    assert "Strict-Transport-Security" not in _get_from(health, "127.0.0.1", {"X-Forwarded-Proto": "https"})[1]


def test_an_identity_header_sent_twice_through_the_proxy_is_refused(make_gateway) -> None:
    # A proxy that adds its header instead of replacing the client's passes
    # both: the client's own "ann" first, the signed-in "mallory" after.
    # Neither is believed: which one the proxy vouches for cannot be told.
    gw = _behind_proxy(make_gateway)
    url = offload_one(gw, pdf_bytes(2000))
    host, _, rest = url.removeprefix("http://").partition("/")
    h, p = host.split(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=30, source_address=("127.0.0.2", 0))
    conn.putrequest("GET", "/" + rest)
    conn.putheader("X-Forwarded-User", "ann")
    conn.putheader("x-forwarded-user", "mallory")
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert r.status == 403 and not body.startswith(b"%PDF")
    events = gw.wait_audit(lambda e: e.get("EventOriginalType") == "click")
    [click] = [e for e in events if e.get("EventOriginalType") == "click"]
    assert click["EventResult"] == "Failure" and "X-Forwarded-User header sent 2 times" in click["EventResultDetails"]
    assert "ActorUsername" not in click
    # One header through the proxy still works.
    assert _get_from(url, "127.0.0.2", {"X-Forwarded-User": "ann"})[0] == 200


def test_sighup_applies_a_new_authorisation_map_and_a_rotated_link_key(make_gateway) -> None:
    gw = _behind_proxy(make_gateway)
    old_url = offload_one(gw, pdf_bytes(2000))
    assert _get_from(old_url, "127.0.0.2", {"X-Forwarded-User": "bob"})[0] == 403
    # The administrator assigns bob to the customer and rotates the link key:
    # the new key file is made first, the old key verifies until its date.
    (gw.tmp / "link2.key").write_text("r" * 40 + "\n")
    k1 = gw.cfg["links"]["keys"][0]
    gw.reload({"authorization": {"agents": {"ann": ["customer@example.net"], "bob": ["customer@example.net"]}},
               "links": {"keys": [{"id": "k2", "file": str(gw.tmp / "link2.key")},
                                  {**k1, "retire": "2099-01-01T00:00:00Z"}]}})
    status, _, body = _get_from(old_url, "127.0.0.2", {"X-Forwarded-User": "bob"})
    assert status == 200 and body.startswith(b"%PDF")
    new_url = offload_one(gw, pdf_bytes(2100))
    assert new_url.rsplit("/", 1)[1].startswith("k2.")
    assert _get_from(new_url, "127.0.0.2", {"X-Forwarded-User": "bob"})[0] == 200
    # A reload whose secret cannot be read changes nothing: bob keeps access,
    # k2 keeps signing.
    (gw.tmp / "link2.key").unlink()
    gw.reload({"authorization": {"agents": {"ann": ["customer@example.net"]}}},
              expect="reload refused; old config stays in force")
    refused = [e for e in gw.log_events() if e.get("event") == "reload refused; old config stays in force"]
    assert "links.keys[k2]" in refused[-1]["error"]
    assert _get_from(new_url, "127.0.0.2", {"X-Forwarded-User": "bob"})[0] == 200
    assert offload_one(gw, pdf_bytes(2200)).rsplit("/", 1)[1].startswith("k2.")


def _get_from(url: str, source: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, _, rest = url.removeprefix("http://").partition("/")
    h, p = host.split(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=30, source_address=(source, 0))
    conn.request("GET", "/" + rest, headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def test_expired_link_offers_refresh_which_issues_a_working_link_and_is_audited(make_gateway) -> None:
    gw = make_gateway(threshold=1000, sections={"links": {"ttl": 2}})
    url = offload_one(gw, pdf_bytes(2000))
    time.sleep(2.2)
    status, _, body = get(url)
    assert status == 410 and b"Refresh Link" in body and b'action="/a/' in body
    status, _, body = post(url + "/refresh", Accept="application/json")
    assert status == 200, body
    fresh = json.loads(body)
    assert fresh["url"].endswith("/a/" + fresh["token"]) and fresh["expires"] > time.time()
    assert len(fresh["url"]) < 200
    assert get(fresh["url"])[0] == 200
    status, _, body = post(url + "/refresh")  # the browser's button: an HTML page with the new link
    assert status == 200 and b"Here is a new link" in body
    bad = url[:-2] + ("AA" if not url.endswith("AA") else "BB")
    assert post(bad + "/refresh")[0] == 403
    events = gw.wait_audit(lambda e: e.get("EventOriginalType") == "refresh" and e["EventResult"] == "Failure")
    events = [e for e in events if e["EventType"] != "FileStored"]
    kinds = [(e["EventOriginalType"], e["EventResult"]) for e in events]
    assert kinds == [("click", "Failure"), ("refresh", "Success"), ("click", "Success"), ("refresh", "Success"),
                     ("refresh", "Failure")]
    assert events[0]["EventResultDetails"] == "expired token" and events[1]["CustomerId"] == "customer@example.net"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_hellos_are_refused_and_audited(make_gateway, tmp_path: Path, version) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    gw = make_gateway(sections={"http": {"listen": f"127.0.0.1:{port}", "base_url": f"https://127.0.0.1:{port}",
                                         "tls_cert": str(cert), "tls_key": str(key)}}, start=False)
    gw.http_port = port
    gw.start()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cert)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old versions at all
    old.minimum_version = old.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            old.wrap_socket(raw, server_hostname="127.0.0.1")
    assert "VERSION" in str(refused.value).upper()
    good = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=good, timeout=10)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Strict-Transport-Security").startswith("max-age=31536000")
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    conn.close()
    name = {ssl.TLSVersion.TLSv1: "TLS 1.0", ssl.TLSVersion.TLSv1_1: "TLS 1.1"}[version]
    [event] = gw.wait_audit(lambda e: e.get("EventOriginalType") == "tls")
    assert event["EventResult"] == "Failure" and event["SrcIpAddr"] == "127.0.0.1"
    assert event["EventResultDetails"] == f"{name} client hello refused (minimum TLS 1.2)"


@pytest.mark.parametrize("http_cfg,agents,authz,expect", [
    ({"listen": "0.0.0.0:8025"}, {}, {}, "agents.auth: 'none' is allowed only while http.listen is on loopback"),
    ({}, {"auth": "trusted-header"}, {"mode": "allow-all"}, "http.trusted_proxies: empty"),
    ({"trusted_proxies": ["10.0.0.0/8"]}, {"auth": "trusted-header"}, {}, "authorization.mode: missing"),
    ({"trusted_proxies": ["not-an-ip"]}, {}, {}, "http.trusted_proxies[0]: 'not-an-ip': expected an IP address"),
    # Every IPv4 address as an IPv6 listener sees it: every client believed.
    ({"trusted_proxies": ["::ffff:0:0/96"]}, {"auth": "trusted-header"}, {"mode": "allow-all"},
     "http.trusted_proxies: '::ffff:0:0/96' trusts every address"),
    ({}, {"auth": "oidc"}, {"mode": "allow-all"}, "agents.oidc: missing"),
    ({"tls_cert": "x.pem"}, {}, {}, "expected both \"tls_cert\" and \"tls_key\""),
    ({"base_url": "http://files.example.com"},
     {"auth": "oidc", "session_key": {"env": "K"}, "oidc": {"issuer": "https://idp.example", "client_id": "c",
                                                             "client_secret": {"env": "S"}}},
     {"mode": "allow-all"}, "agents.auth 'oidc' needs an https:// base URL"),
])
def test_agent_auth_config_rules_are_enforced_at_start(tmp_path: Path, http_cfg, agents, authz, expect) -> None:
    gw = GatewayProcess(tmp_path, sections={"http": http_cfg, "agents": agents, "authorization": authz})
    r = gw.command("check-config")
    assert r.returncode == 78 and expect in r.stderr, r.stderr


def test_missing_secret_file_is_named_and_nothing_listens(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, sections={"audit": {"hec": {"url": "http://127.0.0.1:9", "token": {
        "file": str(tmp_path / "no-such-token")}}}})
    r = gw.command("check-config")
    assert r.returncode == 78 and "audit.hec.token.file" in r.stderr and "no-such-token" in r.stderr
    try:
        with pytest.raises(RuntimeError, match="exited with 78"):
            gw.start()
    finally:
        gw.stop()


class _AuthzService:
    """The contact centre's own authorisation service, as a small local
    HTTP server: allows ann for customer@example.net, is slow for "slow",
    and counts what it is asked."""

    def __init__(self) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.asked: list[tuple[str, str, str | None]] = []
        service = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                q = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.asked.append((q["agent_id"], q["customer_id"], self.headers.get("Authorization")))
                if q["agent_id"] == "slow":
                    time.sleep(2)
                allow = q["agent_id"] == "ann" and q["customer_id"] == "customer@example.net"
                self.answer(200, {"allow": allow})

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_callout_authorisation_allows_denies_caches_and_times_out(make_gateway, monkeypatch) -> None:
    monkeypatch.setenv("GW_TEST_AUTHZ_TOKEN", "authz-bearer-token")
    service = _AuthzService()
    try:
        gw = make_gateway(threshold=1000, sections={
            "gateway": {"processes": 1},  # one cache to observe
            "http": {"trusted_proxies": ["127.0.0.2"]},
            "agents": {"auth": "trusted-header"},
            "authorization": {"mode": "callout", "callout": {
                "url": f"http://127.0.0.1:{service.port}/may-see", "timeout": 0.5, "cache_ttl": 60,
                "token": {"env": "GW_TEST_AUTHZ_TOKEN"}}}})
        url = offload_one(gw, pdf_bytes(2000))
        assert _get_from(url, "127.0.0.2", {"X-Forwarded-User": "ann"})[0] == 200
        assert _get_from(url, "127.0.0.2", {"X-Forwarded-User": "ann"})[0] == 200
        assert _get_from(url, "127.0.0.2", {"X-Forwarded-User": "bob"})[0] == 403
        started = time.monotonic()
        assert _get_from(url, "127.0.0.2", {"X-Forwarded-User": "slow"})[0] == 403
        assert time.monotonic() - started < 1.8  # the timeout, not the service, decided
        assert service.asked[:3] == [("ann", "customer@example.net", "Bearer authz-bearer-token"),
                                     ("bob", "customer@example.net", "Bearer authz-bearer-token"),
                                     ("slow", "customer@example.net", "Bearer authz-bearer-token")]
        events = gw.wait_audit(lambda e: e.get("ActorUsername") == "slow")
    finally:
        service.stop()
    events = [e for e in events if e["EventType"] != "FileStored"]
    details = [(e["ActorUsername"], e["EventResult"], e["EventResultDetails"]) for e in events]
    assert details == [("ann", "Success", "streamed (callout)"), ("ann", "Success", "streamed (callout (cached))"),
                       ("bob", "Failure", "denied: callout: denied"),
                       ("slow", "Failure", "denied: callout error: TimeoutError")]


def _api(gw: GatewayProcess, path: str, body: dict[str, Any], key: str | None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=30)
    headers = {"Content-Type": "application/json", "User-Agent": "crm/2.0"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data


def test_api_refresh_and_revoke_need_the_api_key_and_an_authorised_agent(make_gateway, monkeypatch) -> None:
    key = "crm-api-key-0123456789abcdef"
    monkeypatch.setenv("GW_TEST_API_KEY", key)
    gw = make_gateway(threshold=1000, sections={
        "links": {"ttl": 2},
        "api": {"keys": [{"id": "crm", "env": "GW_TEST_API_KEY"}]},
        "authorization": {"mode": "static", "agents": {"ann": ["customer@example.net"], "anonymous": ["*"]}}})
    url = offload_one(gw, pdf_bytes(2000))
    token = url.rsplit("/", 1)[1]
    time.sleep(2.2)
    assert get(url)[0] == 410
    # The same answers as the upload API's: 403 for a key not ours, 401 for none.
    assert _api(gw, "/api/v1/links/refresh", {"token": token, "agent_id": "ann"}, "wrong-key-0123456789")[0] == 403
    assert _api(gw, "/api/v1/links/refresh", {"token": token, "agent_id": "ann"}, None)[0] == 401
    status, body = _api(gw, "/api/v1/links/refresh", {"token": token, "agent_id": "bob"}, key)
    assert status == 403 and body["error"] == "Forbidden"
    status, body = _api(gw, "/api/v1/links/refresh", {"token": token, "agent_id": "ann"}, key)
    assert status == 200 and body["url"].endswith(body["token"])
    assert get(body["url"])[0] == 200
    status, body2 = _api(gw, "/api/v1/links/revoke", {"customer": "customer@example.net", "reason": "GDPR"}, key)
    assert status == 200 and body2["revoked"][0]["revoked"] == "customer"
    assert get(body["url"])[0] == 410
    events = gw.wait_audit(lambda e: "revoked (customer)" in e.get("EventResultDetails", ""))
    events = [e for e in events if e["EventType"] != "FileStored"]
    summary = [(e["EventOriginalType"], e["EventResult"], e.get("ActorUsername")) for e in events]
    assert summary == [("click", "Failure", None), ("refresh", "Failure", None), ("refresh", "Failure", None),
                       ("refresh", "Failure", "bob"), ("refresh", "Success", "ann"),
                       ("click", "Success", "anonymous"), ("revoke", "Success", "api-key:crm"),
                       ("click", "Failure", None)]  # revocation is checked before anyone signs in
    assert events[1]["EventResultDetails"] == "API key refused" and events[4]["ActorUserIdType"] == "api-key:crm"
    assert events[6]["CustomerId"] == "customer@example.net" and "GDPR" in events[6]["EventResultDetails"]


def test_a_token_is_one_spelling_and_never_reaches_the_access_log(make_gateway) -> None:
    gw = make_gateway(threshold="1KiB")
    url = offload_one(gw, pdf_bytes(2000))
    base, _, token = url.partition("/a/")
    assert get(url)[0] == 200
    # A newline after the token (%0A) is another token, not ours.
    assert get(f"{url}%0A")[0] == 403 and get(f"{url}%0a")[0] == 403
    # A mangled link (double slash) answers no route, and is logged: without the token.
    assert get(f"{base}//a/{token}")[0] == 404
    assert get(f"{base}/upload//{token}")[0] == 404
    wait_until(lambda: len([e for e in gw.log_events() if e.get("component") == "access"]) >= 5,
               what="five access log lines")
    assert token not in gw.log_path.read_text()


def _get_with_agent(url: str, user_agent: bytes) -> int:
    """GET with a User-Agent of raw bytes, as any client of the port may send."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", "/" + rest, headers={"User-Agent": user_agent})
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_client_chosen_user_agent_never_loses_or_splits_audit_events(make_gateway, monkeypatch) -> None:
    """Bytes that are not UTF-8 in a User-Agent made the event unwritable:
    the file dropped it (a failed guess at a token left no trace) and the
    syslog and HEC sinks' tasks died, so no later event reached the SIEM.
    A U+2028 in it cut the event's line in two for line readers."""
    monkeypatch.setenv("GW_TEST_HEC_TOKEN", HEC_TOKEN)
    with Rsyslog() as syslog, HecReceiver(HEC_TOKEN) as hec:
        gw = make_gateway(threshold=1000, sections={
            "gateway": {"processes": 1},
            "audit": {"syslog": {"address": f"127.0.0.1:{syslog.tcp_port}", "transport": "tcp"},
                      "hec": {"url": hec.url, "token": {"env": "GW_TEST_HEC_TOKEN"}}}})
        url = offload_one(gw, pdf_bytes(3000))
        assert _get_with_agent(url.replace("/a/", "/a/zz."), b"guess\xff\xfe\x80") == 403
        assert _get_with_agent(url, "split\u2028{\"EventType\":\"forged\"}\u2028".encode()) == 200
        assert get(url)[0] == 200  # an ordinary click after them
        gw.wait_audit(lambda e: e.get("HttpUserAgent") == "agent-desktop/1.0")
        gw.stop()  # flushes the sinks
        text = gw.audit_path.read_text()
        events = gw.audit()  # splitlines: a U+2028 left raw would break an event here
        assert len(events) == 4 == len(text.splitlines()), text
        got_syslog = [json.loads(m["msg"]) for m in syslog.wait(4)]
        got_hec = [e["event"] for e in hec.wait(4)]
    guess = next(e for e in events if e.get("EventResultDetails", "").startswith("invalid token"))
    assert guess["HttpUserAgent"] == "guess\\xff\\xfe\\x80" and guess["EventResult"] == "Failure"
    split = next(e for e in events if e.get("HttpUserAgent", "").startswith("split"))
    assert split["HttpUserAgent"] == "split\u2028{\"EventType\":\"forged\"}\u2028" and "\u2028" not in text
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, got_syslog)) == sorted(map(key, events))
    assert sorted(map(key, got_hec)) == sorted(map(key, events))


def test_a_refused_token_is_audited_with_the_link_it_claims(make_gateway) -> None:
    """A link with its expiry pushed out (or its signature cut) was audited
    as "invalid token" with the key id alone: nothing said which link had
    leaked and was being altered.  The event names the object id the token
    claims (unchecked: without the MAC it opens nothing), never the token."""
    gw = make_gateway(threshold=1000)
    url = offload_one(gw, pdf_bytes(2000))
    token = url.rsplit("/", 1)[1]
    kid, store, exp36, oid, sig = token.split(".")
    later = ".".join((kid, store, "zzzzzz" + exp36[6:] if len(exp36) > 6 else "zzzzzzz", oid, sig))
    assert get(url.replace(token, later))[0] == 403
    assert get(url.replace(token, token[:-4]))[0] == 403  # a cut signature
    events = gw.wait_audit(lambda e: sum(1 for x in gw.audit() if "invalid token" in
                                         x.get("EventResultDetails", "")) >= 2)
    refused = [e for e in events if "invalid token" in e.get("EventResultDetails", "")]
    assert [(e["TokenObjectId"], e["TokenKeyId"]) for e in refused] == [(oid, kid)] * 2, refused
    assert sig not in json.dumps(events) and sig[:-4] not in json.dumps(events)
