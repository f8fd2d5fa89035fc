"""Proof that the test-server helpers work: real Postfix relaying to a real smtp-sink."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import threading
from email.message import EmailMessage

import pytest

from . import PostfixError, PostfixInstance, SmtpSink, free_port, wait_for_port

def needs_postfix(test):  # type: ignore[no-untyped-def]
    """Postfix tests fail, never skip, when Postfix is missing: `make test`
    installs it, and a quiet skip would hide a broken install step."""

    def check(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert os.geteuid() == 0, "Postfix tests need root (CI and `make test` run as root)"
        assert shutil.which("postfix", path="/usr/sbin"), "Postfix missing: run scripts/install-test-deps.sh"
        return test(*args, **kwargs)

    import functools

    return functools.wraps(test)(check)


def _message(body: str, subject: str = "helper test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "customer@sender.example"
    msg["To"] = "agent@contact.example"
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_for_port_names_the_port_on_timeout() -> None:
    port = free_port()
    with pytest.raises(RuntimeError, match=str(port)):
        wait_for_port("127.0.0.1", port, timeout=0.3)


def test_wait_for_port_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        wait_for_port("127.0.0.1", sock.getsockname()[1], timeout=2)


@needs_postfix
def test_smtp_sink_counts_and_dumps() -> None:
    body = "line one\n.line starting with a dot\nlast line\n"
    with SmtpSink(dump=True) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            client.send_message(_message(body))
        (got,) = sink.wait_for_messages(1, timeout=10)
        assert sink.received_count() == 1
        assert got.mail_from == "customer@sender.example"
        assert got.rcpt_to == ["agent@contact.example"]
        assert got.email()["Subject"] == "helper test"
        assert got.email().get_content() == body
        workdir = sink.workdir
    assert workdir is not None and not workdir.exists()


@needs_postfix
def test_postfix_relays_to_sink_with_body_intact() -> None:
    # Every line distinct, long enough to span several TCP segments and queue records.
    body = "".join(f"body line {i:05d} {'x' * 60}\n" for i in range(3000))
    with SmtpSink(dump=True) as sink, PostfixInstance(relay_port=sink.port) as mta:
        assert mta.postconf("relayhost") == f"[127.0.0.1]:{sink.port}"
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as client:
            ehlo_code, ehlo_text = client.ehlo("client.localhost")
            assert ehlo_code == 250
            assert b"SIZE 209715200" in ehlo_text
            refused = client.send_message(_message(body, subject="through postfix"))
        assert refused == {}
        (got,) = sink.wait_for_messages(1, timeout=30)
        assert got.rcpt_to == ["agent@contact.example"]
        assert got.mail_from == "customer@sender.example"
        parsed = got.email()
        assert parsed["Subject"] == "through postfix"
        assert parsed.get_content() == body
        # Postfix added its own Received header: the message really went through it.
        assert "postfix-test.localhost" in str(parsed["Received"])
        assert mta.queue_size() == 0
        names = set(mta.processes().values())
        assert {"master", "smtpd", "cleanup", "qmgr"} <= names
        root = mta.root
    # stop() really stopped everything and cleaned up.
    assert mta.pids() == []
    assert root is not None and not root.exists()


@needs_postfix
def test_postfix_extra_main_cf_settings_apply() -> None:
    with SmtpSink() as sink, PostfixInstance(
        relay_port=sink.port, main_cf={"message_size_limit": 1000}
    ) as mta:
        assert mta.postconf("message_size_limit") == "1000"
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                client.sendmail("a@sender.example", ["b@contact.example"], "x" * 5000)
            assert info.value.smtp_code == 552


@needs_postfix
def test_postfix_stops_even_when_the_test_fails() -> None:
    sink = SmtpSink().start()
    mta = PostfixInstance(relay_port=sink.port)
    try:
        with pytest.raises(ZeroDivisionError):
            with mta:
                assert mta.pids()
                1 / 0  # noqa: B018 - the failure being simulated
        assert mta.pids() == []
        assert mta.root is not None and not mta.root.exists()
    finally:
        sink.stop()


@needs_postfix
def test_postfix_start_failure_carries_postfix_text() -> None:
    mta = PostfixInstance(relay_port=free_port(), main_cf={"mail_owner": "no-such-user-xyz"})
    with pytest.raises(PostfixError, match="unknown user name value: no-such-user-xyz"):
        mta.start()
    # The failed start cleaned up after itself.
    assert mta.pids() == []
    assert mta.root is not None and not mta.root.exists()


@needs_postfix
def test_postfix_accepts_parallel_clients() -> None:
    count = 10
    with SmtpSink(dump=True) as sink, PostfixInstance(relay_port=sink.port) as mta:
        errors: list[BaseException] = []

        def send(i: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as client:
                    client.send_message(_message(f"message {i}\n", subject=f"n{i}"))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        got = sink.wait_for_messages(count, timeout=30)
        assert sorted(str(m.email()["Subject"]) for m in got) == sorted(f"n{i}" for i in range(count))
        # purge() deletes what arrived, and the purged messages still count.
        assert sink.purge() == count
        assert sink.messages() == []
        sink.wait_for_count(count, timeout=1)
