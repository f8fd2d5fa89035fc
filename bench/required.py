"""What the work no shortcut may skip costs, in process, on one core.

The issue-18 targets compare the gateway with Postfix relaying bytes and with
aiosmtpd answering 250.  Some of the gateway's work is required by its own
rules whatever the code looks like: a message is on disk (fsynced) before
its 250, its MIME tree is read, and every attachment is decoded, hashed,
typed by libmagic and, when it is a PDF or an Office file, disarmed.  This
prints what that work alone costs here, with no SMTP, no event loop, no
thread and no child process around it, so that a target can be set against
the least it would have to beat:

* a small MIME reply (the mix's, about 11 KB): the commit of the gateway's
  own spool (the file written and fsynced, its directory fsynced, then
  renamed into the queue, whose directory is fsynced), its removal once
  delivered (renamed out, the queue fsynced), and the parse;
* the 5 MB message in 200 attachments: the parse, then for each attachment
  decoding, sha256, libmagic on its first 8 KB, and disarm of the PDF and
  Office files (in process: no fork, no copy to a child).

Run from the repository root: ``python bench/required.py [--replies N] [--rounds N]``.
Figures are the best of ``--rounds`` (the least it can cost, not the typical).
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mix import build_many_attachments, build_message  # noqa: E402
from gateway import disarm  # noqa: E402
from gateway.mime import decode, sniff  # noqa: E402
from gateway.mime.parse import parse  # noqa: E402
from gateway.mime.source import Source  # noqa: E402
from gateway.spool.envelope import Envelope  # noqa: E402
from gateway.spool.queue import Handle, Spool  # noqa: E402


def cpu() -> float:
    """This process's CPU seconds so far (user and system)."""
    return time.process_time()


def best(rounds: int, work: Callable[[], object]) -> float:
    """The least CPU seconds ``work`` took over ``rounds`` runs."""
    least = float("inf")
    for _ in range(rounds):
        start = cpu()
        work()
        least = min(least, cpu() - start)
    return least


def spool_commits(spool: Spool, data: bytes, count: int) -> list[Handle]:
    """``count`` messages received and committed by the gateway's own spool,
    one commit at a time (no group commit to share the fsyncs)."""
    handles = []
    for _ in range(count):
        reception = spool.receive()
        reception.write(data)
        envelope = Envelope(queue_id=reception.queue_id, mail_from="customer@sender.example",
                            rcpt_tos=["agent@contact.example"], route="bench", received_at=time.time(),
                            client_addr="127.0.0.1", size=len(data))
        handle = reception.commit(envelope, keep=True)
        assert handle is not None
        handles.append(handle)
    return handles


def reply_work(workdir: Path, replies: int, rounds: int) -> dict[str, float]:
    """Milliseconds of CPU a small reply's spool commit, its removal once
    delivered, and its parse take."""
    rng = random.Random(18)
    wires = [build_message(rng, i, "reply", 18).wire for i in range(replies)]
    paths = []
    for i, wire in enumerate(wires):
        path = workdir / f"reply{i}.eml"
        path.write_bytes(wire)
        paths.append(path)
    mean = sum(map(len, wires)) // len(wires)
    spool = Spool(workdir / "spool")
    spool.create()
    commit = remove = float("inf")
    for _ in range(rounds):
        start = cpu()
        handles = spool_commits(spool, wires[0][:mean], replies)
        commit = min(commit, (cpu() - start) / replies)
        start = cpu()
        for handle in handles:  # delivered: out of the spool, durably
            handle.remove()
        remove = min(remove, (cpu() - start) / replies)
    sources = [Source(p) for p in paths]
    try:
        parsed = best(rounds, lambda: [parse(s) for s in sources]) / replies
    finally:
        for s in sources:
            s.close()
    return {"reply_bytes": float(mean), "spool_commit_ms": 1000 * commit, "spool_remove_ms": 1000 * remove,
            "parse_ms": 1000 * parsed}


def many_work(workdir: Path, rounds: int) -> dict[str, float]:
    """Milliseconds of CPU each stage of the 200-attachment message takes."""
    path = workdir / "many.eml"
    path.write_bytes(build_many_attachments(18))
    out: dict[str, float] = {"message_bytes": float(path.stat().st_size)}
    with Source(path) as src:
        out["parse_ms"] = 1000 * best(rounds, lambda: parse(src))
        leaves = [leaf for leaf in parse(src).leaves() if leaf.filename]
        out["attachments"] = float(len(leaves))
        out["decode_ms"] = 1000 * best(rounds, lambda: [decode.decoded_bytes(src, leaf) for leaf in leaves])
        files = [decode.decoded_bytes(src, leaf) for leaf in leaves]
    out["sha256_ms"] = 1000 * best(rounds, lambda: [hashlib.sha256(f).hexdigest() for f in files])
    out["libmagic_ms"] = 1000 * best(rounds, lambda: [sniff.detect(f[:8192]) for f in files])
    kinds = [(f, t) for f in files if (t := sniff.detect(f[:8192])) in disarm.TYPES]
    out["disarmed_files"] = float(len(kinds))
    out["disarm_ms"] = 1000 * best(rounds, lambda: [disarm.disarm(f, t, hashes=False) for f, t in kinds])
    out["sum_ms"] = sum(out[k] for k in ("parse_ms", "decode_ms", "sha256_ms", "libmagic_ms", "disarm_ms"))
    return out


def run(replies: int = 200, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Both, measured in a temporary directory (on the file system
    ``TMPDIR`` names, as the bench's spool is)."""
    with tempfile.TemporaryDirectory(prefix="required-") as tmp:
        work = Path(tmp)
        (work / "reply").mkdir()
        (work / "many").mkdir()
        return {"reply": reply_work(work / "reply", replies, rounds), "many": many_work(work / "many", rounds)}


def main(argv: list[str] | None = None) -> int:
    """Print both."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--replies", type=int, default=200, help="replies committed and parsed a round (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the least is kept (default 5)")
    args = p.parse_args(argv)
    figures = run(args.replies, args.rounds)
    r, m = figures["reply"], figures["many"]
    print(f"small reply ({r['reply_bytes']:.0f} bytes), CPU ms a message, in process:")
    print(f"  spool commit (write, 3 fsyncs, rename)   {r['spool_commit_ms']:6.3f}")
    print(f"  spool removal once delivered             {r['spool_remove_ms']:6.3f}")
    print(f"  MIME parse                               {r['parse_ms']:6.3f}")
    together = r["spool_commit_ms"] + r["spool_remove_ms"] + r["parse_ms"]
    print(f"  together                                 {together:6.3f}")
    print(f"200-attachment message ({m['message_bytes'] / 1e6:.1f} MB, {m['attachments']:.0f} attachments, "
          f"{m['disarmed_files']:.0f} PDF or Office), CPU ms, in process:")
    for key, label in (("parse_ms", "MIME parse"), ("decode_ms", "decode every attachment"),
                       ("sha256_ms", "sha256 of every attachment"), ("libmagic_ms", "libmagic on every attachment"),
                       ("disarm_ms", "disarm the PDF and Office files"), ("sum_ms", "together")):
        print(f"  {label:40s} {m[key]:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
