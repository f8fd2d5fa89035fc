"""Prometheus metrics, summed over every gateway process.

``serve`` runs several processes; prometheus_client's multiprocess mode
keeps each process's values in files under a temporary directory made at
start, and ``/metrics`` adds them up at scrape time.  The directory must be known
before prometheus_client is imported, so ``serve`` sets it first thing
(``gateway.cli.prepare_metrics``).  Queue sizes are not counted as they change but read from the
spool at each scrape, so they are right whichever process moved a message.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

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


class QueueCollector:
    """Messages per spool queue, read at scrape time."""

    def __init__(self, spool: object) -> None:
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("gateway_queue_messages", "Messages in each spool queue.", labels=["queue"])
        from gateway.spool.queue import QUEUES

        for queue in QUEUES:
            try:
                count = len(self.spool.ids(queue))  # type: ignore[attr-defined]
            except OSError:
                continue  # a queue that cannot be read: the other figures still go out
            family.add_metric([queue], count)
        yield family


def render(spool: object) -> bytes:
    """The text exposition of every process's metrics plus the queue sizes."""
    registry = CollectorRegistry()
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:  # a process that did not go through prepare(): its own values only
        from prometheus_client import REGISTRY

        registry = REGISTRY
    queue = QueueCollector(spool)
    out = generate_latest(registry)
    extra = CollectorRegistry()
    extra.register(queue)
    return out + generate_latest(extra)
