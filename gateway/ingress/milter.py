"""Milter ingress: the gateway's pipeline inside an existing Postfix or Sendmail MX.

The MTA keeps the queue; this speaks the milter protocol (version 6, the
one Postfix and Sendmail 8.14+ use) over TCP on asyncio, with no C library
and no threads of its own.  Per message it writes the headers and body the
MTA passes to a temporary file (in 1 MiB writes, in a thread; never the
whole message in memory), and at end of message runs the same
``Pipeline.process_file`` as the relay: parse, policies, offload, rewrite.
The result goes back as milter actions: the trace headers inserted at the
top, header fields the rewrite changed deleted and added again, and the body
replaced, only when a part was offloaded or refused.

Closed on content (rule 2): any error, or processing that takes longer
than ``milter.timeout`` (set below the MTA's own milter timeout), leaves the
message unexamined, so it answers ``tempfail`` by default (the MTA answers
451, the client retries: nothing lost, nothing unexamined reaches an
agent), or ``continue`` (the message goes on unchanged) where the
administrator chose availability over examination with ``milter.on_error``;
each is logged and counted.

Routes: a message is processed for the route of its envelope recipients as
the MTA passes them (as the client wrote them: read as the MTA delivers
them, ``routing.as_delivered``).  Recipients no route covers are left
alone; one in a form the relay refuses that names a route's domain
anywhere (a trailing dot, a percent hack, a bang path, quotes) gets ``553
5.1.3``, since the MTA may deliver it to that route's next hop; a
transaction mixing recipients of different routes (or covered and
uncovered ones) gets ``452 4.5.3`` for the recipients that differ from the
first, as the relay does, so every message has one route or none.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import os
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import logs, metrics
from gateway.config import Config, MilterSettings, RouteSettings
from gateway.delivery import Content
from gateway.ingress.routing import as_delivered, hidden_route_address, route_for
from gateway.mime.rewrite import split_fields
from gateway.pipeline import Pipeline
from gateway.pipeline.job import MessageJob
from gateway.spool.envelope import Envelope

log = logs.get("milter")

VERSION = 6

# Commands from the MTA (libmilter's mfdef.h, SMFIC_*).
ABORT, BODY, CONNECT, MACRO, BODYEOB, HELO = b"A", b"B", b"C", b"D", b"E", b"H"
QUIT_NC, HEADER, MAIL, EOH, OPTNEG, QUIT, RCPT, DATA, UNKNOWN = b"K", b"L", b"M", b"N", b"O", b"Q", b"R", b"T", b"U"
# Replies and actions (SMFIR_*).
CONTINUE, ACCEPT, TEMPFAIL, REPLYCODE = b"c", b"a", b"t", b"y"
ADDHEADER, INSHEADER, CHGHEADER, REPLBODY = b"h", b"i", b"m", b"b"

# Actions we ask for (SMFIF_*): add, change and delete headers; replace the body.
SMFIF_ADDHDRS, SMFIF_CHGBODY, SMFIF_CHGHDRS = 0x01, 0x02, 0x10
# Header values keep their leading space, so headers are rebuilt byte for byte.
SMFIP_HDR_LEADSPC = 0x100000

# A packet larger than this is a protocol error (body chunks are at most
# 64 KiB, or 1 MiB when the MTA negotiates larger ones).
MAX_PACKET = (1 << 20) + 1024
# Replacement body chunks: libmilter's MILTER_CHUNK_SIZE.
CHUNK = 65535
# Body bytes gathered before each write to the temporary file.
WRITE_BUFFER = 1 << 20


class ProtocolError(Exception):
    """The MTA sent something this side of the protocol cannot read."""


def _cstrings(data: bytes) -> list[bytes]:
    """NUL-terminated strings of a packet's data."""
    parts = data.split(b"\0")
    return parts[:-1] if parts and parts[-1] == b"" else parts


def _address(arg: bytes) -> str:
    return arg.decode("utf-8", "surrogateescape").strip().removeprefix("<").removesuffix(">")


@dataclass
class Transaction:
    """One message: envelope, the headers as the MTA passed them, the file."""

    mail_from: str = ""
    mail_args: list[str] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)
    route: RouteSettings | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # raw fields, CRLF
    path: Path | None = None
    file: Any = None
    buffer: bytearray = field(default_factory=bytearray)
    size: int = 0
    # Why the message could not be collected (temporary directory missing,
    # disk full); reported at end of message, where the MTA can be answered.
    error: OSError | None = None

    def close(self) -> None:
        """Remove the temporary file (the MTA keeps the message)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path is not None:
            # With it, the work files processing named after it
            # (``PATH.unpacked.eml``, ``PATH.autoreply.eml``).
            for p in [self.path, *self.path.parent.glob(glob.escape(self.path.name) + ".*")]:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            self.path = None


class MilterServer:
    """Accepts milter connections from the MTA; one task per connection."""

    def __init__(self, cfg: Config, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.counts: collections.Counter[str] = collections.Counter()
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        # Messages being processed, which stop() lets finish.
        self.busy: set[asyncio.Task[Any]] = set()
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded config; the listener's address stays as started."""
        self.cfg = cfg
        self.settings: MilterSettings = cfg.milter or MilterSettings()
        if self.settings.on_error == "continue":
            log.error("milter.on_error is \"continue\": a message whose processing fails or runs past "
                      "milter.timeout goes on unexamined; executables in it reach agents")

    async def start(self, reuse_port: bool = False) -> None:
        host, port = self.settings.address
        self._server = await asyncio.start_server(self._session, host, port, reuse_port=reuse_port or None,
                                                  limit=MAX_PACKET)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop listening; let messages being processed finish within ``grace``,
        then close every connection (the MTA applies its default action)."""
        if self._server is not None:
            self._server.close()
        if self.busy:
            await asyncio.wait(set(self.busy), timeout=grace)
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        session = Session(self, reader, writer)
        try:
            await session.run()
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError) as e:
            log.warning("milter connection closed", reason=f"{type(e).__name__}: {e}")
        except Exception:  # noqa: BLE001 - a bug here must not take the listener down
            # Closing the connection makes the MTA apply milter_default_action.
            log.exception("milter connection failed", count=self.count("error"))
        finally:
            session.txn.close()
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def count(self, outcome: str) -> int:
        """Count one outcome (gateway_milter_messages); return this process's total."""
        metrics.MILTER_MESSAGES.labels(outcome).inc()
        self.counts[outcome] += 1
        return self.counts[outcome]


class Session:
    """One connection from the MTA: several messages, one after the other."""

    def __init__(self, server: MilterServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.macros: dict[str, str] = {}
        self.client_name = self.client_addr = self.helo = ""
        self.leadspc = False
        self.txn = Transaction()

    async def _read(self) -> tuple[bytes, bytes]:
        head = await self.reader.readexactly(4)
        (length,) = struct.unpack(">I", head)
        if not 1 <= length <= MAX_PACKET:
            raise ProtocolError(f"packet length {length}")
        data = await self.reader.readexactly(length)
        return data[:1], data[1:]

    async def _send(self, cmd: bytes, data: bytes = b"") -> None:
        self.writer.write(struct.pack(">I", len(data) + 1) + cmd + data)
        await self.writer.drain()

    async def run(self) -> None:
        while True:
            try:
                cmd, data = await self._read()
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise
                return  # closed between packets: the MTA (or a port check) hung up
            if cmd == QUIT:
                return
            await self._dispatch(cmd, data)

    async def _dispatch(self, cmd: bytes, data: bytes) -> None:
        if cmd == OPTNEG:
            await self._optneg(data)
        elif cmd == MACRO:
            pairs = _cstrings(data[1:])
            # A malformed packet with a name and no value: the name is ignored.
            for k, v in zip(pairs[::2], pairs[1::2], strict=False):
                self.macros[k.decode("utf-8", "replace").strip("{}")] = v.decode("utf-8", "replace")
        elif cmd == CONNECT:
            parts = data.split(b"\0", 1)
            self.client_name = parts[0].decode("utf-8", "replace")
            rest = parts[1] if len(parts) > 1 else b""
            # family (1 byte), port (2 bytes), address, NUL; family "U" is unknown.
            if rest[:1] in (b"4", b"6") and len(rest) > 3:
                self.client_addr = rest[3:].rstrip(b"\0").decode("ascii", "replace")
            if self.client_name == f"[{self.client_addr}]":
                self.client_name = "unknown"  # no reverse name: Postfix passes the address
            await self._send(CONTINUE)
        elif cmd == HELO:
            self.helo = data.rstrip(b"\0").decode("utf-8", "replace")
            await self._send(CONTINUE)
        elif cmd == MAIL:
            self._reset()
            args = _cstrings(data)
            self.txn.mail_from = _address(args[0]) if args else ""
            self.txn.mail_args = [a.decode("utf-8", "replace") for a in args[1:]]
            await self._send(CONTINUE)
        elif cmd == RCPT:
            await self._rcpt(data)
        elif cmd == HEADER:
            name, _, value = data.partition(b"\0")
            value = value.rstrip(b"\0")
            sep = b":" if self.leadspc else b": "
            # Values arrive with LF between folded lines; the file is CRLF.
            value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self.txn.headers.append((name, name + sep + value + b"\r\n"))
            await self._send(CONTINUE)
        elif cmd == EOH:
            if self.txn.route is None:
                # Left alone: accept now, so the MTA sends no body at all.
                log.info("no route covers the recipients; left alone", queue_id=self.macros.get("i", ""),
                         rcpts=self.txn.rcpts, count=self.server.count("no_route"))
                await self._send(ACCEPT)
                return
            await self._open_file()
            await self._send(CONTINUE)
        elif cmd == BODY:
            await self._body(data)
            await self._send(CONTINUE)
        elif cmd == BODYEOB:
            if data:
                await self._body(data)
            await self._end_of_message()
            self._reset()
        elif cmd == ABORT:
            self._reset()
        elif cmd == QUIT_NC:
            self._reset()
            self.macros.clear()
            self.client_name = self.client_addr = self.helo = ""
        elif cmd in (DATA, UNKNOWN):
            await self._send(CONTINUE)
        else:
            raise ProtocolError(f"unknown command {cmd!r}")

    async def _optneg(self, data: bytes) -> None:
        if len(data) < 12:
            raise ProtocolError("short option negotiation")
        version, actions, protocol = struct.unpack(">III", data[:12])
        if version < 2:
            raise ProtocolError(f"milter protocol version {version} is too old")
        wanted = SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_CHGHDRS
        if actions & wanted != wanted:
            raise ProtocolError(f"the MTA does not allow the actions we need (offered {actions:#x})")
        self.leadspc = bool(protocol & SMFIP_HDR_LEADSPC)
        log.debug("milter negotiated", version=min(version, VERSION), actions=f"{actions:#x}",
                  protocol=f"{protocol:#x}", leading_space=self.leadspc)
        await self._send(OPTNEG, struct.pack(">III", min(version, VERSION), wanted,
                                             SMFIP_HDR_LEADSPC if self.leadspc else 0))

    async def _rcpt(self, data: bytes) -> None:
        args = _cstrings(data)
        rcpt = as_delivered(_address(args[0]) if args else "")
        routes = self.server.cfg.routes
        route = route_for(routes, rcpt)
        if route is None and hidden_route_address(routes, rcpt):
            # The MTA passes the address as the client wrote it, and may
            # deliver a form route_for refuses ("a%b@ours", "ours!a@mx",
            # a trailing dot) to a route's next hop: left alone, its mail
            # would reach an agent unexamined.  Refused, as the relay does.
            log.warning("recipient refused: a route's domain in an address form not accepted",
                        queue_id=self.macros.get("i", ""), rcpt=rcpt.encode("ascii", "backslashreplace").decode())
            await self._send(REPLYCODE, b"553 5.1.3 Address form not accepted for this domain\0")
            return
        txn = self.txn
        if txn.rcpts and route is not txn.route:
            # One message, one route (or none): the client sends this
            # recipient again in a transaction of its own.
            await self._send(REPLYCODE, b"452 4.5.3 Recipient on another route; send it in a separate "
                                        b"transaction\0")
            return
        txn.rcpts.append(rcpt)
        txn.route = route
        await self._send(CONTINUE)

    def _reset(self) -> None:
        self.txn.close()
        self.txn = Transaction()

    async def _open_file(self) -> None:
        txn = self.txn
        if txn.route is None or txn.file is not None or txn.error is not None:
            return  # left alone, or already failed: nothing is collected
        tmp = self.server.settings.temp_dir
        tmpdir = str(self.server.cfg.path(tmp)) if tmp else None
        try:
            fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="milter-", suffix=".eml", dir=tmpdir)
        except OSError as e:
            txn.error = e
            return
        txn.path = Path(name)
        txn.file = os.fdopen(fd, "wb")
        txn.buffer += b"".join(raw for _, raw in txn.headers) + b"\r\n"

    async def _body(self, data: bytes) -> None:
        txn = self.txn
        if txn.file is None:
            return
        txn.buffer += data
        if len(txn.buffer) >= WRITE_BUFFER:
            await self._flush()

    async def _flush(self) -> None:
        txn = self.txn
        chunk, txn.buffer = bytes(txn.buffer), bytearray()
        txn.size += len(chunk)
        try:
            await asyncio.to_thread(txn.file.write, chunk)
        except OSError as e:
            txn.error = e
            txn.close()

    async def _end_of_message(self) -> None:
        txn = self.txn
        queue_id = self.macros.get("i") or uuid.uuid4().hex[:12].upper()
        qlog = log.bind(queue_id=queue_id)
        if txn.route is None:  # only when the MTA skipped end of headers
            await self._send(CONTINUE)
            return
        settings = self.server.settings
        task = asyncio.ensure_future(self._process(txn, queue_id))
        self.server.busy.add(task)
        try:
            processed = await asyncio.wait_for(task, timeout=settings.timeout)
            # The actions are computed before the first is sent: an error
            # here still leaves the message untouched.
            actions, body = await asyncio.to_thread(self._actions, txn, processed)
        except TimeoutError:
            qlog.error("processing exceeded milter.timeout; message not examined", timeout=settings.timeout,
                       action=settings.on_error, count=self.server.count("timeout"))
            await self._send(TEMPFAIL if settings.on_error == "tempfail" else CONTINUE)
            return
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - rule 1: never lose the message (the MTA keeps it or passes it on)
            qlog.exception("processing failed; message not examined", action=settings.on_error,
                           error=f"{type(e).__name__}: {e}", count=self.server.count("error"))
            await self._send(TEMPFAIL if settings.on_error == "tempfail" else CONTINUE)
            return
        finally:
            self.server.busy.discard(task)
        for cmd, data in actions:
            await self._send(cmd, data)
        if body is not None:
            await self._replace_body(*body)
        outcome = "rewritten" if processed.changed else "unchanged"
        qlog.info("milter reply", outcome=outcome, route=txn.route.name, count=self.server.count(outcome))
        await self._send(CONTINUE)

    async def _replace_body(self, pending: bytearray, chunks: Iterator[bytes]) -> None:
        """Send the new body in REPLBODY packets, read from the file in a thread."""
        while True:
            while len(pending) >= CHUNK:
                await self._send(REPLBODY, bytes(pending[:CHUNK]))
                del pending[:CHUNK]
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                break
            pending += chunk
        if pending:
            await self._send(REPLBODY, bytes(pending))

    async def _process(self, txn: Transaction, queue_id: str) -> MessageJob:
        if txn.file is None and txn.error is None:
            await self._open_file()  # the MTA sent no end of headers
        if txn.file is not None:
            await self._flush()
        if txn.error is not None:
            raise txn.error
        await asyncio.to_thread(txn.file.flush)
        assert txn.path is not None and txn.route is not None
        envelope = Envelope(
            queue_id=queue_id, mail_from=txn.mail_from, rcpt_tos=list(txn.rcpts), route=txn.route.name,
            received_at=time.time(), client_addr=self.client_addr, client_name=self.client_name,
            helo=self.helo, size=txn.size, smtputf8=any(a.upper() == "SMTPUTF8" for a in txn.mail_args),
            body_8bit=any(a.upper() == "BODY=8BITMIME" for a in txn.mail_args),
            tls=self.macros.get("tls_version", ""))
        return await self.server.pipeline.process_file(txn.path, envelope, txn.route)

    def _actions(self, txn: Transaction, processed: MessageJob
                 ) -> tuple[list[tuple[bytes, bytes]], tuple[bytearray, Iterator[bytes]] | None]:
        """The header actions that turn the MTA's message into the output, and
        the new body (bytes read so far, the rest) when it changed.  Blocking
        reads of the temporary file: run in a thread."""
        assert txn.path is not None
        trace, rest = processed.segments[0], processed.segments[1:]
        assert isinstance(trace, bytes)
        # An unpacked TNEF makes the segments refer to a file of their own.
        chunks = Content(processed.path or txn.path, rest).chunks()
        head, body_start = _header_block(chunks)
        actions: list[tuple[bytes, bytes]] = []
        # The trace headers go on top, in order: insert the last first.
        for name, value in reversed(self._fields(trace)):
            actions.append((INSHEADER, struct.pack(">I", 0) + name + b"\0" + value + b"\0"))
        old = [(n.lower(), raw) for n, raw in txn.headers]
        new = [(n, raw) for n, raw in split_fields(head) if n]
        old_by: dict[bytes, list[bytes]] = collections.defaultdict(list)
        new_by: dict[bytes, list[bytes]] = collections.defaultdict(list)
        for n, raw in old:
            old_by[n].append(raw)
        for text_name, raw in new:
            new_by[text_name.encode("latin-1", "replace")].append(raw)
        for n in sorted(set(old_by) | set(new_by)):
            if old_by[n] == new_by[n]:
                continue
            # A field the rewrite changed: delete every occurrence (highest
            # index first, so the others keep theirs), then add the new ones.
            original_name = next(name for name, _ in txn.headers if name.lower() == n) if old_by[n] else n
            for index in range(len(old_by[n]), 0, -1):
                actions.append((CHGHEADER, struct.pack(">I", index) + original_name + b"\0\0"))
            for raw in new_by[n]:
                name, value = self._fields(raw)[0]
                actions.append((ADDHEADER, name + b"\0" + value + b"\0"))
        return actions, ((body_start, chunks) if processed.changed else None)

    def _fields(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """(name, value) of each field in a header block, as milter actions carry
        them: folded lines joined by LF, the leading space kept when negotiated."""
        out = []
        for _, raw in split_fields(block):
            if not raw.strip():
                continue
            name, _, value = raw.rstrip(b"\r\n").partition(b":")
            if not self.leadspc:
                value = value[1:] if value[:1] in (b" ", b"\t") else value
            out.append((name, value.replace(b"\r\n", b"\n")))
        return out


def _header_block(chunks: Iterator[bytes]) -> tuple[bytes, bytearray]:
    """Read ``chunks`` up to the blank line ending the header block; return
    the block (with its last line end) and the body bytes already read."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if buf.startswith(b"\r\n"):
            return b"", buf[2:]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buf[:end + 2]), buf[end + 4:]
    return bytes(buf), bytearray()
