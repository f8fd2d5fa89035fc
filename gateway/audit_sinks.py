"""Audit sinks for a SIEM: syslog (RFC 5424 over UDP, TCP or TLS) and
Splunk's HTTP Event Collector.

The file sink stays in ``logs.AuditLog`` (a local append, never remote).
Each network sink has a bounded buffer and one task that drains it, so a
collector that is slow or down never blocks a click: when the buffer is
full the newest event is dropped, counted, and the loss logged.  Sinks are
fed from any thread (``offer``) and drained on the event loop.
"""
from __future__ import annotations

import asyncio
import collections
import ssl
import threading
import time
from typing import Any

import aiohttp

from gateway import logs, metrics

log = logs.get("audit")

_SEVERITY = {"Success": 6, "Failure": 4}  # informational, warning (RFC 5424 section 6.2.1)
_DROP_LOG_INTERVAL = 10.0


class Sink:
    """A bounded queue of audit events and the task that sends them on."""

    name = "sink"

    def __init__(self, buffer: int) -> None:
        self._buffer = buffer
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.sent = 0
        self._dropped_logged = 0
        self._last_drop_log = 0.0

    def offer(self, record: dict[str, Any]) -> None:
        """Queue one event; never blocks, drops (and counts) when full."""
        with self._lock:
            dropped = len(self._items) >= self._buffer
            if dropped:
                self.dropped += 1
                now = time.monotonic()
                report = now - self._last_drop_log >= _DROP_LOG_INTERVAL
                if report:
                    self._last_drop_log = now
            else:
                self._items.append(record)
                report = False
        if dropped:
            metrics.AUDIT_DROPPED.inc()
        if report:
            log.warning("audit events dropped; sink buffer full", sink=self.name, dropped=self.dropped,
                        buffer=self._buffer)
        if self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closed while stopping
                pass

    def start(self) -> None:
        """Begin draining on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name=f"audit-{self.name}")

    async def stop(self, grace: float = 5.0) -> None:
        """Send what is queued within ``grace`` seconds; count the rest as dropped."""
        if self._task is None:
            return
        deadline = time.monotonic() + grace
        # A bounded poll, once at shutdown: nothing signals "queue empty".
        while self._items and time.monotonic() < deadline and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
            pass
        with self._lock:
            unsent = len(self._items)
            self.dropped += unsent
            self._items.clear()
        if unsent:
            metrics.AUDIT_DROPPED.inc(unsent)
        await self._close()
        if self.dropped:
            log.warning("audit events dropped", sink=self.name, dropped=self.dropped, sent=self.sent)

    def _take(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return [self._items[i] for i in range(min(limit, len(self._items)))]

    def _drop(self, count: int, error: str) -> None:
        with self._lock:
            for _ in range(count):
                self._items.popleft()
            self.dropped += count
        metrics.AUDIT_DROPPED.inc(count)
        log.error("audit events dropped; they could not be encoded", sink=self.name, dropped=count, error=error)

    def _done(self, count: int) -> None:
        with self._lock:
            for _ in range(count):
                self._items.popleft()
        self.sent += count

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                batch = self._take(self.batch_size)
                if not batch:
                    break
                try:
                    await self._send(batch)
                except (TimeoutError, OSError, aiohttp.ClientError, SinkRefused) as e:
                    # Keep the events and try again; the buffer bounds what waits.
                    log.warning("audit sink unavailable; retrying", sink=self.name, error=str(e) or type(e).__name__,
                                queued=len(self._items))
                    await self._close()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except (ValueError, TypeError) as e:
                    # Events that cannot be written at all (sending them
                    # again would fail the same way): drop them, counted,
                    # and keep the task that sends every later event alive.
                    self._drop(len(batch), str(e) or type(e).__name__)
                    continue
                backoff = 0.2
                self._done(len(batch))

    batch_size = 1

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        """Drop a connection so the next send opens a fresh one."""


class SinkRefused(Exception):
    """The collector answered, but did not take the events."""


def rfc5424(record: dict[str, Any], facility: int, app_name: str, hostname: str) -> bytes:
    """One audit event as an RFC 5424 syslog message, the JSON event as MSG.

    The ids a SIEM correlates on are also structured data, so a collector
    that does not parse JSON can still filter on them.
    """
    pri = facility * 8 + _SEVERITY.get(record.get("EventResult", ""), 5)
    msgid = str(record.get("EventType", "-"))[:32] or "-"
    sd_fields = [("outcome", record.get("EventResult")), ("agent", record.get("ActorUsername")),
                 ("customer", record.get("CustomerId")), ("queue", record.get("QueueId")),
                 ("object", record.get("TargetFilePath"))]
    params = " ".join(f'{k}="{_sd_escape(str(v))}"' for k, v in sd_fields if v is not None)
    sd = f"[audit@32473 {params}]" if params else "-"
    ts = record.get("TimeGenerated") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = logs.audit_json(record)
    return f"<{pri}>1 {ts} {hostname or '-'} {app_name} - {msgid} {sd} {body}".encode("utf-8", "backslashreplace")


def _sd_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class SyslogSink(Sink):
    """RFC 5424 to a syslog collector; TCP and TLS use octet counting (RFC 6587/5425)."""

    name = "syslog"
    batch_size = 100

    def __init__(self, host: str, port: int, transport: str, facility: int, app_name: str, hostname: str,
                 buffer: int, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(buffer)
        self.host, self.port, self.transport = host, port, transport
        self.facility, self.app_name, self.hostname = facility, app_name, hostname
        self.ssl_context = ssl_context
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        messages = [rfc5424(r, self.facility, self.app_name, self.hostname) for r in batch]
        if self.transport == "udp":
            if self._udp is None:
                self._udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=(self.host, self.port))
            for m in messages:
                self._udp.sendto(m)
            return
        if self._writer is None:
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_context if self.transport == "tls" else None,
                server_hostname=self.host if self.transport == "tls" else None), 10)
            self._writer = writer
        self._writer.write(b"".join(b"%d %s" % (len(m), m) for m in messages))
        await asyncio.wait_for(self._writer.drain(), 10)

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
            self._writer = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None


class HecSink(Sink):
    """Splunk HTTP Event Collector: batches of events POSTed to /services/collector/event."""

    name = "hec"
    batch_size = 100

    def __init__(self, url: str, token: str, sourcetype: str, index: str | None, hostname: str, timeout: float,
                 buffer: int, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(buffer)
        base = url.rstrip("/")
        self.url = base if base.endswith("/services/collector/event") else base + "/services/collector/event"
        self._token = token
        self.sourcetype, self.index, self.hostname = sourcetype, index, hostname
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        lines = []
        for r in batch:
            env: dict[str, Any] = {"time": time.time(), "host": self.hostname, "source": "attachment-gateway",
                                   "sourcetype": self.sourcetype, "event": r}
            if self.index:
                env["index"] = self.index
            lines.append(logs.audit_json(env))
        async with self._session.post(self.url, data="\n".join(lines).encode("utf-8", "backslashreplace"),
                                      headers={"Authorization": f"Splunk {self._token}",
                                               "Content-Type": "application/json"},
                                      ssl=self.ssl_context if self.ssl_context is not None else True) as resp:
            if resp.status != 200:
                raise SinkRefused(f"HEC answered {resp.status}: {(await resp.text())[:200]}")

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def build(cfg: Any) -> list[Sink]:
    """The network sinks ``[audit]`` configures (``cfg`` is the whole Config);
    secrets are read now so a missing token stops start-up."""
    from pathlib import Path

    from gateway.config import parse_hostport, read_secret

    out: list[Sink] = []
    a = cfg.audit
    if a.syslog is not None:
        host, port = parse_hostport(a.syslog.address)
        ctx = None
        if a.syslog.transport == "tls":
            ctx = ssl.create_default_context(cafile=str(cfg.path(a.syslog.ca_file)) if a.syslog.ca_file else None)
        out.append(SyslogSink(host, port, a.syslog.transport, a.syslog.facility, a.syslog.app_name,
                              cfg.gateway.hostname, a.buffer, ctx))
    if a.hec is not None:
        token = read_secret(a.hec.token, Path(cfg.base_dir), "audit.hec.token")
        ctx = ssl.create_default_context(cafile=str(cfg.path(a.hec.ca_file))) if a.hec.ca_file else None
        out.append(HecSink(a.hec.url, token, a.hec.sourcetype, a.hec.index, cfg.gateway.hostname, a.hec.timeout,
                           a.buffer, ctx))
    return out
