"""The data lifecycle on the filesystem store, through the real command line,
real SMTP and real HTTP (issue 17, item 4): every prefix the gateway writes
expires after its own retention (the sweep, run by ``storage
apply-retention`` and by the worker processes of ``serve``), two sweeps of
one directory at once are safe, retentions shorter than what depends on
them are refused, and ``erase --customer`` removes exactly one customer's
files, records and invitations, revokes their links, audits it and is
idempotent.  The cloud backends' lifecycle rules: tests/storage/test_admin.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness import GATEWAY, ROOT, GatewayProcess, wait_until
from tests.messages import fetch, message, pdf_bytes, send

DAY = 86400
API_KEY = "test-api-key-0123456789abcdef"
EXECUTABLE = Path("/bin/true").read_bytes()  # a real ELF program: refused, quarantined
PAGE_LINK = re.compile(rb"http://127\.0\.0\.1:\d+/p/[A-Za-z0-9._-]+")

# Per kind: the config key, its days here, and a key under its prefix.
RETENTION = {
    "uploads": ("retention_days", 30, "uploads/acme/20260101T000000.000000Z-a.pdf"),
    "quarantine": ("quarantine_retention_days", 10, "quarantine/acme/20260101T000000.000000Z-b.exe"),
    "links": ("link_retention_days", 40, "links/AbCdEf0123456789.json"),
    "pages": ("link_retention_days", 40, "pages/AbCdEf0123456789.json"),
    "revoked": ("link_retention_days", 40, "revoked/customer/0123456789abcdef"),
    "invitations": ("invitation_retention_days", 20, "invitations/AbCdEf0123456789.json"),
    "jobs": ("job_retention_days", 5, "jobs/AbCdEf0123456789.json"),
    "upload-staging": ("staging_retention_days", 2, "staging/page/u1/000000"),
    "check": ("staging_retention_days", 2, "check/20260101T000000.000000Z-0123.bin"),
    "autoreply": ("fleet_retention_days", 3, "autoreply/0123456789abcdef/20460"),
    "leases": ("fleet_retention_days", 3, "leases/retention-local/491000"),
}


def put(root: Path, key: str, age_days: float, sidecar: bool = True) -> Path:
    """A file as the filesystem store writes it (with its sidecar), last
    written ``age_days`` ago."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    when = time.time() - age_days * DAY
    if sidecar:
        side = path.with_name(path.name + ".meta.json")
        side.write_text("{}")
        os.utime(side, (when, when))
    os.utime(path, (when, when))
    return path


def fresh_key(key: str) -> str:
    head, _, tail = key.rpartition("/")
    return f"{head}/fresh-{tail}"


def retention_sections(**extra: Any) -> dict[str, Any]:
    store = {"storage.local": {k: d for k, d, _ in RETENTION.values()}}
    store["storage.local"].update(extra)
    return store


def test_the_sweep_deletes_what_expired_under_each_prefix_and_keeps_the_rest(make_gateway: Any) -> None:
    gw = make_gateway(start=False, sections=retention_sections())
    for _, days, key in RETENTION.values():
        put(gw.objects, key, days + 1)
        put(gw.objects, fresh_key(key), days - 1)
    outside = put(gw.objects, "elsewhere/old.bin", 400)  # not a prefix the gateway writes: never touched

    dry = gw.command("storage", "apply-retention", "--dry-run")
    assert dry.returncode == 0 and "dry run: nothing deleted" in dry.stdout, dry.stdout + dry.stderr
    assert all((gw.objects / key).exists() for _, _, key in RETENTION.values())

    res = gw.command("storage", "apply-retention", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    [store] = json.loads(res.stdout)["stores"]
    assert store["applied"] is True
    assert store["deleted"] == {name: 1 for name in RETENTION}
    assert {p["prefix"]: p["days"] for p in store["prefixes"]} == \
        {key.split("/")[0] + "/": days for _, days, key in RETENTION.values()}
    for _, _, key in RETENTION.values():
        assert not (gw.objects / key).exists(), key
        assert not (gw.objects / (key + ".meta.json")).exists(), key
        assert (gw.objects / fresh_key(key)).exists() and (gw.objects / (fresh_key(key) + ".meta.json")).exists()
    assert outside.exists()

    again = gw.command("storage", "apply-retention")
    assert again.returncode == 0 and "deleted: nothing" in again.stdout, again.stdout


def test_two_sweeps_of_one_directory_at_once_delete_each_file_once(make_gateway: Any) -> None:
    gw = make_gateway(start=False)
    expired = [put(gw.objects, f"uploads/c{i % 200}/old-{i}.bin", 31) for i in range(3000)]
    kept = [put(gw.objects, f"uploads/c{i % 200}/new-{i}.bin", 1) for i in range(200)]
    args = [*GATEWAY, "-c", str(gw.config_path), "storage", "apply-retention", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=gw.tmp, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    deleted = [json.loads(out)["stores"][0]["deleted"]["uploads"] for out, _ in outs]
    # Each file was unlinked by exactly one of them: nothing failed, nothing counted twice.
    assert sum(deleted) == len(expired), deleted
    assert not any(p.exists() for p in expired) and all(p.exists() for p in kept)


def test_serve_sweeps_the_filesystem_store_itself(make_gateway: Any) -> None:
    gw = make_gateway(start=False)
    old = put(gw.objects, "uploads/acme/20250101T000000.000000Z-old.pdf", 31)
    link = put(gw.objects, "links/OldOldOldOld0000.json", 31)
    young = put(gw.objects, "uploads/acme/20260101T000000.000000Z-new.pdf", 29)
    gw.start()
    wait_until(lambda: not old.exists() and not link.exists(), timeout=30)
    assert young.exists()
    wait_until(lambda: any(e.get("event") == "retention sweep" for e in gw.log_events()))
    [line] = [e for e in gw.log_events() if e.get("event") == "retention sweep"]
    assert line["store"] == "local" and line["uploads"] == 1 and line["links"] == 1


def test_retentions_shorter_than_what_depends_on_them_are_refused(make_gateway: Any) -> None:
    cases = [
        ({"storage.local": {"link_retention_days": 7}},
         "storage.local.link_retention_days: 7: link records would be deleted while their links can still be "
         "refreshed (a link is refreshable as long as its file is kept, storage.local.retention_days = 30): "
         "expected at least 30"),
        ({"storage.local": {"retention_days": 3, "link_retention_days": 3}, "links": {"ttl": 5 * DAY}},
         "storage.local.retention_days: 3: attachments would be deleted before their links expire"),
        ({"storage.local": {"invitation_retention_days": 3}},
         "storage.local.invitation_retention_days: 3: invitations would be deleted before their links expire "
         "(upload.invitation_ttl = 604800 s): expected at least 7"),
        ({"storage.local": {"staging_retention_days": 1}, "upload": {"abandon_after": 2 * DAY + 1}},
         "storage.local.staging_retention_days: 1: staged uploads would be deleted before the upload page gives "
         "them up (upload.abandon_after = 172801 s): expected at least 3"),
        ({"storage.local": {"fleet_retention_days": 7},
          "route": {"autoreply": {"interval": "4d", "from": "noreply@contact.example", "next_hop": "smtp://127.0.0.1:9"}}},
         "storage.local.fleet_retention_days: 7: automatic-reply claims would be deleted while they still limit "
         "replies (route 'contact' autoreply.interval = 345600 s): expected more than 8"),
    ]
    for sections, expected in cases:
        route = sections.pop("route", None)
        gw = make_gateway(start=False, sections=sections, **({"route": route} if route else {}))
        res = gw.command("check-config")
        assert res.returncode == 78, res.stdout + res.stderr
        assert expected in res.stderr, res.stderr
    ok = make_gateway(start=False, sections={"storage.local": {"retention_days": 60}})
    assert ok.command("check-config").returncode == 0  # link_retention_days follows retention_days


# -- erase ------------------------------------------------------------------------------


def call(gw: GatewayProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{gw.http_port}{path}" if path.startswith("/") else path,
                                 data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def upload(gw: GatewayProcess, customer: str, data: bytes, name: str, asynchronous: bool = False) -> str:
    """A file stored over the API; its link (after the job, when asynchronous)."""
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Filename": name, "X-CustomerId": customer,
               "Content-Type": "application/octet-stream"}
    if asynchronous:
        headers["Prefer"] = "respond-async"
    status, body = call(gw, "POST", "/api/v1/upload/attachment", data, headers)
    if not asynchronous:
        assert status == 200, body
        return str(body["downloadUrl"])
    assert status == 202, body
    auth = {"Authorization": f"Bearer {API_KEY}"}
    wait_until(lambda: call(gw, "GET", body["statusUrl"], headers=auth)[1]["status"] == "COMPLETE", timeout=60)
    return str(call(gw, "GET", body["statusUrl"], headers=auth)[1]["downloadUrl"])


def held_for(gw: GatewayProcess, customer: str) -> dict[str, list[str]]:
    """What the store holds that names ``customer``, by prefix."""
    out: dict[str, list[str]] = {}
    for p in sorted(gw.objects.rglob("*")):
        if not p.is_file() or p.name.endswith(".meta.json"):
            continue
        rel = p.relative_to(gw.objects).as_posix()
        text = p.read_bytes()
        if f"/{customer}/" in rel or customer.encode() in text:
            out.setdefault(rel.split("/")[0], []).append(rel)
    return out


def customer_data(gw: GatewayProcess, customer: str, tag: str) -> dict[str, Any]:
    """Everything a customer can leave in the store: a mail with a file
    offloaded and one quarantined, a file stored over the API, one through
    an asynchronous job, an invitation and an upload started with it."""
    pdf = pdf_bytes(200_000) + tag.encode()
    send(gw.smtp_port, message(attachments=[(pdf, "application/pdf", f"{tag}.pdf"),
                                            (pdf + b"2", "application/pdf", f"{tag}-2.pdf"),
                                            (EXECUTABLE, "application/octet-stream", "tool.exe")],
                               From=customer), sender=customer)
    api = upload(gw, customer, pdf_bytes(50_000) + tag.encode(), f"{tag}-api.pdf")
    job = upload(gw, customer, pdf_bytes(60_000) + tag.encode(), f"{tag}-job.pdf", asynchronous=True)
    out = gw.command("invite", "--customer", customer, "--to", "support@contact.example")
    assert out.returncode == 0, out.stderr
    invitation = out.stdout.strip()
    status, started = call(gw, "POST", invitation + "/files", json.dumps({"name": "scan.pdf", "size": 10}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 201, started
    return {"pdf": pdf, "api": api, "job": job, "invitation": invitation,
            "upload": gw.objects / "staging" / "page" / started["uploadId"]}


def test_erase_removes_one_customers_files_records_and_invitations_and_revokes_their_links(
        make_gateway: Any, tmp_path: Path) -> None:
    key = tmp_path / "api.key"
    key.write_text(API_KEY + "\n")
    # Two files offloaded from each mail: one landing page listing both.
    gw = make_gateway(threshold="100KiB", route={"landing_page": True},
                      sections={"api": {"keys": [{"id": "flow", "file": str(key)}]}})
    alice, bob = "alice@a.example", "bob@b.example"
    a = customer_data(gw, alice, "alice")
    b = customer_data(gw, bob, "bob")
    mails = gw.wait_outbox(2)
    mail_link = {who: next(u.decode() for m in mails if who.encode() in m for u in PAGE_LINK.findall(m))
                 for who in ("alice", "bob")}
    for url in (mail_link["alice"], a["api"], a["job"], mail_link["bob"], b["api"]):
        assert fetch(url)[0] == 200
    bob_before = held_for(gw, bob)
    assert set(held_for(gw, alice)) == {"uploads", "quarantine", "links", "pages", "jobs", "invitations"}
    assert (a["upload"] / "session.json").exists() and (b["upload"] / "session.json").exists()

    res = gw.command("erase", "--customer", alice, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    counts = {"links": 4, "pages": 1, "invitations": 1, "uploads_in_progress": 1, "jobs": 1, "files": 4,
              "quarantined": 1}
    assert report["erased"] == counts and report["stores"] == {"local": counts} and report["spooled"] == []

    # Nothing of Alice's is left; the link records are tombstones naming no one.
    assert held_for(gw, alice) == {} and not a["upload"].exists()
    assert not any(alice in p.name for p in gw.objects.rglob("*"))  # no directory named after her either
    records = [json.loads(p.read_text()) for p in (gw.objects / "links").glob("*.json")
               if not p.name.endswith(".meta.json")]
    tombstones = [r for r in records if r["customer_id"] == ""]
    assert len(tombstones) == 4 and all(t["revoked"] and t["key"] == "" and t["filename"] == "" for t in tombstones)
    # Bob's are untouched and still served.
    assert held_for(gw, bob) == bob_before and (b["upload"] / "session.json").exists()
    status, _, page = fetch(mail_link["bob"])
    assert status == 200 and b"bob.pdf" in page and b"Download" in page
    assert fetch(b["api"])[0] == 200 and fetch(b["job"])[0] == 200
    # Alice's links, already in the agents' mail (the landing page too), give the revoked page.
    for url in (mail_link["alice"], a["api"], a["job"]):
        status, _, page = fetch(url)
        assert status == 410 and b"This attachment has been withdrawn" in page, (url, status, page)
    assert fetch(a["invitation"])[0] >= 400 and fetch(b["invitation"])[0] == 200

    [event] = [e for e in gw.audit() if e["EventType"] == "CustomerErased"]
    assert event["EventResult"] == "Success" and event["CustomerId"] == alice
    assert event["ErasedCounts"] == counts and event["ErasedByStore"] == {"local": counts}
    assert event["EventResultDetails"].startswith("erased 4 links, 1 pages, 1 invitations, 1 uploads in progress, "
                                                  "1 jobs, 4 files, 1 quarantined in local")
    assert event["ActorUsername"].startswith("cli:")

    # A second run erases nothing, succeeds and says so (and is audited too).
    again = gw.command("erase", "--customer", alice)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "store local: nothing to erase (already erased, or never stored)" in again.stdout
    second = [e for e in gw.audit() if e["EventType"] == "CustomerErased"][1]
    assert second["ErasedCounts"] == dict.fromkeys(counts, 0) and second["EventResult"] == "Success"
    assert second["EventResultDetails"].startswith("nothing to erase")
    assert held_for(gw, bob) == bob_before


def test_erase_reports_the_customers_messages_still_in_the_spool(make_gateway: Any) -> None:
    gw = make_gateway(start=False)
    gw.start(roles=["smtp"])  # receives, processes nothing: the message stays spooled
    send(gw.smtp_port, message(From="carol@c.example"), sender="carol@c.example")
    send(gw.smtp_port, message(From="dave@d.example"), sender="dave@d.example")
    [carol] = [e for e in json.loads(gw.command("queue", "list", "--json").stdout)
               if e["mail_from"] == "carol@c.example"]
    res = gw.command("erase", "--customer", "carol@c.example")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"spool: message {carol['queue_id']} in incoming names customer 'carol@c.example'" in res.stdout
    assert "was not erased" in res.stdout and f"queue delete {carol['queue_id']}" in res.stdout
    [event] = [e for e in gw.audit() if e["EventType"] == "CustomerErased"]
    assert event["SpooledMessages"] == [carol["queue_id"]]
    assert "1 message(s) naming the customer still in the local spool, not erased" in event["EventResultDetails"]


def test_erase_refuses_an_id_with_no_key_form_and_never_touches_a_longer_id(make_gateway: Any) -> None:
    # An empty id would name the shared "unknown" customer: every file whose
    # customer could not be told.  Refused, nothing erased.  An id made only
    # of what a key drops ("***", "..", "<>") has a key of its own (a hash),
    # never "unknown"'s.  And "acme" is not a prefix of "acme-2".
    gw = make_gateway(start=False)
    planted = {}
    for customer in ("unknown", "acme", "acme-2", "acme.2"):
        path = gw.objects / "uploads" / customer / "20260101T000000.000000Z-a.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%PDF-1.4 " + customer.encode())
        planted[customer] = path
    for careless in ("", "   "):
        res = gw.command("erase", "--customer", careless)
        assert res.returncode == 64, (careless, res.stdout, res.stderr)
        assert "erase: --customer is empty" in res.stderr, res.stderr
    assert not [e for e in gw.audit() if e["EventType"] == "CustomerErased"]
    for odd in ("***", "..", "<>", " - "):
        res = gw.command("erase", "--customer", odd, "--json")
        assert res.returncode == 0, (odd, res.stdout, res.stderr)
        assert json.loads(res.stdout)["erased"]["files"] == 0, res.stdout
    assert all(p.exists() for p in planted.values())

    res = gw.command("erase", "--customer", "ACME", "--json")  # an id's key form is lower-case
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["erased"]["files"] == 1
    assert not planted["acme"].exists() and all(planted[c].exists() for c in ("unknown", "acme-2", "acme.2"))


def test_the_sweep_and_erase_never_follow_a_symlink_out_of_the_store(make_gateway: Any, tmp_path: Path) -> None:
    # Symlinks planted in the store directory (a careless restore, an
    # operator's shortcut) point at old files outside it: the sweep removes
    # at most the link, erase lists nothing through it, and what they point
    # at stays.
    gw = make_gateway(start=False)
    outside = tmp_path / "outside"
    old = put(outside, "old.bin", 400)
    put(outside, "sub/old.bin", 400)
    (gw.objects / "uploads" / "acme").mkdir(parents=True)
    os.symlink(outside, gw.objects / "uploads" / "acme" / "linked-dir")
    os.symlink(old, gw.objects / "uploads" / "acme" / "linked-file")
    os.symlink(outside, gw.objects / "uploads" / "mallory")
    when = time.time() - 400 * DAY
    os.utime(gw.objects / "uploads" / "acme" / "linked-file", (when, when), follow_symlinks=False)

    res = gw.command("storage", "apply-retention")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*")) == \
        ["old.bin", "old.bin.meta.json", "sub", "sub/old.bin", "sub/old.bin.meta.json"]
    assert not os.path.lexists(gw.objects / "uploads" / "acme" / "linked-file")

    res = gw.command("erase", "--customer", "mallory", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["erased"]["files"] == 0
    assert old.exists() and (outside / "sub" / "old.bin").exists()
