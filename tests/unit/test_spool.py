"""The spool's group commit, on a real directory."""
from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.spool import Envelope, Handle, Spool, commit_all, read_envelope


def _envelope(qid: str) -> Envelope:
    return Envelope(queue_id=qid, mail_from="customer@example.net", rcpt_tos=["agent@contact.example"],
                    route="contact", received_at=time.time())


def test_group_commit_answers_each_reception_and_a_failure_loses_no_other(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.create()
    good, broken, kept = spool.receive(), spool.receive(), spool.receive()
    for r in (good, broken, kept):
        r.write(b"Subject: " + r.queue_id.encode() + b"\r\n\r\nbody\r\n")
    # Its directory vanishes before the commit (an operator, a full disk):
    # the rename fails for that reception alone.
    os.unlink(broken.path / "message.eml")
    os.rmdir(broken.path)

    results = commit_all([(good, _envelope(good.queue_id), False), (broken, _envelope(broken.queue_id), False),
                          (kept, _envelope(kept.queue_id), True)])

    assert results[0] is None
    assert isinstance(results[1], OSError)
    assert isinstance(results[2], Handle) and results[2].queue == "active"
    assert spool.ids("incoming") == [good.queue_id]
    assert spool.ids("active") == [kept.queue_id]
    env, size = read_envelope(tmp_path / "incoming" / good.queue_id)
    assert env.queue_id == good.queue_id and size == len(b"Subject: " + good.queue_id.encode() + b"\r\n\r\nbody\r\n")
    # The kept message is locked by its handle, so another process's
    # recovery leaves it alone; released, it goes back to incoming.
    assert spool.recover().requeued == 0
    results[2].release()
    assert spool.recover().requeued == 1
    assert sorted(spool.ids("incoming")) == sorted([good.queue_id, kept.queue_id])


def test_recovery_removes_a_symlink_planted_in_tmp_never_what_it_points_at(tmp_path: Path) -> None:
    # A careless operator (or a restore) leaves a symlink in tmp/ pointing at
    # a directory outside the spool: recovery removes the link, and the
    # files of the directory it points at stay.
    spool = Spool(tmp_path / "spool")
    spool.create()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"not the spool's")
    os.symlink(outside, tmp_path / "spool" / "tmp" / "20261207T000000-abc.4242")
    os.symlink(outside / "keep.txt", tmp_path / "spool" / "tmp" / "20261207T000001-def.4243")

    recovery = spool.recover()

    assert (outside / "keep.txt").read_bytes() == b"not the spool's"
    assert spool.ids("tmp") == [] and recovery.removed_tmp == 2


def test_recovery_of_tmp_entries_whose_names_carry_no_usable_pid(tmp_path: Path) -> None:
    # tmp/ names are ID.PID; a name with a pid no kernel has (too large for
    # kill(2), or digits int() does not read) is explained, never a crash
    # that stops recovery at start.
    spool = Spool(tmp_path)
    spool.create()
    for name in ("a.99999999999999999999999", "b.\u00b2", "c.0", "d.-5", "e"):
        (tmp_path / "tmp" / name).mkdir()

    recovery = spool.recover()

    assert spool.ids("tmp") == [] and recovery.removed_tmp == 5
    by_name = {f.entry.rsplit("/", 1)[-1]: f for f in recovery.found}
    assert all(by_name[n].owner_pid is None for n in ("a.99999999999999999999999", "b.\u00b2", "c.0", "d.-5", "e"))
