"""SMTP to a route's next hop, with STARTTLS and connection reuse.

An SMTP client on asyncio streams: the conversation runs on the event loop
(smtplib in a thread cost a hop per message and a GIL hand-over per blocking
call, about a quarter of the gateway's CPU for small messages).  The message
is streamed from the spool file with dot-stuffing, never read whole: a small
one (the page cache has it) is read on the loop, a large one a window at a
time in a thread.  Idle connections are kept for reuse, bounded per next
hop: after a transaction that ended in 250 the next starts with MAIL,
otherwise with RSET; a reused connection the server closed meanwhile (no
reply, or 421) is replaced once.  MAIL, RCPT and DATA go in one write when
the server offers PIPELINING (RFC 2920).
A next hop that is down, answers 4xx, or cannot meet the route's TLS level
defers the message; a 5xx fails the recipients it names.

Next hops by domain (``smtp://contact.example.com``): the domain's MX
records are looked up (in a thread, with the ``[auth]`` DNS servers and
timeout) at each new connection and tried in preference order, equal
preferences in random order (RFC 5321 section 5.1), at most
``MX_ADDRESS_LIMIT`` addresses; a connection that fails, or a greeting that
is not 220 (Postfix's smtp_skip_5xx_greeting), or a TLS level not met moves
on to the next address.  A domain without MX records is its own mail
exchanger (its A and AAAA records); a lookup that fails defers the message
with the reason.  ``smtp://[HOST]:PORT`` and IP addresses skip the lookup.

TLS levels (the route's ``tls``): ``opportunistic`` uses STARTTLS when it
is offered and accepts any certificate; ``required`` also defers when it is
not offered; ``verify`` also checks the certificate against the CAs
(``tls_ca_file`` or the system's) and the next hop's host name.  A failed
handshake defers at every level: once STARTTLS is offered it is never
retried in clear text, so an attacker who breaks the handshake cannot
downgrade the connection.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import smtplib
import ssl
import time
from collections.abc import AsyncIterator, Callable

from gateway import logs
from gateway.authn.resolver import DnsTempError, Resolver
from gateway.batch import Batch, each
from gateway.deadline import Deadline
from gateway.delivery import After, Content, DeliveryResult
from gateway.lineends import Normaliser
from gateway.spool.envelope import Envelope

_IDLE_SECONDS = 30.0
# A message up to this size is read from the spool on the event loop: it
# was written a moment ago, and a hop to a thread costs more than the read.
INLINE_READ = 64 << 10
# Reply lines longer than this are a broken server, not a reply.
_MAX_LINE = 64 << 10
# The most mail exchanger addresses one connection attempt tries (Postfix's
# smtp_mx_address_limit): past them, each waiting out connect_timeout would
# hold the delivery for minutes.
MX_ADDRESS_LIMIT = 5

log = logs.get("delivery")


class TlsRequired(Exception):
    """The route requires TLS and the next hop did not offer it."""


class NoMailExchanger(Exception):
    """The next hop's domain gave no address to connect to now: the MX or
    address lookup failed or found nothing (``str()`` is the reason, with
    its enhanced status code)."""


class _Stale(Exception):
    """A reused connection was closed by the server before it answered."""


class BadReply(OSError):
    """The next hop said something that is not an SMTP reply, or hung up."""


# An address that needs no parsing to be put in angle brackets.
_PLAIN_ADDRESS = re.compile(r'[^\s<>()\[\]\\,;:"@]+@[^\s<>()\[\]\\,;:"@]+')


def _path(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO (``<>`` for the null sender)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)  # parses: slow, for the odd address


class _Connection:
    """One SMTP connection to the next hop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        # EHLO keywords (upper case) and their parameters.
        self.esmtp: dict[str, str] = {}
        self.encoding = "ascii"
        # One Deadline per connection: a timer per reply (asyncio.timeout)
        # cost more CPU than reading the reply.
        self._deadline = Deadline(asyncio.get_running_loop(), self._expire)
        self._waiting = False
        self.timed_out = False

    def _wait_from_now(self) -> None:
        """Give the server ``timeout`` seconds from now to answer."""
        self._waiting = True
        self._deadline.set(self.timeout)

    def _expire(self) -> None:
        if self._waiting:  # (idle in the pool, nothing is owed)
            # The read or write in progress fails with the connection.
            self.timed_out = True
            self.writer.transport.abort()

    def _failed(self, error: BaseException) -> BaseException:
        return TimeoutError() if self.timed_out else error

    def has(self, keyword: str) -> bool:
        return keyword in self.esmtp

    def send(self, *lines: str) -> None:
        """Send command lines, in one write (the transport sends at once,
        buffering only what the socket does not take)."""
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode(self.encoding))

    async def reply(self) -> tuple[int, bytes]:
        """The next reply: its code and its text lines joined by LF."""
        lines = []
        self._wait_from_now()
        try:
            while True:
                try:
                    line = await self.reader.readline()
                except ValueError:  # longer than the reader's limit
                    raise BadReply("reply line too long") from None
                if not line.endswith(b"\n"):
                    raise BadReply("connection closed by the next hop")
                code, more, text = line[:3], line[3:4] == b"-", line[4:].rstrip(b"\r\n")
                lines.append(text)
                if not more:
                    break
        except OSError as e:
            raise self._failed(e) from None
        finally:
            self._waiting = False
        if not code.isdigit():
            raise BadReply(f"not an SMTP reply: {line[:80]!r}")
        return int(code), b"\n".join(lines)

    async def command(self, line: str) -> tuple[int, bytes]:
        self.send(line)
        return await self.reply()

    async def write(self, data: bytes) -> None:
        """Send bytes, waiting while the server is slow to take them."""
        self.writer.write(data)
        self._wait_from_now()
        try:
            await self.writer.drain()
        except OSError as e:
            raise self._failed(e) from None
        finally:
            self._waiting = False

    async def ehlo(self, hostname: str) -> None:
        """EHLO (HELO if refused); remember the extensions."""
        code, text = await self.command(f"EHLO {hostname}")
        self.esmtp = {}
        if code == 250:
            for line in text.split(b"\n")[1:]:
                keyword, _, params = line.decode("ascii", "replace").partition(" ")
                self.esmtp[keyword.upper()] = params
            return
        code, text = await self.command(f"HELO {hostname}")
        if code != 250:
            raise BadReply(f"HELO refused: {code} {text.decode('utf-8', 'replace')}")

    def close(self) -> None:
        self._deadline.cancel()
        self.writer.close()

    async def quit(self) -> None:
        try:
            self.timeout = min(self.timeout, 5.0)
            await self.command("QUIT")
        except (OSError, TimeoutError):
            pass
        self.close()


class SmtpNextHop:
    """An SMTP server that takes the route's mail."""

    def __init__(self, host: str, port: int, *, hostname: str, tls: str, connect_timeout: float,
                 command_timeout: float, max_connections: int, tls_ca_file: str | None = None,
                 resolver: Resolver | None = None) -> None:
        self.host, self.port = host, port
        # With a resolver, ``host`` is a mail domain whose MX records say
        # where to connect; without, the host itself.
        self.resolver = resolver
        if resolver is not None:
            self.name = f"smtp://{host}:{port}"
        else:
            self.name = f"smtp://[{host}]:{port}" if not _is_ip(host) or ":" in host else f"smtp://{host}:{port}"
        self.hostname = hostname
        self.tls = tls
        self.tls_ca_file = tls_ca_file
        self._ctx = self._tls_context()
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[tuple[float, _Connection, bool]] = []
        # What the worker does after a delivery (remove a delivered message)
        # is blocking: many deliveries share a thread call.
        self._after: Batch[Callable[[], None], None] = Batch(each)

    async def _connect(self, queue_id: str = "") -> _Connection:
        """A new connection: to the host, or to the first mail exchanger of
        the domain that takes it.  Raises OSError, TlsRequired or
        NoMailExchanger with the reason."""
        if self.resolver is None:
            return await self._connect_to(self.host, self.host)
        targets = await asyncio.to_thread(self._mail_exchangers, self.resolver)
        errors: list[str] = []
        tls_only = True
        for name, address in targets:
            try:
                return await self._connect_to(address, name)
            except (OSError, TlsRequired) as e:
                tls_only = tls_only and isinstance(e, TlsRequired)
                errors.append(f"{name}[{address}]: {e}")
                log.warning("mail exchanger failed", queue_id=queue_id, next_hop=self.name, mx=name,
                            address=address, reason=str(e), tried=len(errors), of=len(targets))
        why = "; ".join(errors)
        raise TlsRequired(why) if tls_only else OSError(why)

    def _mail_exchangers(self, resolver: Resolver) -> list[tuple[str, str]]:
        """(name, address) to try in order: the MX hosts by preference
        (equal ones shuffled), each with its A then AAAA addresses; the
        domain itself when it has no MX records (RFC 5321 section 5.1).
        Blocking DNS: run in a thread."""
        domain = self.host
        try:
            records = resolver.query(domain, "MX")
        except DnsTempError as e:
            raise NoMailExchanger(f"4.4.3 MX lookup for {domain} failed: {e}") from None
        if records:
            ranked = sorted(records, key=lambda r: (r.preference, random.random()))
            hosts = [r.exchange.to_text(omit_final_dot=True) for r in ranked]
            if hosts == [""] or hosts == ["."]:
                raise NoMailExchanger(f"4.1.10 {domain} has a null MX record (RFC 7505): it takes no mail")
        else:
            hosts = [domain]
        targets: list[tuple[str, str]] = []
        failures: list[str] = []
        for host in hosts:
            for qtype in ("A", "AAAA"):
                try:
                    targets += [(host, r.address) for r in resolver.query(host, qtype)]
                except DnsTempError as e:
                    failures.append(str(e))
            if len(targets) >= MX_ADDRESS_LIMIT:
                break
        if not targets:
            found = f"MX {', '.join(hosts)}" if records else "no MX record"
            why = f": {'; '.join(failures)}" if failures else ""
            raise NoMailExchanger(f"4.4.4 no address for {domain} ({found}){why}")
        return targets[:MX_ADDRESS_LIMIT]

    async def _connect_to(self, address: str, name: str) -> _Connection:
        """A connection to ``address``, greeted and EHLOed (TLS per the
        route); ``name`` is the host name TLS verifies and sends as SNI."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                # asyncio sets TCP_NODELAY: commands and the end of data are
                # small writes that wait for a reply.
                reader, writer = await asyncio.open_connection(address, self.port, limit=_MAX_LINE)
        except TimeoutError:
            raise OSError(f"no connection within {self.connect_timeout:g}s") from None
        conn = _Connection(reader, writer, self.connect_timeout)
        try:
            code, text = await conn.reply()
            if code != 220:
                raise BadReply(f"greeting {code} {text.decode('utf-8', 'replace')}")
            await conn.ehlo(self.hostname)
            if self.tls != "none" and conn.has("STARTTLS"):
                await self._starttls(conn, name)
                await conn.ehlo(self.hostname)
            elif self.tls in ("required", "verify"):
                raise TlsRequired(f"4.7.10 TLS is required for {self.name} but it does not offer STARTTLS")
        except TimeoutError:
            conn.close()
            raise OSError(f"no reply within {self.connect_timeout:g}s") from None
        except BaseException:
            conn.close()
            raise
        conn.timeout = self.command_timeout
        return conn

    async def _starttls(self, conn: _Connection, name: str) -> None:
        code, text = await conn.command("STARTTLS")
        if code != 220:
            raise TlsRequired(f"4.7.0 TLS handshake with {self.name} failed: STARTTLS answered {code} "
                              f"{text.decode('utf-8', 'replace')}")
        try:
            # The host name checked at the "verify" level, and sent as SNI.
            await conn.writer.start_tls(self._ctx, server_hostname=name,
                                        ssl_handshake_timeout=self.connect_timeout)
        except ssl.SSLCertVerificationError as e:
            raise TlsRequired(f"4.7.5 certificate of {self.name} not verified: {e.verify_message}") from None
        except (ssl.SSLError, OSError, TimeoutError) as e:
            raise TlsRequired(f"4.7.0 TLS handshake with {self.name} failed: {e}") from None

    def _tls_context(self) -> ssl.SSLContext:
        if self.tls == "verify":
            ctx = ssl.create_default_context(cafile=self.tls_ca_file)
        else:
            # Opportunistic and "required" accept any certificate (RFC 7435):
            # verification is the route's "verify" level.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def _checkout(self, queue_id: str = "") -> tuple[_Connection, bool]:
        """A connection ready for MAIL, and whether it was used before (a
        used one may have been closed by the server meanwhile)."""
        while self._idle:
            since, conn, clean = self._idle.pop()
            if time.monotonic() - since < _IDLE_SECONDS and not conn.writer.is_closing():
                if clean:
                    return conn, True
                try:
                    if (await conn.command("RSET"))[0] == 250:
                        return conn, True
                except (OSError, TimeoutError):
                    pass
            conn.close()
        return await self._connect(queue_id), False

    async def _deliver(self, envelope: Envelope, rcpts: list[str], message: Content) -> DeliveryResult:
        result = DeliveryResult()
        try:
            conn, reused = await self._checkout(envelope.queue_id)
        except (TlsRequired, NoMailExchanger) as e:
            return result.defer_all(rcpts, str(e))
        except OSError as e:
            return result.defer_all(rcpts, f"4.4.1 connect to {self.name} failed: {e}")
        if reused:
            try:
                return await self._transaction(conn, envelope, rcpts, message, result)
            except _Stale:
                # The server closed the idle connection before our first
                # command: nothing was said, so try once on a new one.
                try:
                    conn = await self._connect(envelope.queue_id)
                except (TlsRequired, NoMailExchanger) as e:
                    return result.defer_all(rcpts, str(e))
                except OSError as e:
                    return result.defer_all(rcpts, f"4.4.1 connect to {self.name} failed: {e}")
        return await self._transaction(conn, envelope, rcpts, message, result, fresh=True)

    async def _transaction(self, conn: _Connection, envelope: Envelope, rcpts: list[str], message: Content,
                           result: DeliveryResult, fresh: bool = False) -> DeliveryResult:
        """One mail transaction on ``conn``: MAIL, RCPT and DATA pipelined
        when the server offers PIPELINING (RFC 2920), then the content.
        Raises _Stale when a reused connection turns out closed before any
        reply."""
        reusable = clean = False
        replied = False
        try:
            options = []
            if conn.has("SIZE"):
                options.append(f"SIZE={message.size}")
            if envelope.body_8bit and conn.has("8BITMIME"):
                options.append("BODY=8BITMIME")
            # A message received with SMTPUTF8 needs it only when an address
            # or the message itself is not ASCII (RFC 6531 section 3.4).
            needs_utf8 = envelope.smtputf8 and (envelope.body_8bit or not envelope.mail_from.isascii()
                                                or not all(r.isascii() for r in rcpts))
            if needs_utf8:
                if not conn.has("SMTPUTF8"):
                    for r in rcpts:
                        result.failed[r] = f"5.6.7 {self.name} does not support SMTPUTF8"
                    reusable = clean = True
                    return result
                options.append("SMTPUTF8")
                conn.encoding = "utf-8"
            mail = f"MAIL FROM:{_path(envelope.mail_from)}{' ' if options else ''}{' '.join(options)}"
            if conn.has("PIPELINING"):
                # One write: a server that answers MAIL with 421 and closes
                # has then read the group whole. Sent line by line, a later
                # line could meet the closed socket (EPIPE), and the transport
                # would fail before the 421 was read.
                conn.send(mail, *(f"RCPT TO:{_path(r)}" for r in rcpts), "DATA")
                codes = [await self._first_reply(conn, fresh)]
                replied = True
                if codes[0][0] == 421:  # closing: the replies after it never come
                    _record(result, rcpts, *codes[0], "MAIL FROM")
                    return result
                codes += [await conn.reply() for _ in rcpts]
                data_reply: tuple[int, bytes] | None = await conn.reply()
            else:
                conn.send(mail)
                codes = [await self._first_reply(conn, fresh)]
                replied = True
                if codes[0][0] == 250:
                    codes += [await conn.command(f"RCPT TO:{_path(r)}") for r in rcpts]
                data_reply = None
            code, resp = codes[0]
            if code != 250:
                _record(result, rcpts, code, resp, "MAIL FROM")
                # A pipelined DATA after a refused MAIL is refused too; after
                # 421 the server closes the connection.
                reusable = (code < 500 or code in (550, 553)) and code != 421 and \
                    (data_reply is None or data_reply[0] != 354)
                return result
            accepted = []
            for r, (code, resp) in zip(rcpts, codes[1:], strict=True):
                if code in (250, 251):
                    accepted.append(r)
                else:
                    _record(result, [r], code, resp, "RCPT TO")
            if data_reply is None and accepted:
                data_reply = await conn.command("DATA")
            if not accepted:
                if data_reply is not None and data_reply[0] == 354:
                    # RFC 2920: DATA accepted with no recipient; end it empty.
                    await conn.command(".")
                reusable = True
                return result
            assert data_reply is not None
            code, resp = data_reply
            if code != 354:
                _record(result, accepted, code, resp, "DATA")
                return result
            await _send_content(conn, message, envelope.queue_id)
            code, resp = await conn.reply()
            if code == 250:
                result.delivered.extend(accepted)
                # Multi-line replies are joined with "; " (one log field).
                reply = f"{code} {resp.decode('utf-8', 'replace').replace(chr(10), '; ')}"
                for r in accepted:
                    result.replies[r] = reply
                reusable = clean = True
            else:
                _record(result, accepted, code, resp, "end of DATA")
            return result
        except (OSError, TimeoutError) as e:
            if not replied and not fresh:
                raise _Stale() from e
            reason = f"no reply within {conn.timeout:g}s" if isinstance(e, TimeoutError) else str(e)
            # What the server said before it went (a 421) is the better reason.
            pending = [r for r in rcpts if r not in result.delivered and r not in result.failed
                       and r not in result.deferred]
            for r in pending:
                result.deferred[r] = f"4.4.2 lost connection with {self.name}: {reason}"
            return result
        finally:
            if reusable:
                conn.encoding = "ascii"
                self._idle.append((time.monotonic(), conn, clean))
            else:
                conn.close()

    @staticmethod
    async def _first_reply(conn: _Connection, fresh: bool) -> tuple[int, bytes]:
        """The reply to MAIL; on a reused connection a 421 (the server's idle
        timeout, said before it closed) means stale, not a refusal."""
        code, resp = await conn.reply()
        if code == 421 and not fresh:
            raise _Stale()
        return code, resp

    async def deliver(self, envelope: Envelope, rcpts: list[str], message: Content,
                      then: After | None = None) -> DeliveryResult:
        async with self._slots:
            result = await self._deliver(envelope, rcpts, message)
        if then is not None:
            await self._after.submit(lambda: then(result))
        return result

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.quit() for _, conn, _ in idle))


async def _send_content(conn: _Connection, content: Content, queue_id: str = "") -> None:
    """Send the message as DATA content: CRLF lines, leading dots doubled,
    and the end-of-data marker in the same write as the last bytes.

    Bare CR, bare LF and NUL should never reach this point (ingress and the
    rewriter write CRLF only); should one come, it is made CRLF (NUL
    dropped) before dot-stuffing, so the next hop reads the lines we stuff,
    and the bug is logged."""
    at_line_start = True
    pending = b""
    lines = Normaliser()
    async for raw in _chunks(content):
        chunk = lines.feed(raw)
        if not chunk:
            continue
        if pending:
            await conn.write(pending)
        # No dot at all (base64 bodies) is found at memchr speed; searching
        # for the two bytes costs twenty times as much.
        pending = chunk.replace(b"\n.", b"\n..") if b"." in chunk else chunk
        if at_line_start and pending.startswith(b"."):
            pending = b"." + pending
        at_line_start = chunk.endswith(b"\n")
    pending += lines.end()
    if lines.changed:
        log.warning("bare CR, bare LF or NUL in outgoing data: normalised (a bug upstream)", queue_id=queue_id)
    if pending and not pending.endswith(b"\r\n"):
        pending += b"\r\n"
    await conn.write(pending + b".\r\n")


async def _chunks(content: Content) -> AsyncIterator[bytes]:
    """The content's bytes, read on the loop when small, else in a thread."""
    if content.size <= INLINE_READ:
        for chunk in content.chunks():
            yield chunk
        return
    chunks = content.chunks()
    try:
        while (piece := await asyncio.to_thread(next, chunks, None)) is not None:
            yield piece
    finally:
        chunks.close()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _record(result: DeliveryResult, rcpts: list[str], code: int, resp: bytes, stage: str) -> None:
    text = f"{code} {resp.decode('utf-8', 'replace')} (in reply to {stage})"
    target = result.failed if 500 <= code < 600 else result.deferred
    for r in rcpts:
        target[r] = text
