"""Prometheus metrics, summed over every gateway process.

``serve`` runs several processes; prometheus_client's multiprocess mode
keeps each process's values in files under a temporary directory made at
start, and ``/metrics`` adds them up at scrape time.  The directory must be known
before prometheus_client is imported, so ``serve`` sets it first thing
(``gateway.cli.prepare_metrics``).  Queue sizes are not counted as they change but read from the
spool at each scrape, so they are right whichever process moved a message;
so are the age of each queue's oldest message, the build info and the
process figures (read from ``/proc`` for every gateway process: the
client's own process collector sees only the process it runs in).

Counters are created for every known label set at start (``initialise``:
the routes, the stores, the SMTP reply codes the gateway gives), so a
series is there from zero, before its first event, and ``rate()`` and
alerts on ``increase()`` see its first increment.
"""
from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway import __version__

ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

RECEIVED = Counter("gateway_messages_received", "Messages acknowledged with 250 and spooled.", ["route"])
DELIVERED = Counter("gateway_messages_delivered", "Messages the next hop accepted for all their recipients.",
                    ["route"])
DEFERRED = Counter("gateway_messages_deferred", "Delivery attempts that left recipients for a retry.", ["route"])
BOUNCED = Counter("gateway_messages_bounced", "Recipients given up on (5xx or expired) with a DSN.", ["route"])
HELD = Counter("gateway_messages_held", "Messages moved to the hold queue by the worker.", ["reason"])
DISARMED = Counter("gateway_disarm_files", "PDF and Office files checked for active content, by outcome: clean, "
                   "disarmed (rewritten without it), failed (not examinable: refused).", ["route", "status"])
RUNNER_ERRORS = Counter("gateway_runner_errors", "Errors the queue runner's loops survived (the message, if any, "
                        "left for recovery), by loop.", ["loop"])
OFFLOADED_PARTS = Counter("gateway_offloaded_parts", "Attachments moved to storage.", ["route", "store"])
OFFLOADED_BYTES = Counter("gateway_offloaded_bytes", "Decoded bytes moved to storage.", ["route", "store"])
OFFLOAD_FAILURES = Counter("gateway_offload_failures", "Uploads that failed (the message failed open).",
                           ["store"])
DECISIONS = Counter("gateway_policy_decisions", "Policy decisions on parts, by outcome.",
                    ["route", "policy", "action"])
REFUSED_PARTS = Counter("gateway_refused_parts", "Attachments refused (replaced by a notice, quarantined).",
                        ["route", "policy"])
SCANS = Counter("gateway_malware_scans", "clamd scans by verdict: clean, infected, error (failed open).",
                ["route", "result"])
TNEF_PARTS = Counter("gateway_tnef_parts", "Outlook TNEF parts: unpacked, or failed (refused packed).",
                     ["outcome"])
AUTOREPLIES = Counter("gateway_autoreplies", "Automatic replies to senders of refused files: sent, skipped, failed.",
                      ["route", "outcome"])
STORAGE_SECONDS = Histogram("gateway_storage_put_seconds", "Time to stream one attachment into storage.",
                            ["store"], buckets=_LATENCY)
DELIVERY_SECONDS = Histogram("gateway_delivery_seconds", "Time of one delivery attempt to a next hop.",
                             ["route", "outcome"], buckets=_LATENCY)
AUTH_RESULTS = Counter("gateway_authentication_results",
                       "Authentication checks on arrival, by method (dkim, spf, dmarc, arc) and result.",
                       ["method", "result"])
AUTH_FAILURES = Counter("gateway_authentication_failures",
                        "Messages forwarded without results or unsealed because a step failed.", ["step"])
LINK_REQUESTS = Counter("gateway_link_requests", "Requests for links, by outcome.", ["outcome"])
AUDIT_DROPPED = Counter("gateway_audit_events_dropped", "Audit events that could not be written.")
MILTER_MESSAGES = Counter("gateway_milter_messages", "Messages the milter answered, by outcome (rewritten, "
                          "unchanged, no_route, error, timeout).", ["outcome"])
SMTP_SESSIONS = Counter("gateway_smtp_sessions", "SMTP connections: accepted, or refused at once with 421 "
                        "(too many sessions, too many from one client, shutting down).", ["outcome"])
SMTP_REJECTIONS = Counter("gateway_smtp_rejections", "SMTP replies refusing something (4xx and 5xx), by code.",
                          ["code"])
SMTP_TLS = Counter("gateway_smtp_tls_handshakes", "STARTTLS handshakes on the SMTP listener, by result.",
                   ["result"])

# The 4xx and 5xx codes the SMTP listener gives, for counters from zero.
SMTP_CODES = ("421", "450", "451", "452", "454", "500", "501", "502", "503", "504", "521", "530", "550",
              "552", "553", "554")


def initialise(routes: Iterable[Any], stores: Iterable[str]) -> None:
    """Create the series of every known label set at zero (at start)."""
    for outcome in ("accepted", "refused"):
        SMTP_SESSIONS.labels(outcome)
    for code in SMTP_CODES:
        SMTP_REJECTIONS.labels(code)
    for result in ("success", "failure"):
        SMTP_TLS.labels(result)
    for route in routes:
        name = route.name
        for counter in (RECEIVED, DELIVERED, DEFERRED, BOUNCED):
            counter.labels(name)
        if getattr(route, "autoreply", None) is not None:
            for outcome in ("sent", "skipped", "failed"):
                AUTOREPLIES.labels(name, outcome)
        OFFLOADED_PARTS.labels(name, route.storage)
        OFFLOADED_BYTES.labels(name, route.storage)
    for store in stores:
        OFFLOAD_FAILURES.labels(store)
    for loop in ("dispatch", "message"):
        RUNNER_ERRORS.labels(loop)


_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # gateway.spool.envelope's
_DIGITS = {c: i for i, c in enumerate(_ALPHABET)}


def queue_id_time(queue_id: str) -> float | None:
    """When a queue id was made (it starts with the microseconds since the
    epoch in base 31, then 4 random characters), or None for another form."""
    stamp = queue_id[:-4]
    n = 0
    for c in stamp:
        d = _DIGITS.get(c)
        if d is None:
            return None
        n = n * len(_ALPHABET) + d
    return n / 1e6 if stamp else None


class QueueCollector:
    """Messages per spool queue and the age of each queue's oldest, read at
    scrape time."""

    def __init__(self, spool: object) -> None:
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("gateway_queue_messages", "Messages in each spool queue.", labels=["queue"])
        oldest = GaugeMetricFamily("gateway_queue_oldest_message_age_seconds",
                                   "Seconds since the oldest message in each queue was received (0: empty).",
                                   labels=["queue"])
        from gateway.spool.queue import QUEUES

        now = time.time()
        for queue in QUEUES:
            try:
                ids = self.spool.ids(queue)  # type: ignore[attr-defined]
            except OSError:
                continue  # a queue that cannot be read: the other figures still go out
            family.add_metric([queue], len(ids))
            # Ids sort by the time they were made: the first is the oldest.
            made = next((t for t in map(queue_id_time, ids) if t is not None), None)
            oldest.add_metric([queue], max(0.0, now - made) if made is not None else 0.0)
        yield family
        yield oldest


class BuildCollector:
    """``gateway_build_info``: the version running, as a label of a 1."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("gateway_build_info", "The gateway's version and Python's.",
                                   labels=["version", "python"])
        family.add_metric([__version__, platform.python_version()], 1)
        yield family


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PID_FILE = re.compile(r"_(\d+)\.db$")


def gateway_pids(multiproc_dir: str | None) -> list[int]:
    """The live gateway processes: this one, its supervisor, and every
    process that wrote values into the metrics directory (prometheus_client
    names its files ``TYPE_PID.db``) and still runs the same program."""
    pids = {os.getpid()}
    if multiproc_dir:
        try:
            names = os.listdir(multiproc_dir)
        except OSError:
            names = []
        pids.update(int(m.group(1)) for m in map(_PID_FILE.search, names) if m is not None)
        pids.add(os.getppid())
    try:
        exe = os.readlink("/proc/self/exe")
    except OSError:
        return [os.getpid()]
    alive = []
    for pid in sorted(pids):
        try:
            # A pid reused by another program is not ours.
            if pid == os.getpid() or os.readlink(f"/proc/{pid}/exe") == exe:
                alive.append(pid)
        except OSError:
            continue
    return alive


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


class ProcessCollector:
    """``process_*`` figures, as prometheus_client's process collector
    gives them, for every gateway process (label ``pid``), from ``/proc``."""

    def __init__(self, multiproc_dir: str | None) -> None:
        self.multiproc_dir = multiproc_dir

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cpu = CounterMetricFamily("process_cpu_seconds", "User and system CPU time spent in seconds.",
                                  labels=["pid"])
        rss = GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.", labels=["pid"])
        vsz = GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", labels=["pid"])
        start = GaugeMetricFamily("process_start_time_seconds", "Start time of the process since unix epoch "
                                  "in seconds.", labels=["pid"])
        fds = GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", labels=["pid"])
        max_fds = GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", labels=["pid"])
        try:
            boot = _boot_time()
        except OSError:
            return
        for pid in gateway_pids(self.multiproc_dir):
            label = [str(pid)]
            try:
                raw = Path(f"/proc/{pid}/stat").read_text()
                # The command name (field 2) may hold spaces: split after it.
                fields = raw[raw.rindex(")") + 2:].split()
                open_fds = len(os.listdir(f"/proc/{pid}/fd"))
                limits = Path(f"/proc/{pid}/limits").read_text()
            except (OSError, ValueError):
                continue  # it ended meanwhile
            # fields[0] is field 3 of proc(5): utime is 14, stime 15,
            # starttime 22, vsize 23, rss 24.
            cpu.add_metric(label, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
            start.add_metric(label, boot + int(fields[19]) / _CLOCK_TICKS)
            vsz.add_metric(label, int(fields[20]))
            rss.add_metric(label, int(fields[21]) * _PAGE)
            fds.add_metric(label, open_fds)
            for line in limits.splitlines():
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    if soft.isdigit():
                        max_fds.add_metric(label, int(soft))
        yield from (cpu, rss, vsz, start, fds, max_fds)


def render(spool: object) -> bytes:
    """The text exposition of every process's metrics plus the queue sizes."""
    registry = CollectorRegistry()
    extra = CollectorRegistry()
    multiproc_dir = os.environ.get(ENV)
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
        extra.register(ProcessCollector(multiproc_dir))
    else:  # a process that did not go through prepare(): its own values only
        from prometheus_client import REGISTRY

        registry = REGISTRY  # (it has prometheus_client's own process collector)
    extra.register(QueueCollector(spool))
    extra.register(BuildCollector())
    return generate_latest(registry) + generate_latest(extra)
