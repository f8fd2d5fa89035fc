"""Operations and reliability: systemd, drain, full disks, crashes, limits.

Everything through the real command and real sockets: a systemd notify
socket the test listens on, a size-limited tmpfs the test mounts under the
spool, SIGKILL at random moments under load.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import ROOT, GatewayProcess, SmtpSink, strip_trace, wait_until
from tests.messages import leaves, message, parse, payload, pdf_bytes, send, stored_objects
from tests.servers.ports import port_is_open

MiB = 1 << 20


# -- systemd ----------------------------------------------------------------------


def test_systemd_units_verify(tmp_path: Path) -> None:
    exe = shutil.which("attachment-gateway", path=str(Path(os.__file__).parents[3] / "bin")) or \
        str(ROOT / ".venv" / "bin" / "attachment-gateway")
    assert Path(exe).exists(), exe
    names = []
    for unit in (ROOT / "systemd").glob("*.service"):
        text = unit.read_text().replace("/usr/local/bin/attachment-gateway", exe)
        (tmp_path / unit.name).write_text(text)
        names.append(f"./{unit.name}" if "@" not in unit.name else f"./{unit.name.replace('@', '@worker')}")
    assert len(names) == 2
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    # verify exits 0 on unknown keys but prints them: both must be clean.
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr
    unit = (ROOT / "systemd" / "attachment-gateway.service").read_text()
    for line in ("Type=notify", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "Restart=on-failure", "WatchdogSec=",
                 "ExecReload=/usr/local/bin/attachment-gateway check-config"):
        assert line in unit, line


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    yield s, path
    s.close()


def _notifications(s: socket.socket, until: float) -> list[str]:
    out = []
    while time.monotonic() < until:
        try:
            out.append(s.recv(4096).decode())
        except socket.timeout:
            continue
    return out


def test_sd_notify_ready_watchdog_and_stopping(make_gateway, notify_socket, monkeypatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # ping every second
    gw = make_gateway(sections={"gateway": {"processes": 2}})
    got = _notifications(sock, time.monotonic() + 3.5)
    ready = [m for m in got if "READY=1" in m]
    assert len(ready) == 1 and "2 processes accepting mail" in ready[0]
    assert sum("WATCHDOG=1" in m for m in got) >= 2
    assert port_is_open("127.0.0.1", gw.smtp_port)
    gw.proc.send_signal(signal.SIGTERM)
    got = _notifications(sock, time.monotonic() + 1.0)
    assert any("STOPPING=1" in m for m in got)
    assert gw.wait() == 0


# -- drain, reload ------------------------------------------------------------


def _reply(f) -> bytes:  # type: ignore[no-untyped-def]
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line


def test_sigterm_drains_421_to_new_sessions_and_finishes_the_one_in_progress(make_gateway, sink: SmtpSink) -> None:
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}", sections={"gateway": {"processes": 1}})
    s = socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=10)
    f = s.makefile("rb")
    _reply(f)
    for cmd in (b"EHLO client.example", b"MAIL FROM:<a@example.net>", b"RCPT TO:<support@contact.example>",
                b"DATA"):
        s.sendall(cmd + b"\r\n")
        _reply(f)
    s.sendall(b"Subject: in flight\r\n\r\nhalf of the body\r\n")
    gw.proc.send_signal(signal.SIGTERM)
    # The drain (421 to new sessions) starts as "stopping" is logged.
    wait_until(lambda: any(e.get("event") == "stopping" for e in gw.log_events()), timeout=30,
               what="the drain to start")
    with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=10) as late:
        assert late.recv(1024).startswith(b"421 4.3.2")
    s.sendall(b"the rest of it\r\n.\r\n")
    assert _reply(f).startswith(b"250 2.0.0 Ok: queued as")
    s.sendall(b"QUIT\r\n")
    s.close()
    assert gw.wait() == 0
    assert not port_is_open("127.0.0.1", gw.smtp_port)
    # Accepted during the drain: delivered then, or on the next start.
    gw.start()
    [got] = sink.wait(1)
    assert b"half of the body\r\nthe rest of it\r\n" in got.data


def _hup(gw: GatewayProcess, expect: str, count: int | None = None, timeout: float = 30.0) -> None:
    """Send SIGHUP and wait until ``count`` more ``expect`` lines are logged
    (by default one per serving process: each reloads on its own)."""
    def events(name: str) -> list[dict]:
        return [e for e in gw.log_events() if e.get("event") == name]

    if events("supervisor started"):
        # Every child has its SIGHUP handler and has logged "ready" by then.
        wait_until(lambda: events("all processes ready"), timeout=timeout, what="every process ready")
    before = len(events(expect))
    n = count if count is not None else len({e["pid"] for e in events("ready")})
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(events(expect)) >= before + n, timeout=timeout, what=f"{n} more {expect!r} line(s)")


def test_sighup_with_broken_config_keeps_the_old_one(make_gateway) -> None:
    gw = make_gateway(threshold=1000)
    good = gw.config_path.read_text()
    gw.config_path.write_text(good.replace('offload_threshold = 1000', 'offload_threshold = "lots"'))
    # Refused where the file is read: by the supervisor alone, when there is one.
    _hup(gw, "reload refused; old config stays in force", count=1)
    assert gw.proc.poll() is None
    send(gw.smtp_port, message(attachments=[(pdf_bytes(5000), "application/pdf", "a.pdf")]))
    [out] = gw.wait_outbox()
    assert b"offloaded=1" in out  # still the old threshold
    assert any(e.get("event") == "reload refused; old config stays in force" and "lots" in e.get("error", "")
               for e in gw.log_events())
    gw.config_path.write_text(good.replace('offload_threshold = 1000', 'offload_threshold = 100000'))
    _hup(gw, "config reloaded")
    send(gw.smtp_port, message(attachments=[(pdf_bytes(5000), "application/pdf", "b.pdf")]))
    outs = gw.wait_outbox(2)
    assert b"offloaded=0" in outs[1]  # the new threshold


# -- resource faults ----------------------------------------------------------


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted where the gateway's spool goes (root only)."""
    assert os.geteuid() == 0, "the disk-full test mounts a tmpfs: run as root (make test does)"
    spool = tmp_path / "gw0" / "spool"
    spool.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(spool)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr}"
    yield spool
    subprocess.run(["umount", "-l", str(spool)], capture_output=True)


def _raw_send(port: int, body: bytes, size: bool) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        replies = [_reply(f)]
        s.sendall(b"EHLO client.example\r\n")
        replies.append(_reply(f))
        opt = f" SIZE={len(body)}".encode() if size else b""
        s.sendall(b"MAIL FROM:<a@example.net>" + opt + b"\r\n")
        replies.append(_reply(f))
        if not replies[-1].startswith(b"250"):
            return replies
        s.sendall(b"RCPT TO:<support@contact.example>\r\n")
        replies.append(_reply(f))
        s.sendall(b"DATA\r\n")
        replies.append(_reply(f))
        s.sendall(body + b".\r\n")
        replies.append(_reply(f))
        s.sendall(b"QUIT\r\n")
        return replies


def test_full_spool_answers_452_and_loses_nothing_acknowledged(make_gateway, small_spool: Path) -> None:
    sink = SmtpSink()
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}", sections={
        "gateway": {"spool_min_free": 256 * 1024, "processes": 1},
        "delivery": {"min_backoff": 3600, "max_backoff": 3600}})
    assert gw.spool == small_spool
    acked: list[bytes] = []
    refused_at_mail = refused_at_data = 0
    for i in range(40):
        body = (f"Subject: fill {i}\r\n\r\n".encode() + b"x" * 76 + b"\r\n") * 3000  # ~240 KB
        replies = _raw_send(gw.smtp_port, body, size=i % 2 == 0)
        last = replies[-1]
        if last.startswith(b"250 2.0.0"):
            acked.append(body)
        elif last.startswith(b"452 4.3.1"):
            if len(replies) == 3:
                refused_at_mail += 1
            else:
                refused_at_data += 1
        else:
            raise AssertionError(replies)
        time.sleep(0.05)
    assert acked and refused_at_mail and refused_at_data, (len(acked), refused_at_mail, refused_at_data)
    # Read-only spool: 452 at MAIL.
    subprocess.run(["mount", "-o", "remount,ro", str(small_spool)], check=True)
    time.sleep(1.2)  # the writability check is cached for a second
    assert _raw_send(gw.smtp_port, b"Subject: ro\r\n\r\nx\r\n", size=False)[-1].startswith(b"452 4.3.1")
    subprocess.run(["mount", "-o", "remount,rw", str(small_spool)], check=True)
    sink.start()
    try:
        gw.command("queue", "flush")
        got = sink.wait(len(acked), timeout=60)
        time.sleep(1)
        assert sorted(strip_trace(m.data) for m in sink.messages) == sorted(acked)
    finally:
        sink.stop()


def test_connection_limits_answer_421(make_gateway) -> None:
    gw = make_gateway(sections={"smtp": {"max_connections_per_client": 2}, "gateway": {"processes": 1}})
    # The harness's start-up probe is counted out when the server sees it
    # close, which nothing shows: until then a second session is refused.
    # Retry the pair until both are welcome, rather than sleep a guess.
    deadline = time.monotonic() + 10
    while True:
        held = [socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=10) for _ in range(2)]
        greetings = [s.recv(1024) for s in held]
        if all(g.startswith(b"220 ") for g in greetings) or time.monotonic() > deadline:
            break
        for s in held:
            s.close()
        time.sleep(0.1)
    try:
        assert all(g.startswith(b"220 ") for g in greetings), greetings
        with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=10) as third:
            assert third.recv(1024).startswith(b"421 4.7.0")
    finally:
        for s in held:
            s.close()
    # Once the server has seen them go, a new session is welcome again.
    deadline = time.monotonic() + 10
    greeting = b""
    while time.monotonic() < deadline and not greeting.startswith(b"220 "):
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=10) as again:
            greeting = again.recv(1024)
    assert greeting.startswith(b"220 "), greeting


@pytest.mark.parametrize("shape,reason", [
    ("fields", b"header fields"),
    ("line", b"header line"),
])
def test_header_bounds_quarantine_the_message_and_forward_a_notice(make_gateway, shape: str, reason: bytes) -> None:
    gw = make_gateway(threshold=100, sections={"worker": {"max_header_fields": 50, "max_header_line": 2000}})
    headers = "".join(f"X-Extra-{i}: {i}\n" for i in range(60)) if shape == "fields" else \
        "X-Long: " + "y" * 2992 + "\n"
    raw = (f"From: a@example.net\nTo: support@contact.example\nSubject: bounds\n{headers}"
           "MIME-Version: 1.0\nContent-Type: text/plain\n\nbody\n").encode()
    from tests.harness import to_wire
    send(gw.smtp_port, to_wire(raw))
    [out] = gw.wait_outbox()
    assert reason in out and b"X-Extra-5" not in out and b"yyyy" not in out
    assert parse(out)["Subject"] == "bounds"
    [kept] = [v for k, v in stored_objects(gw.objects).items() if k.startswith("quarantine/")]
    assert kept == to_wire(raw)


def test_parts_over_the_part_count_are_quarantined_and_the_rest_is_examined(make_gateway) -> None:
    gw = make_gateway(threshold=100, sections={"worker": {"max_parts": 5}})
    parts = [(pdf_bytes(500), "application/pdf", f"f{i}.pdf") for i in range(8)]
    raw = message("many parts\n", attachments=parts).as_bytes()
    send(gw.smtp_port, raw)
    [out] = gw.wait_outbox()
    assert b"many parts" in out and b"more than 5 MIME parts" in out
    objects = stored_objects(gw.objects)
    uploads = sorted(v for k, v in objects.items() if k.startswith("uploads/"))
    [kept] = [v for k, v in objects.items() if k.startswith("quarantine/")]
    # The first parts within the bound were examined (and offloaded, being
    # over the threshold); the others are in quarantine in one piece.
    assert uploads == sorted(p[0] for p in parts[:len(uploads)]) and 1 <= len(uploads) < 8
    assert all(b'filename="f%d.pdf"' % i in kept for i in range(len(uploads), 8))
    assert not any(p[0] in b"".join(payload(x) for x in leaves(parse(out))) for p in parts)


# -- crashes --------------------------------------------------------------------


def test_a_process_that_crashes_leaves_its_stacks_and_is_started_again(make_gateway) -> None:
    """A serving process killed by SIGSEGV (what a fault in native code does)
    writes every thread's Python stack to the log before it dies, the
    supervisor names the signal, starts the process again, and mail flows."""
    gw = make_gateway(sections={"gateway": {"processes": 2}})

    def ready() -> list[int]:
        return [e["pid"] for e in gw.log_events() if e.get("event") == "ready"]

    wait_until(lambda: len(ready()) == 2, what="both processes ready")
    victim = ready()[0]
    os.kill(victim, signal.SIGSEGV)
    wait_until(lambda: len(ready()) == 3, what="a third process ready", timeout=30)
    restarted = [e for e in gw.log_events() if e.get("event") == "process exited; starting it again"]
    assert [(e["child"], e["code"], e["signal"]) for e in restarted] == [(victim, -signal.SIGSEGV, "SIGSEGV")]
    log = gw.log()
    assert "Fatal Python error: Segmentation fault" in log
    assert re.search(r'File "[^"]+", line \d+ in ', log), log[-3000:]
    send(gw.smtp_port, message(Subject="after the crash"))
    wait_until(lambda: any(b"after the crash" in p.read_bytes() for p in gw.outbox.rglob("*") if p.is_file()),
               what="the message after the crash delivered")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_or_stopped_under_load_loses_nothing(make_gateway, sink: SmtpSink, sig: int) -> None:
    """Kill the whole gateway (SIGKILL) or stop it (SIGTERM, which drains)
    at random moments while a client sends a few hundred messages; restart
    it each time.  Every message that got a 250 must reach the next hop,
    byte for byte or, when its attachment was offloaded, with a link and the
    attachment stored whole."""
    gw = make_gateway(threshold=50_000, next_hop=f"smtp://127.0.0.1:{sink.port}",
                      sections={"gateway": {"processes": 2}})
    rng = random.Random(1234)
    big = pdf_bytes(300_000)
    total = 250
    acked: dict[str, bytes] = {}
    attempts = 0

    def client() -> None:
        # Like an MTA: each message is retried until it gets its 250.
        nonlocal attempts
        for i in range(total):
            attach = [(big, "application/pdf", f"big{i}.pdf")] if i % 10 == 0 else []
            msg = message(f"crash test {i}\n", attachments=attach, Subject=f"crash {i}").as_bytes()
            for _ in range(300):
                attempts += 1
                try:
                    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as s:
                        s.sendmail("customer@example.net", ["support@contact.example"], msg)
                    acked[f"crash {i}"] = msg
                    break
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.1)

    t = threading.Thread(target=client)
    t.start()
    kills = 0
    try:
        # Five stops whether or not the client is done: after it, the
        # gateway is still delivering what it acknowledged.
        while kills < 5:
            time.sleep(rng.uniform(0.3, 1.2))
            # SIGKILL hits the supervisor; its processes die with it
            # (PR_SET_PDEATHSIG).  SIGTERM lets them drain.
            gw.stop(sig)
            kills += 1
            gw.start()
    finally:
        t.join(timeout=180)
    assert kills == 5 and len(acked) == total, (kills, len(acked))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        subjects = {m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in sink.messages}
        if set(acked) <= subjects:
            break
        time.sleep(0.5)
    received: dict[str, list[bytes]] = {}
    for m in sink.messages:
        subject = m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        received.setdefault(subject, []).append(m.data)
    lost = sorted(set(acked) - set(received))
    assert lost == [], f"{len(lost)} acknowledged messages lost: {lost[:10]}"
    duplicates = {k: len(v) for k, v in received.items() if len(v) > 1}
    print(f"crash test: {total} messages, {attempts} attempts, {kills} x {signal.Signals(sig).name}, "
          f"{len(duplicates)} delivered more than once")
    for subject, original in acked.items():
        data = received[subject][0]
        if int(subject.split()[1]) % 10:
            assert strip_trace(data) == original, subject
        else:
            out = parse(strip_trace(data))
            links = re.findall(rb"http://127\.0\.0\.1:\d+/a/[A-Za-z0-9._-]+", payload(leaves(out)[0]))
            assert len(links) == 1, subject
    stored = [p.read_bytes() for p in gw.objects.rglob("*.pdf")]
    assert stored and all(b == big for b in stored)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_port_in_use_stops_start_up_with_an_error(make_gateway, processes: int) -> None:
    gw = make_gateway(start=False, sections={"gateway": {"processes": processes}})
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", gw.smtp_port))
        squatter.listen()
        r = gw.command("serve")
    assert r.returncode != 0
    assert "address already in use" in (r.stderr + r.stdout)
