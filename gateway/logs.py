"""Logging: structlog JSON lines on stderr, and the audit stream apart.

Operational logs carry the queue id (``queue_id``), the Message-ID
(``message_id``) and the client's address (``client``) on every line about
one message, so an administrator can follow a message as they would in
Postfix's maillog: the runner and the SMTP session bind them for their task
(``message``; structlog's context variables), so every line written while
that message is in hand has them, whichever module writes it.  Field names
are snake_case everywhere in the log; the audit stream keeps the ASIM names
of its SIEM schema, and ``LOG_NAMES`` says which log field is which.

Under systemd (journald reading stderr, ``JOURNAL_STREAM`` naming it) each
line starts with a syslog priority prefix, ``<3>`` for an error, ``<4>`` a
warning, ``<6>`` info, ``<7>`` debug, which journald reads and strips
(``SyslogLevelPrefix=``, on by default): ``journalctl -p warning`` then
finds the warnings.  On a terminal or a pipe the lines are plain JSON.
Audit events (link clicks, refusals) are a separate stream, one JSON object a
line, for the SIEM; they never share a file with the operational log.  The
file is written in the caller's thread; syslog and HEC sinks
(``gateway.audit_sinks``) get a copy through a bounded buffer.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_pid(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # serve runs several processes; like Postfix's "smtpd[1234]", each line
    # says which one wrote it.
    event["pid"] = os.getpid()
    return event


# syslog priorities (RFC 5424) of structlog's method names.
PRIORITIES = {"debug": 7, "info": 6, "msg": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
              "critical": 2, "fatal": 2}


def _priority_prefix(logger: Any, method: str, rendered: str) -> str:
    return f"<{PRIORITIES.get(method, 6)}>{rendered}"


def under_journald(stream: Any = None) -> bool:
    """Whether ``stream`` (stderr) is the journal's stream: systemd sets
    ``JOURNAL_STREAM=DEV:INODE`` for the service, and a child whose stderr
    was redirected elsewhere must not write prefixes into a file."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(level: str = "info") -> None:
    """Configure structlog to write JSON lines to stderr at ``level``,
    each with its syslog priority prefix when journald reads stderr."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_pid,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]
    if under_journald():
        processors.append(_priority_prefix)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        # Each module's logger (``get``) is made on its first line after
        # this, then kept: no logger is rebuilt per line.
        cache_logger_on_first_use=True,
    )


def get(name: str, **bound: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger tagged with the component that logs.

    It takes its form (JSON, level) from ``setup`` when it first writes, not
    when it is made: modules make theirs at import, and a module imported
    before ``setup`` would otherwise write structlog's default console lines
    at debug level for good."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name, **bound)
    return logger


@contextmanager
def message(queue_id: str, *, client: str = "", message_id: str = "") -> Iterator[None]:
    """Every log line written in this task (and the threads it starts)
    while the block runs carries the message's queue id, client address and
    Message-ID; ``message_id`` can be set later with ``set_message_id``."""
    # Ellipsis: bound (so the block's end unbinds it) but not written.
    with structlog.contextvars.bound_contextvars(queue_id=queue_id, client=client or ...,
                                                 message_id=message_id or ...):
        yield


def set_message_id(message_id: str) -> None:
    """The Message-ID of the message in hand, once parsed (inside ``message``)."""
    if message_id:
        structlog.contextvars.bind_contextvars(message_id=message_id)


def bind(**fields: Any) -> None:
    """Fields for every later log line of this task (an SMTP session's client)."""
    structlog.contextvars.bind_contextvars(**fields)


# The audit stream's ASIM names and the log's names for the same facts.
LOG_NAMES = {"QueueId": "queue_id", "InternetMessageId": "message_id", "CustomerId": "customer_id",
             "TargetFilePath": "key", "TargetFileName": "filename", "SrcIpAddr": "client",
             "ActorUsername": "agent", "EventResultDetails": "details"}


def log_fields(audit_fields: Mapping[str, Any]) -> dict[str, Any]:
    """An audit event's fields under the log's names (those that have one)."""
    return {LOG_NAMES[k]: v for k, v in audit_fields.items() if k in LOG_NAMES and v is not None}


def audit_value(value: Any) -> Any:
    """``value`` as an audit event can always carry it: text with bytes
    that were not UTF-8 (aiohttp hands header bytes over as lone
    surrogates) shows them as ``\\xNN``, in nested lists and mappings too.

    Any client of the HTTP port chooses its User-Agent: such bytes would
    make the event unwritable (the file drops it, a syslog or HEC sink's
    task dies and every later event is lost to the SIEM)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:
                return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:  # a surrogate no byte stands for
                return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, Mapping):
        return {str(k): audit_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [audit_value(v) for v in value]
    return value


# Characters that JSON leaves raw but that line readers take for the end of a
# line (Python's splitlines, many log shippers' Unicode line splitting): one
# event must stay one line, so each is written as its \uXXXX escape (JSON
# keeps them only inside strings, where the escape means the same).
_LINE_BREAKERS = re.compile("[\x7f-\x9f\u2028\u2029]")


def audit_json(record: Mapping[str, Any]) -> str:
    """One audit event as one line of JSON (UTF-8 text, nothing in it that
    any reader splits a line at); the file, syslog and HEC all send this."""
    line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
    return _LINE_BREAKERS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


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
        record.update({k: audit_value(v) for k, v in fields.items() if v is not None})
        line = audit_json(record)
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


