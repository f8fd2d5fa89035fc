"""``attachment-gateway queue``: Postfix's mailq, postcat, postsuper and
postqueue -f for the gateway's spool.

    list     the messages (mailq), with filters
    count    messages per queue, with the same filters
    show     one message: envelope, delivery state, headers, ``--body`` (postcat)
    flush    retry deferred messages now (postqueue -f, postqueue -i ID)
    hold     set messages aside (postsuper -h)
    release  put held messages back into the flow (postsuper -H)
    requeue  run held or deferred messages through the pipeline again (postsuper -r)
    delete   remove messages (postsuper -d)

The commands that change messages take queue ids, or ``ALL`` narrowed by
``--queue``, ``--sender``, ``--recipient`` and ``--older-than`` (``queue
delete ALL deferred`` is ``postsuper -d ALL deferred``).  Every change is
made under the message's lock, so a message a worker holds is reported
busy (exit 75), never changed under it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import EX_NOTFOUND, EX_OK, EX_TEMPFAIL, EX_USAGE, load_config
from gateway.spool import QUEUES, REWRITTEN, Locked, Spool, message_source
from gateway.spool.durable import remove_tree
from gateway.spool.queue import ENVELOPE, MESSAGE, RESULT, STATE, read_envelope
from gateway.units import parse_duration

ACTIONS = ("list", "count", "show", "flush", "hold", "release", "requeue", "delete")
# Where ALL looks when --queue is not given: the queues the action makes
# sense for (active is a worker's: changing it would only meet its lock).
ALL_SCOPE = {"delete": ("incoming", "deferred", "hold", "corrupt"), "hold": ("incoming", "deferred"),
             "release": ("hold",), "flush": ("deferred",), "requeue": ("deferred", "hold")}
# What a requeued message keeps: what it was received as and its delivery
# history; its output and work files go, so the pipeline starts again.
_REQUEUE_KEEPS = {MESSAGE, ENVELOPE, STATE}
_HEADER_LIMIT = 1 << 20


def age(value: str) -> float:
    """``--older-than``: seconds, or a duration such as "30m", "2h", "5d"."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return float(parse_duration(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(q: argparse.ArgumentParser) -> None:
    """The ``queue`` subcommand's arguments."""
    q.add_argument("action", choices=ACTIONS)
    q.add_argument("ids", nargs="*", metavar="ID",
                   help="queue ids, or ALL (optionally followed by queue names: ALL deferred)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--queue", action="append", choices=QUEUES, metavar="QUEUE",
                   help=f"only this queue (repeatable; one of {', '.join(QUEUES)})")
    q.add_argument("--sender", default=None, help="only messages whose sender contains this (<> for bounces)")
    q.add_argument("--recipient", default=None, help="only messages with a recipient containing this")
    q.add_argument("--older-than", type=age, default=None, metavar="AGE",
                   help="only messages received longer ago than this (seconds, or 30m, 2h, 5d)")
    q.add_argument("--reason", default=None, help="with hold: why (shown by list and show)")
    q.add_argument("--body", action="store_true", help="with show: the body too, not only the headers")
    q.add_argument("--rewritten", action="store_true",
                   help="with show: the message as the gateway rewrote it, when it has")
    q.set_defaults(func=cmd_queue)


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.queue or args.sender is not None or args.recipient is not None or args.older_than is not None)


def _matches(row: dict[str, Any], args: argparse.Namespace, now: float) -> bool:
    if args.older_than is not None and now - (row.get("received_at") or now) < args.older_than:
        return False
    if args.sender is not None:
        sender = row.get("mail_from")
        if sender is None:  # unreadable envelope: matches no sender filter
            return False
        if args.sender == "<>" and sender:
            return False
        if args.sender != "<>" and args.sender.lower() not in sender.lower():
            return False
    if args.recipient is not None:
        return any(args.recipient.lower() in x.lower() for x in row.get("rcpt_tos", []))
    return True


def _select(spool: Spool, queues: tuple[str, ...], args: argparse.Namespace) -> list[dict[str, Any]]:
    now = time.time()
    return [r for r in spool.entries(queues) if _matches(r, args, now)]


def cmd_queue(args: argparse.Namespace) -> int:
    """queue list|count|show|flush|hold|release|requeue|delete."""
    cfg = load_config(args)
    spool = Spool(cfg.path(cfg.gateway.spool_dir))
    if args.action in ("list", "count"):
        if args.ids:
            print(f"queue {args.action}: takes no queue ids; narrow it with --queue, --sender, --recipient, "
                  f"--older-than", file=sys.stderr)
            return EX_USAGE
        queues = tuple(args.queue or QUEUES)
        if args.action == "count":
            if args.sender is not None or args.recipient is not None or args.older_than is not None:
                counts = {q: 0 for q in queues}
                for r in _select(spool, queues, args):
                    counts[r["queue"]] += 1
            else:  # no envelope to read: a directory listing per queue
                counts = {q: len(spool.ids(q)) for q in queues}
            return _print_count(counts, args.json)
        rows = _select(spool, queues, args)
        if args.json:
            print(json.dumps(rows))
        else:
            _print_table(rows)
        return EX_OK
    if args.action == "show":
        return _show_all(spool, args)
    ids = list(args.ids)
    if not ids and args.action == "flush":
        ids = ["ALL"]  # postqueue -f
    if not ids:
        print(f"queue {args.action}: give queue ids, or ALL (narrowed by --queue, --sender, --recipient, "
              f"--older-than)", file=sys.stderr)
        return EX_USAGE
    if ids[0] == "ALL":
        named = ids[1:]
        if any(q not in QUEUES for q in named):
            print(f"queue {args.action}: after ALL only queue names may follow ({', '.join(QUEUES)})",
                  file=sys.stderr)
            return EX_USAGE
        queues = tuple(named or args.queue or ALL_SCOPE[args.action])
        targets = [(r["queue_id"], r["queue"]) for r in _select(spool, queues, args)]
    elif "ALL" in ids or _filtered(args):
        print(f"queue {args.action}: ALL comes first and alone, and --queue, --sender, --recipient and "
              f"--older-than narrow ALL, not a list of ids", file=sys.stderr)
        return EX_USAGE
    else:
        targets = [(qid, spool.find(qid)) for qid in ids]
    status = EX_OK
    out: list[dict[str, Any]] = []
    for qid, queue in targets:
        if queue is None:
            out.append({"queue_id": qid, "error": "not found"})
            status = max(status, EX_NOTFOUND)
            continue
        try:
            out.append(_act(spool, args.action, qid, queue, args))
        except Locked:
            out.append({"queue_id": qid, "error": "in use by a running worker; try again"})
            status = EX_TEMPFAIL
        except FileNotFoundError:  # delivered or moved between the listing and the lock
            out.append({"queue_id": qid, "error": "not found"})
            status = max(status, EX_NOTFOUND)
    if args.json:
        print(json.dumps(out))
    else:
        for r in out:
            print(" ".join(f"{k}={v}" for k, v in r.items()))
        if not targets:
            print(f"queue {args.action}: no message matched", file=sys.stderr)
    return status


def _act(spool: Spool, action: str, qid: str, queue: str, args: argparse.Namespace) -> dict[str, Any]:
    """Change one message, under its lock."""
    with spool.claim(qid, queue, queue) as h:
        if action == "delete":
            h.remove()
            return {"queue_id": qid, "deleted": True}
        if action == "flush":
            if queue != "deferred":
                return {"queue_id": qid, "queue": queue, "flushed": False}
            state = h.state()
            state.next_attempt = 0
            h.save_state(state)
            return {"queue_id": qid, "flushed": True}
        if action == "hold":
            state = h.state()
            state.hold_reason = args.reason or "held by administrator"
            h.save_state(state)
            if queue != "hold":
                h.move("hold")
            return {"queue_id": qid, "queue": "hold"}
        if action == "release":
            state = h.state()
            state.hold_reason = ""
            state.next_attempt = 0
            h.save_state(state)
            dst = "deferred" if h.has(REWRITTEN) else "incoming"
            if queue != dst:
                h.move(dst)
            return {"queue_id": qid, "queue": dst}
        if action == "requeue":
            if queue not in ("deferred", "hold"):
                return {"queue_id": qid, "queue": queue, "requeued": False}
            # The output first, then the move: a crash between them leaves
            # an unprocessed message in deferred or hold, which is processed
            # again when it is next taken, as a requeued one is.
            for name in os.listdir(h.path):
                if name not in _REQUEUE_KEEPS:
                    path = h.file(name)
                    remove_tree(path) if path.is_dir() else path.unlink()
            state = h.state()
            state.hold_reason = ""
            state.last_error = ""
            state.next_attempt = 0
            h.save_state(state)
            h.move("incoming")
            return {"queue_id": qid, "queue": "incoming", "requeued": True}
    raise ValueError(action)


def _print_count(counts: dict[str, int], as_json: bool) -> int:
    counts["total"] = sum(counts.values())
    if as_json:
        print(json.dumps(counts))
    else:
        for name, n in counts.items():
            print(f"{name:<9} {n}")
    return EX_OK


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("Mail queue is empty")
        return
    print(f"{'Queue ID':<20} {'Queue':<9} {'Size':>10} {'Arrival':<20} {'Attempts':>8}  Sender / Recipients")
    for r in rows:
        arrival = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("received_at") or 0))
        print(f"{r['queue_id']:<20} {r['queue']:<9} {r.get('size', 0):>10} {arrival:<20} "
              f"{r.get('attempts', 0):>8}  {r.get('mail_from') or '<>'}")
        for rcpt in r.get("rcpt_tos", []):
            print(f"{'':<71}{rcpt}")
        for key, label in (("last_error", ""), ("hold_reason", "held: "), ("error", "")):
            if r.get(key):
                print(f"{'':<71}({label}{r[key]})")
    total = sum(r.get("size") or 0 for r in rows)
    print(f"-- {-(-total // 1024)} Kbytes in {len(rows)} Request{'s' if len(rows) != 1 else ''}.")


# -- show --------------------------------------------------------------------------------


def _show_all(spool: Spool, args: argparse.Namespace) -> int:
    if not args.ids or "ALL" in args.ids:
        print("queue show: give one or more queue ids", file=sys.stderr)
        return EX_USAGE
    status, shown = EX_OK, []
    for qid in args.ids:
        queue = spool.find(qid)
        entry = next((e for e in spool.entries((queue,)) if e["queue_id"] == qid), None) if queue else None
        if queue is None or entry is None:
            print(f"queue show: {qid}: not found", file=sys.stderr)
            status = EX_NOTFOUND
            continue
        path = spool.root / queue / qid
        if args.json:
            shown.append(_show_json(path, entry, args))
        else:
            _show_text(path, entry, args)
    if args.json:
        print(json.dumps(shown))
    return status


def _message(path: Path, args: argparse.Namespace) -> tuple[bytes, bytes]:
    """The header block and (with --body) the body of the message shown."""
    from gateway.mime.source import Source

    src = Source(path / REWRITTEN) if args.rewritten and (path / REWRITTEN).exists() else message_source(path)
    with src:
        end = src.find(b"\r\n\r\n", 0, min(src.size, _HEADER_LIMIT))
        head_end = end + 2 if end >= 0 else min(src.size, _HEADER_LIMIT)
        head = src.read(0, head_end)
        body = src.read(end + 4, src.size) if args.body and end >= 0 else b""
    return head, body


def _show_json(path: Path, entry: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    try:
        head, body = _message(path, args)
        entry["headers"] = head.decode("utf-8", "replace")
        if args.body:
            entry["body"] = body.decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        entry["error"] = f"cannot read the message: {e}"
    result = path / RESULT
    if result.exists():
        entry["result"] = json.loads(result.read_text())
    return entry


def _show_text(path: Path, entry: dict[str, Any], args: argparse.Namespace) -> None:
    """The message as postcat shows one: the envelope records, then the
    message as text (line ends as the terminal expects, bytes as they are)."""
    def stamp(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t)) if t else "-"

    out = sys.stdout
    out.write(f"*** ENVELOPE {entry['queue']}/{entry['queue_id']} ***\n")
    try:
        envelope, _ = read_envelope(path)
    except (OSError, ValueError, TypeError) as e:
        out.write(f"error: unreadable envelope: {e}\n")
        envelope = None
    if envelope is not None:
        client = f"{envelope.client_name or 'unknown'} [{envelope.client_addr or '-'}]"
        lines = [("arrival_time", stamp(envelope.received_at)), ("sender", envelope.mail_from or "<>"),
                 *(("recipient", r) for r in envelope.rcpt_tos), ("route", envelope.route),
                 ("client", client), ("helo", envelope.helo), ("tls", envelope.tls or "none"),
                 ("size", str(envelope.size))]
        for key, value in lines:
            out.write(f"{key + ':':<14}{value}\n")
    state = [("attempts", str(entry.get("attempts", 0))), ("next_attempt", stamp(entry.get("next_attempt"))),
             ("last_error", entry.get("last_error") or ""), ("hold_reason", entry.get("hold_reason") or ""),
             ("processed", "yes (rewritten.eml)" if entry.get("processed") else "no")]
    for key, value in state:
        if value:
            out.write(f"{key + ':':<14}{value}\n")
    which = "REWRITTEN MESSAGE" if args.rewritten and (path / REWRITTEN).exists() else "MESSAGE"
    try:
        head, body = _message(path, args)
    except (OSError, ValueError) as e:
        out.write(f"*** {which} ***\nerror: cannot read the message: {e}\n")
        return
    out.write(f"*** {which} HEADERS ***\n")
    out.flush()
    # Bytes as they are (an 8-bit header stays what it was), CRLF as the
    # terminal's line end.
    out.buffer.write(head.replace(b"\r\n", b"\n"))
    if args.body:
        out.buffer.write(f"*** {which} BODY ***\n".encode())
        out.buffer.write(body.replace(b"\r\n", b"\n"))
        if body and not body.endswith(b"\n"):
            out.buffer.write(b"\n")
    out.buffer.write(b"*** END OF MESSAGE ***\n")
    out.buffer.flush()
