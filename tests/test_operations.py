"""Config validation, queue tools, crash recovery, tokens and SMTP edge cases,
all through the real command and real sockets."""
from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import GATEWAY, ROOT, GatewayProcess, SmtpSink, wait_until
from tests.messages import fetch, leaves, links, message, parse, payload, pdf_bytes, send
from tests.servers.ports import free_port, port_is_open

MiB = 1 << 20


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, *args], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_embedded_default_config_is_valid() -> None:
    r = _run("-c", str(ROOT / "conf" / "gateway.toml"), "--base-dir", "/tmp/agw-check", "check-config",
             cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_invalid_config_names_key_value_and_expectation_and_never_listens(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "bad.toml").write_text(f"""
[smtp]
listen = "127.0.0.1:{port}"
max_recipients = "many"
typo_key = 1
[links]
keys = [{{ id = "k1", file = "k", create_missing = true }}]
[storage.local]
backend = "filesystem"
[[routes]]
name = "r"
domains = ["contact.example"]
next_hop = "smtp:/nowhere"
storage = "local"
offload_threshold = "10 parsecs"
""")
    for cmd in (["check-config"], ["serve"]):
        r = _run("-c", str(tmp_path / "bad.toml"), *cmd, cwd=tmp_path)
        assert r.returncode == 78
        assert "smtp.max_recipients: 'many'" in r.stderr and "integer" in r.stderr
        assert "smtp.typo_key: unknown key" in r.stderr
        assert "routes[0].next_hop: 'smtp:/nowhere': expected \"smtp://DOMAIN[:PORT]\" (its MX records)" in r.stderr
        assert "\"smtp://[HOST][:PORT]\"" in r.stderr and "\"maildir:PATH\"" in r.stderr
        assert "routes[0].offload_threshold: '10 parsecs': expected a size in bytes" in r.stderr
        assert not port_is_open("127.0.0.1", port)


def test_route_naming_a_missing_store_and_unknown_policy_are_refused(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("""
[links]
keys = [{ id = "k1", env = "NO_SUCH_VARIABLE_FOR_TEST" }]
[storage.local]
backend = "filesystem"
[[routes]]
name = "r"
domains = ["contact.example"]
next_hop = "maildir:out"
storage = "elsewhere"
""")
    r = _run("-c", str(tmp_path / "c.toml"), "check-config", cwd=tmp_path)
    assert r.returncode == 78 and "routes[0].storage: 'elsewhere' names no [storage.*] table" in r.stderr
    text = (tmp_path / "c.toml").read_text().replace('"elsewhere"', '"local"\npolicies = [{ name = "nope" }]')
    (tmp_path / "c.toml").write_text(text)
    r = _run("-c", str(tmp_path / "c.toml"), "check-config", cwd=tmp_path)
    assert r.returncode == 78 and "policies[0].name: 'nope' is not a known policy" in r.stderr
    (tmp_path / "c.toml").write_text(text.replace('\npolicies = [{ name = "nope" }]', ""))
    r = _run("-c", str(tmp_path / "c.toml"), "check-config", cwd=tmp_path)
    assert r.returncode == 78 and "NO_SUCH_VARIABLE_FOR_TEST is not set" in r.stderr


def _wait_queue(gw: GatewayProcess, queue: str, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = json.loads(gw.command("queue", "list", "--json").stdout)
        if rows and all(r["queue"] == queue for r in rows):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"queue not {queue}: {gw.command('queue', 'list').stdout}")


def test_queue_tools_show_hold_release_flush_delete(make_gateway) -> None:
    sink = SmtpSink()
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}",
                      sections={"delivery": {"min_backoff": 3600, "max_backoff": 3600}})
    send(gw.smtp_port, message("first\n"), rcpts=["a@contact.example"])
    send(gw.smtp_port, message("second\n"), rcpts=["b@contact.example"])
    rows = _wait_queue(gw, "deferred")
    assert len(rows) == 2
    first = next(r for r in rows if r["rcpt_tos"] == ["a@contact.example"])
    second = next(r for r in rows if r["rcpt_tos"] == ["b@contact.example"])
    assert json.loads(gw.command("queue", "list", "--json", "--recipient", "b@").stdout)[0]["queue_id"] == \
        second["queue_id"]
    shown = json.loads(gw.command("queue", "show", first["queue_id"], "--json").stdout)[0]
    assert shown["attempts"] >= 1 and shown["next_attempt"] > time.time() + 3000
    assert "Subject: Test" in shown["headers"] and "4.4.1" in shown["last_error"]
    assert "Mail queue is empty" not in gw.command("queue", "list").stdout
    held = json.loads(gw.command("queue", "hold", first["queue_id"], "--reason", "looks odd", "--json").stdout)
    assert held == [{"queue_id": first["queue_id"], "queue": "hold"}]
    listed = {r["queue_id"]: r for r in json.loads(gw.command("queue", "list", "--json").stdout)}
    assert listed[first["queue_id"]]["hold_reason"] == "looks odd"
    r = gw.command("queue", "delete", second["queue_id"], "--json")
    assert json.loads(r.stdout) == [{"queue_id": second["queue_id"], "deleted": True}]
    assert gw.command("queue", "show", "NOSUCHID").returncode == 69
    sink.start()
    try:
        gw.command("queue", "release", first["queue_id"])
        gw.command("queue", "flush")
        [got] = sink.wait(1)
        assert b"first" in got.data
        gw.wait_idle()  # the next hop has it a moment before it leaves the spool
        time.sleep(1.5)
        assert len(sink.messages) == 1  # the deleted one never went
        assert gw.command("queue", "list").stdout.strip() == "Mail queue is empty"
    finally:
        sink.stop()


def test_acknowledged_messages_survive_kill_9_and_are_delivered_on_restart(make_gateway) -> None:
    gw = make_gateway(threshold=1000, start=False)
    gw.start(roles=["smtp"])  # receive only: nothing is processed before the kill
    pdf = pdf_bytes(5000)
    for i in range(5):
        send(gw.smtp_port, message(f"message {i}\n", attachments=[(pdf, "application/pdf", f"f{i}.pdf")]))
    gw.kill()
    assert len(list((gw.spool / "incoming").iterdir())) == 5
    # A crash in the middle of processing: a message left in active with no
    # live owner, and an unacknowledged reception left in tmp.
    moved = sorted((gw.spool / "incoming").iterdir())[0]
    moved.rename(gw.spool / "active" / moved.name)
    (gw.spool / "tmp" / "HALFRECEIVED").mkdir()
    (gw.spool / "tmp" / "HALFRECEIVED" / "message.eml").write_bytes(b"Subject: never acknowledged\r\n")
    gw.start()
    outs = gw.wait_outbox(5)
    gw.wait_idle()
    bodies = sorted(payload(leaves(parse(o))[0]).split(b"\r\n")[0] for o in outs)
    assert bodies == [f"message {i}".encode() for i in range(5)]
    assert not (gw.spool / "tmp" / "HALFRECEIVED").exists()
    assert any(e.get("event") == "spool recovered" and e.get("requeued") == 1 for e in gw.log_events())


def test_tampered_token_403_expired_410_and_both_audited(make_gateway) -> None:
    gw = make_gateway(threshold=1000, sections={"links": {"ttl": 3}})
    pdf = pdf_bytes(4000)
    send(gw.smtp_port, message(attachments=[(pdf, "application/pdf", "x.pdf")]))
    [out] = gw.wait_outbox()
    url = links(payload(leaves(parse(out))[0]))[0]
    assert fetch(url)[0] == 200
    token = url.rsplit("/", 1)[1]
    for i in range(len(token)):
        if token[i] == ".":
            continue
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
        assert fetch(url.rsplit("/", 1)[0] + "/" + flipped)[0] == 403, flipped
    time.sleep(3.2)
    status, headers, body = fetch(url)
    assert status == 410 and b"expired" in body
    events = gw.audit()
    assert sum(1 for e in events if e["EventResult"] == "Failure" and "invalid token" in e["EventResultDetails"]) \
        == len(token.replace(".", ""))
    assert events[-1]["EventResultDetails"] == "expired token" and events[-1]["SrcIpAddr"] == "127.0.0.1"


def _read_until_closed(s: socket.socket) -> bytes:
    # No half-close: aiosmtpd ends the session on EOF from the client, so
    # read until the server closes after QUIT.
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _raw_session(port: int, payload_bytes: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.recv(1024)
        s.sendall(payload_bytes)
        return _read_until_closed(s)


@pytest.mark.parametrize("variant", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n"])
def test_smuggled_end_of_data_never_makes_a_second_message(make_gateway, sink: SmtpSink, variant: bytes) -> None:
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")
    smuggled = (b"EHLO client.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<support@contact.example>\r\n"
                b"DATA\r\nSubject: outer\r\n\r\nouter body" + variant +
                b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@contact.example>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\nQUIT\r\n")
    replies = _raw_session(gw.smtp_port, smuggled)
    assert replies.count(b"250 2.0.0 Ok: queued as") == 1
    [got] = sink.wait(1)
    gw.wait_idle()
    time.sleep(0.5)
    assert len(sink.messages) == 1
    assert got.rcpt_tos == ["support@contact.example"]
    assert b"smuggled body" in got.data  # carried as data of the one message
    assert b"\r\n" in got.data and b"\n." not in got.data.replace(b"\r\n", b"")


def test_pipelined_commands_after_data_are_answered(gateway: GatewayProcess) -> None:
    session = (b"EHLO client.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<support@contact.example>\r\n"
               b"DATA\r\n")
    with socket.create_connection(("127.0.0.1", gateway.smtp_port), timeout=10) as s:
        s.recv(1024)
        s.sendall(session)
        time.sleep(0.3)
        s.recv(65536)
        # The end of data and the next transaction in one packet.
        s.sendall(b"Subject: one\r\n\r\n..leading dot\r\n.\r\nMAIL FROM:<b@example.net>\r\n"
                  b"RCPT TO:<support@contact.example>\r\nDATA\r\n")
        time.sleep(0.5)
        s.sendall(b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
        out = _read_until_closed(s)
    assert out.count(b"250 2.0.0 Ok: queued as") == 2 and b"221" in out
    msgs = gateway.wait_outbox(2)
    assert any(b"\r\n\r\n.leading dot\r\n" in m for m in msgs)  # dot-unstuffed


def test_sigterm_stops_accepting_and_keeps_the_spool(make_gateway) -> None:
    sink = SmtpSink()
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}")
    send(gw.smtp_port, message("kept across a restart\n"))
    _wait_queue(gw, "deferred")
    assert gw.stop(signal.SIGTERM) == 0
    assert not port_is_open("127.0.0.1", gw.smtp_port)
    sink.start()
    try:
        gw.start()
        gw.command("queue", "flush")
        [got] = sink.wait(1)
        assert b"kept across a restart" in got.data
    finally:
        sink.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text exposition."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if metric == name and got == want:
            return float(value)
    raise AssertionError(f"no sample {name}{{{want}}} in\n{text}")


def test_metrics_are_summed_over_processes(make_gateway) -> None:
    gw = make_gateway(threshold=1000, sections={"gateway": {"processes": 2}})
    pdf = pdf_bytes(3000)

    def receivers() -> set[int]:
        return {e["pid"] for e in gw.log_events() if e.get("event") == "queued" and "pid" in e}

    # The kernel spreads connections over both processes by a hash of the
    # client port, so a few may all land on one: send until both have mail.
    n = 0
    while n < 6 or (len(receivers()) < 2 and n < 40):
        send(gw.smtp_port, message(f"m{n}\n", attachments=[(pdf, "application/pdf", "p.pdf")]))
        n += 1
    assert len(receivers()) == 2, "both processes received mail"
    gw.wait_outbox(n)
    gw.wait_idle()

    def scrape() -> str:
        status, headers, body = fetch(f"http://127.0.0.1:{gw.http_port}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        return body.decode()

    # A delivered message leaves the spool a moment before its counter
    # moves: wait on the counter, not on the spool.
    wait_until(lambda: _metric(scrape(), "gateway_messages_delivered_total", route="contact") == n,
               timeout=10, what="every delivery counted")
    text = scrape()
    assert _metric(text, "gateway_messages_received_total", route="contact") == n
    assert _metric(text, "gateway_messages_delivered_total", route="contact") == n
    assert _metric(text, "gateway_offloaded_bytes_total", route="contact", store="local") == n * 3000
    assert _metric(text, "gateway_policy_decisions_total", route="contact", policy="offload_large",
                   action="offload") == n
    assert _metric(text, "gateway_delivery_seconds_count", route="contact", outcome="delivered") == n
    assert _metric(text, "gateway_storage_put_seconds_count", store="local") == n
    assert _metric(text, "gateway_queue_messages", queue="deferred") == 0


def test_download_cut_short_is_audited_as_a_failure(make_gateway) -> None:
    gw = make_gateway(threshold=1000)
    send(gw.smtp_port, message(attachments=[(pdf_bytes(20 * MiB), "application/pdf", "big.pdf")]))
    [out] = gw.wait_outbox()
    url = links(payload(leaves(parse(out))[0]))[0]
    path = url.split(str(gw.http_port), 1)[1]
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    events = gw.wait_audit(lambda e: e.get("EventResultDetails") == "client went away during the download",
                           timeout=20)
    # A success reads "streamed (<why the agent was allowed>)".
    assert not [e for e in events if e.get("EventResultDetails", "").startswith("streamed")]
    assert not [e for e in gw.log_events() if e.get("level") == "error"]


def test_reused_spool_directories_hold_no_mail_and_carry_nothing_into_the_next_message(make_gateway) -> None:
    # One process, so the second reception takes the directory the first
    # delivery parked (each process reuses only its own).
    gw = make_gateway(sections={"gateway": {"processes": 1}})
    long_body = "".join(f"line {i} of the first customer's long message\n" for i in range(4000))
    send(gw.smtp_port, message(long_body, Subject="first"))
    gw.wait_outbox(1)
    gw.wait_idle()
    free = gw.spool / ".free"
    parked = {p.stat().st_ino: p for p in free.iterdir()}
    assert parked, "a delivered message's directory is parked for reuse"
    for d in parked.values():
        # Nothing of the delivered message is left: one empty file.
        assert [(f.name, f.stat().st_size) for f in d.iterdir()] == [("message.eml", 0)]

    send(gw.smtp_port, message("short\n", Subject="second"))
    outs = gw.wait_outbox(2)
    gw.wait_idle()
    second = next(o for o in outs if b"Subject: second" in o)
    assert payload(leaves(parse(second))[0]).strip() == b"short"
    assert b"first customer" not in second
    # The same directory went round: received into, delivered from, parked.
    assert {p.stat().st_ino for p in free.iterdir()} == set(parked)

    # Parked directories are not mail: a restart clears them.
    gw.kill()
    gw.start()
    assert list(free.iterdir()) == []


def test_idle_smtp_session_is_closed_after_the_timeout_and_a_busy_one_is_not(make_gateway) -> None:
    gw = make_gateway(sections={"smtp": {"timeout": 1}})
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as busy:
        busy.ehlo("client.example")
        deadline = time.monotonic() + 2.5  # over twice the timeout, never idle for long
        while time.monotonic() < deadline:
            assert busy.noop()[0] == 250
            time.sleep(0.2)
        time.sleep(2)  # now idle past the timeout
        with pytest.raises(smtplib.SMTPServerDisconnected):
            busy.noop()


def test_a_parked_spool_directory_held_by_another_process_is_skipped_not_an_error(make_gateway) -> None:
    # Another process's claim can hold a parked directory's lock for a
    # moment (it lost the race for the message the directory held); a
    # reception must take another directory, not fail with 451.
    import fcntl

    gw = make_gateway(sections={"gateway": {"processes": 1}})
    for i in range(3):
        send(gw.smtp_port, message(f"message {i}\n"))
    gw.wait_outbox(3)
    gw.wait_idle()
    parked = list((gw.spool / ".free").iterdir())
    assert parked
    held = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in parked]
    try:
        for fd in held:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for i in range(3, 6):
            send(gw.smtp_port, message(f"message {i}\n"))  # raises unless 250
        gw.wait_outbox(6)
    finally:
        for fd in held:
            os.close(fd)
