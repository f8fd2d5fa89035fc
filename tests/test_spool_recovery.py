"""The periodic spool recovery, under load, through real SMTP.

Every running process looks at the spool every 30 s for what a dead
process left behind (``Spool.recover``).  Its siblings are alive and
working at that moment, so the look must never take anything of theirs:
the test plays such a sibling, recovering in a tight loop while a real
gateway receives and delivers over real SMTP.
"""
from __future__ import annotations

import os
import smtplib
import threading
import time
from email import policy
from pathlib import Path

from gateway.runner import RECOVERY_INTERVAL
from gateway.spool import Spool
from tests.harness import wait_until
from tests.messages import message

SESSIONS = 4
PER_SESSION = 60


def _send_many(port: int, n: int, tag: str, errors: list[BaseException]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            for i in range(n):
                data = message(f"{tag} {i}\n", Subject=f"{tag} {i}").as_bytes(policy=policy.SMTP)
                s.sendmail("customer@example.net", ["support@contact.example"], data)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_recovery_under_load_takes_nothing_from_a_live_process(make_gateway) -> None:
    gw = make_gateway(sections={"gateway": {"processes": 1}})
    # Delivered messages' directories are parked for reuse; age them as a
    # minute of running would (the recovery only looks at entries older
    # than its interval).
    errors: list[BaseException] = []
    _send_many(gw.smtp_port, 40, "warm", errors)
    assert not errors
    gw.wait_outbox(40)
    gw.wait_idle()
    old = time.time() - 4 * RECOVERY_INTERVAL
    for parked in (gw.spool / ".free").iterdir():
        os.utime(parked, (old, old))

    threads = [threading.Thread(target=_send_many, args=(gw.smtp_port, PER_SESSION, f"s{k}", errors))
               for k in range(SESSIONS)]
    for t in threads:
        t.start()
    sibling = Spool(gw.spool)
    removed: list[str] = []
    passes = 0
    while any(t.is_alive() for t in threads) or len(gw.outbox_messages()) < 40 + SESSIONS * PER_SESSION:
        found = sibling.recover(RECOVERY_INTERVAL)
        removed += [f.entry for f in found.found if f.queue == "tmp"]
        passes += 1
        assert passes < 200_000, "the load did not finish"
    for t in threads:
        t.join()
    assert not errors, errors

    assert removed == [], f"a live process's entries were taken as a dead one's: {removed}"
    assert len(gw.wait_outbox(40 + SESSIONS * PER_SESSION)) == 40 + SESSIONS * PER_SESSION
    gw.wait_idle()
    assert not [p for p in (gw.spool / "tmp").iterdir() if not p.name.startswith(".")]


def test_recovery_says_what_it_found_and_why(tmp_path: Path) -> None:
    """A reception left by a dead process is removed, and the finding names
    the entry, its age and its owner's pid, and whether that pid is alive."""
    spool = Spool(tmp_path)
    spool.create()
    reception = spool.receive()
    reception.write(b"Subject: half\r\n")
    # The owner dies: its lock goes with its file descriptors.
    reception._lock_fd, lock_fd = -1, reception._lock_fd
    os.close(lock_fd)
    os.close(reception._fd)
    reception._fd = -1
    entry = reception.path.name
    found = spool.recover().found
    assert [f.entry for f in found] == [f"tmp/{entry}"]
    [f] = found
    assert f.owner_pid == os.getpid() and f.owner_alive
    assert f.age >= 0 and f.action == "removed"
    assert "alive" in f.reason
    assert not reception.path.exists()


def test_sessions_that_end_mid_data_leave_nothing_in_tmp(make_gateway) -> None:
    """A client that goes away in the middle of a large DATA (written to
    the spool in threads as it comes) leaves no reception behind, and the
    next message is received and delivered."""
    import socket

    gw = make_gateway(sections={"gateway": {"processes": 1}})
    chunk = b"X" * 998 + b"\r\n"
    for _ in range(6):
        with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=30) as s, s.makefile("rb") as f:
            f.readline()
            for line in (b"EHLO client.example\r\n", b"MAIL FROM:<customer@example.net>\r\n",
                         b"RCPT TO:<support@contact.example>\r\n", b"DATA\r\n"):
                s.sendall(line)
                while True:
                    reply = f.readline()
                    if reply[3:4] != b"-":
                        break
            assert reply.startswith(b"354")
            s.sendall(b"Subject: cut short\r\n\r\n" + chunk * 3000)  # 3 MB, then gone
    tmp = gw.spool / "tmp"
    wait_until(lambda: not [p for p in tmp.iterdir() if not p.name.startswith(".")],
               what="the cut-short receptions gone from tmp/")
    _send_many(gw.smtp_port, 1, "after", [])
    gw.wait_outbox(1)


def test_a_client_gone_at_each_point_of_a_small_data_leaves_one_message_or_none(make_gateway) -> None:
    """Small messages (gathered in memory, spooled at the commit): a client
    that goes away after 354, in the middle of the body or just after the
    final dot without reading the reply.  Only the last is a whole message:
    it is queued and delivered at most once (no 250 was read, so it is the
    client's still: the gateway may queue it or not, depending on whether
    its commit began before the close was seen); nothing stays in tmp/ or
    locked in active/."""
    import socket

    gw = make_gateway(sections={"gateway": {"processes": 1}})
    cuts = {"after-354": b"", "mid-body": b"Subject: cut-mid-body\r\n\r\nhalf a li",
            "after-dot": b"Subject: cut-after-dot\r\n\r\nwhole\r\n.\r\n"}
    for _ in range(3):
        for body in cuts.values():
            with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=30) as s, s.makefile("rb") as f:
                f.readline()
                for line in (b"EHLO client.example\r\n", b"MAIL FROM:<customer@example.net>\r\n",
                             b"RCPT TO:<support@contact.example>\r\n", b"DATA\r\n"):
                    s.sendall(line)
                    while True:
                        reply = f.readline()
                        if reply[3:4] != b"-":
                            break
                assert reply.startswith(b"354")
                s.sendall(body)
    # A whole message after them, to know the gateway took the others in.
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as c:
        c.sendmail("customer@example.net", ["support@contact.example"], b"Subject: last\r\n\r\nlast\r\n")
    gw.wait_outbox(1)
    # A commit whose session had gone is handed to a worker at once, well
    # before recovery's next pass would find it (RECOVERY_INTERVAL).
    gw.wait_idle(timeout=RECOVERY_INTERVAL / 3)
    outs = gw.outbox_messages()
    subjects = [next(line for line in o.split(b"\r\n") if line.startswith(b"Subject:")) for o in outs]
    assert subjects.count(b"Subject: last") == 1 and subjects.count(b"Subject: cut-after-dot") <= 3, subjects
    assert set(subjects) <= {b"Subject: last", b"Subject: cut-after-dot"}, subjects
    queued = [e for e in gw.log_events() if e.get("event") == "queued"]
    assert len(queued) == len(outs), queued  # every message spooled is logged as queued
    tmp = gw.spool / "tmp"
    wait_until(lambda: not [p for p in tmp.iterdir() if not p.name.startswith(".")],
               what="the cut-short receptions gone from tmp/")
