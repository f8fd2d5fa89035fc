"""Three gateway nodes on one S3 store, serving as one (issue 17, item 6).

Each node is its own ``attachment-gateway serve`` process with its own
working directory, spool, ports and config file; they share only what
docs/DEPLOY.md says a fleet shares: one bucket on a real S3 server (Ceph
radosgw, which also enforces ``If-None-Match: *``) and the same link and API
keys.  Their next hop, and the automatic replies' next hop, is one SMTP
sink, where deliveries are counted by Message-ID.

The tests share one fleet (module scope) and run in order; each counts only
its own messages.  The last one kills a node with SIGKILL under load.
Figures are printed (``pytest -s``) as ``fleet figures: ...``.
"""
from __future__ import annotations

import json
import re
import secrets
import smtplib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, GatewayProcess, SmtpSink, wait_until
from tests.messages import LINK, fetch, message, pdf_bytes, send, sha256
from tests.servers.ceph import CephRadosgw
from tests.test_content_policies import EXECUTABLE
from tests.test_upload_api import API_KEY, get_json, poll, post

NODES = 3
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.M | re.I)


@dataclass
class Fleet:
    """The nodes, their shared sink and bucket."""

    nodes: list[GatewayProcess]
    sink: SmtpSink
    bucket: str
    s3: Any
    figures: dict[str, Any] = field(default_factory=dict)

    def delivered(self) -> Counter[str]:
        """Message-ID -> how many times the sink got it (automatic replies left out)."""
        with self.sink.lock:
            got = list(self.sink.messages)
        out: Counter[str] = Counter()
        for m in got:
            head = m.data.split(b"\r\n\r\n", 1)[0]
            if re.search(rb"^Auto-Submitted:", head, re.M | re.I):
                continue
            found = _MESSAGE_ID.search(head)
            if found:
                out[found.group(1).decode()] += 1
        return out

    def replies_to(self, address: str) -> list[bytes]:
        """The automatic replies the sink got for ``address``."""
        with self.sink.lock:
            return [m.data for m in self.sink.messages
                    if m.rcpt_tos == [address] and re.search(rb"^Auto-Submitted: auto-replied", m.data, re.M)]

    def wait_delivered(self, ids: list[str], timeout: float = 60.0) -> Counter[str]:
        """Wait until every one of ``ids`` reached the sink; the counts."""
        wait_until(lambda: all(self.delivered()[i] for i in ids), timeout=timeout,
                   what=f"{len(ids)} messages at the sink")
        for node in self.nodes:
            node.wait_idle()
        return self.delivered()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for n in self.nodes for e in n.log_events() if e.get("event") == name]


def on(node: GatewayProcess, url: str) -> str:
    """``url`` (a link or status URL minted by any node) sent to ``node``."""
    return re.sub(r"^http://127\.0\.0\.1:\d+/", f"http://127.0.0.1:{node.http_port}/", url)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, ceph: CephRadosgw, s3: Any) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    # What the nodes share besides the store: the link and API keys, and the S3 secret.
    shared = base / "shared"
    shared.mkdir()
    for name, value in (("link.key", secrets.token_urlsafe(32)), ("api.key", API_KEY),
                        ("s3.secret", ceph.secret_key)):
        (shared / name).write_text(value + "\n")
        (shared / name).chmod(0o600)
    sink = SmtpSink().start()
    hop = f"smtp://127.0.0.1:{sink.port}"
    nodes = []
    for i in range(NODES):
        (base / f"node{i}").mkdir()
        nodes.append(GatewayProcess(base / f"node{i}", next_hop=hop, threshold="32KiB", route={
            "storage": "cloud", "tls": "none",
            "autoreply": {"from": "Support <support@contact.example>", "next_hop": hop, "interval": "1h"}},
            sections={
                "gateway": {"processes": 1, "hostname": f"gw{i}.test"},
                "storage.cloud": {"backend": "s3", "bucket": bucket, "region": ceph.region, "prefix": "gw/",
                                  "endpoint_url": ceph.endpoint_url, "addressing_style": "path",
                                  "access_key_id": ceph.access_key,
                                  "secret_access_key_file": str(shared / "s3.secret"),
                                  "encryption": "aws:kms", "kms_key_id": ceph.kms_key_id},
                "links": {"keys": [{"id": "k1", "file": str(shared / "link.key")}]},
                "api": {"keys": [{"id": "flow", "file": str(shared / "api.key")}]},
            }))
    try:
        # Started side by side: each waits for its own ports.
        starting = [threading.Thread(target=n.start) for n in nodes]
        for t in starting:
            t.start()
        for t in starting:
            t.join()
        assert all(n.proc is not None and n.proc.poll() is None for n in nodes), [n.log()[-2000:] for n in nodes]
        assert len({n.spool for n in nodes}) == NODES and len({n.smtp_port for n in nodes}) == NODES
        f = Fleet(nodes, sink, bucket, s3)
        yield f
        print(f"\nfleet figures: {json.dumps(f.figures, sort_keys=True)}")
    finally:
        stopping = [threading.Thread(target=n.stop) for n in nodes]
        for t in stopping:
            t.start()
        for t in stopping:
            t.join()
        sink.stop()


def test_mail_to_any_node_is_delivered_once(fleet: Fleet) -> None:
    ids = []
    for i in range(24):
        node = fleet.nodes[i % NODES]
        mid = make_msgid(domain="fleet.example")
        attachments = [(pdf_bytes(40_000), "application/pdf", f"scan{i}.pdf")] if i % 3 == 0 else []
        send(node.smtp_port, message(attachments=attachments, Message_ID=mid))
        ids.append(mid)
    counts = fleet.wait_delivered(ids)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    # The attachments went to the one store, whichever node took the message.
    stored = [o["Key"] for o in fleet.s3.list_objects_v2(Bucket=fleet.bucket, Prefix="gw/uploads/")
              .get("Contents", [])]
    assert len(stored) == 8
    fleet.figures["delivery"] = {"messages": len(ids), "nodes": NODES, "deliveries": sum(counts[i] for i in ids),
                                 "duplicates": sum(counts[i] - 1 for i in ids if counts[i] > 1),
                                 "lost": sum(1 for i in ids if not counts[i])}


def _message_with_a_link(fleet: Fleet, node: GatewayProcess) -> tuple[str, str, bytes]:
    """Send a message with a 100 kB PDF to ``node``; its Message-ID, the
    link the delivered message carries, and the PDF."""
    data = pdf_bytes(100_000)
    mid = make_msgid(domain="fleet.example")
    send(node.smtp_port, message(attachments=[(data, "application/pdf", "invoice.pdf")], Message_ID=mid))
    fleet.wait_delivered([mid])
    [out] = [m.data for m in fleet.sink.messages if mid.encode() in m.data.split(b"\r\n\r\n", 1)[0]]
    [link] = {m.decode() for m in LINK.findall(out)}
    assert link.startswith(f"http://127.0.0.1:{node.http_port}/a/")
    return mid, link, data


def test_a_link_minted_by_one_node_is_served_by_every_other(fleet: Fleet) -> None:
    _, link, data = _message_with_a_link(fleet, fleet.nodes[0])
    for other in fleet.nodes[1:]:
        # The node answers with a redirect to a presigned radosgw URL; the client follows it.
        status, _, body = fetch(on(other, link))
        assert status == 200 and sha256(body) == sha256(data)
        other.wait_audit(lambda e: e.get("EventResult") == "Success" and e.get("EventOriginalType") == "click")


def _revoke(node: GatewayProcess, message_id: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{node.http_port}/api/v1/links/revoke",
                                 data=json.dumps({"message_id": message_id, "reason": "sent in error"}).encode(),
                                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def test_a_revocation_on_one_node_is_refused_on_all_at_once(fleet: Fleet) -> None:
    mid, link, _ = _message_with_a_link(fleet, fleet.nodes[2])
    for node in fleet.nodes:
        assert fetch(on(node, link))[0] == 200
    _revoke(fleet.nodes[1], mid)
    revoked_at = time.monotonic()
    # The documented delay is none: every click reads the link record and
    # the revocation markers from the store (no cache), so the very first
    # click after the revocation's answer is refused, on every node.
    seen = {}
    for node in fleet.nodes:
        status, _, body = fetch(on(node, link))
        seen[node.http_port] = round(time.monotonic() - revoked_at, 3)
        assert status == 410 and b"withdrawn" in body
    fleet.figures["revocation_refused_after_s"] = sorted(seen.values())


def test_one_automatic_reply_per_sender_per_interval_across_the_fleet(fleet: Fleet) -> None:
    sender = "repeat@example.net"
    before = len(fleet.events("auto-reply sent")) + len(fleet.events("no auto-reply"))
    ids = [make_msgid(domain="fleet.example") for _ in range(2 * NODES)]
    start = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            start.wait()
            send(fleet.nodes[k % NODES].smtp_port, message(
                attachments=[(EXECUTABLE, "application/octet-stream", "tool.exe")], Message_ID=ids[k],
                From=sender), sender=sender)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    counts = fleet.wait_delivered(ids)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    wait_until(lambda: len(fleet.events("auto-reply sent")) + len(fleet.events("no auto-reply")) >= before + len(ids),
               what="every node's auto-reply decision")
    assert len(fleet.replies_to(sender)) == 1
    skipped = [e for e in fleet.events("no auto-reply") if e.get("reason") == "one went to this sender within 3600s"]
    assert len(skipped) >= len(ids) - 1
    # Another sender is answered (the claim is per sender), on another node.
    send(fleet.nodes[1].smtp_port, message(attachments=[(EXECUTABLE, "application/octet-stream", "tool.exe")],
                                           From="other@example.net"), sender="other@example.net")
    wait_until(lambda: len(fleet.replies_to("other@example.net")) == 1, what="the other sender's reply")
    claims = [o["Key"] for o in fleet.s3.list_objects_v2(Bucket=fleet.bucket, Prefix="gw/autoreply/")
              .get("Contents", [])]
    assert claims and all(re.fullmatch(r"gw/autoreply/[0-9a-f]{64}/\d+", k) for k in claims)
    fleet.figures["autoreply"] = {"messages": len(ids), "nodes": NODES, "replies": len(fleet.replies_to(sender))}


def test_a_job_created_on_one_node_is_polled_on_another(fleet: Fleet) -> None:
    data = pdf_bytes(300_000)
    status, _, body = post(fleet.nodes[0], data, filename="statement.pdf", Prefer="respond-async")
    assert status == 202, body
    assert get_json(on(fleet.nodes[1], body["statusUrl"]))[0] == 200
    done = poll(on(fleet.nodes[1], body["statusUrl"]))
    assert done["fileName"] == "statement.pdf" and done["fileSize"] == len(data)
    again = poll(on(fleet.nodes[2], body["statusUrl"]))
    assert {k: v for k, v in again.items() if k != "statusUrl"} == {k: v for k, v in done.items() if k != "statusUrl"}
    assert fetch(on(fleet.nodes[2], done["downloadUrl"]))[2] == data


def test_retention_is_applied_once_across_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    # On S3 the store itself expires objects, by the lifecycle rules that
    # ``storage apply-retention`` writes (tests/storage/test_admin.py): one
    # bucket, one set of rules, however many nodes.  A sweep the nodes run
    # themselves takes its turn through the store (gateway/fleet.py): three
    # processes, one per node's config, each waking at every 1-second
    # boundary for 3.5 s; every interval's sweep runs once.
    out = tmp_path / "runs.txt"
    sweeps = [subprocess.Popen([sys.executable, "-m", "tests.fleet_turns", str(n.config_path), "cloud",
                                "retention", "1", "3.5", str(out)], cwd=ROOT, stderr=subprocess.PIPE)
              for n in fleet.nodes]
    for p in sweeps:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
    runs = [line.split() for line in out.read_text().splitlines()]
    slots = Counter(slot for _, slot in runs)
    assert len(slots) >= 2 and set(slots.values()) == {1}, runs
    fleet.figures["retention"] = {"processes": NODES, "intervals": len(slots), "runs": len(runs),
                                  "by_process": sorted(Counter(pid for pid, _ in runs).values())}


@dataclass
class Client:
    """One SMTP client sending to one node until told to stop; what the
    node acknowledged (250 after DATA), when."""

    node: GatewayProcess
    acked: list[tuple[float, str]] = field(default_factory=list)
    unacked: list[str] = field(default_factory=list)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    stop_on_error: bool = False

    def run(self) -> None:
        conn: smtplib.SMTP | None = None
        while not self.stop.is_set():
            mid = make_msgid(domain="load.example")
            data = message(text=f"load {mid}\n", Message_ID=mid).as_bytes()
            try:
                if conn is None:
                    conn = smtplib.SMTP("127.0.0.1", self.node.smtp_port, timeout=10)
                conn.sendmail("customer@example.net", ["support@contact.example"], data)
                self.acked.append((time.monotonic(), mid))
            except (OSError, smtplib.SMTPException):
                # Never acknowledged: the client would send it again.
                self.unacked.append(mid)
                self.refused += 1
                conn = None
                if self.stop_on_error:
                    return
                time.sleep(0.05)
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                pass


def _spooled(node: GatewayProcess) -> dict[str, str]:
    """Queue id -> Message-ID of what a node holds in incoming, active and
    deferred (read after a kill: what it had not finished)."""
    out = {}
    for q in ("incoming", "active", "deferred"):
        for d in (node.spool / q).glob("*"):
            try:
                head = (d / "message.eml").read_bytes()[:8192]
            except OSError:
                continue  # moved on meanwhile
            found = _MESSAGE_ID.search(head)
            out[d.name] = found.group(1).decode() if found else ""
    return out


def _queued(node: GatewayProcess) -> int:
    return sum(1 for q in ("incoming", "active", "deferred") for _ in (node.spool / q).glob("*"))


def test_a_node_killed_under_load_loses_nothing_and_the_others_keep_answering(fleet: Fleet) -> None:
    victim, others = fleet.nodes[1], [fleet.nodes[0], fleet.nodes[2]]
    before = fleet.delivered()
    # Six clients on the victim, one on each of the others.
    on_victim = [Client(victim, stop_on_error=True) for _ in range(6)]
    on_others = [Client(n) for n in others]
    threads = [threading.Thread(target=c.run) for c in on_victim + on_others]
    for t in threads:
        t.start()
    try:
        # Kill it mid-flow: once it has acknowledged a good number and holds
        # some of them in its spool, not yet delivered.
        wait_until(lambda: sum(len(c.acked) for c in on_victim) >= 30 and _queued(victim) > 0,
                   interval=0.002, what="the victim under load with mail in its spool")
        victim.kill()
        killed_at = time.monotonic()
        unfinished = _spooled(victim)
        # The others keep taking mail while it is down.
        wait_until(lambda: all(sum(1 for t, _ in c.acked if t > killed_at) >= 5 for c in on_others),
                   what="the other nodes accepting mail during the outage")
        during = {n.smtp_port: sum(1 for c in on_others if c.node is n for t, _ in c.acked if t > killed_at)
                  for n in others}
        victim.start()  # the same spool, ports and config
        restarted_at = time.monotonic()
    finally:
        for c in on_victim + on_others:
            c.stop.set()
        for t in threads:
            t.join(timeout=30)
    acked = [mid for c in on_victim + on_others for _, mid in c.acked]
    acked_by_victim = [mid for c in on_victim for _, mid in c.acked]
    counts = fleet.wait_delivered(acked)
    # Sent but never acknowledged (the connection died with the node): the
    # client sends those again; the gateway may or may not have kept them.
    unacked = [mid for c in on_victim for mid in c.unacked]
    everything = fleet.delivered()
    twice = sorted(m for m, n in everything.items() if n - before.get(m, 0) > 1)
    fleet.figures["kill"] = {
        "nodes": NODES, "kills": 1, "clients": len(on_victim) + len(on_others),
        "acknowledged": len(acked), "acknowledged_by_killed_node": len(acked_by_victim),
        "unfinished_in_its_spool_at_kill": len(unfinished),
        "accepted_by_others_during_outage": sum(during.values()), "outage_s": round(restarted_at - killed_at, 2),
        "deliveries": sum(counts[m] for m in acked), "lost": sum(1 for m in acked if not counts[m]),
        "duplicates": len(twice), "unacknowledged": len(unacked),
        "unacknowledged_delivered": sum(1 for m in unacked if everything[m])}
    print(f"\nkill figures: {json.dumps(fleet.figures['kill'], sort_keys=True)}")
    # Every message any node acknowledged reached the next hop.
    assert fleet.figures["kill"]["lost"] == 0
    assert unfinished and all(v >= 5 for v in during.values())
    # The one way to a second delivery: the next hop took a message and the
    # node died before it could record that (RFC 5321 section 6.1), so only
    # a message the killed node still held can arrive twice, never one of
    # the others'.
    assert set(twice) <= set(unfinished.values()), (twice, unfinished)
