"""Logging: structlog JSON lines on stderr, and the audit stream apart.

Operational logs carry the queue id (``queue_id``) wherever there is one, so
an administrator can follow a message as they would in Postfix's maillog.
Audit events (link clicks, refusals) are a separate stream, one JSON object a
line, for the SIEM; they never share a file with the operational log.  The
file is written in the caller's thread; syslog and HEC sinks
(``gateway.audit_sinks``) get a copy through a bounded buffer.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_pid(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # serve runs several processes; like Postfix's "smtpd[1234]", each line
    # says which one wrote it.
    event["pid"] = os.getpid()
    return event


def setup(level: str = "info") -> None:
    """Configure structlog to write JSON lines to stderr at ``level``."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_pid,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str, **bound: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger tagged with the component that logs."""
    return structlog.get_logger().bind(component=name, **bound)


class AuditLog:
    """The audit stream: one JSON object a line, appended and flushed per event.

    Field names follow Microsoft Sentinel's ASIM FileEvent schema where one
    fits (EventType, EventResult, TargetFilePath, ActorUsername, SrcIpAddr),
    so a SIEM maps them without a parser of its own.
    """

    def __init__(self, path: str | Path, hostname: str, sinks: list[Any] | None = None) -> None:
        self._path = str(path)
        self._hostname = hostname
        # Network sinks (gateway.audit_sinks): each event is offered to
        # every one; they buffer and send on the event loop.
        self.sinks = list(sinks or [])
        self._lock = threading.Lock()
        self._file = None
        if self._path != "-":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # Line-buffered append: each event reaches the file whole.
            self._file = open(self._path, "a", encoding="utf-8", buffering=1)

    def event(self, event_type: str, result: str, **fields: Any) -> None:
        """Write one audit event; ``result`` is "Success" or "Failure"."""
        record = {
            "TimeGenerated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "EventType": event_type,
            "EventResult": result,
            "Dvc": self._hostname,
            "EventSchema": "FileEvent",
            "EventSchemaVersion": "0.2.1",
            "EventProduct": "attachment-gateway",
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
        try:
            with self._lock:
                if self._file is None:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
                else:
                    self._file.write(line + "\n")
        except (OSError, ValueError) as e:
            # An audit event that cannot be written is counted and logged,
            # never allowed to fail the request or the message it is about.
            from gateway import metrics

            metrics.AUDIT_DROPPED.inc()
            get("audit").error("audit event dropped", error=str(e), event_type=event_type)
        for sink in self.sinks:
            sink.offer(record)

    def start(self) -> None:
        """Start the network sinks on the running event loop."""
        for sink in self.sinks:
            sink.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Flush the network sinks (within ``grace``), then close the file."""
        for sink in self.sinks:
            await sink.stop(grace)
        self.close()

    @property
    def dropped(self) -> int:
        """Events lost by the network sinks since start (buffer full, or
        unsent at stop)."""
        return sum(s.dropped for s in self.sinks)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


