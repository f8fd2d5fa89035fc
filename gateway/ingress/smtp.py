"""SMTP ingress: aiosmtpd, with DATA streamed into the spool.

Cheap checks happen in the dialogue (RCPT against the routes, SIZE against
the limit, spool space at MAIL); everything heavy happens after the queue.
DATA is read in large chunks, dot-unstuffed and written to the spool file
as it arrives, never assembled in memory, and answered ``250 2.0.0 Ok:
queued as ID`` only once the file and its directory entries are fsynced.

Only ``<CR><LF>.<CR><LF>`` ends the data.  Bare CR and bare LF inside the
data are turned into CRLF before the bytes reach the spool, so a smuggled
end-of-data sequence (``<LF>.<LF>``, ``<CR>.<CR>``, ...) is just a line with
a dot on it, which delivery dot-stuffs again: the gateway cannot be made to
emit a second message downstream.  A stuffing dot is removed at the start of
every line the gateway recognises (after a bare CR or LF too, as Postfix
does); a line that is a dot alone is data.  A message holding a NUL byte is
refused at the end of DATA with ``554 5.6.0`` and nothing of it is spooled;
so is one with more than ``smtp.max_received`` Received fields, with
``554 5.4.6``: it is going round a mail loop.

MAIL FROM and RCPT TO take well-formed domains only (no trailing dot, no
empty label, LDH labels of at most 63 characters, at most 253 in all;
address literals for senders only), and refuse an address that is not valid
UTF-8, or not ASCII without the SMTPUTF8 parameter, with ``553 5.6.7``: such
an address would fail later, after a 250 or as a 451 retried for days.

Commands end with ``<CR><LF>`` only: a command line with a bare CR or a
bare LF is refused (``521``) and the connection closed, so a command
sequence that another server would split differently cannot be pipelined
through us.  With a certificate configured, STARTTLS is offered (TLS 1.2
minimum, ``gateway/tls.py``); clients in ``smtp.require_tls_from`` must
use it before MAIL.

Any internal error answers 451 (the sender retries) and a full or read-only
spool 452, never a 5xx that would bounce a customer's mail, and never a 250
for what is not on disk.
"""
from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, AnyStr, Protocol, cast

from aiosmtpd.smtp import SMTP, Envelope as SmtpEnvelope, Session, syntax

from gateway import logs, metrics, srs as srs_mod
from gateway.batch import Batch
from gateway.config import Config
from gateway.deadline import Deadline
from gateway.ingress.routing import AddressRefused, check_sender, invalid_utf8, route_for, split_address
from gateway.ingress.tls import IngressTls
from gateway.lineends import crlf_only
from gateway.spool import Envelope, Handle, Reception, Spool, SpoolError, commit_all, is_disk_full

log = logs.get("smtp")

# More than the reader ever buffers (twice STREAM_LIMIT): read() then hands
# over its whole buffer instead of slicing it and moving the rest down.
READ_SIZE = 1 << 23
# Messages up to this size are gathered in memory and spooled in one go
# (one thread hop instead of three); larger ones stream to the spool file.
SMALL_MESSAGE = 1 << 20
# A plain path (no quoting, no source route) parses without the email
# package's header parser, which costs more than the rest of a command.
_SIMPLE_PATH = re.compile(r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>(.*)", re.S)
WRITABLE_CHECK_SECONDS = 1.0
# Seconds a refused SRS address costs the session that sent it (Postfix's
# smtpd_error_sleep_time).  The hash is 6 case-folded base64 characters by
# default, one chance in 2^30 a guess: answered at once, pipelined guesses
# found a valid address for any chosen recipient in about a day, an open
# relay.  At one a second per session (and max_connections_per_client
# sessions, 100 by default), a client address needs about two months.
SRS_REFUSAL_DELAY = 1.0
# Bytes of a message's start searched for its Message-ID (for the log).
HEADER_SCAN = 64 << 10
# The StreamReader buffers up to twice this before pausing the socket; the
# aiosmtpd default (1001 bytes) would pause it every 2 KB during DATA.
STREAM_LIMIT = 1 << 20
# Outside DATA: a command line is at most a few hundred bytes, and a longer
# one is answered 500 and dropped piece by piece (aiosmtpd).  With the DATA
# limit, 300 sessions each holding an unfinished 1 MiB command line held
# 300 MiB of the process.
COMMAND_LIMIT = 16 << 10
# A line of DATA with no line end is passed on to the spool in pieces of
# about this size rather than held whole (the same 300 sessions, each in the
# middle of a 1 MiB line, held 340 MiB).
LONG_LINE = 64 << 10
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
# A dot that starts a line (after normalisation every line end is CRLF)
# and is not the whole line: the stuffing dot (RFC 5321 section 4.5.2).
_STUFFED_DOT = re.compile(rb"(?<=\r\n)\.(?!\r\n)")


class Queued(Protocol):
    """Where a queued message goes next: the queue runner of this process."""

    def can_take(self) -> bool:
        """Whether a task is free to take a message handed over locked."""

    def enqueue(self, queue_id: str, taken: tuple[Handle, Envelope] | None = None) -> None:
        """Take a message just queued: by its id (in ``incoming``), or
        ``taken``: still locked, in ``active``, with its envelope."""


class Handler:
    """The aiosmtpd handler: the gateway's answers to MAIL, RCPT and EHLO."""

    def __init__(self, cfg: Config, spool: Spool, runner: Queued | None,
                 tls: IngressTls | None = None) -> None:
        self.cfg = cfg
        self.tls = tls
        self.spool = spool
        self.runner = runner
        self.commits = group_commit(self._abandoned)
        self._writable_at = 0.0
        self._writable_error: str | None = None
        self._free = 0
        # Sessions of this process, in all and by client address.
        self.sessions = 0
        self.per_client: dict[str, int] = {}
        # Set when the gateway is stopping: new sessions get 421.
        self.draining = False

    def _abandoned(self, item: tuple[_SpoolWriter, Envelope, bool], handle: Handle | None) -> None:
        """A message committed after its session went away (the client
        closed right after the final dot, before reading the reply): it is
        durable, so it is logged as queued and handed to a worker at once
        (left unlocked in ``active``, it would wait for recovery, 30 s)."""
        envelope = item[1]
        metrics.RECEIVED.labels(envelope.route).inc()
        log.info("queued", queue_id=envelope.queue_id, mail_from=envelope.mail_from, rcpts=envelope.rcpt_tos,
                 size=envelope.size, client=envelope.client_addr, route=envelope.route,
                 note="the client went away before the reply")
        try:
            if self.runner is not None:
                self.runner.enqueue(envelope.queue_id, (handle, envelope) if handle is not None else None)
                return
        except Exception as e:  # noqa: BLE001 - the message is on disk: recovery takes it
            log.error("could not wake the worker", queue_id=envelope.queue_id, error=str(e))
        if handle is not None:
            handle.release()  # unlocked in active: recover() puts it back in incoming

    def admit(self, peer: object) -> str | None:
        """Count a new session in, or say why it is refused (a 421 reply)."""
        refusal = self._admit(peer)
        if refusal is not None:
            metrics.SMTP_SESSIONS.labels("refused").inc()
        return refusal

    def _admit(self, peer: object) -> str | None:
        if self.draining:
            return f"421 4.3.2 {self.cfg.gateway.hostname} Service shutting down, try again later"
        client = peer[0] if isinstance(peer, tuple) else str(peer)
        limits = self.cfg.smtp
        if self.sessions >= limits.max_sessions:
            log.warning("session refused: too many sessions", client=client, sessions=self.sessions)
            return f"421 4.3.2 {self.cfg.gateway.hostname} Too many sessions, try again later"
        if self.per_client.get(client, 0) >= limits.max_connections_per_client:
            log.warning("session refused: too many connections from client", client=client)
            return f"421 4.7.0 {self.cfg.gateway.hostname} Too many connections from {client}"
        metrics.SMTP_SESSIONS.labels("accepted").inc()
        self.sessions += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return None

    def leave(self, peer: object) -> None:
        """Count a session out."""
        client = peer[0] if isinstance(peer, tuple) else str(peer)
        self.sessions -= 1
        left = self.per_client.get(client, 1) - 1
        if left:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)

    async def spool_error(self, size: int = 0) -> str | None:
        """Why the spool cannot take a message of ``size`` bytes now, or
        None; the disk is looked at at most once a second, not per MAIL."""
        now = time.monotonic()
        if now - self._writable_at >= WRITABLE_CHECK_SECONDS:
            try:
                self._free = await asyncio.to_thread(self.spool.check_writable, self.cfg.gateway.spool_min_free)
                self._writable_error = None
            except SpoolError as e:
                self._writable_error = str(e)
                self._free = 0
            self._writable_at = now
        if self._writable_error is None and size > self._free:
            return f"spool {self.spool.root}: {size} bytes declared, {self._free} free above the minimum"
        return self._writable_error

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        responses.insert(1, f"250-SIZE {self.cfg.smtp.max_message_size}")
        responses.append("250-PIPELINING")
        responses.append("250-ENHANCEDSTATUSCODES")
        responses.append(last)
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          mail_options: list[str]) -> str:
        # aiosmtpd hands the null reverse-path over as "<>" and needs a truthy
        # mail_from to accept RCPT; it becomes "" in the spooled envelope.
        if address and address != "<>":
            # Invalid UTF-8 would be accepted here and fail when spooled (a
            # 451 after DATA, retried for days): refuse it now, for good.
            if invalid_utf8(address):
                return "553 5.6.7 Sender address is not valid UTF-8"
            if not address.isascii() and not _smtputf8(mail_options):
                return "553 5.6.7 Non-ASCII sender address needs the SMTPUTF8 parameter"
            try:
                check_sender(address)
            except AddressRefused as e:
                return f"553 5.1.7 <{_printable(address)}>: {e}"
        if any(invalid_utf8(opt) for opt in mail_options):
            return "501 5.5.2 MAIL parameters are not valid UTF-8"
        if self.tls is not None and session.ssl is None and session.peer and \
                self.tls.required_for(str(session.peer[0])):
            return "530 5.7.0 Must issue a STARTTLS command first"
        declared = 0
        for opt in mail_options:
            key, _, value = opt.partition("=")
            if key.upper() == "SIZE" and value.isdigit():
                declared = int(value)
                if declared > self.cfg.smtp.max_message_size:
                    return "552 5.3.4 Message size exceeds fixed maximum message size"
        error = await self.spool_error(declared)
        if error is not None:
            log.error("spool not writable", error=error)
            return "452 4.3.1 Insufficient system storage"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.route = None  # type: ignore[attr-defined]
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        if invalid_utf8(address) or any(invalid_utf8(opt) for opt in rcpt_options):
            return "553 5.6.7 Recipient address is not valid UTF-8"
        if not address.isascii() and not envelope.smtp_utf8:
            return "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8 in MAIL FROM"
        try:
            split_address(address)
        except AddressRefused as e:
            return f"553 5.1.3 <{_printable(address)}>: {e}"
        srs = srs_mod.from_config(self.cfg)
        if srs is not None and srs.owns(address):
            # A bounce to an SRS address of ours: accepted only when it
            # verifies, and queued for the original sender (gateway/srs.py).
            try:
                original = srs_mod.accept_bounce(self.cfg, srs, envelope.mail_from or "", address)
            except srs_mod.SrsError as e:
                log.info("SRS address refused", rcpt=_printable(address), reason=str(e),
                         client=session.peer[0] if session.peer else "")
                await asyncio.sleep(SRS_REFUSAL_DELAY)
                return f"550 5.1.1 <{_printable(address)}>: {e}"
            log.info("SRS address reversed", rcpt=_printable(address), to=original)
            address = original
            route = next((r for r in self.cfg.routes if r.name == srs_mod.BOUNCE_ROUTE), None)
        else:
            route = route_for(self.cfg.routes, address)
        if route is None:
            log.info("relay refused", rcpt=_printable(address), client=session.peer[0] if session.peer else "")
            return f"550 5.7.1 <{_printable(address)}>: Relay access denied"
        current = getattr(envelope, "route", None)
        if current is not None and current != route.name:
            # One message, one route: the sender retries this recipient in a
            # transaction of its own (RFC 5321 section 4.5.3.1.10).
            return "452 4.5.3 Recipients on another route: send them separately"
        if len(envelope.rcpt_tos) >= self.cfg.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.route = route.name  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BareLineEnd):
            return "521 5.5.2 Bare CR or LF in an SMTP command; closing connection"
        log.error("SMTP session error", error=f"{type(error).__name__}: {error}")
        return "451 4.3.0 Internal error, please try again later"


class BareLineEnd(Exception):
    """A command line ended in, or held, a CR or LF that was not CRLF."""


class CommandReader(asyncio.StreamReader):
    """The connection's reader: aiosmtpd reads command lines with
    ``readuntil()`` (up to a LF); a line that is not ``...<CR><LF>`` with no
    other CR or LF in it raises ``BareLineEnd`` instead of being obeyed.
    DATA is read with ``read()`` (``GatewaySMTP._receive``) and is not
    affected; its bare line ends are normalised there."""

    refused = False

    # aiosmtpd passes one bytes separator; typeshed's base also takes a tuple.
    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        if self.refused:
            # The session is over: wait for the close (which cancels us)
            # rather than read, and obey, what the client pipelined after.
            await asyncio.get_running_loop().create_future()
        line = await super().readuntil(separator)
        if separator == b"\n" and (not line.endswith(b"\r\n") or b"\r" in line[:-2]):
            self.refused = True
            self._buffer.clear()  # type: ignore[attr-defined]
            raise BareLineEnd()
        return line


def received_count(head: bytes) -> int:
    """The Received fields in the start of a message (its header block,
    or as much of it as ``head`` holds: the newest are on top)."""
    end = head.find(b"\r\n\r\n")
    # Counts over the lower-cased block: a third of a case-blind regex's
    # time (this runs for every message received).
    block = b"\r\n" + (head if end < 0 else head[:end + 2]).lower()
    return block.count(b"\r\nreceived:") + block.count(b"\r\nreceived ") + block.count(b"\r\nreceived\t")


_MESSAGE_ID = re.compile(rb"(?:^|\r\n)message-id[ \t]*:[ \t]*((?:[^\r]|\r\n[ \t])*)", re.I)


def header_message_id(head: bytes) -> str | None:
    """The Message-ID in the start of a message (its header block), if any."""
    end = head.find(b"\r\n\r\n")
    m = _MESSAGE_ID.search(head if end < 0 else head[:end + 2])
    if m is None:
        return None
    return " ".join(m.group(1).decode("utf-8", "replace").split())[:998] or None


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:320]


def _smtputf8(mail_options: list[str]) -> bool:
    return any(opt.upper() == "SMTPUTF8" for opt in mail_options)


class _Commands(Mapping[str, Any]):
    """A connection's command table (aiosmtpd's ``_smtp_methods``), binding
    a method when a command arrives rather than every method per connection."""

    __slots__ = ("_conn", "_names")

    def __init__(self, conn: SMTP, names: frozenset[str]) -> None:
        self._conn = conn
        self._names = names

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return getattr(self._conn, "smtp_" + name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self._conn, "smtp_" + name) if name in self._names else default

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with a streaming DATA that writes to the spool."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, data_size_limit=None, enable_SMTPUTF8=True, **kwargs)
        self.gw = handler

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BareLineEnd):
            # The reply is written before the close takes effect (a
            # transport flushes its buffer when closed); the reader reads
            # nothing more meanwhile (CommandReader.refused).
            log.warning("bare CR or LF in a command; connection closed",
                        client=self.session.peer[0] if self.session and self.session.peer else "")
            self.loop.call_soon(self._close_after_reply)
        return await super().handle_exception(error)

    async def push(self, status: AnyStr) -> None:
        # Every reply goes through here: count the refusals by code.
        code = status[:3] if isinstance(status, str) else status[:3].decode("ascii", "replace")
        if code[:1] in ("4", "5"):
            metrics.SMTP_REJECTIONS.labels(code if code.isdigit() else "other").inc()
        await super().push(status)

    async def smtp_STARTTLS(self, arg: str) -> None:
        before = self._original_transport
        try:
            await super().smtp_STARTTLS(arg)
        except BaseException:
            # A handshake that failed (or a connection lost during it).
            if before is None and self._original_transport is not None:
                metrics.SMTP_TLS.labels("failure").inc()
                log.info("TLS handshake failed")
            raise
        if before is None and self._original_transport is not None:
            metrics.SMTP_TLS.labels("success").inc()

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels and re-arms a timer on every command and every
        # DATA chunk; a Deadline moves instead.  aiosmtpd's connection_lost
        # cancels whatever _timeout_handle holds.
        if self._timeout_handle is None:
            self._timeout_handle = Deadline(self.loop, self._timeout_cb)  # type: ignore[assignment]
        cast(Deadline, self._timeout_handle).set(duration or self._timeout_duration)

    def _close_after_reply(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _SIMPLE_PATH.fullmatch(arg.lstrip()) if arg else None
        if m is not None:
            return m.group(1), m.group(2)
        return super()._getaddr(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Each connection gets a fresh reader in the base class: bounded for
        # command lines, raised while DATA is read (_receive).
        self._reader._limit = COMMAND_LIMIT  # type: ignore[attr-defined]
        if self._original_transport is None:
            # aiosmtpd calls this again with the TLS transport after
            # STARTTLS: the session admitted before is still the same one.
            self._admitted = False

    async def _handle_client(self) -> None:
        assert self.session is not None
        refusal = self.gw.admit(self.session.peer)
        if refusal is not None:
            await self.push(refusal)
            assert self.transport is not None
            self.transport.close()
            return
        self._admitted = True
        # Every line of this session (its own task) names the client.
        peer = self.session.peer
        logs.bind(client=peer[0] if isinstance(peer, tuple) else str(peer))
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if getattr(self, "_admitted", False):
            self._admitted = False
            assert self.session is not None
            self.gw.leave(self.session.peer)
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        sink = _SpoolWriter(self.gw.spool)
        # Large DATA is read in large chunks; commands again after it.
        self._reader._limit = STREAM_LIMIT  # type: ignore[attr-defined]
        try:
            status = await self._receive(sink)
        finally:
            self._reader._limit = COMMAND_LIMIT  # type: ignore[attr-defined]
            # Once submitted to a commit, the commit owns it (it aborts
            # what it could not commit); before, this session does, also
            # when it is cancelled mid-DATA (the client went away).
            if not sink.submitted:
                await asyncio.to_thread(sink.abort)
        self._set_post_data_state()
        await self.push(status)

    async def _receive(self, reception: _SpoolWriter) -> str:
        """Read DATA into the spool; return the reply to send."""
        assert self.envelope is not None and self.session is not None
        limit = self.gw.cfg.smtp.max_message_size
        reader = self._reader
        buf = b""
        # Two kinds of line start: after a CRLF on the wire (only there can
        # the end-of-data marker begin), and after any line end the gateway
        # recognises (CRLF, bare CR, bare LF: all become CRLF), where a
        # stuffing dot is removed, as Postfix, which also takes a bare LF
        # as a line end, removes it.
        at_line_start = True
        at_any_line_start = True
        size = 0
        too_big = False
        has_nul = False
        bare_line_ends = 0
        body_8bit = False
        # The header block, up to HEADER_SCAN bytes: the queued line names
        # the Message-ID, as Postfix's cleanup line does.
        head = b""
        head_done = False
        error: BaseException | None = None
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                raise ConnectionResetError("client closed the connection during DATA")
            self._reset_timeout()
            buf += chunk
            # Not kept while the next read waits: a stalled client's last
            # chunk (up to 2 MiB) would stay alive with the session.
            chunk = b""
            done = False
            has_dot = True
            if at_line_start and buf[:3] == b".\r\n":
                content, leftover, done = b"", buf[3:], True
            elif at_line_start and len(buf) < 3 and b".\r\n".startswith(buf):
                continue  # may be the start of the end marker: need more bytes
            else:
                # A dot (memchr, fast) is what both the end of data and
                # dot-stuffing need: most large bodies (base64) have none.
                has_dot = b"." in buf
                idx = buf.find(b"\r\n.\r\n") if has_dot else -1
                if idx >= 0:
                    content, leftover, done = buf[: idx + 2], buf[idx + 5:], True
                else:
                    cut = buf.rfind(b"\n") + 1
                    if cut == 0:
                        if len(buf) < LONG_LINE:
                            continue
                        cut = len(buf) - 4  # a very long line: pass most of it on
                        # Never cut after a CR (it may be half a CRLF) nor
                        # between a bare CR and the dot after it (whether
                        # that dot is stuffing depends on what follows).
                        if buf[cut - 1:cut] == b"\r":
                            cut -= 1
                        elif buf[cut - 2:cut] == b"\r.":
                            cut -= 2
                    content, buf, leftover = buf[:cut], buf[cut:], b""
            if content:
                # NUL is refused at the end of data (554 5.6.0): nothing of
                # the message is spooled, and the rest is read and dropped.
                if not has_nul and b"\x00" in content:
                    has_nul = True
                # Only CRLF ends a line on the wire; judge before normalising.
                wire_line_start = content.endswith(b"\r\n")
                clean = crlf_only(content)
                if not clean:
                    bare_line_ends += 1
                    content = _LINE_ENDS.sub(b"\r\n", content)
                # Undo dot-stuffing (RFC 5321 section 4.5.2) at every line
                # start, a dot alone on its line being data (on CRLF lines
                # such a line is the end of data and never gets here).
                if has_dot:
                    if at_any_line_start and content[:1] == b"." and content[1:3] != b"\r\n":
                        content = content[1:]
                    if clean:
                        content = content.replace(b"\r\n.", b"\r\n")
                    else:
                        content = _STUFFED_DOT.sub(b"", content)
                at_line_start = wire_line_start
                at_any_line_start = content.endswith(b"\r\n")
                if not head_done:
                    head += content[:HEADER_SCAN]
                    head_done = b"\r\n\r\n" in head or head.startswith(b"\r\n") or len(head) >= HEADER_SCAN
                size += len(content)
                if not body_8bit and not content.isascii():
                    body_8bit = True
                if size > limit:
                    too_big = True
                if not too_big and not has_nul and error is None:
                    try:
                        await reception.write(content)
                    except (OSError, SpoolError) as e:
                        error = e
                content = b""  # counted in what the writer gathers, or written
            if done:
                if leftover:
                    # Pipelined commands after the end of data belong to the
                    # command loop: hand them back to the reader.
                    reader._buffer[:0] = leftover  # type: ignore[attr-defined]
                break
        if too_big:
            log.warning("message too large", size=size, limit=limit)
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        if has_nul:
            log.warning("message refused: NUL character in the data", size=size,
                        client=self.session.peer[0] if self.session.peer else "")
            return "554 5.6.0 Message contains NUL characters; not accepted"
        if error is not None:
            log.error("spool write failed", error=str(error))
            return "452 4.3.1 Insufficient system storage" if is_disk_full(error) else \
                "451 4.3.0 Error writing message to the queue"
        # Every pass through the gateway adds a Received field on top: a
        # message with too many is going round a loop (a next hop, or an
        # SRS bounce, handing it back), and refusing it here, before it is
        # ours, ends the loop with one DSN from whoever sent it last.
        hops = received_count(head)
        if hops > self.gw.cfg.smtp.max_received:
            log.warning("message refused: too many Received fields, a mail loop", received=hops,
                        limit=self.gw.cfg.smtp.max_received, size=size)
            return f"554 5.4.6 Too many hops ({hops} Received fields): mail loop?"
        env = self.envelope
        peer = self.session.peer
        envelope = Envelope(
            queue_id="", mail_from="" if env.mail_from == "<>" else env.mail_from or "", rcpt_tos=list(env.rcpt_tos),
            route=getattr(env, "route", None) or "", received_at=time.time(),
            client_addr=peer[0] if isinstance(peer, tuple) else str(peer),
            client_name="", helo=self.session.host_name or "", size=size,
            smtputf8=bool(env.smtp_utf8), body_8bit=body_8bit,
            tls="yes" if self._tls_protocol else "")
        # A worker task that is free takes the message as it is: no claim.
        keep = self.gw.runner is not None and self.gw.runner.can_take()
        reception.submitted = True
        try:
            handle = await self.gw.commits.submit((reception, envelope, keep))
        except (OSError, SpoolError) as e:
            log.error("spool commit failed", queue_id=envelope.queue_id or None, error=str(e))
            return "452 4.3.1 Insufficient system storage" if is_disk_full(e) else \
                "451 4.3.0 Error writing message to the queue"
        metrics.RECEIVED.labels(envelope.route).inc()
        message_id = header_message_id(head)
        log.info("queued", queue_id=envelope.queue_id, mail_from=envelope.mail_from, rcpts=envelope.rcpt_tos,
                 size=size, client=envelope.client_addr, route=envelope.route,
                 **({"message_id": message_id} if message_id else {}),
                 **({"bare_line_ends": bare_line_ends} if bare_line_ends else {}))
        try:
            if self.gw.runner is not None:
                self.gw.runner.enqueue(envelope.queue_id, (handle, envelope) if handle is not None else None)
        except Exception as e:  # noqa: BLE001 - the message is on disk: it is ours, answer 250
            log.error("could not wake the worker", queue_id=envelope.queue_id, error=str(e))
        return f"250 2.0.0 Ok: queued as {envelope.queue_id}"


# Bytes of DATA gathered in memory by all the sessions of a process: past
# it, a session holding LONG_LINE or more streams to its spool file as a
# large message does.  Otherwise every session could hold up to
# SMALL_MESSAGE: 300 sessions that each sent 1 MiB and stalled held 340 MiB.
GATHER_LIMIT = 64 << 20


class _Gathered:
    """The bytes all sessions hold in memory, counted from the event loop
    and from the threads that flush or abort."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> int:
        with self._lock:
            self.total += n
            return self.total


GATHERED = _Gathered()


class _SpoolWriter:
    """DATA on its way to the spool: gathered in memory while small, then
    streamed into a Reception; committed by group_commit().

    A session cancelled mid-DATA (its client went away) aborts while a
    flush may still run in its thread (a thread call cannot be cancelled):
    the lock makes the abort wait for it, and a flush that starts after the
    abort does nothing, so no reception is left behind locked and no file
    descriptor closed under a write."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.reception: Reception | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        # Handed to group_commit(), which from then on owns it.
        self.submitted = False
        self._lock = threading.Lock()
        self._aborted = False

    async def write(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_size += len(data)
        crowded = GATHERED.add(len(data)) > GATHER_LIMIT
        if self.pending_size >= SMALL_MESSAGE or (crowded and self.pending_size >= LONG_LINE):
            await asyncio.to_thread(self._flush)

    def _take(self) -> list[bytes]:
        """What is gathered, counted out (under the lock)."""
        pending, self.pending = self.pending, []
        GATHERED.add(-self.pending_size)
        self.pending_size = 0
        return pending

    def _flush(self) -> None:
        with self._lock:
            if self._aborted:
                raise SpoolError("the reception was aborted")
            if self.reception is None:
                self.reception = self.spool.receive()
            data = b"".join(self._take())
            self.reception.write(data)

    def ready(self, envelope: Envelope) -> Reception:
        """Spool what is left (blocking); set the queue id; the reception
        to commit."""
        self._flush()
        assert self.reception is not None
        envelope.queue_id = self.reception.queue_id
        return self.reception

    def abort(self) -> None:
        """Forget what was received (blocking; idempotent)."""
        with self._lock:
            self._aborted = True
            self._take()
            if self.reception is not None:
                self.reception.abort()


def group_commit(abandoned: Callable[[tuple[_SpoolWriter, Envelope, bool], Handle | None], None]
                 ) -> Batch[tuple[_SpoolWriter, Envelope, bool], Handle | None]:
    """Commits of one process's sessions, several to a thread call.

    A session that ends its DATA while a commit is running waits for the
    next batch, which takes every session that ended meanwhile: one hop to
    a thread and one fsync of each queue directory for all of them (see
    gateway/batch.py).  A message committed for a session that went away
    meanwhile is durable and is delivered: ``abandoned`` takes it (the
    handler hands it to a worker)."""
    return Batch(_commit_batch, abandoned=abandoned)


def _commit_batch(batch: list[tuple[_SpoolWriter, Envelope, bool]]) -> list[Handle | None | BaseException]:
    results: list[Handle | None | BaseException] = [None] * len(batch)
    ready: list[int] = []
    receptions: list[tuple[Reception, Envelope, bool]] = []
    for i, (writer, envelope, keep) in enumerate(batch):
        try:
            receptions.append((writer.ready(envelope), envelope, keep))
            ready.append(i)
        except (OSError, SpoolError) as e:
            results[i] = e
    committed = commit_all(receptions)
    for i, outcome in zip(ready, committed, strict=True):
        results[i] = outcome
    # What could not be committed is forgotten here, not by its session
    # (which may be gone): its directory would stay in tmp/, locked.
    for (writer, _, _), result in zip(batch, results, strict=True):
        if isinstance(result, BaseException):
            writer.abort()
    return results


def protocol_factory(handler: Handler, loop: asyncio.AbstractEventLoop, tls: IngressTls | None = None,
                     **kwargs: Any) -> Callable[[], SMTP]:
    """A factory of per-connection protocols built from one prototype.

    aiosmtpd's constructor introspects the protocol and the handler
    (``inspect.getmembers``, ``inspect.signature``) on every connection,
    which costs more CPU than receiving a small message.  The result is the
    same for every connection of one server, so it is computed once: each
    connection gets a copy of the prototype's state, a fresh stream reader
    (a ``CommandReader``), the TLS context in force,
    and its command table bound to itself.  Pinned to aiosmtpd 1.4.x, whose
    constructor this mirrors; the whole suite runs through it.
    """
    # Built with a placeholder context so STARTTLS is in the command table;
    # each connection then takes the context in force (``tls.context``).
    placeholder = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if tls is not None else None
    proto = GatewaySMTP(handler, loop=loop, tls_context=placeholder, **kwargs)
    state = dict(proto.__dict__)
    commands = frozenset(proto._smtp_methods)
    auth = {name: (impl.method.__name__, impl.is_builtin) for name, impl in proto._auth_methods.items()}
    auth_attr = type(next(iter(proto._auth_methods.values()))) if proto._auth_methods else None

    def make() -> SMTP:
        conn = GatewaySMTP.__new__(GatewaySMTP)
        conn.__dict__.update(state)
        if tls is not None:
            conn.tls_context = tls.context
        asyncio.StreamReaderProtocol.__init__(
            conn, CommandReader(loop=loop, limit=conn.line_length_limit),
            client_connected_cb=conn._cb_client_connected, loop=loop)
        # aiosmtpd declares a dict but only looks names up (get, items).
        conn._smtp_methods = _Commands(conn, commands)  # type: ignore[assignment]
        if auth_attr is not None:
            conn._auth_methods = {name: auth_attr(getattr(conn if builtin else handler, meth), builtin)
                                  for name, (meth, builtin) in auth.items()}
        return conn

    return make


async def start_server(cfg: Config, spool: Spool, runner: Queued | None,
                       reuse_port: bool = False,
                       tls: IngressTls | None = None) -> tuple[asyncio.AbstractServer, Handler]:
    """Listen for SMTP on the configured address (STARTTLS when ``tls`` has a
    context); return the server and the handler (whose ``draining`` flag and
    session count ``stop`` uses)."""
    handler = Handler(cfg, spool, runner, tls)
    loop = asyncio.get_running_loop()
    host, port = cfg.smtp.address
    factory = protocol_factory(handler, loop, handler.tls, hostname=cfg.gateway.hostname, ident=cfg.smtp.banner,
                               timeout=cfg.smtp.timeout)
    server = await loop.create_server(factory, host=host, port=port, reuse_port=reuse_port or None)
    return server, handler
