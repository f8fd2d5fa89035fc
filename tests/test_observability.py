"""Following a message through the logs, health, readiness, metrics and the
HTTP access log, through the real gateway process (issue 16, items 2 and 5)."""
from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from tests.certs import self_signed
from tests.harness import GatewayProcess, SmtpSink, wait_until
from tests.servers.ports import free_port

QUEUED_AS = "250 2.0.0 Ok: queued as ABC123"
API_KEY = "observability-api-key-0123456789"


def _send(gw: GatewayProcess, message_id: str, rcpt: str = "agent@contact.example") -> None:
    msg = EmailMessage()
    msg["From"] = "customer@example.org"
    msg["To"] = rcpt
    msg["Subject"] = "follow me"
    msg["Message-ID"] = message_id
    msg.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
        s.send_message(msg)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus exposition, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.fullmatch(r"([^{ ]+)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def test_a_message_is_followed_by_its_message_id_with_the_next_hops_reply(make_gateway, sink: SmtpSink) -> None:
    # First refused for a while (deferred), then accepted with a queue id
    # of the next hop's own.
    sink.reply_data = "451 4.3.0 try again later"
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")
    mid = "<follow-1.abc@customer.example>"
    _send(gw, mid)
    wait_until(lambda: any(e.get("event") == "deferred" for e in gw.log_events()), what="a deferral")
    sink.reply_data = QUEUED_AS
    wait_until(lambda: any(e.get("event") == "delivered" for e in gw.log_events()), what="the delivery")
    wait_until(lambda: any(e.get("event") == "removed" for e in gw.log_events()), what="the removal")

    # grep the Message-ID: every line of the message, from reception to removal.
    lines = [json.loads(line) for line in gw.log().splitlines() if mid in line]
    events = [e["event"] for e in lines]
    for expected in ("queued", "processed", "deferred", "delivered", "removed"):
        assert expected in events, (expected, events)
    qid = next(e["queue_id"] for e in lines if e["event"] == "queued")
    assert all(e["queue_id"] == qid for e in lines)
    # and nothing about that queue id lacks the Message-ID or the client
    about = [e for e in gw.log_events() if e.get("queue_id") == qid]
    assert about and all(e.get("message_id") == mid and e.get("client") == "127.0.0.1" for e in about), about
    delivered = next(e for e in lines if e["event"] == "delivered")
    assert delivered["next_hop"] == f"smtp://127.0.0.1:{sink.port}"
    assert delivered["reply"] == QUEUED_AS
    assert delivered["remote_queue_id"] == "ABC123"
    assert delivered["rcpt"] == "agent@contact.example"


def test_log_lines_carry_journald_priorities_only_under_journald(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    gw.log_path.write_bytes(b"")
    st = os.stat(gw.log_path)
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    try:
        gw.start()
    finally:
        del os.environ["JOURNAL_STREAM"]
    try:
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
            s.ehlo()
            code, _ = s.rcpt("x@elsewhere.example") if s.mail("a@example.org")[0] == 250 else (0, b"")
            assert code == 550
        wait_until(lambda: '"relay refused"' in gw.log(), what="the relay refusal line")
        lines = [line for line in gw.log().splitlines() if line.strip()]
        prefixed = [re.fullmatch(r"<(\d)>(\{.*\})", line) for line in lines]
        assert all(prefixed), [line for line, m in zip(lines, prefixed, strict=True) if not m]
        by_event = {json.loads(m.group(2))["event"]: (m.group(1), json.loads(m.group(2))["level"])
                    for m in prefixed if m}
        assert by_event["ready"] == ("6", "info")
        assert by_event["relay refused"][0] == "6"
        warnings = [(p, lvl) for p, lvl in by_event.values() if lvl == "warning"]
        assert warnings and all(p == "4" for p, _ in warnings)  # allow-all authorisation at start
    finally:
        gw.stop()
    # Without the journal's stream: plain JSON lines (every other test reads them so).
    (tmp_path / "plain").mkdir()
    other = GatewayProcess(tmp_path / "plain")
    os.environ["JOURNAL_STREAM"] = "1:1"
    try:
        other.start()
    finally:
        del os.environ["JOURNAL_STREAM"]
    try:
        wait_until(lambda: '"ready"' in other.log(), what="ready")
        assert all(line.startswith("{") for line in other.log().splitlines() if line.strip())
    finally:
        other.stop()


def test_every_module_writes_json_lines_even_one_imported_before_logging_is_set_up(make_gateway) -> None:
    # gateway.memory is imported by the command line before `serve` sets up
    # logging; its idle-trim line came out in structlog's console format, at
    # debug level whatever log_level said.
    gw = make_gateway(sections={"gateway": {"log_level": "debug"}})
    _send(gw, "<trim-1@customer.example>")
    wait_until(lambda: any(e.get("event") == "heap trimmed" for e in gw.log_events()), timeout=60,
               what="the idle trim's line, as a JSON line")
    trimmed = next(e for e in gw.log_events() if e.get("event") == "heap trimmed")
    assert trimmed["component"] == "memory" and trimmed["level"] == "debug" and trimmed["pid"] > 1
    lines = [line for line in gw.log().splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, not_json[:5]


def test_a_reload_names_the_keys_that_wait_for_a_restart(make_gateway) -> None:
    # An administrator who raises log_level or moves the listener and sends
    # SIGHUP is told these wait for a restart, instead of seeing nothing.
    gateway = make_gateway(sections={"gateway": {"processes": 1}})
    old_port = gateway.smtp_port
    gateway.reload({"gateway": {"log_level": "debug"}, "smtp": {"listen": f"127.0.0.1:{free_port()}"},
                    "delivery": {"connect_timeout": 20}})
    warned = [e for e in gateway.log_events() if e.get("event") == "reload leaves these keys as they were until a restart"]
    assert len(warned) == 1 and warned[0]["keys"] == ["gateway.log_level", "smtp.listen"], warned
    assert warned[0]["level"] == "warning"
    _send(gateway, "<after-reload-1@customer.example>")  # still on the port it started with
    assert old_port == gateway.smtp_port
    # A reload that changes only what a reload applies says nothing of the kind;
    # the started values are what it compares with, so the earlier change is
    # still named.
    gateway.reload({"delivery": {"connect_timeout": 25}})
    again = [e for e in gateway.log_events() if e.get("event") == "reload leaves these keys as they were until a restart"]
    assert len(again) == 2 and again[-1]["keys"] == ["gateway.log_level", "smtp.listen"]
    gateway.reload({"gateway": {"log_level": "info"}, "smtp": {"listen": f"127.0.0.1:{old_port}"}})
    last = [e for e in gateway.log_events() if e.get("event") == "reload leaves these keys as they were until a restart"]
    assert len(last) == 2


def test_readyz_goes_unready_when_the_spool_or_the_store_cannot_be_written(gateway: GatewayProcess) -> None:
    base = f"http://127.0.0.1:{gateway.http_port}"
    status, _, body = _get(base + "/readyz")
    assert status == 200, body
    ready = json.loads(body)
    assert ready["status"] == "ready" and ready["reasons"] == []
    assert {"spool", "storage.local", "listener.smtp", "listener.http"} <= set(ready["checks"])
    status, _, body = _get(base + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"

    # The spool: its tmp/ (where receptions start) replaced by a file.
    tmp = gateway.spool / "tmp"
    shutil.rmtree(tmp)
    tmp.write_bytes(b"")
    status, _, body = _get(base + "/readyz")
    assert status == 503, body
    unready = json.loads(body)
    assert unready["status"] == "unready"
    assert not unready["checks"]["spool"]["ok"] and unready["checks"]["storage.local"]["ok"]
    assert any(r.startswith("spool: ") and "Not a directory" in r for r in unready["reasons"]), unready
    # liveness is another matter: the process is up
    assert _get(base + "/healthz")[0] == 200
    tmp.unlink()
    tmp.mkdir()
    assert _get(base + "/readyz")[0] == 200

    # The store: its directory gone, a file in its place.
    shutil.rmtree(gateway.objects)
    gateway.objects.write_bytes(b"")
    status, _, body = _get(base + "/readyz")
    assert status == 503, body
    unready = json.loads(body)
    assert unready["checks"]["spool"]["ok"] and not unready["checks"]["storage.local"]["ok"]
    assert any(r.startswith("storage.local: ") for r in unready["reasons"]), unready
    assert any(e.get("event") == "not ready" and e.get("level") == "warning" for e in gateway.log_events())


def test_metrics_are_there_from_zero_and_count_sessions_rejections_and_tls(make_gateway, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "pki")
    gw = make_gateway(sections={"smtp": {"tls_cert_file": str(cert), "tls_key_file": str(key)}})
    text = gw.metrics()
    # Before any event: every route's and code's series, at 0.
    for name, labels in (("gateway_messages_received_total", {"route": "contact"}),
                         ("gateway_messages_delivered_total", {"route": "contact"}),
                         ("gateway_messages_deferred_total", {"route": "contact"}),
                         ("gateway_messages_bounced_total", {"route": "contact"}),
                         ("gateway_offloaded_parts_total", {"route": "contact", "store": "local"}),
                         ("gateway_smtp_sessions_total", {"outcome": "refused"}),
                         ("gateway_smtp_rejections_total", {"code": "550"}),
                         ("gateway_smtp_rejections_total", {"code": "452"}),
                         ("gateway_smtp_tls_handshakes_total", {"result": "success"}),
                         ("gateway_smtp_tls_handshakes_total", {"result": "failure"}),
                         ("gateway_queue_oldest_message_age_seconds", {"queue": "deferred"})):
        assert _sample(text, name, **labels) == 0.0, (name, labels, text)
    # The harness's check that the port listens was a session: counted when
    # a process accepts it, which may be after the harness saw the port.
    wait_until(lambda: (_sample(gw.metrics(), "gateway_smtp_sessions_total", outcome="accepted") or 0) >= 1,
               what="the harness's probe session counted")
    sessions = _sample(gw.metrics(), "gateway_smtp_sessions_total", outcome="accepted")
    assert sessions is not None
    from gateway import __version__

    assert _sample(text, "gateway_build_info", version=__version__) == 1.0
    # Process figures for every gateway process (the supervisor and its children).
    pids = {m for m in re.findall(r'process_resident_memory_bytes\{pid="(\d+)"\}', text)}
    assert gw.proc is not None and str(gw.proc.pid) in pids and len(pids) >= 2, text
    assert all(_sample(text, "process_cpu_seconds_total", pid=p) is not None for p in pids)
    assert all((_sample(text, "process_open_fds", pid=p) or 0) > 0 for p in pids)

    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as s:
        s.starttls(context=ssl._create_unverified_context())
        s.ehlo()
        s.mail("a@example.org")
        assert s.rcpt("x@elsewhere.example")[0] == 550
    text = gw.metrics()
    assert _sample(text, "gateway_smtp_sessions_total", outcome="accepted") == sessions + 1
    assert _sample(text, "gateway_smtp_rejections_total", code="550") == 1.0
    assert _sample(text, "gateway_smtp_tls_handshakes_total", result="success") == 1.0


def test_oldest_deferred_message_age(make_gateway) -> None:
    down = free_port()  # nothing listens: every attempt defers
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{down}",
                      sections={"delivery": {"min_backoff": 3600, "max_backoff": 3600,
                                             "bounce_next_hop": "maildir:bounces"}})
    _send(gw, "<old@customer.example>")
    wait_until(lambda: any(e.get("event") == "deferred" for e in gw.log_events()), what="a deferral")
    wait_until(lambda: (_sample(gw.metrics(), "gateway_queue_oldest_message_age_seconds", queue="deferred")
                        or 0) > 0.5, what="an oldest deferred message older than half a second")
    text = gw.metrics()
    assert _sample(text, "gateway_queue_messages", queue="deferred") == 1.0
    assert _sample(text, "gateway_queue_oldest_message_age_seconds", queue="incoming") == 0.0


def test_access_log_names_the_request_without_its_token(gateway: GatewayProcess) -> None:
    token = "v1.k1.SECRETTOKENVALUE0123456789abcdefABCDEF"
    link_status, headers, _ = _get(f"http://127.0.0.1:{gateway.http_port}/a/{token}?x=1",
                                   {"X-Request-Id": "req-42", "User-Agent": "obs-test"})
    assert link_status in (400, 403, 404, 410)
    assert headers["X-Request-Id"] == "req-42"
    status, headers, _ = _get(f"http://127.0.0.1:{gateway.http_port}/healthz")
    generated = headers["X-Request-Id"]
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", generated)

    def access() -> list[dict[str, Any]]:
        return [e for e in gateway.log_events() if e.get("component") == "access"]

    wait_until(lambda: len(access()) >= 2, what="two access log lines")
    link = next(e for e in access() if e["request_id"] == "req-42")
    assert link["method"] == "GET" and link["path"] == "/a/…" and link["status"] == link_status
    assert link["client"] == "127.0.0.1" and link["bytes"] > 0 and link["seconds"] >= 0
    assert link["user_agent"] == "obs-test"
    health = next(e for e in access() if e["request_id"] == generated)
    assert health["path"] == "/healthz" and health["status"] == 200
    assert token not in gateway.log() and "SECRETTOKEN" not in gateway.log()


def test_metrics_and_openapi_on_the_agents_listener_by_config(make_gateway, tmp_path: Path) -> None:
    # Default ("local"): this machine's clients only; a forwarded request is not one.
    gw = make_gateway()
    base = f"http://127.0.0.1:{gw.http_port}"
    assert _get(base + "/metrics")[0] == 200
    assert _get(base + "/metrics", {"X-Forwarded-For": "203.0.113.9"})[0] == 404

    # Behind an API key.
    key = tmp_path / "api.key"
    key.write_text(API_KEY + "\n")
    keyed = make_gateway(sections={"api": {"keys": [{"id": "ops", "file": str(key)}]},
                                   "metrics": {"on_http": "api-key"}})
    base = f"http://127.0.0.1:{keyed.http_port}"
    assert _get(base + "/metrics")[0] == 401
    assert _get(base + "/api/v1/openapi.json")[0] == 401
    assert _get(base + "/metrics", {"Authorization": "Bearer wrong"})[0] == 403
    status, _, body = _get(base + "/metrics", {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and b"gateway_build_info" in body
    assert _get(base + "/api/v1/openapi.json", {"Authorization": f"Bearer {API_KEY}"})[0] == 200

    # A listener of their own; none on the agents' listener.
    admin_port = free_port()
    apart = make_gateway(sections={"api": {"keys": [{"id": "ops", "file": str(key)}]},
                                   "metrics": {"listen": f"127.0.0.1:{admin_port}", "on_http": "off"}})
    base = f"http://127.0.0.1:{apart.http_port}"
    assert _get(base + "/metrics")[0] == 404
    assert _get(base + "/api/v1/openapi.json")[0] == 404
    assert _get(base + "/healthz")[0] == 200  # load balancers still ask the agents' listener
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: _listening(admin), what="the metrics listener")
    status, _, body = _get(admin + "/metrics")
    assert status == 200 and b"gateway_smtp_sessions_total" in body
    assert _get(admin + "/readyz")[0] == 200
    assert _get(admin + "/api/v1/openapi.json")[0] == 200


def _listening(url: str) -> bool:
    try:
        return _get(url + "/healthz")[0] == 200
    except OSError:
        return False
