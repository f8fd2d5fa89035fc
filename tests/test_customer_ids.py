"""Customer ids as the CRM has them, end to end: mail with ``CUST-998877``
from a trusted client, a link, agents signed in through a trusted proxy
(127.0.0.2) and a static map written with the CRM's ids.  The object key
uses the sanitised form; the audit events carry the id as given."""
from __future__ import annotations

import http.client
from pathlib import Path

from gateway.storage.keys import customer_key
from tests.harness import GatewayProcess
from tests.messages import pdf_bytes, stored_objects
from tests.test_agent_links import offload_one
from tests.test_link_security import _get_from
from tests.test_upload_api import API_KEY, api_sections, post

CRM_ID = "CUST-998877"
PROXY = "127.0.0.2"


def crm_gateway(make_gateway, tmp_path: Path, match: str | None = None) -> GatewayProcess:
    """ann's map names the CRM's id, bea's the same id in lower case, carl's
    another customer."""
    authz = {"mode": "static", "agents": {"ann": [CRM_ID], "bea": ["cust-998877"], "carl": ["CUST-111111"]}}
    if match is not None:
        authz["customer_id_match"] = match
    return make_gateway(threshold=1000, route={"customer_id": {"trusted_networks": ["127.0.0.1/32"]}},
                        sections={"http": {"trusted_proxies": [PROXY]}, "agents": {"auth": "trusted-header"},
                                  "authorization": authz, **api_sections(tmp_path)})


def as_agent(url: str, agent: str) -> int:
    return _get_from(url, PROXY, {"X-Forwarded-User": agent})[0]


def clicks(gw: GatewayProcess, count: int) -> list[dict]:
    events = gw.wait_audit(lambda _: len([e for e in gw.audit() if e.get("EventOriginalType") == "click"]) >= count)
    return [e for e in events if e.get("EventOriginalType") == "click"]


def test_a_map_written_with_the_crm_ids_lets_the_right_agents_in_whatever_the_case(make_gateway, tmp_path) -> None:
    gw = crm_gateway(make_gateway, tmp_path)
    data = pdf_bytes(3000)
    url = offload_one(gw, data, X_CustomerId=CRM_ID)
    assert as_agent(url, "ann") == 200
    assert as_agent(url, "bea") == 200
    assert as_agent(url, "carl") == 403
    [key] = stored_objects(gw.objects)
    assert key.startswith(f"uploads/{customer_key(CRM_ID)}/") and key.startswith("uploads/cust-998877/")
    # A download is audited when its last byte has gone: the order of the
    # events from two processes is not the order of the clicks.
    events = sorted(clicks(gw, 3), key=lambda e: e["ActorUsername"])
    assert [(e["ActorUsername"], e["EventResult"]) for e in events] == [
        ("ann", "Success"), ("bea", "Success"), ("carl", "Failure")]
    assert {e["CustomerId"] for e in events} == {CRM_ID}
    assert "not assigned" in events[2]["EventResultDetails"]
    [stored] = [e for e in gw.audit() if e["EventType"] == "FileStored"]
    assert stored["CustomerId"] == CRM_ID and stored["TargetFilePath"] == key
    # The operational log says the same, under its own name.
    assert any(e.get("customer_id") == CRM_ID for e in gw.log_events() if e.get("event") == "link")


def test_exact_matching_makes_the_case_matter(make_gateway, tmp_path) -> None:
    gw = crm_gateway(make_gateway, tmp_path, match="exact")
    url = offload_one(gw, pdf_bytes(3000), X_CustomerId=CRM_ID)
    assert as_agent(url, "ann") == 200
    assert as_agent(url, "bea") == 403
    lower = offload_one(gw, pdf_bytes(3100), X_CustomerId="cust-998877")
    assert as_agent(lower, "bea") == 200 and as_agent(lower, "ann") == 403
    # Both ids differ only in case: one prefix in the store, two customers
    # for authorisation.
    assert {k.split("/")[1] for k in stored_objects(gw.objects)} == {"cust-998877"}
    assert sorted((e["CustomerId"], e["ActorUsername"], e["EventResult"]) for e in clicks(gw, 4)) == [
        (CRM_ID, "ann", "Success"), (CRM_ID, "bea", "Failure"),
        ("cust-998877", "ann", "Failure"), ("cust-998877", "bea", "Success")]


def test_an_api_upload_keeps_the_id_and_refuses_a_hostile_one_with_400(make_gateway, tmp_path) -> None:
    gw = crm_gateway(make_gateway, tmp_path)
    data = pdf_bytes(4000)
    status, _, body = post(gw, data, customer=CRM_ID)
    assert status == 200, body
    assert body["s3Key"].startswith("uploads/cust-998877/")
    assert as_agent(body["downloadUrl"], "bea") == 200 and as_agent(body["downloadUrl"], "carl") == 403
    for hostile, why in ((b"CUST\xe2\x80\xae-998877", b"format character"), (b"x" * 200, b"longer than 128"),
                         (b"CUST\xe9", b"undecodable"), (b"   ", b"Missing X-CustomerId")):
        conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=30)
        conn.putrequest("POST", "/api/v1/upload/attachment")
        for name, value in ((b"Authorization", b"Bearer " + API_KEY.encode()), (b"X-Filename", b"a.pdf"),
                            (b"X-CustomerId", hostile), (b"Content-Length", str(len(data)).encode())):
            conn.putheader(name, value)
        conn.endheaders(data)
        resp = conn.getresponse()
        answer = resp.read()
        conn.close()
        assert resp.status == 400 and why in answer, (hostile, resp.status, answer)
    assert list(stored_objects(gw.objects)) == [body["s3Key"]]


def test_invite_keeps_the_id_and_refuses_a_hostile_one(make_gateway, tmp_path) -> None:
    gw = crm_gateway(make_gateway, tmp_path, match="exact")
    ok = gw.command("invite", "--customer", CRM_ID, "--to", "support@contact.example")
    assert ok.returncode == 0, ok.stderr
    bad = gw.command("invite", "--customer", "CUST\u202e-1", "--to", "support@contact.example")
    assert bad.returncode == 64 and "format character" in bad.stderr
    [record] = [v for k, v in stored_objects(gw.objects).items() if k.startswith("invitations/")]
    assert f'"customer_id": "{CRM_ID}"'.encode() in record


def test_a_hostile_id_in_a_trusted_header_is_refused_and_the_mail_goes_under_the_fallback(make_gateway,
                                                                                          tmp_path) -> None:
    gw = crm_gateway(make_gateway, tmp_path)
    # A bidi override inside the id, as RFC 2047 encoded words: decoded, then refused.
    hostile = "=?UTF-8?Q?CUST=E2=80=AE-998877?="
    url = offload_one(gw, pdf_bytes(3000), X_CustomerId=hostile)
    [key] = stored_objects(gw.objects)
    assert key.startswith("uploads/customer@example.net/")
    [stored] = [e for e in gw.audit() if e["EventType"] == "FileStored"]
    assert stored["CustomerId"] == "customer@example.net"
    [warning] = [e for e in gw.log_events() if e.get("event") == "customer id header refused; fallback applies"]
    assert "format character" in warning["reason"] and warning["queue_id"] == stored["QueueId"]
    [out] = gw.outbox_messages()
    assert b"X-CustomerId" not in out.split(b"\r\n\r\n", 1)[0]  # not believed: not forwarded
    assert as_agent(url, "ann") == 403


def test_a_sender_whose_address_folds_into_another_customers_never_shares_their_files(make_gateway) -> None:
    """Unicode case folding turns the Kelvin sign K (U+212A) into a Latin k
    and the long s (U+017F) into s: mail from ``\\u212aunde@example.net``
    (any client may send it, with SMTPUTF8) was stored under
    ``kunde@example.net``'s prefix, and erasing the lookalike at its
    sender's request deleted the real customer's files."""
    import smtplib

    from tests.messages import message

    gw = make_gateway(threshold=1000)
    real, fake = pdf_bytes(3000), pdf_bytes(3500)
    lookalike = "\u212aunde@example.net"
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as s:
        s.sendmail("kunde@example.net", ["support@contact.example"],
                   message(attachments=[(real, "application/pdf", "real.pdf")]).as_bytes())
        s.sendmail(lookalike, ["support@contact.example"],
                   message(attachments=[(fake, "application/pdf", "fake.pdf")]).as_bytes(), mail_options=["SMTPUTF8"])
    gw.wait_outbox(2)
    objects = stored_objects(gw.objects)
    [real_key] = [k for k, v in objects.items() if v == real]
    [fake_key] = [k for k, v in objects.items() if v == fake]
    assert real_key.startswith("uploads/kunde@example.net/")
    done = gw.command("erase", "--customer", lookalike)
    assert done.returncode == 0, done.stderr
    left = stored_objects(gw.objects)
    assert real_key in left, "the real customer's file was erased with the lookalike's"
    assert fake_key not in left and fake_key.split("/")[1] != "kunde@example.net", fake_key
