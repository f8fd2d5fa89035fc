"""``attachment-gateway queue`` with Postfix's reach: count, filters, ALL,
postcat-like show, requeue through the pipeline, a closed pipe, options
after the subcommand; and where the command finds its config.

Everything runs the real command against the spool of a real gateway that
received real SMTP mail."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.harness import GATEWAY, ROOT, GatewayProcess, SmtpSink, wait_until
from tests.messages import leaves, links, message, parse, payload, pdf_bytes, send

SYSTEM_CONFIG = Path("/etc/attachment-gateway/gateway.toml")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "ATTACHMENT_GATEWAY_CONFIG"}
    if "stdout" not in kw:
        kw["capture_output"] = True
    kw.setdefault("text", True)
    return subprocess.run([*GATEWAY, *args], cwd=cwd, timeout=60,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, **kw)


def _json(gw: GatewayProcess, *args: str) -> Any:
    r = gw.command("queue", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _deferred(gw: GatewayProcess, n: int) -> list[dict[str, Any]]:
    wait_until(lambda: _json(gw, "count", "--queue", "deferred")["total"] == n, what=f"{n} deferred messages")
    return _json(gw, "list")


def test_count_filters_all_and_show_like_postcat(make_gateway) -> None:
    down = SmtpSink()  # never started: every message is deferred
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{down.port}",
                      sections={"delivery": {"min_backoff": 3600, "max_backoff": 3600}})
    send(gw.smtp_port, message("from alice\r\nsecond line\n", Subject="Quarterly report"), sender="alice@example.net",
         rcpts=["a@contact.example"])
    send(gw.smtp_port, message("from bob\n"), sender="bob@example.net", rcpts=["b@contact.example"])
    send(gw.smtp_port, message("a bounce\n"), sender="", rcpts=["c@contact.example"])
    rows = _deferred(gw, 3)
    by_rcpt = {r["rcpt_tos"][0]: r for r in rows}
    alice, bob, bounce = (by_rcpt[f"{x}@contact.example"]["queue_id"] for x in "abc")

    assert _json(gw, "count") == {"incoming": 0, "active": 0, "deferred": 3, "hold": 0, "corrupt": 0, "total": 3}
    assert _json(gw, "count", "--sender", "BOB@")["total"] == 1
    assert _json(gw, "count", "--sender", "<>")["total"] == 1
    assert _json(gw, "count", "--older-than", "1h")["total"] == 0
    assert _json(gw, "count", "--older-than", "0")["total"] == 3
    assert [r["queue_id"] for r in _json(gw, "list", "--sender", "alice")] == [alice]
    listing = gw.command("queue", "list", "--recipient", "b@contact").stdout
    assert bob in listing and alice not in listing and listing.rstrip().endswith("in 1 Request.")

    # show: the envelope and the headers as text, the body on request; no JSON escapes.
    shown = gw.command("queue", "show", alice)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"*** ENVELOPE deferred/{alice} ***" in out
    assert "sender:       alice@example.net" in out and "recipient:    a@contact.example" in out
    assert "4.4.1" in out  # the last error
    assert "\nSubject: Quarterly report\n" in out and "\\r\\n" not in out
    assert "from alice" not in out
    raw = _cli("-c", str(gw.config_path), "queue", "show", alice, "--body", cwd=gw.tmp, text=False).stdout
    assert b"\r" not in raw  # line ends as a terminal wants them (text mode above would hide a CR)
    body = raw.decode()
    assert "*** MESSAGE BODY ***\nfrom alice\nsecond line\n" in body and body.endswith("*** END OF MESSAGE ***\n")
    as_json = _json(gw, "show", alice, "--body")[0]
    assert as_json["queue_id"] == alice and "from alice\r\nsecond line" in as_json["body"]
    assert gw.command("queue", "show", "NOSUCHID").returncode == 69

    # hold, release, delete take ALL and the filters.
    held = _json(gw, "hold", "ALL", "--sender", "alice", "--reason", "checking")
    assert held == [{"queue_id": alice, "queue": "hold"}]
    assert _json(gw, "count", "--queue", "hold")["total"] == 1
    assert _json(gw, "delete", "ALL", "deferred", "--sender", "<>") == [{"queue_id": bounce, "deleted": True}]
    assert _json(gw, "count") == {"incoming": 0, "active": 0, "deferred": 1, "hold": 1, "corrupt": 0, "total": 2}
    assert gw.command("queue", "delete", bob, "--sender", "bob").returncode == 64  # filters narrow ALL only
    assert gw.command("queue", "delete").returncode == 64
    # ALL of delete spares nothing it can reach; the filters found no one here.
    assert _json(gw, "delete", "ALL", "--recipient", "nobody@") == []
    assert _json(gw, "release", "ALL") == [{"queue_id": alice, "queue": "deferred"}]
    assert {r["queue_id"] for r in _json(gw, "delete", "ALL")} == {alice, bob}
    assert gw.command("queue", "list").stdout.strip() == "Mail queue is empty"


def test_requeue_runs_a_held_message_through_the_pipeline_again(make_gateway) -> None:
    sink = SmtpSink()
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}", threshold=1000,
                      sections={"delivery": {"min_backoff": 3600, "max_backoff": 3600}})
    pdf = pdf_bytes(20000)
    send(gw.smtp_port, message("see the file\n", attachments=[(pdf, "application/pdf", "big.pdf")]))
    [row] = _deferred(gw, 1)
    assert row["processed"]  # offloaded, rewritten.eml saved, next hop down
    assert _json(gw, "hold", row["queue_id"]) == [{"queue_id": row["queue_id"], "queue": "hold"}]
    # The policy changes: nothing of this size is offloaded any more.  A
    # release would send the message as first rewritten (with its link); a
    # requeue processes the original again under the new config.
    gw.reload({"routes": [{**gw.cfg["routes"][0], "offload_threshold": "10MiB"}]})
    sink.start()
    try:
        assert _json(gw, "requeue", "ALL") == [{"queue_id": row["queue_id"], "queue": "incoming",
                                                "requeued": True}]
        [got] = sink.wait(1)
        parts = leaves(parse(got.data))
        assert any(payload(p) == pdf for p in parts), "the PDF travels inline after the requeue"
        assert not links(got.data)
        wait_until(lambda: _json(gw, "count")["total"] == 0, what="the queue to empty")
    finally:
        sink.stop()


def test_a_closed_pipe_ends_quietly_and_options_go_anywhere(make_gateway) -> None:
    down = SmtpSink()
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{down.port}",
                      sections={"delivery": {"min_backoff": 3600, "max_backoff": 3600}})
    for i in range(3):
        send(gw.smtp_port, message(f"message {i}\n"))
    [first, *_] = _deferred(gw, 3)
    config = str(gw.config_path)
    # -c and --base-dir after the subcommand, or between its arguments.
    r = _cli("queue", "count", "--json", "-c", config, cwd=gw.tmp)
    assert r.returncode == 0 and json.loads(r.stdout)["deferred"] == 3, r.stderr
    r = _cli("queue", "--config", config, "show", first["queue_id"], "--base-dir", str(gw.tmp), cwd=ROOT)
    assert r.returncode == 0 and first["queue_id"] in r.stdout, r.stderr
    # `queue list | head -0`: the reader is gone before the first write.
    for args in (["list"], ["list", "--json"], ["show", first["queue_id"], "--body"], ["count"]):
        read, write = os.pipe()
        os.close(read)
        try:
            r = _cli("-c", config, "queue", *args, cwd=gw.tmp, stdout=write, stderr=subprocess.PIPE)
        finally:
            os.close(write)
        assert r.returncode == 141, (args, r.returncode, r.stderr)
        assert r.stderr == "", (args, r.stderr)


def test_the_config_is_found_from_c_then_the_environment_then_etc_never_the_current_directory(
        tmp_path: Path) -> None:
    assert not SYSTEM_CONFIG.exists(), f"this test needs a host without {SYSTEM_CONFIG}"
    checkout, env_dir, flag_dir = tmp_path / "checkout", tmp_path / "env", tmp_path / "flag"
    for d in (checkout, env_dir, flag_dir):
        d.mkdir()
    (checkout / "conf").mkdir()
    GatewayProcess(checkout).config_path.rename(checkout / "conf" / "gateway.toml")
    from_env, from_flag = GatewayProcess(env_dir).config_path, GatewayProcess(flag_dir).config_path

    # A checkout's conf/gateway.toml is never read in place of the system's file.
    r = _cli("check-config", cwd=checkout)
    assert r.returncode == 78 and str(SYSTEM_CONFIG) in r.stderr and "-c PATH" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("queue", "list", cwd=checkout)
    assert r.returncode == 78 and str(SYSTEM_CONFIG) in r.stderr and r.stdout == ""
    env = {"ATTACHMENT_GATEWAY_CONFIG": str(from_env)}
    r = _cli("check-config", cwd=checkout, env=env)
    assert r.returncode == 0 and r.stdout.startswith(f"{from_env}: OK"), r.stderr
    r = _cli("check-config", "-c", str(from_flag), cwd=checkout, env=env)
    assert r.returncode == 0 and r.stdout.startswith(f"{from_flag}: OK"), r.stderr
    r = _cli("-c", "conf/gateway.toml", "check-config", cwd=checkout, env=env)
    assert r.returncode == 0 and r.stdout.startswith("conf/gateway.toml: OK"), r.stderr
