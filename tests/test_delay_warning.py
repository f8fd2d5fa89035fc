"""Delay warnings: one RFC 3464 "delayed" DSN to the sender of a message
still deferred after ``[delivery] delay_warning``, never a second, never to
the null sender (Postfix's delay_warning_time).

The gateway is a real ``attachment-gateway serve`` process whose next hop
is a loopback port nobody listens on (every attempt defers, retried each
second or two); DSNs go to the Maildir ``bounce_next_hop``.
"""
from __future__ import annotations

import email
from email import policy
from typing import Any

from tests.harness import SmtpSink, wait_until
from tests.messages import message, send
from tests.servers.ports import free_port


def _gateway(make_gateway: Any, port: int, **delivery: Any) -> Any:
    return make_gateway(next_hop=f"smtp://127.0.0.1:{port}",
                        sections={"delivery": {"min_backoff": 1, "max_backoff": 1, "queue_lifetime": "1h",
                                               **delivery}})


def _attempts(gw: Any) -> int:
    return max((e.get("attempts", 0) for e in gw.log_events() if e.get("event") == "deferred"), default=0)


def _dsns(gw: Any) -> list[bytes]:
    new = gw.tmp / "bounces" / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def test_one_delay_warning_to_the_sender_then_none(make_gateway) -> None:
    port = free_port()
    gw = _gateway(make_gateway, port, delay_warning=2)
    send(gw.smtp_port, message(Subject="Invoice 42"), sender="customer@example.net")
    wait_until(lambda: _dsns(gw), timeout=30, what="a delay warning")
    # Several more deferrals after the warning: none brings a second one.
    seen = _attempts(gw)
    wait_until(lambda: _attempts(gw) >= seen + 3, timeout=30, what="three more deferrals")
    dsns = _dsns(gw)
    assert len(dsns) == 1, [d[:300] for d in dsns]
    dsn = email.message_from_bytes(dsns[0], policy=policy.default)
    assert dsn["To"].addresses[0].addr_spec == "customer@example.net"
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    text = dsns[0].decode()
    assert "Action: delayed" in text and "Action: failed" not in text
    assert "Final-Recipient: rfc822; support@contact.example" in text
    assert "Status: 4.4.1" in text and "Will-Retry-Until: " in text
    assert "Subject: Invoice 42" in text  # the original headers, for the sender to recognise it
    assert [e for e in gw.log_events() if e.get("event") == "delay warning sent"]

    # The next hop comes back: the message goes, and no other DSN follows.
    gw_rows = gw.command("queue", "list", "--json")
    assert gw_rows.returncode == 0
    sink = SmtpSink(port=port).start()
    try:
        sink.wait(1)
    finally:
        sink.stop()
    assert len(_dsns(gw)) == 1


def test_no_delay_warning_to_the_null_sender(make_gateway) -> None:
    port = free_port()
    gw = _gateway(make_gateway, port, delay_warning=1)
    # A bounce from elsewhere (MAIL FROM:<>) and an ordinary message wait together.
    send(gw.smtp_port, message(Subject="a bounce from elsewhere"), sender="")
    send(gw.smtp_port, message(Subject="an ordinary message"), sender="customer@example.net")
    wait_until(lambda: _dsns(gw), timeout=30, what="the ordinary message's delay warning")
    seen = _attempts(gw)
    wait_until(lambda: _attempts(gw) >= seen + 3, timeout=30, what="three more deferrals")
    dsns = _dsns(gw)
    assert len(dsns) == 1, [d[:300] for d in dsns]
    assert b"To: <customer@example.net>" in dsns[0] and b"Subject: an ordinary message" in dsns[0]
    assert len([e for e in gw.log_events() if e.get("event") == "delay warning sent"]) == 1


def test_a_delay_warning_not_shorter_than_the_queue_lifetime_is_refused(make_gateway) -> None:
    gw = make_gateway(start=False, sections={"delivery": {"queue_lifetime": "4h", "delay_warning": "4h",
                                                          "bounce_next_hop": "maildir:bounces"}})
    done = gw.command("check-config")
    assert done.returncode == 78, done
    out = done.stdout + done.stderr
    assert "delay_warning" in out and "queue_lifetime" in out, out
