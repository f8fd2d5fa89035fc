"""The full audit trail: a ``FileStored`` event for every file the gateway
stores (offloaded from mail, uploaded through the API inline or as a job,
through the upload page) and a ``FileQuarantined`` one for every file it
keeps in quarantine, in the schema of the other events (ASIM FileEvent
names), with the customer id as given."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.harness import GatewayProcess
from tests.messages import message, pdf_bytes, send, sha256, stored_objects
from tests.test_agent_links import offload_one
from tests.test_upload_api import api_sections, poll, post
from tests.test_upload_page import _call

CRM_ID = "CUST-998877"
COMMON = {"EventSchema": "FileEvent", "EventSchemaVersion": "0.2.1", "EventProduct": "attachment-gateway",
          "Dvc": "gw.test"}


def audit_gateway(make_gateway, tmp_path: Path) -> GatewayProcess:
    return make_gateway(threshold=1000, route={"customer_id": {"trusted_networks": ["127.0.0.1/32"]}},
                        sections={"upload": {"chunk_size": "64KiB"}, **api_sections(tmp_path)})


def events_of(gw: GatewayProcess, event_type: str, count: int = 1) -> list[dict[str, Any]]:
    gw.wait_audit(lambda _: sum(1 for e in gw.audit() if e["EventType"] == event_type) >= count)
    return [e for e in gw.audit() if e["EventType"] == event_type]


def has(event: dict[str, Any], **fields: Any) -> None:
    for k, v in {**COMMON, **fields}.items():
        assert event.get(k) == v, (k, event.get(k), v, event)
    assert event["TimeGenerated"].endswith("Z")


def test_an_attachment_offloaded_from_mail_is_a_file_stored_event(make_gateway, tmp_path) -> None:
    gw = audit_gateway(make_gateway, tmp_path)
    data = pdf_bytes(5000)
    offload_one(gw, data, X_CustomerId=CRM_ID, Message_ID="<claim-7@example.net>")
    [key] = stored_objects(gw.objects)
    [event] = events_of(gw, "FileStored")
    queue_id = next(e["queue_id"] for e in gw.log_events() if e.get("event") == "offloaded")
    has(event, EventResult="Success", EventSubType="Mail", CustomerId=CRM_ID, QueueId=queue_id,
        InternetMessageId="<claim-7@example.net>", TargetFilePath=key, TargetFileName="scan.pdf",
        TargetFileSize=len(data), TargetFileSHA256=sha256(data), TargetFileMimeType="application/pdf",
        DeclaredMimeType="application/pdf", StoreName="local")
    assert key.startswith("uploads/cust-998877/")


def test_a_quarantined_file_is_a_file_quarantined_event_beside_its_refusal(make_gateway, tmp_path) -> None:
    gw = audit_gateway(make_gateway, tmp_path)
    program = Path("/bin/true").read_bytes()  # a real ELF program: refused whatever its name says
    send(gw.smtp_port, message(attachments=[(program, "video/mp4", "claim.mp4")], X_CustomerId=CRM_ID,
                               Message_ID="<claim-8@example.net>"))
    gw.wait_outbox(1)
    [key] = [k for k in stored_objects(gw.objects) if k.startswith("quarantine/")]
    [event] = events_of(gw, "FileQuarantined")
    [refused] = events_of(gw, "FileRefused")
    has(event, EventResult="Success", EventSubType="Mail", CustomerId=CRM_ID, QueueId=refused["QueueId"],
        InternetMessageId="<claim-8@example.net>", TargetFilePath=key, TargetFileName="claim.mp4",
        TargetFileSize=len(program), TargetFileSHA256=sha256(program), StoreName="local",
        Policy=refused["Policy"], EventResultDetails=refused["EventResultDetails"],
        TargetFileMimeType=refused["TargetFileMimeType"])
    assert event["TargetFileMimeType"] not in (None, "video/mp4")
    assert refused["TargetFilePath"] == key and key.startswith("quarantine/cust-998877/")
    assert not [e for e in gw.audit() if e["EventType"] == "FileStored"]


def test_files_stored_through_the_api_inline_and_as_a_job_are_file_stored_events(make_gateway, tmp_path) -> None:
    gw = audit_gateway(make_gateway, tmp_path)
    inline, queued = pdf_bytes(6000), pdf_bytes(7000)
    status, _, body = post(gw, inline, filename="inline.pdf", customer=CRM_ID)
    assert status == 200, body
    status, _, job = post(gw, queued, filename="queued.pdf", customer=CRM_ID, Prefer="respond-async")
    assert status == 202, job
    done = poll(job["statusUrl"])
    first, second = events_of(gw, "FileStored", 2)
    api_event = next(e for e in gw.audit() if e["EventType"] == "FileCreated" and e["EventResultDetails"] == "stored")
    has(first, EventResult="Success", EventSubType="Upload", CustomerId=CRM_ID, QueueId=api_event["QueueId"],
        TargetFilePath=body["s3Key"], TargetFileName="inline.pdf", TargetFileSize=len(inline),
        TargetFileSHA256=sha256(inline), TargetFileMimeType="application/pdf", StoreName="local",
        ActorUsername="api-key:flow", SrcIpAddr="127.0.0.1")
    # The job runs in the worker: the job id is its reference.
    has(second, EventResult="Success", EventSubType="Upload", CustomerId=CRM_ID, QueueId=job["jobId"],
        TargetFilePath=done["s3Key"], TargetFileName="queued.pdf", TargetFileSize=len(queued),
        TargetFileSHA256=sha256(queued), TargetFileMimeType="application/pdf", StoreName="local")


def test_a_file_sent_on_the_upload_page_is_a_file_stored_event(make_gateway, tmp_path) -> None:
    gw = audit_gateway(make_gateway, tmp_path)
    out = gw.command("invite", "--customer", CRM_ID, "--message-id", "<case-9@example.net>",
                     "--to", "support@contact.example")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    data = pdf_bytes(150 * 1024)
    status, s = _call("POST", url + "/files", json.dumps({"name": "plan.pdf", "size": len(data)}).encode())
    assert status == 201, s
    for n in range(s["chunks"]):
        assert _call("PUT", f"{url}/files/{s['uploadId']}/chunks/{n}", data[n * 65536:(n + 1) * 65536],
                     "application/octet-stream")[0] == 200
    assert _call("POST", f"{url}/files/{s['uploadId']}/complete")[0] == 200
    [event] = events_of(gw, "FileStored")
    [key] = [k for k in stored_objects(gw.objects) if k.startswith("uploads/")]
    has(event, EventResult="Success", EventSubType="UploadPage", CustomerId=CRM_ID, QueueId=s["uploadId"],
        InternetMessageId="<case-9@example.net>", TargetFilePath=key, TargetFileName="plan.pdf",
        TargetFileSize=len(data), TargetFileSHA256=sha256(data), TargetFileMimeType="application/pdf",
        StoreName="local", ActorUsername=f"customer:{CRM_ID}", SrcIpAddr="127.0.0.1")
    assert key.startswith("uploads/cust-998877/")
    # The notice mailed to the contact centre carries the link, not the file:
    # it is processed, and stores nothing more.
    gw.wait_outbox(1)
    gw.wait_idle()
    assert len(events_of(gw, "FileStored")) == 1
