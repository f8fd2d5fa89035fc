"""Benchmark: the gateway beside smtp-sink (floor), aiosmtpd (250-only), plain Postfix
and Postfix with MIMEDefang's attachment replacement.

Run from the repository root, as root (Postfix needs it)::

    python bench/run.py            # full run (prints its run time at the end)
    python bench/run.py --quick    # smoke run, about 3 minutes on a busy 2-CPU machine

Figures, per candidate (medians over interleaved rounds):

- 5 KB messages/s with smtp-source (20 parallel sessions, one message per
  connection; 5 rounds of 1500 messages, --quick 2 of 300): *accepted*
  (smtp-source finished, every message got its 250) and
  *end-to-end* (every message arrived at the downstream smtp-sink; same as
  accepted for the floor and aiosmtpd, which are end points), and the CPU time
  (user + system) of the candidate's processes per message.
- one ~25 MiB MIME message (18 MiB base64 PDF-like attachment) sent with smtplib:
  end-to-end seconds from connect until fully arrived at the sink (relays) or
  until the 250 (end points), MB/s (10^6 bytes per second), ingress MB/s (bytes
  over the time until the 250), and the peak resident memory (VmHWM, reset before
  each send) of the receiving process.
- one ~123 MB message (90 MB decoded attachment): the memory it *adds* to the
  receiving processes (VmHWM after minus VmRSS before, HWM reset before the send).
- agent link clicks (gateway only): wrk against one link of a 64 KiB attachment
  on the filesystem backend, paced at 500/s, saturating, and with 2 connections.

- the realistic mix (``bench/mix.py``: 1,000 seeded messages, --quick 100, over 20
  sessions: text+HTML replies, some with a PDF/PNG/DOCX, a few above the offload
  threshold), whole and per class; its replies alone (msgs/s, CPU per message);
  one 5 MB message in 200 attachments; resting memory of every candidate (all its
  processes summed) fresh, under the mixed load and after.

Storage (``bench/storage.py``; ``--only storage`` alone): upload throughput of
one 64 MiB object to S3 on Ceph's radosgw, beside writing the same bytes to a
local file, interleaved rounds in the same run, after the SMTP candidates stop.

Prints a table with the ratio gateway/baseline, the targets of issues 3 and 18
with PASS or MISS, its own run time, and writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from bench.candidates import (  # noqa: E402
    AiosmtpdBaseline,
    Candidate,
    CandidateUnavailable,
    FloorSink,
    Gateway,
    PlainPostfix,
    PostfixMimedefang,
    default_python,
    find_gateway_executable,
)
from bench.clicks import (  # noqa: E402
    TARGET_P99_MS,
    TARGET_RATE,
    WrkRun,
    fetch_once,
    find_link,
    pin_apart,
    run_wrk,
    wrk_missing,
)
from bench.message import (  # noqa: E402
    CLICK_ATTACHMENT_BYTES,
    CLICK_RECIPIENT,
    GIGABYTE_ATTACHMENT_BYTES,
    MEMORY_ATTACHMENT_BYTES,
    RECIPIENT,
    SENDER,
    LargeMessage,
    build_large_message,
)
from bench.mix import MANY_PARTS, MixMessage, build_many_attachments, build_mix, send_mix, summary_by_class  # noqa: E402
from bench.procs import (  # noqa: E402
    MemorySampler,
    cpu_seconds,
    hwm_by_pid,
    reset_hwm,
    resting_memory,
    vm_hwm_kib,
    vm_rss_kib,
)
from bench.storage import format_storage, run_storage  # noqa: E402
from tests.servers import SinkMessage  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
RESULTS = REPO / "bench" / "results" / "latest.json"
BASELINES = ("floor", "aiosmtpd", "postfix", "mimedefang")
#: Candidates the 100 MB memory figure is measured for (the floor stores nothing: skipped).
MEMORY_CANDIDATES = ("aiosmtpd", "postfix", "mimedefang", "gateway")
#: --quick keeps the minute: the slow senders of 123 MB (aiosmtpd, MIMEDefang) are left out.
QUICK_MEMORY_CANDIDATES = ("postfix", "gateway")
#: Issue 3's memory target: the 100 MB message adds at most 64 MB (10^6 bytes) to the gateway's peak.
MEMORY_TARGET_BYTES = 64_000_000
#: The realistic mix and the many-attachments message go to the relays; the
#: replies alone also to aiosmtpd (its CPU per message is the CPU target).
MIX_CANDIDATES = ("postfix", "mimedefang", "gateway")
REPLY_CANDIDATES = ("aiosmtpd", "postfix", "mimedefang", "gateway")
#: Issue 18's resting memory target: each process under 100 MiB after a sustained mixed load.
RESTING_TARGET_KIB = 100 * 1024


class BenchError(RuntimeError):
    """One measurement of one candidate failed (the candidate is dropped, the bench goes on)."""


@dataclass
class Settings:
    """What one bench run does."""

    messages: int
    sessions: int
    message_size: int
    rounds: int
    large_rounds: int
    step_timeout: float
    quick: bool
    memory_rounds: int = 1
    click_seconds: int = 10
    memory_candidates: tuple[str, ...] = MEMORY_CANDIDATES
    storage_size: int = 64 << 20
    storage_rounds: int = 5
    #: The realistic mix (bench/mix.py): messages a round, rounds, the seed.
    mix_messages: int = 1000
    mix_rounds: int = 2
    mix_seed: int = 18
    #: The many-attachments message (5 MB in 200 attachments): rounds.
    many_rounds: int = 3
    #: The 1 GB message (1,000,000,000 bytes decoded), to the gateway only: rounds.
    gigabyte_rounds: int = 1


FULL = Settings(
    messages=1500, sessions=20, message_size=5120, rounds=5, large_rounds=3, step_timeout=180, quick=False,
    memory_rounds=2, click_seconds=10, storage_size=64 << 20, storage_rounds=5,
    mix_messages=1000, mix_rounds=2, many_rounds=3, gigabyte_rounds=1,
)  # fmt: skip
QUICK = Settings(
    messages=300, sessions=20, message_size=5120, rounds=2, large_rounds=1, step_timeout=30, quick=True,
    memory_rounds=1, click_seconds=2, memory_candidates=QUICK_MEMORY_CANDIDATES,
    storage_size=32 << 20, storage_rounds=1, mix_messages=100, mix_rounds=1, many_rounds=1, gigabyte_rounds=0,
)  # fmt: skip


# --------------------------------------------------------------------- machine
def machine_info(workdir: Path) -> dict[str, Any]:
    """nproc, CPU model, kernel, memory, versions and the temp filesystem."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    postfix_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        postfix_version = subprocess.run(
            ["/usr/sbin/postconf", "-h", "-d", "mail_version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return {
        **_code_version(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "mem_total_mib": mem_kib // 1024,
        "python": platform.python_version(),
        "postfix": postfix_version,
        "temp_dir": str(workdir),
        "temp_fs": _fs_type(workdir),
        "loadavg_before": _loadavg(),
    }


def _code_version() -> dict[str, Any]:
    """The commit the gateway runs from and the files of gateway/ and policies/ changed since
    (read-only git: ``--no-optional-locks`` so not even the index is refreshed)."""
    info: dict[str, Any] = {"commit": "", "uncommitted": []}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "--no-optional-locks", "-C", str(REPO)]
        info["commit"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "gateway", "policies"], capture_output=True, text=True, timeout=10
        ).stdout
        info["uncommitted"] = [line[3:] for line in status.splitlines() if line.strip()]
    return info


def _loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def _fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    best, fstype = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    return fstype


# ---------------------------------------------------------------- measurements
def run_throughput(c: Candidate, s: Settings, messages: int) -> dict[str, float]:
    """Send ``messages`` 5 KB messages with smtp-source; time acceptance and arrival."""
    sink = c.arrival_sink
    base = sink.received_count() if sink else 0
    argv = [
        SMTP_SOURCE, "-s", str(s.sessions), "-m", str(messages), "-l", str(s.message_size),
        "-M", "bench.localhost", "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{c.smtp_port}",
    ]  # fmt: skip
    cpu0 = cpu_seconds(c.cpu_pids())
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        accepted: float | None = None
        arrived: float | None = None if sink else -1.0
        try:
            while accepted is None or arrived is None:
                now = time.monotonic()
                if accepted is None and proc.poll() is not None:
                    accepted = now - t0
                    if proc.returncode != 0:
                        err.seek(0)
                        raise BenchError(
                            f"smtp-source exit {proc.returncode}: {err.read().decode(errors='replace')[-500:]}"
                        )
                if arrived is None and sink is not None and sink.received_count() >= base + messages:
                    arrived = now - t0
                if now - t0 > s.step_timeout:
                    got = (sink.received_count() - base) if sink else "n/a"
                    raise BenchError(
                        f"timeout after {s.step_timeout:.0f}s: smtp-source "
                        f"{'done' if accepted is not None else 'still running'}, {got}/{messages} arrived"
                    )
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    e2e = arrived if arrived is not None and arrived >= 0 else accepted
    cpu = cpu_seconds(c.cpu_pids()) - cpu0
    if sink is not None and sink.dump_dir is not None:
        _purge_dumps(c)
    return {
        "messages": messages,
        "accepted_s": accepted,
        "e2e_s": e2e,
        "accepted_msgs_per_s": messages / accepted,
        "e2e_msgs_per_s": messages / e2e,
        "cpu_s": cpu,
        "cpu_ms_per_msg": 1000 * cpu / messages,
    }


def _purge_dumps(c: Candidate) -> None:
    """Delete the sink's finished dump files (keeps the dump directory small between rounds)."""
    if c.arrival_sink is not None and c.arrival_sink.dump_dir is not None:
        c.arrival_sink.purge()


def send_large(
    port: int, data: bytes, timeout: float, recipient: str = RECIPIENT
) -> tuple[float, float, float]:
    """Send ``data`` (CRLF, dot-stuffed) as one message; return (t0 monotonic, t0 wall, 250 monotonic)."""
    t0, wall0 = time.monotonic(), time.time()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.localhost", timeout=timeout) as client:
        client.ehlo()
        options = [f"SIZE={len(data)}"] if client.has_extn("size") else []
        code, reply = client.mail(SENDER, options)
        if code != 250:
            raise BenchError(f"MAIL FROM refused: {code} {reply!r}")
        code, reply = client.rcpt(recipient)
        if code not in (250, 251):
            raise BenchError(f"RCPT TO refused: {code} {reply!r}")
        code, reply = client.docmd("DATA")
        if code != 354:
            raise BenchError(f"DATA refused: {code} {reply!r}")
        assert client.sock is not None
        client.sock.sendall(data)  # smtplib's own data() would regex 25 MB first: skip that
        client.sock.sendall(b".\r\n")
        code, reply = client.getreply()
        t_accept = time.monotonic()
        if code != 250:
            raise BenchError(f"message refused after DATA: {code} {reply!r}")
    return t0, wall0, t_accept


def run_large(c: Candidate, msg: LargeMessage, data: bytes, body_tail: bytes, s: Settings) -> dict[str, Any]:
    """Send the large message once; time it, check what arrived, read peak memory."""
    sink = c.arrival_sink
    _purge_dumps(c)
    base = sink.received_count() if sink else 0
    hwm_reset = reset_hwm(c.receiving_pids())
    t0, wall0, t_accept = send_large(c.smtp_port, data, s.step_timeout)
    result: dict[str, Any] = {
        "accept_s": t_accept - t0,
        "ingress_mb_per_s": msg.size / (t_accept - t0) / 1e6,
        "hwm_reset": hwm_reset,
    }
    e2e = t_accept - t0
    if sink is not None:
        try:
            seen = sink.wait_for_count(base + 1, timeout=s.step_timeout)
        except (TimeoutError, RuntimeError) as exc:
            raise BenchError(f"large message did not arrive at the sink: {exc}") from exc
        e2e = seen - t0
        if sink.dump_dir is not None:
            arrived = sink.completed_dump_paths()
            if arrived:
                path = max(arrived, key=lambda p: p.stat().st_size)
                st = path.stat()
                # The dump file's mtime is when its last byte was written: more exact
                # than the moment the polling loop noticed.
                by_mtime = st.st_mtime - wall0
                if 0 < by_mtime < e2e:
                    e2e = by_mtime
                content = path.read_bytes()
                result["arrived_bytes"] = st.st_size
                result["attachment_intact"] = body_tail in content
    peak, detail = c.peak_memory_kib()
    result.update(
        {
            "e2e_s": e2e,
            "mb_per_s": msg.size / e2e / 1e6,
            "peak_rss_kib": peak,
            "rss_detail_kib": detail,
        }
    )
    if isinstance(c, PlainPostfix):
        result["postfix_all_processes_hwm_kib"] = sum(kib for _, kib in hwm_by_pid(c.all_pids()).values())
    return result


def run_memory(c: Candidate, msg: LargeMessage, data: bytes, timeout: float) -> dict[str, Any]:
    """Send the ~123 MB message once; the memory it added to each receiving process.

    Before the send: VmRSS of every process, then VmHWM reset to it (clear_refs = 5).
    After the 250 (end points) or the arrival at the sink (relays: the message has
    been processed and forwarded): VmHWM. Added = VmHWM after - VmRSS before; a
    process that did not exist before (Postfix forking a fresh smtpd) counts whole.
    """
    sink = c.arrival_sink
    _purge_dumps(c)
    base = sink.received_count() if sink else 0
    before_roles = c.memory_pids()
    rss_before = {pid: vm_rss_kib(pid) for pid in before_roles}
    hwm_reset = reset_hwm(before_roles)
    t0, _wall0, t_accept = send_large(c.smtp_port, data, timeout)
    e2e = t_accept - t0
    if sink is not None:
        try:
            e2e = sink.wait_for_count(base + 1, timeout=timeout) - t0
        except (TimeoutError, RuntimeError) as exc:
            raise BenchError(f"100 MB message did not arrive at the sink: {exc}") from exc
    roles = {**before_roles, **c.memory_pids()}
    added: dict[int, tuple[str, int]] = {}
    detail: dict[str, dict[str, Any]] = {}
    for pid, role in roles.items():
        hwm = vm_hwm_kib(pid)
        if hwm is None:
            continue
        before = rss_before.get(pid)
        kib = hwm - before if before is not None else hwm
        added[pid] = (role, max(kib, 0))
        if kib > 0 or before is None:  # idle processes (most of Postfix's) are left out of the detail
            detail[f"{role}[{pid}]"] = {"rss_before_kib": before, "hwm_after_kib": hwm, "added_kib": kib}
    if sink is not None:
        _purge_dumps(c)
    figure = c.added_memory_figure(added)
    return {
        "accept_s": t_accept - t0,
        "e2e_s": e2e,
        "hwm_reset": hwm_reset,
        "added_kib": figure,
        "added_sum_kib": sum(kib for _, kib in added.values()),
        "processes_measured": len(added),
        "processes": detail,
    }


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)


def _arrivals(c: Candidate, wall0: float, mono0: float) -> tuple[dict[str, float], int]:
    """``{Message-ID: monotonic arrival}`` from the sink's dump files (a
    file's mtime is when its last byte was written), and how many arrived
    more than once."""
    sink = c.arrival_sink
    assert sink is not None
    seen: dict[str, float] = {}
    duplicates = 0
    for path in sink.completed_dump_paths():
        try:
            with open(path, "rb") as fh:
                head = fh.read(64 << 10)
            mtime = path.stat().st_mtime
        except OSError:
            continue
        m = _MESSAGE_ID.search(head)
        if m is None:
            continue
        key = m.group(1).decode("ascii", "replace")
        if key in seen:
            duplicates += 1
        seen[key] = mono0 + (mtime - wall0)
    return seen, duplicates


def run_mix(c: Candidate, messages: list[MixMessage], s: Settings) -> dict[str, Any]:
    """Send ``messages`` over ``s.sessions`` connections; time acceptance and
    arrival, per message and class; CPU of all the candidate's processes;
    its memory sampled meanwhile.  Every message must arrive, once."""
    sink = c.arrival_sink
    _purge_dumps(c)
    base = sink.received_count() if sink else 0
    timeout = max(s.step_timeout, 600.0)
    cpu0 = cpu_seconds(c.cpu_pids())
    wall0, mono0 = time.time(), time.monotonic()
    with MemorySampler(c.all_pids) as sampler:
        sent = send_mix(c.smtp_port, messages, s.sessions, timeout)
        if sent.refused:
            raise BenchError(f"{len(sent.refused)} of {len(messages)} refused, the first: {sent.refused[0]}")
        accepted = sent.finished - sent.started
        e2e = accepted
        arrivals: dict[str, float] | None = None
        duplicates = 0
        if sink is not None:
            try:
                seen = sink.wait_for_count(base + len(sent.sent), timeout=timeout)
            except (TimeoutError, RuntimeError) as exc:
                got = sink.received_count() - base
                raise BenchError(f"{got} of {len(sent.sent)} arrived at the sink: {exc}") from exc
            e2e = seen - sent.started
            if sink.dump_dir is not None:
                arrivals, duplicates = _arrivals(c, wall0, mono0)
                lost = [m.message_id for m in messages if m.message_id not in arrivals]
                if lost:
                    raise BenchError(f"{len(lost)} message(s) did not arrive, e.g. {lost[0]}")
                e2e = min(e2e, max(arrivals.values()) - sent.started)
    cpu = cpu_seconds(c.cpu_pids()) - cpu0
    _purge_dumps(c)
    return {
        "messages": len(messages),
        "bytes": sum(len(m.wire) for m in messages),
        "accepted_s": accepted,
        "e2e_s": e2e,
        "e2e_msgs_per_s": len(messages) / e2e,
        "cpu_s": cpu,
        "cpu_ms_per_msg": 1000 * cpu / len(messages),
        "duplicates": duplicates,
        "by_class": summary_by_class(sent, arrivals, messages),
        "rss_peak_sum_kib": sampler.peak,
        "rss_peak_process_kib": sampler.peak_process,
    }


def run_many(c: Candidate, data: bytes, s: Settings) -> dict[str, Any]:
    """Send the many-attachments message once; seconds until the 250 and
    until it has arrived whole at the sink."""
    sink = c.arrival_sink
    _purge_dumps(c)
    base = sink.received_count() if sink else 0
    cpu0 = cpu_seconds(c.cpu_pids())
    t0, wall0, t_accept = send_large(c.smtp_port, data, s.step_timeout)
    e2e = t_accept - t0
    result: dict[str, Any] = {"accept_s": e2e}
    if sink is not None:
        try:
            e2e = sink.wait_for_count(base + 1, timeout=s.step_timeout) - t0
        except (TimeoutError, RuntimeError) as exc:
            raise BenchError(f"the many-attachments message did not arrive: {exc}") from exc
        arrived = sink.completed_dump_paths() if sink.dump_dir is not None else []
        if arrived:
            path = max(arrived, key=lambda p: p.stat().st_size)
            by_mtime = path.stat().st_mtime - wall0
            if 0 < by_mtime < e2e:
                e2e = by_mtime
            parts = path.read_bytes().lower().count(b"content-disposition: attachment")
            result["attachments_arrived"] = parts
            if parts < MANY_PARTS:
                raise BenchError(f"{parts} of {MANY_PARTS} attachments arrived")
    result["e2e_s"] = e2e
    result["cpu_s"] = cpu_seconds(c.cpu_pids()) - cpu0
    _purge_dumps(c)
    return result


def _link_from_sink(gw: Gateway, timeout: float) -> str:
    """The link in the newest message at the gateway's sink (decoded text parts)."""
    sink = gw.arrival_sink
    assert sink is not None and sink.dump_dir is not None
    paths = sink.completed_dump_paths()
    if not paths:
        raise BenchError("the click message did not arrive at the sink")
    message = SinkMessage.from_file(paths[-1]).email()
    for part in message.walk():
        if part.get_content_maintype() == "text":
            try:
                text = part.get_content()
            except (LookupError, ValueError):
                continue
            link = find_link(text)
            if link:
                return link
    raise BenchError(f"no http://127.0.0.1:PORT/a/TOKEN link in the message at the sink ({paths[-1].name})")


def run_clicks(gw: Gateway, s: Settings, workdir: Path) -> dict[str, Any]:
    """Send one message with a 64 KiB attachment to the clicks route; load its link with wrk."""
    why = wrk_missing()
    if why is not None:
        return {"status": "not run", "reason": why}
    sink = gw.arrival_sink
    assert sink is not None
    _purge_dumps(gw)
    base = sink.received_count()
    cmsg = build_large_message(
        workdir, attachment_bytes=CLICK_ATTACHMENT_BYTES, filename="click.eml", recipient=CLICK_RECIPIENT
    )
    send_large(gw.smtp_port, cmsg.path.read_bytes(), s.step_timeout, recipient=CLICK_RECIPIENT)
    try:
        sink.wait_for_count(base + 1, timeout=s.step_timeout)
    except (TimeoutError, RuntimeError) as exc:
        raise BenchError(f"click message did not arrive at the sink: {exc}") from exc
    link = _link_from_sink(gw, s.step_timeout)
    status, size = fetch_once(link)
    if status != 200 or size != cmsg.attachment_size:
        raise BenchError(f"GET {link}: {status}, {size} bytes (expected 200, {cmsg.attachment_size})")
    result: dict[str, Any] = {
        "status": "ok",
        "link": link,
        "object_bytes": size,
        "runs": [],
    }
    runs = [
        WrkRun("paced", threads=2, connections=20, rate=TARGET_RATE),
        WrkRun("saturating", threads=2, connections=20, rate=0),
        WrkRun("few-connections", threads=1, connections=2, rate=0),
    ]
    with pin_apart(gw.all_pids()) as pin:
        result["wrk_cpus"] = pin.load_cpus
        result["gateway_cpus"] = sorted(pin.server_cpus)
        for run in runs:
            r = run_wrk(link, run, s.click_seconds, workdir, timeout=s.click_seconds + 60, cpus=pin.load_cpus)
            result["runs"].append(r)
            errs = sum(r["errors"].values()) + r["non_2xx_3xx"]
            print(
                f"[bench] clicks {run.name:16s} {run.threads}t x {run.connections:2d}c"
                f"{f' @ {run.rate}/s' if run.rate else '         '}: {r['requests_per_s']:7.0f} req/s  "
                f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  errors {errs}",
                flush=True,
            )
    return result


# ------------------------------------------------------------------- summary
def _median(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(rows: dict[str, dict[str, Any]]) -> None:
    """Add medians (and the max peak memory) to every candidate's result, in place."""
    for row in rows.values():
        tp = row.get("throughput_rounds", [])
        lg = row.get("large_rounds", [])
        peaks = [r["peak_rss_kib"] for r in lg if r.get("peak_rss_kib")]
        added = [r["added_kib"] for r in row.get("memory_rounds", []) if r.get("added_kib") is not None]
        giga = [r["added_kib"] for r in row.get("gigabyte_rounds", []) if r.get("added_kib") is not None]
        row["spread"] = {
            key: [min(r[key] for r in rounds), max(r[key] for r in rounds)]
            for key, rounds in (
                ("accepted_msgs_per_s", tp),
                ("e2e_msgs_per_s", tp),
                ("e2e_s", lg),
            )
            if rounds
        }
        row["summary"] = {
            "accepted_msgs_per_s": _median(tp, "accepted_msgs_per_s"),
            "e2e_msgs_per_s": _median(tp, "e2e_msgs_per_s"),
            "cpu_ms_per_msg": _median(tp, "cpu_ms_per_msg"),
            "large_accept_s": _median(lg, "accept_s"),
            "large_ingress_mb_per_s": _median(lg, "ingress_mb_per_s"),
            "large_e2e_s": _median(lg, "e2e_s"),
            "large_mb_per_s": _median(lg, "mb_per_s"),
            "large_peak_rss_mib": max(peaks) / 1024 if peaks else None,
            "memory_added_mib": max(added) / 1024 if added else None,
            "gigabyte_added_mib": max(giga) / 1024 if giga else None,
        }
        mix, replies, many = row.get("mix_rounds", []), row.get("reply_rounds", []), row.get("many_rounds", [])
        summary = row["summary"]
        summary.update({
            "mix_msgs_per_s": _median(mix, "e2e_msgs_per_s"),
            "mix_cpu_ms_per_msg": _median(mix, "cpu_ms_per_msg"),
            "reply_msgs_per_s": _median(replies, "e2e_msgs_per_s"),
            "reply_cpu_ms_per_msg": _median(replies, "cpu_ms_per_msg"),
            "many_e2e_s": _median(many, "e2e_s"),
        })
        for kind in ("reply", "attachment", "large"):
            for key in ("e2e_p50_s", "accept_p50_s"):
                values = [r["by_class"][kind][key] for r in mix if key in r.get("by_class", {}).get(kind, {})]
                summary[f"mix_{kind}_{key}"] = statistics.median(values) if values else None
        if mix:
            row["spread"]["mix_msgs_per_s"] = [min(r["e2e_msgs_per_s"] for r in mix),
                                               max(r["e2e_msgs_per_s"] for r in mix)]
        resting = row.get("resting", {})
        loaded = [r["rss_peak_sum_kib"] for r in (*mix, *replies) if r.get("rss_peak_sum_kib")]
        loaded_process = [r["rss_peak_process_kib"] for r in (*mix, *replies) if r.get("rss_peak_process_kib")]
        summary.update({
            "rest_fresh_mib": _kib_mib(resting.get("fresh", {}).get("rss_sum_kib")),
            "rest_loaded_mib": max(loaded) / 1024 if loaded else None,
            "rest_after_mib": _kib_mib(resting.get("after", {}).get("rss_sum_kib")),
            "rest_after_pss_mib": _kib_mib(resting.get("after", {}).get("pss_sum_kib")),
            "rest_after_largest_mib": _kib_mib(resting.get("after", {}).get("largest_process_kib")),
            "rest_loaded_largest_mib": max(loaded_process) / 1024 if loaded_process else None,
        })


def _kib_mib(kib: int | None) -> float | None:
    return kib / 1024 if kib else None


FIGURES: list[tuple[str, str, str]] = [
    ("accepted_msgs_per_s", "5 KB msgs/s accepted", "{:.0f}"),
    ("e2e_msgs_per_s", "5 KB msgs/s end-to-end", "{:.0f}"),
    ("cpu_ms_per_msg", "5 KB: CPU ms per message", "{:.2f}"),
    ("large_accept_s", "25 MiB: s until 250", "{:.3f}"),
    ("large_ingress_mb_per_s", "25 MiB: MB/s until 250 (ingress)", "{:.1f}"),
    ("large_e2e_s", "25 MiB: s end-to-end", "{:.3f}"),
    ("large_mb_per_s", "25 MiB: MB/s end-to-end", "{:.1f}"),
    ("large_peak_rss_mib", "25 MiB: peak RSS MiB (all processes)", "{:.1f}"),
    ("memory_added_mib", "100 MB: added peak RSS MiB (all processes)", "{:.1f}"),
    ("mix_msgs_per_s", "mix: msgs/s end-to-end", "{:.1f}"),
    ("mix_cpu_ms_per_msg", "mix: CPU ms per message", "{:.2f}"),
    ("mix_reply_e2e_p50_s", "mix: reply s end-to-end (p50)", "{:.3f}"),
    ("mix_attachment_e2e_p50_s", "mix: 0.5-5 MB attachment s e2e (p50)", "{:.3f}"),
    ("mix_large_e2e_p50_s", "mix: 12-30 MB attachment s e2e (p50)", "{:.3f}"),
    ("reply_msgs_per_s", "replies alone: msgs/s end-to-end", "{:.1f}"),
    ("reply_cpu_ms_per_msg", "replies alone: CPU ms per message", "{:.2f}"),
    ("many_e2e_s", f"{MANY_PARTS} attachments (5 MB): s end-to-end", "{:.3f}"),
    ("rest_fresh_mib", "resting RSS MiB, fresh (all processes)", "{:.1f}"),
    ("rest_loaded_mib", "RSS MiB under the mixed load (peak)", "{:.1f}"),
    ("rest_after_mib", "resting RSS MiB after the load", "{:.1f}"),
    ("rest_after_pss_mib", "resting PSS MiB after the load", "{:.1f}"),
    ("rest_after_largest_mib", "after: largest single process MiB", "{:.1f}"),
]


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """The results table: one line a figure, baselines, gateway, gateway/baseline ratios."""
    names = [n for n in (*BASELINES, "gateway") if n in rows]
    header = ["figure", *names] + [f"gw/{b}" for b in BASELINES if b in rows]
    lines: list[list[str]] = [header]
    for key, label, fmt in FIGURES:
        line = [label]
        for n in names:
            row = rows[n]
            value = row.get("summary", {}).get(key)
            line.append(fmt.format(value) if value is not None else (row["status"] if row["status"] != "ok" else "-"))
        gw = rows.get("gateway", {}).get("summary", {}).get(key)
        for b in BASELINES:
            if b not in rows:
                continue
            base = rows[b].get("summary", {}).get(key)
            # A ratio to a baseline of (almost) nothing says nothing (Postfix adds ~0 MiB).
            meaningful = base is not None and base > (0.5 if key == "memory_added_mib" else 0)
            line.append(f"{gw / base:.2f}x" if gw is not None and meaningful else "-")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line))
        for line in lines
    ]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def format_clicks(clicks: dict[str, Any]) -> str:
    """The link-click table (gateway only: no baseline serves these links)."""
    if clicks.get("status") != "ok":
        return f"agent link clicks: {clicks.get('status', 'not run')}: {clicks.get('reason', '')}"
    lines = [
        f"agent link clicks: wrk --latency on one link, {clicks['object_bytes']} B object (filesystem backend)",
        f"  {'run':16s} {'threads x conns':>15s} {'target/s':>8s} {'req/s':>7s} {'p50 ms':>7s} "
        f"{'p90 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} {'errors':>6s}",
    ]
    for r in clicks["runs"]:
        errs = sum(r["errors"].values()) + r["non_2xx_3xx"]
        shape = f"{r['threads']} x {r['connections']}"
        lines.append(
            f"  {r['run']:16s} {shape:>15s} {r['target_rate'] or '-':>8} "
            f"{r['requests_per_s']:7.0f} {r['p50_ms']:7.2f} {r['p90_ms']:7.2f} {r['p99_ms']:7.2f} "
            f"{r['max_ms']:7.1f} {errs:6d}"
        )
    return "\n".join(lines)


def _fig(rows: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
    return rows.get(name, {}).get("summary", {}).get(key)


def evaluate_targets(rows: dict[str, dict[str, Any]], clicks: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 3's targets, each PASS, MISS or NOT RUN, with the figures it compared."""
    out: list[dict[str, Any]] = []

    def target(name: str, ok: bool | None, detail: str) -> None:
        result = "NOT RUN" if ok is None else ("PASS" if ok else "MISS")
        out.append({"target": name, "result": result, "detail": detail})

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "-"

    def f(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    gw, pf = _fig(rows, "gateway", "large_mb_per_s"), _fig(rows, "postfix", "large_mb_per_s")
    target(
        "25 MiB end-to-end MB/s >= plain Postfix",
        None if gw is None or pf is None else gw >= pf,
        f"gateway {f(gw, '.1f')} MB/s vs Postfix {f(pf, '.1f')} MB/s ({ratio(gw, pf)})",
    )
    gi, fl = _fig(rows, "gateway", "large_ingress_mb_per_s"), _fig(rows, "floor", "large_ingress_mb_per_s")
    target(
        "25 MiB ingress (until 250) MB/s >= 0.5x smtp-sink",
        None if gi is None or fl is None else gi >= 0.5 * fl,
        f"gateway {f(gi, '.1f')} MB/s vs smtp-sink {f(fl, '.1f')} MB/s ({ratio(gi, fl)}; needs 0.50x)",
    )
    mem = _fig(rows, "gateway", "memory_added_mib")
    target(
        "100 MB message adds <= 64 MB to the gateway's peak RSS",
        None if mem is None else mem * 2**20 <= MEMORY_TARGET_BYTES,
        f"gateway +{f(mem, '.1f')} MiB (+{f(None if mem is None else mem * 2**20 / 1e6, '.1f')} MB), "
        "all its processes summed; limit 64 MB",
    )
    gs, ps = _fig(rows, "gateway", "e2e_msgs_per_s"), _fig(rows, "postfix", "e2e_msgs_per_s")
    target(
        "5 KB msgs/s end-to-end >= plain Postfix",
        None if gs is None or ps is None else gs >= ps,
        f"gateway {f(gs, '.0f')}/s vs Postfix {f(ps, '.0f')}/s ({ratio(gs, ps)})",
    )
    md = _fig(rows, "mimedefang", "e2e_msgs_per_s")
    md_why = rows.get("mimedefang", {}).get("reason", "")
    target(
        "5 KB msgs/s end-to-end > Postfix+MIMEDefang",
        None if gs is None or md is None else gs > md,
        f"gateway {f(gs, '.0f')}/s vs Postfix+MIMEDefang {f(md, '.0f')}/s ({ratio(gs, md)})"
        if md is not None
        else f"Postfix+MIMEDefang not measured: {md_why.splitlines()[0] if md_why else 'not selected'}",
    )
    paced = next((r for r in clicks.get("runs", []) if r["run"] == "paced"), None)
    if paced is None:
        target(f"link clicks p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE}/s", None, clicks.get("reason", "not run"))
    else:
        errs = sum(paced["errors"].values()) + paced["non_2xx_3xx"]
        reached = paced["requests_per_s"] >= 0.95 * TARGET_RATE
        target(
            f"link clicks p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE}/s",
            reached and paced["p99_ms"] < TARGET_P99_MS and errs == 0,
            f"paced run: {paced['requests_per_s']:.0f} req/s achieved (needs >= {0.95 * TARGET_RATE:.0f}), "
            f"p99 {paced['p99_ms']:.2f} ms, {errs} errors",
        )
    return out


def format_required(required: dict[str, dict[str, float]], rows: dict[str, dict[str, Any]]) -> str:
    """What the required work costs (bench/required.py), beside the figures it bounds."""
    r, m = required["reply"], required["many"]
    base = _fig(rows, "aiosmtpd", "reply_cpu_ms_per_msg")
    postfix = _fig(rows, "postfix", "many_e2e_s")
    return (
        "required work: its CPU in process on one core, no shortcut allowed (bench/required.py):\n"
        f"  small reply: spool commit {r['spool_commit_ms']:.2f} ms + removal {r['spool_remove_ms']:.2f} ms"
        f" + MIME parse {r['parse_ms']:.2f} ms = {r['spool_commit_ms'] + r['spool_remove_ms'] + r['parse_ms']:.2f} ms,"
        " before SMTP in and out"
        + (f" (aiosmtpd 250-only: {base:.2f} ms)" if base is not None else "") + "\n"
        f"  {m['attachments']:.0f} attachments: parse {m['parse_ms']:.1f}, decode {m['decode_ms']:.1f}, "
        f"sha256 {m['sha256_ms']:.1f}, libmagic {m['libmagic_ms']:.1f}, disarm of {m['disarmed_files']:.0f} files "
        f"{m['disarm_ms']:.1f}: {m['sum_ms']:.1f} ms"
        + (f" (Postfix end to end: {1000 * postfix:.1f} ms)" if postfix is not None else "")
    )


def evaluate_targets_18(rows: dict[str, dict[str, Any]], clicks: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 18's targets, each PASS, MISS or NOT RUN, with the figures it compared."""
    out: list[dict[str, Any]] = []

    def target(name: str, ok: bool | None, detail: str) -> None:
        out.append({"target": name, "result": "NOT RUN" if ok is None else ("PASS" if ok else "MISS"),
                    "detail": detail})

    def fig(name: str, key: str) -> float | None:
        return _fig(rows, name, key)

    def why(name: str) -> str:
        reason = rows.get(name, {}).get("reason", "")
        return reason.splitlines()[0] if reason else "not measured"

    def versus(key: str, base: str, factor: float, unit: str, fmt: str) -> tuple[bool | None, str]:
        gw, b = fig("gateway", key), fig(base, key)
        if gw is None or b is None:
            return None, f"gateway {'-' if gw is None else format(gw, fmt)}, {base}: " \
                         f"{'-' if b is None else format(b, fmt)} ({why(base) if b is None else why('gateway')})"
        return gw >= factor * b, f"gateway {gw:{fmt}} {unit} vs {b:{fmt}} ({gw / b:.2f}x; needs {factor:.1f}x)"

    ok, detail = versus("mix_msgs_per_s", "postfix", 2.0, "msgs/s", ".1f")
    target("mix msgs/s end-to-end >= 2.0x plain Postfix", ok, detail)
    ok, detail = versus("reply_msgs_per_s", "postfix", 1.5, "msgs/s", ".1f")
    target("small MIME replies alone msgs/s >= 1.5x plain Postfix", ok, detail)
    ok, detail = versus("mix_msgs_per_s", "mimedefang", 4.0, "msgs/s", ".1f")
    target("mix msgs/s end-to-end >= 4x Postfix+MIMEDefang", ok, detail)
    gw, base = fig("gateway", "reply_cpu_ms_per_msg"), fig("aiosmtpd", "reply_cpu_ms_per_msg")
    target("CPU per small MIME reply <= aiosmtpd 250-only's",
           None if gw is None or base is None else gw <= base,
           f"gateway {'-' if gw is None else f'{gw:.2f}'} ms vs aiosmtpd {'-' if base is None else f'{base:.2f}'}"
           " ms a message (all processes, replies alone)")
    gw, base = fig("gateway", "many_e2e_s"), fig("postfix", "many_e2e_s")
    target(f"{MANY_PARTS} attachments (5 MB) no slower than Postfix",
           None if gw is None or base is None else gw <= base,
           f"gateway {'-' if gw is None else f'{gw:.3f}'} s vs Postfix {'-' if base is None else f'{base:.3f}'} s")
    largest = rows.get("gateway", {}).get("resting", {}).get("after", {}).get("largest_process_kib")
    summary = rows.get("gateway", {}).get("summary", {})
    target("resting RSS per process < 100 MiB after the mixed load",
           None if not largest else largest < RESTING_TARGET_KIB,
           f"largest gateway process {'-' if not largest else f'{largest / 1024:.1f}'} MiB; all processes: "
           f"fresh {_f(summary.get('rest_fresh_mib'))}, under load {_f(summary.get('rest_loaded_mib'))}, "
           f"after {_f(summary.get('rest_after_mib'))} MiB")
    giga = fig("gateway", "gigabyte_added_mib")
    if giga is not None:
        target("a 1 GB message adds <= 64 MB", giga * 2**20 <= MEMORY_TARGET_BYTES,
               f"gateway +{_f(giga)} MiB (+{giga * 2**20 / 1e6:.1f} MB), all processes summed")
    else:
        mem = fig("gateway", "memory_added_mib")
        target("a large message adds <= 64 MB (measured: the ~123 MB message; --gigabyte-rounds sends 1 GB)",
               None if mem is None else mem * 2**20 <= MEMORY_TARGET_BYTES,
               f"gateway +{_f(mem)} MiB, all processes summed")
    paced = next((r for r in clicks.get("runs", []) if r["run"] == "paced"), None)
    name = f"link clicks p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE}/s, wrk on its own CPU"
    if paced is None:
        target(name, None, clicks.get("reason", "not run"))
    else:
        errs = sum(paced["errors"].values()) + paced["non_2xx_3xx"]
        reached = paced["requests_per_s"] >= 0.95 * TARGET_RATE
        target(name, reached and paced["p99_ms"] < TARGET_P99_MS and errs == 0,
               f"{paced['requests_per_s']:.0f} req/s, p99 {paced['p99_ms']:.2f} ms, {errs} errors; "
               f"wrk on CPU {clicks.get('wrk_cpus')}, gateway on {clicks.get('gateway_cpus')}")
    return out


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_targets(targets: list[dict[str, Any]]) -> str:
    """One line a target: PASS/MISS/NOT RUN, the target, the figures."""
    width = max(len(t["target"]) for t in targets)
    return "\n".join(f"  {t['result']:7s} {t['target']:{width}s}  {t['detail']}" for t in targets)


# ---------------------------------------------------------------------- main
def _on_signal(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so every ``finally`` stops its processes."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def started(c: Candidate, rows: dict[str, dict[str, Any]]) -> Iterator[bool]:
    """Start a candidate (recording why not, if it cannot), and always stop it after."""
    try:
        for attempt in range(3):
            try:
                c.start()
                break
            except RuntimeError as exc:
                # A free port taken by another program between the choice and
                # the bind (a shared machine): again, on new ports.
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                print(f"[bench] {c.label}: a port was taken meanwhile; starting again on new ports", flush=True)
                with contextlib.suppress(Exception):  # what of it started: stopped before the next try
                    c.stop()
        rows[c.name]["status"] = "ok"
        ok = True
    except CandidateUnavailable as exc:
        rows[c.name].update(status="not run", reason=str(exc))
        print(f"[bench] {c.label}: not run: {exc}", flush=True)
        ok = False
    except Exception as exc:  # noqa: BLE001 - recorded, the bench goes on
        rows[c.name].update(status="failed", reason=f"start: {exc}")
        print(f"[bench] {c.label}: failed to start: {exc}", flush=True)
        ok = False
    try:
        yield ok
    finally:
        c.stop()


def _rounds(active: list[Candidate], rows: dict[str, dict[str, Any]], rounds: int, what: str, key: str,
            run: Callable[[Candidate], dict[str, Any]], describe: Callable[[Candidate, dict[str, Any]], str], *,
            tag: str, only: Collection[str] | None = None) -> None:
    """``rounds`` rounds of ``run``, interleaved across the candidates still
    active (``only`` those named, when given); each result goes to
    ``rows[name][key]`` and is printed; a candidate that fails is dropped."""
    for rnd in range(rounds):
        for c in list(active):
            if only is not None and c.name not in only:
                continue
            try:
                r = run(c)
            except Exception as exc:  # noqa: BLE001
                _fail(c, rows, active, f"{what} round {rnd + 1}", exc)
                continue
            rows[c.name][key].append(r)
            print(f"[bench] {tag} {rnd + 1}/{rounds} {c.label:22s} {describe(c, r)}", flush=True)


def _fail(c: Candidate, rows: dict[str, dict[str, Any]], active: list[Candidate], what: str, exc: Exception) -> None:
    # What the client saw (a 451) seldom says why: the candidate's own logs do.
    logs = c.diagnose()
    rows[c.name].update(status="failed", reason=f"{what}: {exc}", logs=logs)
    print(f"[bench] {c.label}: {what} failed, dropped: {exc}", flush=True)
    if logs:
        print(f"[bench] {c.label}: its logs say:\n{logs}", flush=True)
    active.remove(c)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Gateway benchmark against smtp-sink, aiosmtpd and Postfix")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer messages and rounds (about 3 minutes)")
    p.add_argument("--messages", type=int, help="5 KB messages per round")
    p.add_argument("--rounds", type=int, help="throughput rounds (interleaved across candidates)")
    p.add_argument("--large-rounds", type=int, help="25 MiB message rounds")
    p.add_argument("--sessions", type=int, help="parallel smtp-source sessions (default 20)")
    p.add_argument("--gateway", help="path to the attachment-gateway executable (default: .venv/bin, then PATH)")
    p.add_argument(
        "--only", help=f"comma-separated subset of candidates: {','.join((*BASELINES, 'gateway'))}, "
        "and/or storage (upload throughput to Ceph radosgw beside a local file), "
        "and/or disarm (ms per MB of PDF the disarm step costs, clean and active), "
        "and/or required (CPU of the work no shortcut may skip, in process: bench/required.py)"
    )
    p.add_argument("--memory-rounds", type=int, help="100 MB message rounds (peak memory; 0 = skip)")
    p.add_argument("--click-seconds", type=int, help="seconds per wrk run (0 = skip the click test)")
    p.add_argument("--storage-rounds", type=int, help="storage upload rounds (interleaved across rows)")
    p.add_argument("--mix-messages", type=int, help="messages a round of the realistic mix (0 = skip the mix)")
    p.add_argument("--mix-rounds", type=int, help="rounds of the realistic mix and of its replies alone")
    p.add_argument("--mix-seed", type=int, help="the seed the mix is generated from (default 18)")
    p.add_argument("--many-rounds", type=int, help=f"rounds of the {MANY_PARTS}-attachment message (0 = skip)")
    p.add_argument("--gigabyte-rounds", type=int,
                   help="rounds of the 1 GB message, gateway only (full: 1, quick: 0; 0 = skip)")
    p.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit code 0, or 1 when a candidate failed (a skipped gateway is not a failure)."""
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    s = Settings(
        messages=args.messages or base.messages,
        sessions=args.sessions or base.sessions,
        message_size=base.message_size,
        rounds=args.rounds or base.rounds,
        large_rounds=args.large_rounds or base.large_rounds,
        step_timeout=base.step_timeout,
        quick=base.quick,
        memory_rounds=base.memory_rounds if args.memory_rounds is None else args.memory_rounds,
        click_seconds=base.click_seconds if args.click_seconds is None else args.click_seconds,
        memory_candidates=base.memory_candidates,
        storage_size=base.storage_size,
        storage_rounds=args.storage_rounds or base.storage_rounds,
        mix_messages=base.mix_messages if args.mix_messages is None else args.mix_messages,
        mix_rounds=args.mix_rounds or base.mix_rounds,
        mix_seed=base.mix_seed if args.mix_seed is None else args.mix_seed,
        many_rounds=base.many_rounds if args.many_rounds is None else args.many_rounds,
        gigabyte_rounds=base.gigabyte_rounds if args.gigabyte_rounds is None else args.gigabyte_rounds,
    )
    if os.geteuid() != 0:
        print("[bench] must run as root (Postfix and smtp-sink -u nobody need it)", file=sys.stderr)
        return 2
    for exe in (SMTP_SOURCE, "/usr/sbin/smtp-sink", "/usr/sbin/postfix"):
        if not os.path.exists(exe):
            print(f"[bench] {exe} missing: run scripts/install-test-deps.sh", file=sys.stderr)
            return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    wanted = set(args.only.split(",")) if args.only else {*BASELINES, "gateway", "storage", "disarm", "required"}
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    os.chmod(workdir, 0o755)
    started_at = time.time()
    gateway_exe = find_gateway_executable(args.gateway)
    all_candidates: list[Candidate] = [
        FloorSink(workdir, dump=False),
        AiosmtpdBaseline(workdir, default_python()),
        PlainPostfix(workdir),
        PostfixMimedefang(workdir),
        Gateway(workdir, gateway_exe, requested=args.gateway),
    ]
    candidates = [c for c in all_candidates if c.name in wanted]
    rows: dict[str, dict[str, Any]] = {
        c.name: {"label": c.label, "status": "pending", "memory_scope": c.memory_scope} for c in candidates
    }
    if "gateway" in rows:
        rows["gateway"]["executable"] = gateway_exe
    machine = machine_info(workdir)
    print(
        f"[bench] machine: {machine['nproc']} CPU ({machine['cpu_model']}), kernel {machine['kernel']}, "
        f"{machine['mem_total_mib']} MiB RAM, temp on {machine['temp_fs']}, load {machine['loadavg_before']}",
        flush=True,
    )
    if machine["loadavg_before"] and machine["loadavg_before"][0] > 0.5 * machine["nproc"]:
        print("[bench] warning: the machine is busy (1-minute load above nproc/2): figures will be noisy", flush=True)
    print(
        f"[bench] {'quick' if s.quick else 'full'} run: {s.rounds} x {s.messages} msgs of {s.message_size} B, "
        f"{s.sessions} sessions; {s.large_rounds} x large message; {s.memory_rounds} x 100 MB message; "
        f"wrk {s.click_seconds} s x 3; mix {s.mix_rounds} x {s.mix_messages} msgs (seed {s.mix_seed}); "
        f"{s.many_rounds} x {MANY_PARTS}-attachment message",
        flush=True,
    )
    clicks: dict[str, Any] = {"status": "not run", "reason": "gateway not run"}
    storage: dict[str, Any] = {"status": "not run", "reason": "not asked for (--only)"}
    mem_msg: LargeMessage | None = None
    try:
        msg = build_large_message(workdir)
        data = msg.path.read_bytes()
        body_tail = data[data.index(b"Content-Transfer-Encoding: base64") :].replace(b"\r\n", b"\n")
        print(
            f"[bench] large message: {msg.size} bytes ({msg.size / 2**20:.1f} MiB), "
            f"attachment {msg.attachment_size} bytes",
            flush=True,
        )
        if s.memory_rounds and candidates:
            mem_msg = build_large_message(workdir, attachment_bytes=MEMORY_ATTACHMENT_BYTES, filename="memory.eml")
            print(
                f"[bench] 100 MB message: {mem_msg.size} bytes ({mem_msg.size / 1e6:.1f} MB), "
                f"attachment {mem_msg.attachment_size} bytes decoded",
                flush=True,
            )
        mix = build_mix(s.mix_messages, s.mix_seed) if s.mix_messages else []
        replies = [m for m in mix if m.kind == "reply"]
        many = build_many_attachments(s.mix_seed) if s.many_rounds else b""
        if mix:
            kinds = {k: sum(1 for m in mix if m.kind == k) for k in ("reply", "attachment", "large")}
            print(f"[bench] mix: {len(mix)} messages, {sum(len(m.wire) for m in mix) / 1e6:.1f} MB, {kinds}",
                  flush=True)
        with contextlib.ExitStack() as stack:
            active: list[Candidate] = []
            for c in candidates:
                if stack.enter_context(started(c, rows)):
                    active.append(c)
                    if isinstance(c, Gateway):
                        rows[c.name]["argv"] = c.argv
                    for key in ("throughput_rounds", "large_rounds", "memory_rounds", "mix_rounds", "reply_rounds",
                                "many_rounds", "gigabyte_rounds"):
                        rows[c.name][key] = []
            # Resting memory, fresh: every process of every candidate, after a moment to settle.
            time.sleep(2.0)
            for c in active:
                rows[c.name]["resting"] = {"fresh": resting_memory(c.all_pids())}
            # Warm-up (not recorded): spawns Postfix's daemons, JITs nothing, fills caches.
            for c in list(active):
                try:
                    run_throughput(c, s, 2 * s.sessions)
                except Exception as exc:  # noqa: BLE001
                    _fail(c, rows, active, "warm-up", exc)
            _rounds(active, rows, s.rounds, "throughput", "throughput_rounds",
                    lambda c: run_throughput(c, s, s.messages),
                    lambda c, r: f"accepted {r['accepted_msgs_per_s']:7.0f} msg/s  "
                              f"end-to-end {r['e2e_msgs_per_s']:7.0f} msg/s  CPU {r['cpu_ms_per_msg']:5.2f} ms/msg",
                    tag="round")
            if mix:
                _rounds(active, rows, s.mix_rounds, "mix", "mix_rounds", lambda c: run_mix(c, mix, s),
                        lambda c, r: f"{r['e2e_msgs_per_s']:6.1f} msg/s end-to-end  CPU {r['cpu_ms_per_msg']:6.2f}"
                                     f" ms/msg  RSS peak {r['rss_peak_sum_kib'] / 1024:6.1f} MiB (all processes)",
                        tag="mix", only=MIX_CANDIDATES)
            if replies:
                _rounds(active, rows, s.mix_rounds, "replies alone", "reply_rounds",
                        lambda c: run_mix(c, replies, s),
                        lambda c, r: f"{r['e2e_msgs_per_s']:6.1f} msg/s end-to-end  CPU {r['cpu_ms_per_msg']:6.2f}"
                                     " ms/msg",
                        tag="replies", only=REPLY_CANDIDATES)
            if many:
                _rounds(active, rows, s.many_rounds, f"{MANY_PARTS} attachments", "many_rounds",
                        lambda c: run_many(c, many, s),
                        lambda c, r: f"250 after {r['accept_s']:.3f}s  end-to-end {r['e2e_s']:.3f}s",
                        tag="many", only=MIX_CANDIDATES)
            # Resting memory after the sustained load: once the last deliveries are done.
            time.sleep(5.0)
            for c in active:
                rows[c.name].setdefault("resting", {})["after"] = resting_memory(c.all_pids())
            _rounds(active, rows, s.large_rounds, "large message", "large_rounds",
                    lambda c: run_large(c, msg, data, body_tail, s),
                    lambda c, r: f"250 after {r['accept_s']:.3f}s  end-to-end {r['e2e_s']:.3f}s  "
                              f"{r['mb_per_s']:6.1f} MB/s  peak RSS {r['peak_rss_kib'] / 1024:6.1f} MiB"
                              + ("" if r.get("attachment_intact", True) else "  (attachment replaced/changed)"),
                    tag="large")
            if mem_msg is not None:
                mem_data = mem_msg.path.read_bytes()
                _rounds(active, rows, s.memory_rounds, "100 MB message", "memory_rounds",
                        lambda c: run_memory(c, mem_msg, mem_data, max(s.step_timeout, 180)),
                        lambda c, r: f"250 after {r['accept_s']:.3f}s  end-to-end {r['e2e_s']:.3f}s  "
                                     f"added peak RSS {r['added_kib'] / 1024:6.1f} MiB ({c.added_memory_scope})",
                        tag="100 MB", only=s.memory_candidates)
                del mem_data
            if s.gigabyte_rounds and any(isinstance(c, Gateway) for c in active):
                giga_msg = build_large_message(workdir, attachment_bytes=GIGABYTE_ATTACHMENT_BYTES,
                                               filename="gigabyte.eml")
                print(f"[bench] 1 GB message: {giga_msg.size} bytes ({giga_msg.size / 1e9:.2f} GB), "
                      f"attachment {giga_msg.attachment_size} bytes decoded", flush=True)
                giga_data = giga_msg.path.read_bytes()
                _rounds(active, rows, s.gigabyte_rounds, "1 GB message", "gigabyte_rounds",
                        lambda c: run_memory(c, giga_msg, giga_data, 900),
                        lambda c, r: f"250 after {r['accept_s']:.3f}s  end-to-end {r['e2e_s']:.3f}s  "
                                     f"added peak RSS {r['added_kib'] / 1024:6.1f} MiB ({c.added_memory_scope})",
                        tag="1 GB", only=("gateway",))
                del giga_data
                giga_msg.path.unlink(missing_ok=True)
            gw = next((c for c in active if isinstance(c, Gateway)), None)
            if gw is not None and s.click_seconds > 0:
                try:
                    clicks = run_clicks(gw, s, workdir)
                except Exception as exc:  # noqa: BLE001
                    clicks = {"status": "failed", "reason": str(exc)}
                    print(f"[bench] clicks failed: {exc}", flush=True)
            elif gw is not None:
                clicks = {"status": "not run", "reason": "--click-seconds 0"}
            gw_any = next((c for c in candidates if isinstance(c, Gateway)), None)
            if gw_any is not None and gw_any.proc is not None:
                # Give the last deliveries a moment, then look at what the gateway left behind.
                time.sleep(1.0)
                rows["gateway"]["after_run"] = after = gw_any.inspect()
                print(
                    f"[bench] gateway after the run: spool {after['spool']}, "
                    f"{after['log_problems']} warning/error lines in its log",
                    flush=True,
                )
        # Storage after the SMTP candidates have stopped, so the Ceph
        # cluster and they never share the CPUs.
        if "storage" in wanted:
            print(f"[bench] storage: {s.storage_rounds} x {s.storage_size >> 20} MiB object, "
                  "local file vs Ceph radosgw", flush=True)
            try:
                storage = run_storage(workdir, s.storage_size, s.storage_rounds,
                                      lambda line: print(f"[bench] {line}", flush=True))
            except Exception as exc:  # noqa: BLE001 - report, and still print the SMTP figures
                storage = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                print(f"[bench] storage failed: {storage['reason'].splitlines()[0]}", flush=True)
        disarm_figures: dict[str, Any] = {}
        if "disarm" in wanted:
            print("[bench] disarm: ms per MB of a 4 MB PDF, clean and active, in the gateway's fork server "
                  "and in process", flush=True)
            try:
                from bench import disarm as disarm_bench

                disarm_figures = disarm_bench.run(4.0, 5)
            except Exception as exc:  # noqa: BLE001 - report, and still print the SMTP figures
                disarm_figures = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                print(f"[bench] disarm failed: {disarm_figures['reason']}", flush=True)
        required: dict[str, Any] = {}
        if "required" in wanted:
            print("[bench] required: the work no shortcut may skip, in process on one core", flush=True)
            try:
                from bench import required as required_bench

                required = required_bench.run()
            except Exception as exc:  # noqa: BLE001 - report, and still print the SMTP figures
                required = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                print(f"[bench] required failed: {required['reason']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"[bench] kept {workdir}", flush=True)

    machine["loadavg_after"] = _loadavg()
    summarize(rows)
    if "gateway" in rows and rows["gateway"]["status"] == "not run":
        print("[bench] gateway row not run: the attachment-gateway executable is missing", flush=True)
    print()
    print(
        f"machine: nproc={machine['nproc']}, CPU {machine['cpu_model']}, kernel {machine['kernel']}, "
        f"Postfix {machine['postfix']}, Python {machine['python']}"
    )
    dirty = ", ".join(machine["uncommitted"])
    print(f"code: commit {machine['commit'] or '?'}" + (f", uncommitted: {dirty}" if dirty else ""))
    print(f"load average before/after: {machine['loadavg_before']} / {machine['loadavg_after']}")
    print(format_table(rows))
    print("ratios are gateway/baseline: above 1x is better for msgs/s and MB/s, worse for seconds and MiB")
    print(format_clicks(clicks))
    if storage.get("median_mb_per_s"):
        print()
        print(format_storage(storage))
    if disarm_figures and "status" not in disarm_figures:
        print()
        print("disarm, ms per MB of PDF (median): " + ", ".join(f"{k} {v:.1f}" for k, v in disarm_figures.items()))
    if required and "status" not in required:
        print()
        print(format_required(required, rows))
    targets = evaluate_targets(rows, clicks)
    print("targets (issue 3):")
    print(format_targets(targets))
    targets_18 = evaluate_targets_18(rows, clicks)
    print("targets (issue 18):")
    print(format_targets(targets_18))
    print(f"bench run time: {time.time() - started_at:.0f} s")
    for name, row in rows.items():
        if row.get("reason"):
            print(f"note: {name}: {row['status']}: {row['reason'].splitlines()[0]}")
    if rows.get("gateway", {}).get("after_run", {}).get("log_sample"):
        print("note: gateway log (first warning/error lines):")
        for line in rows["gateway"]["after_run"]["log_sample"][:5]:
            print(f"  {line[:200]}")
        for frame, n in rows["gateway"]["after_run"].get("traceback_frames", {}).items():
            print(f"  traceback through {frame}: {n}x")
    result = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "duration_s": round(time.time() - started_at, 1),
        "machine": machine,
        "settings": asdict(s),
        "large_message": {
            "bytes": msg.size,
            "attachment_bytes": msg.attachment_size,
            "attachment_sha256": msg.attachment_sha256,
        },
        "memory_message": (
            {"bytes": mem_msg.size, "attachment_bytes": mem_msg.attachment_size} if mem_msg is not None else None
        ),
        "candidates": rows,
        "clicks": clicks,
        "targets": targets,
        "targets_18": targets_18,
        "storage": storage,
        "disarm_ms_per_mb": disarm_figures,
        "required_cpu_ms": required,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] results written to {args.json}")
    failed = [name for name, row in rows.items() if row["status"] == "failed"]
    if clicks.get("status") == "failed":
        failed.append("clicks")
    if storage.get("status") == "failed":
        failed.append("storage")
    if disarm_figures.get("status") == "failed":
        failed.append("disarm")
    return 1 if failed else 0


def cli() -> int:
    """Entry point: ``main()``, with Ctrl-C reported in one line (exit 130) after cleanup."""
    try:
        return main()
    except KeyboardInterrupt:
        print("[bench] interrupted: every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
