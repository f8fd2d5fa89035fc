"""Every page a person sees, in real headless Chromium (issue 19): branded,
saying what it takes or what happened and what to do, naming the request
id that the audit event and the access log carry, in the reader's language,
usable with the keyboard alone, and with no serious or critical axe-core
violation.

One gateway and one Chromium launch (tests/browser/pages.cjs) drive them
all. Agents sign in through a trusted header (the browser sends it, as a
reverse proxy would); a second store that answers 500 to everything
(tests/servers/broken_s3.py) plays storage that is down. Screenshots land in
tests/artifacts/ (``make screenshots`` copies them to docs/images/).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from gateway import config
from gateway.links.tokens import Keyring, new_object_id
from tests.harness import ROOT, GatewayProcess
from tests.messages import leaves, links, message, parse, payload, pdf_bytes, png_bytes, send
from tests.servers.broken_s3 import BrokenS3
from tests.storage.helpers import secret_file

ARTIFACTS = ROOT / "tests" / "artifacts"
SCRIPT = ROOT / "tests" / "browser" / "pages.cjs"

LOGO = """<svg xmlns="http://www.w3.org/2000/svg" width="180" height="40" viewBox="0 0 180 40">
<rect width="40" height="40" rx="8" fill="#0b5d1e"/><path d="M10 28 L20 10 L30 28 Z" fill="#ffffff"/>
<text x="50" y="27" font-family="sans-serif" font-size="18" fill="#0b5d1e">Acme</text></svg>
"""
TYPES = "PDF, photos (JPEG, PNG, GIF, TIFF, HEIC), text (TXT, CSV), Word (DOCX), Excel (XLSX), PowerPoint (PPTX)"


def _link(gw: GatewayProcess, count: int, pattern: bytes) -> str:
    """The link matching ``pattern`` in the text of the ``count``-th forwarded message."""
    out = gw.wait_outbox(count)[count - 1]
    text = next(p for p in leaves(parse(out)) if p.get_content_type() == "text/plain" and not p.get_filename())
    found = [u.decode() for u in re.findall(pattern, payload(text))] or links(payload(text))
    assert found, payload(text)
    return found[0]


def test_every_page_is_branded_actionable_translated_and_accessible(make_gateway, tmp_path: Path) -> None:
    (tmp_path / "logo.svg").write_text(LOGO)
    with BrokenS3(region="eu-west-3") as broken:
        gw = make_gateway(threshold=1000, route={"landing_page": True}, sections={
            "http": {"trusted_proxies": ["127.0.0.1"]},
            "agents": {"auth": "trusted-header"},
            "authorization": {"mode": "static", "agents": {"alice": ["customer@example.net"]},
                              "contact": "the duty manager"},
            "upload": {"chunk_size": "64KiB", "max_file_size": "5MiB", "max_files_per_invitation": 10},
            "branding": {"name": "Acme Insurance", "logo": str(tmp_path / "logo.svg"),
                         "colours": {"accent": "#0b5d1e"},
                         "support": {"email": "help@acme.example", "phone": "+44 20 7946 0000"}},
            "storage.broken": {"backend": "s3", "bucket": "attachments", "region": "eu-west-3",
                               "endpoint_url": broken.endpoint_url, "addressing_style": "path",
                               "access_key_id": "AKIDTEST", "max_attempts": 1,
                               "secret_access_key_file": secret_file(tmp_path, "s3.secret", "not-a-real-secret")},
        })
        # Three messages: two files (a landing page), one file, one file withdrawn after.
        send(gw.smtp_port, message(attachments=[(pdf_bytes(3000), "application/pdf", "invoice.pdf"),
                                                (png_bytes(5000), "image/png", "photo.png")],
                                   Message_ID="<two-files@example.net>"))
        landing = _link(gw, 1, rb"https?://127\.0\.0\.1:\d+/p/[A-Za-z0-9._-]+")
        send(gw.smtp_port, message(attachments=[(pdf_bytes(2000), "application/pdf", "scan.pdf")]))
        link = _link(gw, 2, rb"https?://127\.0\.0\.1:\d+/a/[A-Za-z0-9._-]+")
        send(gw.smtp_port, message(attachments=[(pdf_bytes(2500), "application/pdf", "sent-by-mistake.pdf")],
                                   Message_ID="<withdrawn@example.net>"))
        withdrawn = _link(gw, 3, rb"https?://127\.0\.0\.1:\d+/a/[A-Za-z0-9._-]+")
        revoke = gw.command("links", "revoke", "--message-id", "<withdrawn@example.net>", "--store", "local")
        assert revoke.returncode == 0, revoke.stderr
        # The same object behind a token whose time is up, and a token into the broken store.
        cfg = config.load(gw.config_path, base_dir=str(gw.tmp))
        keyring = Keyring(cfg.links.keys, Path(cfg.base_dir))
        base, token = link.rsplit("/a/", 1)
        claims = keyring.verify(token)
        expired = f"{base}/a/{keyring.sign(claims.store, claims.object_id, int(time.time()) - 60)}"
        down = f"{base}/a/{keyring.sign('broken', new_object_id(), int(time.time()) + 600)}"
        gone = f"{base}/a/{keyring.sign(claims.store, new_object_id(), int(time.time()) + 600)}"
        invitation = gw.command("invite", "--customer", "ACME-7", "--to", "support@contact.example")
        assert invitation.returncode == 0, invitation.stderr
        upload = invitation.stdout.strip()
        files = {"wrongType": tmp_path / "holiday.mp4", "renamedProgram": tmp_path / "invoice.pdf",
                 "good": tmp_path / "claim-form.pdf"}
        files["wrongType"].write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 5000)
        files["renamedProgram"].write_bytes(Path("/bin/true").read_bytes())
        files["good"].write_bytes(pdf_bytes(600 * 1024))
        agent = [
            {"name": "landing", "url": landing, "user": "alice", "shot": "pages-agent-landing"},
            {"name": "landing_fr", "url": landing, "user": "alice", "lang": "fr-FR,fr;q=0.9"},
            {"name": "landing_unknown", "url": landing, "user": "alice", "lang": "x-klingon"},
            {"name": "expired", "url": expired, "user": "alice", "shot": "pages-agent-expired",
             "keyboardRefresh": True},
            {"name": "invalid", "url": link[:-2] + ("AA" if not link.endswith("AA") else "BB"), "user": "alice"},
            {"name": "revoked", "url": withdrawn, "user": "alice"},
            {"name": "denied", "url": link, "user": "bob"},
            {"name": "not_signed_in", "url": link},
            {"name": "storage_unavailable", "url": down, "user": "alice"},
            {"name": "not_found", "url": gone, "user": "alice"},
            {"name": "upload_invalid", "url": upload[:-2] + ("AA" if not upload.endswith("AA") else "BB")},
        ]
        ARTIFACTS.mkdir(exist_ok=True)
        run = subprocess.run(["node", str(SCRIPT), json.dumps({
            "upload": upload, "files": {k: str(v) for k, v in files.items()}, "agent": agent,
            "artifacts": str(ARTIFACTS)})], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-4000:]
        seen = json.loads(run.stdout)

    up = seen["upload"]
    # The page says what it takes before a file is chosen, and who gets the files.
    assert up["status"] == 200 and up["page"]["title"] == "Send us your files – Acme Insurance"
    assert up["takes"]["types"] == TYPES
    assert up["takes"]["max-size"] == "5.0 MB" and up["takes"]["max-files"] == "Up to 10 files with this link"
    assert up["takes"]["recipient"] == "Acme Insurance, at support@contact.example"
    assert re.fullmatch(r"\w+ \d+, \d{4}, .+ UTC", up["takes"]["expires"]), up["takes"]["expires"]
    assert "Acme Insurance" in up["page"]["text"] and "help@acme.example" in up["page"]["text"]
    # Strict CSP: scripts and styles from the gateway only, nothing inline, nothing blocked.
    csp = up["csp"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    assert up["cspErrors"] == [], up["cspErrors"]
    # A type the route does not take: explained before anything is sent.
    assert up["wrongType"] == {"state": "error", "text": "holiday.mp4 cannot be accepted: it is not one of the "
                                                         "file types listed above."}
    assert up["postsAfterWrongType"] == 0
    # A program renamed .pdf passes the page's check; the server refuses it by its bytes, in the same words.
    assert up["renamedProgram"] == {"state": "error", "text": "invoice.pdf cannot be accepted: it is a program or "
                                                              "script, and those are never accepted."}
    # Per-file progress, a success state that says what happens next, and a way to add more.
    assert re.fullmatch(r"Sending… \d+%", up["uploadingText"]) and up["progressLabel"] == \
        "Progress of claim-form.pdf"
    assert up["good"] == {"state": "done", "text": "Received. Thank you."}
    assert "What happens next" in up["done"]["text"] and up["done"]["focused"] == "done"
    assert up["done"]["announced"] == "Received. Thank you."
    assert up["moreFocusesPicker"] is True and up["moreOpensPicker"] is True
    print(f"\nfile chooser opened again after a dropped key press: {up['chooserRetries']} time(s)")
    for state in ("axeEmpty", "axeRefused", "axeDone"):
        assert up[state] == [], (state, up[state])

    audit = gw.audit()
    refused = [e for e in audit if e.get("EventType") == "FileCreated" and e.get("EventResult") == "Failure"]
    assert [e["TargetFileName"] for e in refused] == ["invoice.pdf"] and refused[0]["RequestId"]
    access = [e for e in gw.log_events() if e.get("event") == "request"]

    expected = {
        "landing": (200, "Secure attachments", "Success", "listed 2 files"),
        "expired": (410, "This link has expired", "Failure", "expired token"),
        "invalid": (403, "This link is not valid", "Failure", "invalid token"),
        "revoked": (410, "This attachment has been withdrawn", "Failure", "revoked (message)"),
        "denied": (403, "You do not have access to this customer's files", "Failure", "denied"),
        "not_signed_in": (403, "You are not signed in", "Failure", "identity refused"),
        "storage_unavailable": (503, "The attachment cannot be fetched right now", "Failure", "storage error"),
        "not_found": (404, "This attachment is no longer available", "Failure", "no link record"),
        "upload_invalid": (403, "This upload link is not valid", "Failure", "HTTP 403"),
    }
    for name, (status, h1, result, details) in expected.items():
        page: dict[str, Any] = seen["agent"][name]
        assert (page["status"], page["h1"]) == (status, h1), (name, page)
        assert page["axe"] == [] and page["cspErrors"] == [] and page["stylesApplied"], (name, page)
        assert "Acme Insurance" in page["title"] and "help@acme.example" in page["text"], name
        # The reference on the page is the audit event's RequestId and the access log's request_id.
        ref = page["reference"]
        [event] = [e for e in audit if e.get("RequestId") == ref]
        assert event["EventResult"] == result and event["EventResultDetails"].startswith(details), (name, event)
        assert [a["status"] for a in access if a.get("request_id") == ref] == [status], name
    assert "the duty manager" in seen["agent"]["denied"]["text"] and "bob" in seen["agent"]["denied"]["text"]
    assert "Refresh Link" in seen["agent"]["expired"]["text"]
    # The Refresh Link button, pressed with the keyboard alone, gives a new link.
    assert seen["agent"]["expired"]["refreshReached"]
    assert seen["agent"]["expired"]["refreshed"]["status"] == 200
    assert seen["agent"]["expired"]["refreshed"]["h1"] == "Here is a new link"
    assert seen["agent"]["expired"]["refreshed"]["axe"] == []
    # French for a French browser; English for a language the gateway has no catalogue for.
    fr, unknown = seen["agent"]["landing_fr"], seen["agent"]["landing_unknown"]
    assert (fr["lang"], fr["h1"]) == ("fr", "Pièces jointes sécurisées") and "Télécharger" in fr["text"]
    assert fr["axe"] == []
    assert (unknown["lang"], unknown["h1"]) == ("en", "Secure attachments")
    for name in ("pages-upload-empty", "pages-upload-refused", "pages-upload-uploading", "pages-upload-done",
                 "pages-agent-expired", "pages-agent-landing"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 5000, name
