"""The customer upload page in real headless Chromium (issue 8).

The page is driven by ``tests/browser/upload_page.cjs`` (playwright-core
with Debian's chromium); the gateway is a real ``serve`` process whose route
delivers to a real SMTP sink.  Screenshots land in tests/artifacts/.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from gateway import autoreply
from tests.harness import ROOT, SmtpSink, wait_until
from tests.messages import fetch, leaves, links, message, parse, payload, pdf_bytes, send, sha256, stored_objects

MiB = 1 << 20
ARTIFACTS = ROOT / "tests" / "artifacts"
SCRIPT = ROOT / "tests" / "browser" / "upload_page.cjs"


def invite(gw, *args: str) -> str:
    out = gw.command("invite", "--customer", "ACME-7", "--to", "support@contact.example", *args)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.startswith(f"http://127.0.0.1:{gw.http_port}/upload/")
    return url


def test_a_50_mb_file_uploads_with_progress_survives_a_cut_and_reaches_the_contact_centre(
        make_gateway, sink: SmtpSink, tmp_path: Path) -> None:
    gw = make_gateway(next_hop=f"smtp://127.0.0.1:{sink.port}", route={"tls": "none"},
                      sections={"upload": {"chunk_size": "2MiB"}})
    expired = invite(gw, "--ttl", "1")
    url = invite(gw, "--message-id", "<case-1234@example.net>")
    data = pdf_bytes(50 * MiB)
    file = tmp_path / "site-survey.pdf"
    file.write_bytes(data)
    ARTIFACTS.mkdir(exist_ok=True)
    time.sleep(1.1)  # the first invitation is now out of time
    run = subprocess.run(["node", str(SCRIPT), json.dumps({"url": url, "expiredUrl": expired, "file": str(file),
                                                           "artifacts": str(ARTIFACTS), "cutAt": 0.3})],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout)
    assert seen["pageStatus"] == 200 and seen["title"] == "Send us your files"
    assert seen["final"]["state"] == "done", seen["final"]
    # The bar advanced through the upload, not in one jump.
    assert len({round(s, 2) for s in seen["samples"] if 0 < s < 1}) >= 5, seen["samples"]
    # It never went back by more than the one chunk a cut can cost (2 of 50 MiB).
    assert all(b >= a - 0.04 for a, b in zip(seen["samples"], seen["samples"][1:])), seen["samples"]
    # The connection was cut part-way; the page said so and carried on.
    assert 0.3 <= seen["cut"] < 1 and seen["sawRetrying"]
    for name in ("upload-page-offline.png", "upload-page-done.png", "upload-page-expired.png"):
        assert (ARTIFACTS / name).stat().st_size > 1000
    # Resumed, not restarted: each of the 25 chunks was stored once.
    stored = [e["chunk"] for e in gw.log_events() if e.get("event") == "chunk stored"]
    assert sorted(stored) == list(range(25)), stored
    # The contact centre got an email in the customer's thread with a working link.
    [mail] = sink.wait(1, timeout=30)
    assert mail.rcpt_tos == ["support@contact.example"]
    msg = parse(mail.data)
    assert msg["In-Reply-To"] == "<case-1234@example.net>" and msg["References"] == "<case-1234@example.net>"
    assert msg["X-CustomerId"] == "ACME-7"  # as the invitation was given
    text = payload(leaves(msg)[0])
    [link] = links(text)
    assert b"[Secure Attachment: site-survey.pdf](" + link.encode() + b") (50.0 MB)" in text
    status, headers, body = fetch(link)
    assert status == 200 and sha256(body) == sha256(data)
    assert "site-survey.pdf" in headers["Content-Disposition"]
    # No chunk is left in staging.
    assert not [p for p in (gw.objects / "staging").rglob("*") if p.is_file() and not p.name.startswith("session")]
    # The expired invitation: a readable page, not an error dump.
    assert seen["expired"]["status"] == 410
    assert seen["expired"]["h1"] == "This upload link has expired"
    assert "new link" in seen["expired"]["text"]


def _call(method: str, url: str, body: bytes | None = None, ctype: str = "application/json") -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_invitations_are_checked_and_the_chunk_api_resumes_from_what_arrived(make_gateway) -> None:
    gw = make_gateway(sections={"upload": {"chunk_size": "64KiB", "max_file_size": "1MiB"}})
    url = invite(gw)
    token = url.rsplit("/", 1)[1]
    # A changed signature: 403, on the page and on its API.
    tampered = url[:-2] + ("AA" if not url.endswith("AA") else "BB")
    status, _, body = fetch(tampered)
    assert status == 403 and b"not valid" in body
    assert _call("POST", tampered + "/files", json.dumps({"name": "a", "size": 1}).encode())[0] == 403
    # Too large and empty are refused before anything is sent.
    assert _call("POST", url + "/files", json.dumps({"name": "a.bin", "size": 2 * MiB}).encode())[0] == 413
    assert _call("POST", url + "/files", json.dumps({"name": "a.bin", "size": 0}).encode()) == \
        (400, {"error": "Empty file", "code": "empty"})
    data = pdf_bytes(150 * 1024)
    status, s = _call("POST", url + "/files", json.dumps({"name": "plan.pdf", "size": len(data)}).encode())
    assert status == 201 and s["chunks"] == 3 and s["received"] == []
    files = f"{url}/files/{s['uploadId']}"
    assert _call("PUT", files + "/chunks/1", data[65536:131072], "application/octet-stream")[0] == 200
    assert _call("PUT", files + "/chunks/-1", data[:1000], "application/octet-stream")[0] == 404
    # A short chunk is not kept; a missing one stops completion.
    assert _call("PUT", files + "/chunks/0", data[:1000], "application/octet-stream")[0] == 400
    status, body = _call("POST", files + "/complete")
    assert status == 409 and body["missing"] == [0, 2]
    # What a reloaded page asks: only chunk 1 arrived.
    assert _call("GET", files)[1]["received"] == [1]
    for n in (0, 2):
        assert _call("PUT", f"{files}/chunks/{n}", data[n * 65536:(n + 1) * 65536], "application/octet-stream")[0] == 200
    status, done = _call("POST", files + "/complete")
    assert (status, done) == (200, {"fileName": "plan.pdf", "fileSize": len(data)})
    assert _call("POST", files + "/complete") == (200, done)  # a retried completion answers the same
    # Another invitation cannot see this upload.
    other = invite(gw)
    assert _call("GET", f"{other}/files/{s['uploadId']}")[0] == 404
    assert token not in other
    [mail] = gw.wait_outbox(1)
    [link] = links(payload(leaves(parse(mail))[0]))
    assert fetch(link)[2] == data


def test_an_invitation_takes_only_its_limit_and_abandoned_chunks_are_removed(make_gateway) -> None:
    gw = make_gateway(sections={"upload": {"chunk_size": "64KiB", "max_files_per_invitation": 2,
                                           "max_bytes_per_invitation": "200KiB", "abandon_after": 6,
                                           "cleanup_interval": 1}})
    url = invite(gw)

    def start(size: int) -> tuple[int, dict]:
        return _call("POST", url + "/files", json.dumps({"name": "scan.pdf", "size": size}).encode())

    status, first = start(150 * 1024)
    assert status == 201 and not first["direct"]
    # 150 KB + 100 KB would pass 200 KB: refused before a byte is sent, saying why.
    assert start(100 * 1024) == (413, {"error": "This upload link takes at most 200 KB in all; 150 KB have been "
                                                "sent with it already, so this file (100 KB) does not fit. "
                                                "Please ask us for a new link.", "code": "limit-bytes"})
    assert start(40 * 1024)[0] == 201
    status, body = start(1)
    assert status == 413 and "at most 2 file(s)" in body["error"]
    # Another invitation has its own count.
    assert _call("POST", invite(gw) + "/files", json.dumps({"name": "a.pdf", "size": 1}).encode())[0] == 201
    files = f"{url}/files/{first['uploadId']}"
    assert _call("PUT", files + "/chunks/0", pdf_bytes(65536), "application/octet-stream")[0] == 200
    chunk = gw.objects / "staging" / "page" / first["uploadId"] / "000000"
    assert chunk.exists()
    # Never completed: after abandon_after (6 s: the calls above must all
    # fit in it on a loaded machine, or the session goes before its checks)
    # the sweeper removes the chunks
    # and the session, and the invitation's count is free again.
    def staged() -> list[Path]:
        return [p for p in (gw.objects / "staging").rglob("*") if p.is_file()]

    deadline = time.monotonic() + 30
    while staged() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not staged(), gw.log()[-3000:]
    assert _call("GET", files)[0] == 404
    assert start(190 * 1024)[0] == 201
    # Each session's line is logged after its last file has gone (and its
    # invitation's count given back): wait for the lines, not for the files.
    def removals() -> list[dict]:
        return [e for e in gw.log_events() if e.get("event") == "abandoned upload removed"]

    wait_until(lambda: len(removals()) >= 3, timeout=30, what="three abandoned uploads logged")
    removed = removals()
    assert len(removed) >= 3 and {e["mode"] for e in removed} == {"chunks"}


def test_the_auto_reply_about_a_refused_file_links_to_the_page_for_that_customer_and_thread(
        make_gateway, sink: SmtpSink) -> None:
    gw = make_gateway(route={"autoreply": {"from": "Support <support@contact.example>",
                                           "next_hop": f"smtp://127.0.0.1:{sink.port}"}},
                      sections={"upload": {"chunk_size": "64KiB"}})
    program = Path("/bin/true").read_bytes()  # a real ELF program: refused
    send(gw.smtp_port, message("My claim, with the video.\n", attachments=[(program, "video/mp4", "claim.mp4")],
                               Subject="Claim 42", Message_ID="<claim-42@example.net>"))
    [reply] = sink.wait(1)
    assert reply.rcpt_tos == ["customer@example.net"]
    text = payload(parse(reply.data)).decode()
    assert "claim.mp4" in text
    [url] = re.findall(rf"http://127\.0\.0\.1:{gw.http_port}/upload/\S+", text)
    assert "secure upload page: " + url in text
    status, _, body = fetch(url)
    assert status == 200 and b"<title>Send us your files</title>" in body
    # A file sent on that page reaches the contact centre under the sender's
    # customer id, in the thread of the refused message.
    data = pdf_bytes(100 * 1024)
    status, s = _call("POST", url + "/files", json.dumps({"name": "claim.pdf", "size": len(data)}).encode())
    assert status == 201
    for n in range(s["chunks"]):
        assert _call("PUT", f"{url}/files/{s['uploadId']}/chunks/{n}", data[n * 65536:(n + 1) * 65536],
                     "application/octet-stream")[0] == 200
    assert _call("POST", f"{url}/files/{s['uploadId']}/complete")[0] == 200
    done = [parse(m) for m in gw.wait_outbox(2) if b"uploaded a file" in m]
    assert len(done) == 1
    assert done[0]["X-CustomerId"] == "customer@example.net" and done[0]["To"] == "support@contact.example"
    assert done[0]["In-Reply-To"] == "<claim-42@example.net>"


def test_an_auto_reply_template_without_a_link_still_renders() -> None:
    refusals = [("a.exe", "programs are not accepted")]
    assert autoreply.render("Refused:\n{refusals}\n", refusals=refusals, subject="s", upload_url="https://u/x") == \
        "Refused:\n- a.exe: programs are not accepted\n"
    # No link to give (page off, no fixed upload_url): the line showing it goes.
    assert autoreply.render("{refusals}\nUpload here: {upload_url}\nBye\n", refusals=refusals, subject="s",
                            upload_url="") == "- a.exe: programs are not accepted\nBye\n"
    assert not autoreply.wants_upload_url("{refusals}") and autoreply.wants_upload_url("x {upload_url}")


def _large_docx(images: int) -> bytes:
    """A real Word document (its type is only known from its ZIP entries,
    so judging it reads all of it) made large by stored JPEG pictures."""
    import io
    import os
    import zipfile

    from tests.active_documents import clean_docx

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(clean_docx())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
        for i in range(images):
            z.writestr(f"word/media/image{i}.jpeg", b"\xff\xd8\xff\xe0" + os.urandom(MiB))
    return out.getvalue()


def test_a_chunk_written_again_while_the_upload_is_judged_never_reaches_the_store_unexamined(
        make_gateway) -> None:
    import threading

    gw = make_gateway(sections={"upload": {"chunk_size": "1MiB"}})
    url = invite(gw)
    data = _large_docx(64)
    status, s = _call("POST", url + "/files", json.dumps({"name": "survey.docx", "size": len(data)}).encode())
    assert status == 201
    files = f"{url}/files/{s['uploadId']}"
    for n in range(s["chunks"]):
        assert _call("PUT", f"{files}/chunks/{n}", data[n * MiB:(n + 1) * MiB], "application/octet-stream")[0] == 200
    # The customer holds back the last byte of a new last chunk (zeros in
    # place of the ZIP's central directory) and sends it once the completion
    # is copying the file to its secure key, after the type was judged in
    # the old scheme: a file the policies never saw would be stored.
    import http.client
    import urllib.parse

    last = s["chunks"] - 1
    tail = b"\0" * (len(data) - last * MiB)
    target = urllib.parse.urlsplit(f"{files}/chunks/{last}")
    put = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    put.putrequest("PUT", target.path)
    put.putheader("Content-Type", "application/octet-stream")
    put.putheader("Content-Length", str(len(tail)))
    put.endheaders()
    put.send(tail[:-1])
    answers: list[tuple[int, dict]] = []
    completion = threading.Thread(target=lambda: answers.append(_call("POST", files + "/complete")))
    completion.start()
    folder = gw.objects / "uploads"
    wait_until(lambda: folder.exists() and any(p.name.endswith(".part") for p in folder.rglob("*")),
               timeout=60, interval=0.002, what="the copy to the secure key started")
    put.send(tail[-1:])
    assert put.getresponse().status == 200
    put.close()
    completion.join()
    [(status, body)] = answers
    stored = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".json", ".part"))]
    # Either the changed file was copied and then judged (refused: its ZIP is
    # broken, nothing kept), or the document was: what is stored is always
    # what was judged.
    if status == 415:
        assert not stored, stored
    else:
        assert status == 200, body
        [kept] = stored
        assert kept.read_bytes() == data, "the stored file is not the one judged"
        [mail] = gw.wait_outbox(1)
        [link] = links(payload(leaves(parse(mail))[0]))
        assert fetch(link)[2] == data


def test_one_invitation_file_stays_one_file_whatever_the_customer_races_or_sends_again(make_gateway) -> None:
    import threading

    gw = make_gateway(sections={"upload": {"chunk_size": "64KiB", "max_files_per_invitation": 1}})
    url = invite(gw)

    def start(name: str, size: int) -> tuple[int, dict]:
        return _call("POST", url + "/files", json.dumps({"name": name, "size": size}).encode())

    def together(n: int, call: Callable[[], tuple[int, dict]]) -> list[tuple[int, dict]]:
        barrier = threading.Barrier(n)
        answers: list[tuple[int, dict]] = []

        def one() -> None:
            barrier.wait()
            answers.append(call())
        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answers

    # A refused file frees its place; its upload is closed: a document sent
    # again in its chunks is not stored without counting.
    program = Path("/bin/true").read_bytes()[:60000]
    status, refused = start("claim.pdf", len(program))
    assert status == 201
    first = f"{url}/files/{refused['uploadId']}"
    assert _call("PUT", first + "/chunks/0", program, "application/octet-stream")[0] == 200
    status, body = _call("POST", first + "/complete")
    assert status == 415 and body["code"] == "program"
    pdf = pdf_bytes(len(program))
    assert _call("PUT", first + "/chunks/0", pdf, "application/octet-stream")[0] == 409
    assert _call("POST", first + "/complete") == (415, body)
    # The invitation's one file, asked for by many at once (the node's
    # processes all answer): one upload starts.
    answers = together(8, lambda: start("plan.pdf", len(pdf)))
    assert sorted(s for s, _ in answers) == [201] + [413] * 7, answers
    [upload] = [b for s, b in answers if s == 201]
    files = f"{url}/files/{upload['uploadId']}"
    assert _call("PUT", files + "/chunks/0", pdf, "application/octet-stream")[0] == 200
    # Completed by many at once: stored once, one email, the same answer to all.
    completions = together(6, lambda: _call("POST", files + "/complete"))
    done = {"fileName": "plan.pdf", "fileSize": len(pdf)}
    assert all(a == (200, done) or a[0] == 503 for a in completions), completions
    assert (200, done) in completions
    assert _call("POST", files + "/complete") == (200, done)
    assert _call("PUT", files + "/chunks/0", pdf, "application/octet-stream")[0] == 409
    time.sleep(2)
    assert len(gw.wait_outbox(1)) == 1
    stored = [p for p in (gw.objects / "uploads").rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert len(stored) == 1 and stored[0].read_bytes() == pdf


def test_a_file_uploaded_on_the_page_is_disarmed_as_it_would_be_in_mail(make_gateway) -> None:
    from tests import active_documents as docs
    from tests.test_disarm import external_relationships, package, pdf_constructs

    gw = make_gateway(sections={"upload": {"chunk_size": "64KiB"}})
    url = invite(gw)

    def upload(data: bytes, name: str) -> tuple[int, dict]:
        status, s = _call("POST", url + "/files", json.dumps({"name": name, "size": len(data)}).encode())
        assert status == 201, s
        files = f"{url}/files/{s['uploadId']}"
        for n in range(0, len(data), 65536):
            assert _call("PUT", f"{files}/chunks/{n // 65536}", data[n:n + 65536], "application/octet-stream")[0] == 200
        return _call("POST", files + "/complete")

    macro = docs.docm_macro()
    status, done = upload(macro, "claim.docm")
    assert (status, done) == (200, {"fileName": "claim.docx", "fileSize": done["fileSize"],
                                    "cleaned": "macros removed"}), done
    [mail] = gw.wait_outbox(1)
    text = payload(leaves(parse(mail))[0])
    assert b'"claim.docx" was cleaned: macros removed' in text
    [link] = links(text)
    status, headers, served = fetch(link)
    assert status == 200 and "claim.docx" in headers["Content-Disposition"] and len(served) == done["fileSize"]
    parts = package(served)
    assert not any(n.lower().endswith("vbaproject.bin") for n in parts)
    assert b"macroEnabled" not in parts["[Content_Types].xml"] and external_relationships(parts) == []
    objects = stored_objects(gw.objects)
    assert [k for k, v in objects.items() if v == macro and k.startswith("quarantine/acme-7/")]
    assert [v for k, v in objects.items() if k.startswith("uploads/")] == [served]
    # A PDF with an /OpenAction script: stored without it.
    status, done = upload(docs.pdf_open_action_js(), "invoice.pdf")
    assert status == 200 and done["cleaned"] == "scripts removed", done
    [pdf] = [v for k, v in stored_objects(gw.objects).items() if k.startswith("uploads/") and k.endswith(".pdf")]
    assert pdf_constructs(pdf) == set() and len(pdf) == done["fileSize"]
    # One that cannot be read is refused, as mail refuses it.
    status, body = upload(b"%PDF-1.7\n" + bytes(range(256)) * 20, "broken.pdf")
    assert status == 415 and "could not be checked for active content" in body["error"], body


def test_a_file_name_with_a_lone_surrogate_or_line_separator_is_stored_linked_and_audited(make_gateway) -> None:
    """JSON lets the page's caller name a file "plan\\udcff\\u2028.pdf": a
    lone surrogate no UTF-8 record can hold.  The copy reached its secure
    key, then writing the link record failed: a 500, the customer's file
    kept with no link and no audit event."""
    gw = make_gateway(sections={"upload": {"chunk_size": "64KiB"}})
    url = invite(gw)
    data = pdf_bytes(3000)
    body = b'{"name": "plan\\udcff\\u2028.pdf", "size": %d}' % len(data)
    status, s = _call("POST", url + "/files", body)
    assert status == 201, s
    files = f"{url}/files/{s['uploadId']}"
    assert _call("PUT", files + "/chunks/0", data, "application/octet-stream")[0] == 200
    assert _call("POST", files + "/complete") == (200, {"fileName": "plan.pdf", "fileSize": len(data)})
    [mail] = gw.wait_outbox(1)
    [link] = links(payload(leaves(parse(mail))[0]))
    status, headers, served = fetch(link)
    assert status == 200 and served == data and 'filename="plan.pdf"' in headers["Content-Disposition"]
    stored = [e for e in gw.audit() if e["EventType"] == "FileStored"]
    assert [e["TargetFileName"] for e in stored] == ["plan.pdf"]
