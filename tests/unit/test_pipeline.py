"""The pipeline in-process: the .eml fixtures beside this file through every
step, against an in-memory store and a recording reply next hop, in
milliseconds.  The same behaviours are exercised through real SMTP, real
stores and real next hops by the rest of the suite."""
from __future__ import annotations

import asyncio
import email
import json
from email import policy
from pathlib import Path
from typing import Any

import pytest

from gateway import config, logs
from gateway.delivery import Content
from gateway.links.tokens import Keyring
from gateway.mime.source import Source
from gateway.pipeline import STEPS, Pipeline
from gateway.pipeline.job import MessageJob
from gateway.pipeline.services import Services
from gateway.spool.envelope import Envelope
from tests.harness import render_config
from tests.unit.memory import MemoryStore, RecordingHop

EML = Path(__file__).parent / "eml"


class Gateway:
    """A pipeline with its services, as one process of the gateway builds it."""

    def __init__(self, tmp: Path, route: dict[str, Any] | None = None, worker: dict[str, Any] | None = None) -> None:
        r: dict[str, Any] = {"name": "contact", "domains": ["contact.example"], "next_hop": f"maildir:{tmp}/out",
                             "storage": "local", "offload_threshold": 1000,
                             "autoreply": {"sender": "noreply@contact.example", "next_hop": f"maildir:{tmp}/r"}}
        r.update(route or {})
        cfg_path = tmp / "gateway.toml"
        cfg_path.write_text(render_config({
            "gateway": {"hostname": "gw.test", "spool_dir": str(tmp / "spool")},
            "http": {"listen": "127.0.0.1:8025", "base_url": "http://127.0.0.1:8025"},
            "links": {"keys": [{"id": "k1", "file": str(tmp / "link.key"), "create_missing": True}]},
            "storage.local": {"backend": "filesystem", "path": str(tmp / "objects")},
            "worker": worker or {},
            "routes": [r],
        }))
        self.cfg = config.load(cfg_path)
        self.store = MemoryStore("local")
        self.audit_path = tmp / "audit.jsonl"
        self.audit_log = logs.AuditLog(self.audit_path, "gw.test")
        services = Services(self.cfg, {"local": self.store}, Keyring(self.cfg.links.keys, tmp), self.audit_log,
                            tmp / "spool")
        self.replies = RecordingHop()
        services.autoreply_hops["contact"] = self.replies
        self.pipeline = Pipeline(services)
        self.tmp = tmp

    def run(self, name: str) -> tuple[MessageJob, email.message.EmailMessage]:
        """Process the fixture ``name``; the job and the output, parsed."""
        path = self.tmp / name
        path.write_bytes((EML / name).read_bytes())
        envelope = Envelope(queue_id="Q" + name.split(".")[0].upper(), mail_from="customer@example.net",
                            rcpt_tos=["support@contact.example"], route="contact", received_at=0.0,
                            client_addr="192.0.2.1")

        async def go() -> MessageJob:
            with Source(path) as src:
                return await self.pipeline.process(src, path, envelope, self.cfg.routes[0],
                                                   lambda n: path.with_name(f"{path.name}.{n}"))

        try:
            job = asyncio.run(go())
        finally:
            self.audit_log.close()
        out = b"".join(Content(job.path or path, job.segments).chunks())
        assert b"\x00" not in out and out.count(b"\r") == out.count(b"\r\n") == out.count(b"\n")
        return job, email.message_from_bytes(out, policy=policy.default)  # type: ignore[return-value]

    def audit(self) -> list[dict[str, Any]]:
        """The audit events written so far."""
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


def bodies(msg: email.message.EmailMessage) -> str:
    """Every text leaf of the output, decoded, attached messages included."""
    return "\n".join(p.get_content() for p in msg.walk() if p.get_content_maintype() == "text")


def test_the_steps_are_listed_in_one_place_in_order() -> None:
    assert [make.name for make in STEPS] == [
        "verify", "parse", "unpack", "identify", "examine", "disarm", "offload", "quarantine", "uuencoded",
        "rewrite", "notify", "seal"]


def test_a_large_pdf_is_offloaded_with_a_link_in_both_bodies(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    job, out = gw.run("invoice.eml")
    [(key, data)] = gw.store.under("uploads/").items()
    assert key.startswith("uploads/customer@example.net/") and key.endswith("-invoice.pdf")
    assert data.startswith(b"%PDF-")
    assert [o.decision.action.value for o in job.outcomes] == ["offload"]
    text = bodies(out)
    assert text.count("Secure Attachment: invoice.pdf") == 2 and "Please find the invoice" in text
    assert job.changed and out["X-Attachment-Offload"].startswith("offloaded=1")
    assert not gw.replies.delivered


def test_a_program_is_refused_quarantined_audited_and_the_sender_told(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    job, out = gw.run("program.eml")
    [(key, data)] = gw.store.under("quarantine/").items()
    assert data.startswith(b"MZ") and key.endswith("-setup.exe")
    assert not any(p.get_content_type() == "application/octet-stream" for p in out.walk())
    assert 'The attachment "setup.exe" was removed' in bodies(out)
    [event] = [e for e in gw.audit() if e["EventType"] == "FileRefused"]
    assert event["TargetFilePath"] == key and event["Policy"] == "refuse_executables"
    [reply] = gw.replies.delivered
    assert reply.rcpts == ["customer@example.net"] and b"setup.exe" in reply.data
    assert job.result["refused"][0]["quarantine_key"] == key


def test_a_program_inside_a_forwarded_email_is_refused_inside_it(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    job, out = gw.run("forwarded.eml")
    # The attached email's parts are judged one by one: its text kept, its program refused.
    assert [(o.part.path, o.decision.action.value) for o in job.outcomes] == [("2.1.1", "keep"), ("2.1.2", "refuse")]
    assert all(o.part.in_attached_message for o in job.outcomes)
    [data] = gw.store.under("quarantine/").values()
    assert data.startswith(b"MZ")
    attached = [p for p in out.walk() if p.get_content_type() == "message/rfc822"]
    assert len(attached) == 1 and "Forwarded text." in bodies(out)
    assert 'The attachment "report.pdf" was removed' in bodies(out)


def test_a_uuencoded_program_in_the_text_is_cut_out(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    job, out = gw.run("uuencoded.eml")
    text = bodies(out)
    assert "begin 644" not in text and "Here it is:" in text and "Thanks" in text
    assert "[a file was removed here by the attachment gateway]" in text
    [data] = gw.store.under("quarantine/").values()
    assert data.startswith(b"MZ")
    assert job.refused[0]["part"] == "1.uu1"


def test_parts_beyond_the_nesting_bound_are_quarantined_whole(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, worker={"max_mime_depth": 3})
    job, out = gw.run("deep.eml")
    [outcome] = job.outcomes
    assert outcome.decision.policy == "unexamined" and "nesting deeper than 3" in outcome.decision.reason
    [data] = gw.store.under("quarantine/").values()
    assert b"setup.exe" in data  # the raw entity, headers and all
    assert "Readable text." in bodies(out) and "could not be examined" in bodies(out)


def test_a_message_without_files_is_forwarded_unchanged_behind_the_trace(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    job, out = gw.run("plain.eml")
    assert not job.changed and not job.outcomes and not gw.store.objects
    assert job.segments[1:] == [(0, (EML / "plain.eml").stat().st_size)]
    assert out["Received"].startswith("from unknown")


@pytest.mark.parametrize("budget", [1e-9])
def test_past_the_cpu_budget_every_file_is_unexamined(tmp_path: Path, budget: float) -> None:
    gw = Gateway(tmp_path, worker={"max_cpu_seconds": budget})
    job, _ = gw.run("invoice.eml")
    assert [o.decision.policy for o in job.outcomes] == ["unexamined"]
    assert "ran out" in job.outcomes[0].decision.reason and not gw.store.under("uploads/")


@pytest.mark.parametrize("handed_back", [b"MZ\x90\x00\x03" + b"\x00" * 200, b"plain text, not a PDF\r\n"])
def test_what_a_disarm_child_hands_back_is_judged_by_its_own_bytes(tmp_path: Path, handed_back: bytes) -> None:
    # A child taken over by the file it read could answer "disarmed" with
    # any bytes: the step puts nothing in the message that is not what the
    # answer says it is.
    import policies
    from gateway import disarm
    from gateway.pipeline.disarm import Disarm
    from gateway.pipeline.job import Budget
    from tests import active_documents as docs

    g = Gateway(tmp_path)
    path = tmp_path / "invoice.eml"
    path.write_bytes((EML / "invoice.eml").read_bytes())
    envelope = Envelope(queue_id="QDISARM", mail_from="customer@example.net", rcpt_tos=["support@contact.example"],
                        route="contact", received_at=0.0, client_addr="192.0.2.1")

    async def go() -> list[str]:
        with Source(path) as src:
            job = MessageJob(envelope=envelope, route=g.cfg.routes[0], original=path, log=logs.get("test"),
                             budget=Budget(g.cfg.worker.max_cpu_seconds),
                             work=lambda n: path.with_name(f"{path.name}.{n}"), src=src, authenticate=False)
            step = next(s for s in g.pipeline.steps if isinstance(s, Disarm))
            for s in g.pipeline.steps[:g.pipeline.steps.index(step)]:
                enabled = getattr(s, "enabled", None)
                if enabled is None or enabled(job):
                    await s.run(job)
            [pdf] = [o for o in job.outcomes if o.facts.detected_type == disarm.PDF]
            await step._apply(job, pdf, "disarm", disarm.DisarmResult("disarmed", data=handed_back,
                                                                      removed=("scripts",)))
            refused = pdf.decision.action is policies.Action.REFUSE
            reason = pdf.decision.reason
            # The same part answered honestly: a PDF goes on to be judged as one.
            await step._apply(job, pdf, "disarm", disarm.DisarmResult("disarmed", data=docs.clean_pdf(),
                                                                      removed=("scripts",)))
            return [str(refused), reason, pdf.decision.reason]

    try:
        refused, reason, honest = asyncio.run(go())
    finally:
        g.audit_log.close()
    assert refused == "True" and "the disarmed file is" in reason, reason
    assert "the disarmed file is" not in honest, honest
