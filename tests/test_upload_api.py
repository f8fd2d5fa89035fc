"""The upload API over real HTTP against ``attachment-gateway serve`` (issue 8)."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, GatewayProcess
from tests.messages import fetch, pdf_bytes, sha256, stored_objects
from tests.servers.ports import port_is_open

MiB = 1 << 20
API_KEY = "test-api-key-0123456789abcdef"


def api_sections(tmp: Path, **api: Any) -> dict[str, Any]:
    key = tmp / "api.key"
    key.write_text(API_KEY + "\n")
    return {"api": {"keys": [{"id": "flow", "file": str(key)}], "max_upload_size": "20MiB",
                    "async_threshold": "18MiB", **api}}


def post(gw: GatewayProcess, body: bytes, *, filename: str = "invoice.pdf", customer: str = "ACME-42",
         key: str | None = API_KEY, **headers: str) -> tuple[int, dict[str, str], Any]:
    h = {"Content-Type": "application/octet-stream", "X-Filename": filename, "X-CustomerId": customer, **headers}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"http://127.0.0.1:{gw.http_port}/api/v1/upload/attachment", data=body,
                                 headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def get_json(url: str, key: str = API_KEY) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def staging_left(gw: GatewayProcess) -> list[str]:
    return [p.name for p in (gw.objects / "staging").rglob("*") if p.is_file()] if (gw.objects / "staging").exists() else []


@pytest.fixture
def api_gw(make_gateway, tmp_path: Path) -> GatewayProcess:
    return make_gateway(sections=api_sections(tmp_path))


@pytest.mark.parametrize("encoding", ["raw", "base64"])
def test_sync_upload_of_15_mb_answers_the_contract_and_the_link_serves_the_bytes(api_gw, encoding: str) -> None:
    data = pdf_bytes(15 * MiB)
    if encoding == "base64":
        status, _, body = post(api_gw, base64.encodebytes(data), **{"Content-Transfer-Encoding": "base64"})
    else:
        status, _, body = post(api_gw, data)
    assert status == 200, body
    assert set(body) == {"downloadUrl", "fileName", "fileSize", "s3Key"}
    assert body["fileName"] == "invoice.pdf" and body["fileSize"] == len(data)
    assert body["s3Key"].startswith("uploads/acme-42/") and body["s3Key"].endswith("-invoice.pdf")
    assert stored_objects(api_gw.objects) == {body["s3Key"]: data}
    assert staging_left(api_gw) == []
    got_status, headers, got = fetch(body["downloadUrl"])
    assert got_status == 200 and sha256(got) == sha256(data)
    assert "invoice.pdf" in headers["Content-Disposition"]
    events = api_gw.wait_audit(lambda e: e["EventType"] == "FileCreated")
    [created] = [e for e in events if e["EventType"] == "FileCreated"]
    assert created["EventResult"] == "Success" and created["TargetFilePath"] == body["s3Key"]
    assert created["ActorUsername"] == "api-key:flow" and created["CustomerId"] == "ACME-42"  # as the flow gave it


def ooxml(extra: list[tuple[str, bytes]]) -> bytes:
    """A Word package, a megabyte of media first (so the rest lies far past
    the first 8 KiB), then ``extra``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("[Content_Types].xml",
                   '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                   '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
                   'officedocument.wordprocessingml.document.main+xml"/></Types>')
        z.writestr("_rels/.rels", "<Relationships/>")
        z.writestr("word/document.xml", "<document/>")
        z.writestr("word/media/image1.png", bytes(range(256)) * 4096)
        for name, data in extra:
            z.writestr(name, data)
    return out.getvalue()


def test_a_file_is_judged_by_what_it_is_over_http_too(make_gateway, tmp_path: Path) -> None:
    # Issue 14: the upload API examines a ZIP's central directory and text's
    # markers as the worker does, so a Word document with macros, or one
    # carrying a program, is refused however it is named.  (Office files
    # not disarmed here: these packages are too bare for disarm to read, and
    # with disarm an Office file refused for its macros is cleaned instead.)
    api_gw = make_gateway(route={"disarm": {"office": "allow"}}, sections=api_sections(tmp_path))
    docx = ooxml([])
    status, _, body = post(api_gw, docx, filename="contract.docx")
    assert status == 200, body
    refused = [
        (ooxml([("word/vbaProject.bin", b"\xd0\xcf\x11\xe0" + b"\x00" * 64)]), "contract.docx",
         "Word document with macros"),
        (ooxml([("word/vbaProject.bin", b"\xd0\xcf\x11\xe0" + b"\x00" * 64)]), "contract.docm",
         "Word document with macros"),
        (ooxml([("invoice.exe", b"MZ" + b"\x00" * 64)]), "contract.docx", "ZIP archive"),
        (b'<?xml version="1.0"?>\n<!-- x -->\n<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
         "notes.txt", "SVG image"),
        (b"Just some text.\n", "notes.hta", ".hta"),
        (b"WEB\r\n1\r\nhttps://evil.example/q\r\n", "prices.txt", "web query"),
    ]
    for data, name, words in refused:
        status, _, body = post(api_gw, data, filename=name)
        assert status == 415 and words in body["error"], (name, words, body)
    assert list(stored_objects(api_gw.objects).values()) == [docx]
    assert staging_left(api_gw) == []


def test_empty_body_is_400_empty_file(api_gw) -> None:
    assert post(api_gw, b"")[0::2] == (400, {"error": "Empty file"})
    # Base64 of nothing is empty too, once decoded.
    assert post(api_gw, b"\r\n", **{"Content-Transfer-Encoding": "base64"})[0::2] == (400, {"error": "Empty file"})
    assert stored_objects(api_gw.objects) == {}


def test_spoofed_names_cannot_escape_the_customer_folder(api_gw) -> None:
    data = pdf_bytes(2000)
    status, _, body = post(api_gw, data, filename="../../../etc/passwd", customer="ACME/../../other")
    assert status == 200, body
    parts = body["s3Key"].split("/")
    assert parts[0] == "uploads" and ".." not in parts and len(parts) == 3
    assert parts[2].endswith("-passwd")
    assert stored_objects(api_gw.objects) == {body["s3Key"]: data}


def test_invalid_base64_is_400_and_nothing_is_kept(api_gw) -> None:
    status, _, body = post(api_gw, b"SGVsbG8*d29ybGQ=", **{"Content-Transfer-Encoding": "base64"})
    assert status == 400 and "base64" in body["error"]
    assert stored_objects(api_gw.objects) == {} and staging_left(api_gw) == []


def test_oversize_is_413_before_the_body_with_expect_and_while_streaming_without(api_gw, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(pdf_bytes(25 * MiB))
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\\n%{http_code} %{size_upload}", "--data-binary", f"@{big}",
         "-H", f"Authorization: Bearer {API_KEY}", "-H", "X-Filename: big.bin", "-H", "X-CustomerId: c1",
         "-H", "Content-Type: application/octet-stream",
         f"http://127.0.0.1:{api_gw.http_port}/api/v1/upload/attachment"],
        capture_output=True, text=True, timeout=60)
    body, _, tail = out.stdout.rpartition("\n")
    code, uploaded = tail.split()
    assert code == "413" and "larger than" in json.loads(body)["error"]
    assert float(uploaded) < 1 * MiB  # refused on Expect: 100-continue, the body never sent
    # Base64 has no exact size up front: the limit is enforced on the decoded stream.
    status, _, body = post(api_gw, base64.b64encode(pdf_bytes(20 * MiB + 3000)),
                           **{"Content-Transfer-Encoding": "base64"})
    assert status == 413 and "larger than" in body["error"]
    assert stored_objects(api_gw.objects) == {} and staging_left(api_gw) == []


def test_missing_key_is_401_wrong_key_403_and_nothing_is_stored(api_gw) -> None:
    status, headers, body = post(api_gw, b"data", key=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = post(api_gw, b"data", key="not-the-key-at-all-000000")
    assert status == 403 and body == {"error": "Invalid API key"}
    assert stored_objects(api_gw.objects) == {}
    assert get_json(f"http://127.0.0.1:{api_gw.http_port}/api/v1/jobs/abc", key="wrong-key-xxxxxxxxxxxx")[0] == 403


def poll(url: str, want: str = "COMPLETE", timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get_json(url)
        assert status == 200, body
        if body["status"] == want:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["prefer", "size"])
def test_async_upload_answers_202_then_the_job_completes_with_a_working_link(api_gw, how: str) -> None:
    data = pdf_bytes(19 * MiB if how == "size" else 3 * MiB)
    extra = {"Prefer": "respond-async"} if how == "prefer" else {}
    status, headers, body = post(api_gw, data, filename="scan.pdf", **extra)
    assert status == 202, body
    assert set(body) == {"jobId", "statusUrl"} and headers["Location"] == body["statusUrl"]
    assert body["statusUrl"] == f"http://127.0.0.1:{api_gw.http_port}/api/v1/jobs/{body['jobId']}"
    done = poll(body["statusUrl"])
    assert done["fileName"] == "scan.pdf" and done["fileSize"] == len(data) and done["jobId"] == body["jobId"]
    assert fetch(done["downloadUrl"])[2] == data
    objects = stored_objects(api_gw.objects)
    assert objects.pop(f"jobs/{body['jobId']}.json").startswith(b'{"job_id"')
    assert objects == {done["s3Key"]: data}
    assert staging_left(api_gw) == []
    assert get_json(body["statusUrl"].rsplit("/", 1)[0] + "/NoSuchJob0000000")[0] == 404


def test_a_job_survives_the_death_of_the_process_that_queued_it(make_gateway, tmp_path: Path) -> None:
    # One process, so SIGKILL takes down everything that queued the job.
    sections = {**api_sections(tmp_path), "gateway": {"processes": 1}}
    front = make_gateway(start=False, sections=sections)
    front.start(roles=["http"])  # takes uploads, runs no jobs
    data = pdf_bytes(4 * MiB)
    status, _, body = post(front, data, Prefer="respond-async")
    assert status == 202
    time.sleep(1.5)
    assert get_json(body["statusUrl"])[1]["status"] == "PENDING"
    front.kill()
    assert not port_is_open("127.0.0.1", front.http_port)  # nothing of it answers any more
    # Another process over the same spool and store, with the worker role.
    back = make_gateway(start=False, sections={
        **sections, "gateway": {"spool_dir": str(front.spool), "processes": 1},
        "storage.local": {"path": str(front.objects)},
        "links": {"keys": [{"id": "k1", "file": str(front.tmp / "link.key")}]}})
    back.start(roles=["worker", "http"])
    done_back = poll(f"http://127.0.0.1:{back.http_port}/api/v1/jobs/{body['jobId']}")
    assert fetch(done_back["downloadUrl"])[2] == data
    assert not list((front.spool / "jobs").iterdir())
    # The first process, started again, answers for the job too.
    front.start(roles=["http"])
    done_front = poll(body["statusUrl"])
    assert {k: v for k, v in done_back.items() if k != "statusUrl"} == \
        {k: v for k, v in done_front.items() if k != "statusUrl"}


def test_a_node_with_its_own_spool_takes_over_a_job_whose_lease_ran_out(make_gateway, tmp_path: Path) -> None:
    sections = api_sections(tmp_path, job_lease=2)
    front = make_gateway(start=False, sections=sections)
    front.start(roles=["http"])
    # A second node: its own spool, the same store and link keys.
    other = make_gateway(start=False, sections={
        **sections, "storage.local": {"path": str(front.objects)},
        "links": {"keys": [{"id": "k1", "file": str(front.tmp / "link.key")}]}})
    other.start()
    assert other.spool != front.spool
    data = pdf_bytes(1 * MiB)
    status, _, body = post(front, data, Prefer="respond-async")
    assert status == 202
    url_other = f"http://127.0.0.1:{other.http_port}/api/v1/jobs/{body['jobId']}"
    assert get_json(url_other)[1]["status"] == "PENDING"  # the lease still runs: nobody takes it
    time.sleep(2.2)
    done = poll(url_other)
    assert fetch(done["downloadUrl"])[2] == data
    assert any(e.get("event") == "job taken over" for e in other.log_events())


def test_a_100_mb_upload_streams_without_growing_the_gateway(make_gateway, tmp_path: Path) -> None:
    # A PDF over disarm.max_size would be refused (disarm holds a file whole):
    # this route lets PDFs through unchecked, so the file streams to its place.
    gw = make_gateway(route={"disarm": {"pdf": "allow"}},
                      sections=api_sections(tmp_path, max_upload_size="200MiB", async_threshold="200MiB"))
    top = gw.proc.pid
    # With processes = "auto" the serving processes are the supervisor's children.
    pids = [top, *map(int, Path(f"/proc/{top}/task/{top}/children").read_text().split())]

    def hwm() -> int:  # the sum of the processes' peak resident memory, in KiB
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        return total

    for _ in range(4):  # warm up every process: imports, thread pool
        assert post(gw, pdf_bytes(1 * MiB))[0] == 200
    before = hwm()
    chunk = pdf_bytes(1 * MiB)

    def body():  # generated, so the test client does not hold 100 MB either
        for _ in range(100):
            yield chunk

    req = urllib.request.Request(f"http://127.0.0.1:{gw.http_port}/api/v1/upload/attachment", data=body(),
                                 method="POST", headers={"Authorization": f"Bearer {API_KEY}", "X-Filename": "big.pdf",
                                                         "X-CustomerId": "c", "Content-Length": str(100 * MiB)})
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.loads(r.read())
    seconds = time.monotonic() - started
    assert answer["fileSize"] == 100 * MiB
    grew = hwm() - before
    print(f"100 MiB upload: {seconds:.2f} s, peak RSS grew {grew} KiB")
    assert grew < 32 * 1024, f"peak RSS grew by {grew} KiB during a 100 MiB upload"


def test_the_served_openapi_document_is_the_one_in_docs(api_gw) -> None:
    status, _, served = fetch(f"http://127.0.0.1:{api_gw.http_port}/api/v1/openapi.json")
    assert status == 200
    assert served.decode() == (ROOT / "docs" / "openapi.json").read_text()
    assert set(json.loads(served)["paths"]) == {"/api/v1/upload/attachment", "/api/v1/jobs/{jobId}",
                                                "/api/v1/links/refresh", "/api/v1/links/revoke"}


def test_schemathesis_finds_no_failure_against_the_served_document(make_gateway, tmp_path: Path) -> None:
    # Small limits so generated bodies cover the sync, async and 413 answers.
    gw = make_gateway(sections=api_sections(tmp_path, max_upload_size="64KiB", async_threshold="1KiB"))
    st = str(Path(sys.executable).with_name("schemathesis"))
    out = subprocess.run(
        [st, "run", f"http://127.0.0.1:{gw.http_port}/api/v1/openapi.json", "--checks", "all",
             # A schema-valid body may still be refused by the content policies
             # (415: random bytes are no allowed file type), which is the point.
             "--exclude-checks", "positive_data_acceptance",
         "-H", f"Authorization: Bearer {API_KEY}", "-n", "50", "--workers", "1", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Tested: 4" in out.stdout and " passed" in out.stdout


def test_uploads_are_scanned_for_malware_as_mail_attachments_are(make_gateway, tmp_path: Path) -> None:
    from tests.servers.clamd import Clamd
    from tests.test_content_policies import EICAR_LIKE
    from tests.test_upload_page import _call, invite

    clean = b"An ordinary note from a customer.\n" * 10
    with Clamd(tmp_path / "clamd", {"Gateway.Test.Signature": EICAR_LIKE}) as clamd:
        gw = make_gateway(route={"policies": [
            {"name": "empty_attachment"}, {"name": "refuse_malware"}, {"name": "refuse_executables"},
            {"name": "refuse_spoofed"}, {"name": "allowed_types"}, {"name": "offload_large"}]},
            sections={**api_sections(tmp_path), "clamd": {"address": clamd.address, "timeout": 10},
                      "upload": {"chunk_size": "64KiB"}})
        # The API: the file clamd flags is refused, and nothing is kept.
        status, _, body = post(gw, EICAR_LIKE, filename="report.txt")
        assert status == 415 and "malware scan found Gateway.Test.Signature" in body["error"], body
        assert post(gw, clean, filename="note.txt")[0] == 200
        # The upload page: the same.
        url = invite(gw)
        status, s = _call("POST", url + "/files", json.dumps({"name": "report.txt", "size": len(EICAR_LIKE)}).encode())
        assert status == 201
        files = f"{url}/files/{s['uploadId']}"
        assert _call("PUT", files + "/chunks/0", EICAR_LIKE, "application/octet-stream")[0] == 200
        status, body = _call("POST", files + "/complete")
        assert (status, body["code"]) == (415, "malware"), body
        kept = [k for k in stored_objects(gw.objects) if k.startswith("uploads/") and not k.endswith(".json")]
        assert kept == ["uploads/acme-42/" + kept[0].rsplit("/", 1)[1]] and kept[0].endswith("-note.txt"), kept
        scans = [e for e in gw.log_events() if e.get("event") == "decision" and e.get("policy") == "refuse_malware"]
        assert len(scans) == 2


# -- disarm: uploads get what mail attachments get on the same route --------

def quarantined(gw: GatewayProcess) -> dict[str, bytes]:
    return {k: v for k, v in stored_objects(gw.objects).items() if k.startswith("quarantine/")}


def uploaded(gw: GatewayProcess) -> dict[str, bytes]:
    return {k: v for k, v in stored_objects(gw.objects).items() if k.startswith("uploads/")}


def test_an_uploaded_pdf_with_open_action_javascript_is_stored_and_served_cleaned(api_gw, tmp_path: Path) -> None:
    from tests import active_documents as docs
    from tests.test_disarm import pdf_constructs, qpdf_check

    seen: set[str] = set()
    for extra in ({}, {"Prefer": "respond-async"}):
        original = docs.pdf_open_action_js()
        assert pdf_constructs(original)  # what mail's disarm takes out
        status, _, body = post(api_gw, original, filename="invoice.pdf", **extra)
        if extra:
            assert status == 202, body
            body = poll(body["statusUrl"])
        else:
            assert status == 200, body
        assert body["cleaned"] == "scripts removed" and body["fileName"] == "invoice.pdf", body
        got_status, headers, served = fetch(body["downloadUrl"])
        assert got_status == 200 and served != original
        qpdf_check(served, tmp_path)
        assert pdf_constructs(served) == set()
        assert body["fileSize"] == len(served) and uploaded(api_gw)[body["s3Key"]] == served
        assert "invoice.pdf" in headers["Content-Disposition"]
        # The original is kept for an administrator, never linked.
        [kept] = [k for k, v in quarantined(api_gw).items() if v == original and k not in seen]
        seen.add(kept)
        assert kept.startswith("quarantine/acme-42/") and kept.endswith("-invoice.pdf")
        events = api_gw.wait_audit(lambda e, k=kept: e["EventType"] == "FileDisarmed" and e["OriginalFilePath"] == k)
        [disarmed] = [e for e in events if e["EventType"] == "FileDisarmed" and e["OriginalFilePath"] == kept]
        assert disarmed["TargetFileSHA256"] == sha256(served) and disarmed["OriginalFileSHA256"] == sha256(original)
        assert disarmed["EventResultDetails"] == "scripts removed"
        [stored] = [e for e in events if e["EventType"] == "FileStored" and e["TargetFilePath"] == body["s3Key"]]
        assert stored["TargetFileSHA256"] == sha256(served) and stored["TargetFileSize"] == len(served)
        assert any(e["EventType"] == "FileQuarantined" and e["TargetFilePath"] == kept
                   and e["TargetFileSHA256"] == sha256(original) for e in events)
    assert staging_left(api_gw) == []


def test_uploaded_office_files_with_a_macro_or_a_remote_template_are_stored_cleaned(api_gw) -> None:
    from gateway import disarm
    from tests import active_documents as docs
    from tests.test_disarm import external_relationships, package
    from tests.test_disarm_mail import DOCX

    for build, name, stored_as, removed in [(docs.docm_macro, "claim.docm", "claim.docx", "macros"),
                                            (docs.docx_remote_template, "contract.docx", "contract.docx",
                                             "a remote template"),
                                            (docs.docx_dde, "letter.docx", "letter.docx", "DDE fields")]:
        original = build()
        status, _, body = post(api_gw, original, filename=name)
        assert status == 200, body
        assert body["fileName"] == stored_as and removed in body["cleaned"], body
        assert body["s3Key"].endswith("-" + stored_as)
        got_status, headers, served = fetch(body["downloadUrl"])
        assert got_status == 200 and served != original and stored_as in headers["Content-Disposition"]
        parts = package(served)  # re-read, CRC-tested
        assert not any(n.lower().endswith("vbaproject.bin") for n in parts)
        assert b"macroEnabled" not in parts["[Content_Types].xml"]
        assert external_relationships(parts) == []
        assert disarm.disarm(served, DOCX).status == "clean"  # nothing left to take out
        assert original in quarantined(api_gw).values()
    assert len(uploaded(api_gw)) == 3


def test_an_upload_disarm_cannot_check_is_refused_as_mail_refuses_it(make_gateway, tmp_path: Path) -> None:
    gw = make_gateway(route={"disarm": {"max_size": "64KiB"}}, sections=api_sections(tmp_path))
    broken = b"%PDF-1.7\n" + bytes(range(256)) * 20  # a PDF header, then nothing a reader can open
    status, _, body = post(gw, broken, filename="broken.pdf")
    assert status == 415 and "could not be checked for active content" in body["error"], body
    status, _, body = post(gw, pdf_bytes(100_000), filename="large.pdf")
    assert status == 415 and "too large to be checked for active content" in body["error"], body
    assert uploaded(gw) == {} and staging_left(gw) == []


def test_a_route_that_refuses_active_pdfs_refuses_such_an_upload_and_allow_lets_office_files_through(
        make_gateway, tmp_path: Path) -> None:
    from tests import active_documents as docs

    gw = make_gateway(route={"disarm": {"pdf": "refuse", "office": "allow"}}, sections=api_sections(tmp_path))
    status, _, body = post(gw, docs.pdf_open_action_js(), filename="invoice.pdf")
    assert (status, body) == (415, {"error": "File refused: it carries active content (scripts)"})
    # A DDE field: active content the policies do not see, which the route lets through (logged).
    dde = docs.docx_dde()
    status, _, body = post(gw, dde, filename="letter.docx")
    assert status == 200 and "cleaned" not in body, body
    assert fetch(body["downloadUrl"])[2] == dde and uploaded(gw) == {body["s3Key"]: dde}
    assert quarantined(gw) == {}
    [allowed] = [e for e in gw.log_events() if e.get("event") == "active content not checked (route disarm: allow)"]
    assert allowed["filename"] == "letter.docx"


def test_a_clean_pdf_upload_is_checked_and_stored_byte_for_byte(api_gw) -> None:
    from tests import active_documents as docs

    data = docs.clean_pdf(pages=2, payload=5000)
    status, _, body = post(api_gw, data, filename="clean.pdf")
    assert status == 200 and "cleaned" not in body, body
    assert fetch(body["downloadUrl"])[2] == data and uploaded(api_gw) == {body["s3Key"]: data}
    assert quarantined(api_gw) == {}
    # It was looked at (in disarm's child), and found clean.
    _, _, metrics = fetch(f"http://127.0.0.1:{api_gw.http_port}/metrics")
    disarmed = [line for line in metrics.decode().splitlines() if line.startswith("gateway_disarm_files_total")]
    assert 'gateway_disarm_files_total{route="contact",status="clean"} 1.0' in disarmed, disarmed
