"""SMTP to a route's next hop, with STARTTLS and connection reuse.

smtplib runs in a worker thread (it blocks); the message is streamed from
the spool file with dot-stuffing, never read whole.  Idle connections are
kept for reuse, bounded per next hop: after a transaction that ended in 250
the next starts with MAIL, otherwise with RSET; a reused connection the
server closed meanwhile is replaced once.  MAIL, RCPT and DATA go in one
write when the server offers PIPELINING (RFC 2920).
A next hop that is down, answers 4xx, or cannot meet the route's TLS level
defers the message; a 5xx fails the recipients it names.

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
import re
import smtplib
import socket
import ssl
import threading
import time

from gateway.delivery import After, Content, DeliveryResult, followed
from gateway.spool import Envelope

_IDLE_SECONDS = 30.0


class TlsRequired(Exception):
    """The route requires TLS and the next hop did not offer it."""


class _Stale(Exception):
    """A reused connection was closed by the server before it answered."""


def _send_content(conn: smtplib.SMTP, content: Content) -> None:
    """Send the message as DATA content: CRLF lines, leading dots doubled,
    and the end-of-data marker in the same write as the last bytes."""
    at_line_start = True
    pending = b""
    for chunk in content.chunks():
        if pending:
            conn.sock.sendall(pending)  # type: ignore[union-attr]
        pending = chunk.replace(b"\n.", b"\n..")
        if at_line_start and pending.startswith(b"."):
            pending = b"." + pending
        at_line_start = chunk.endswith(b"\n")
    if pending and not pending.endswith(b"\r\n"):
        pending += b"\r\n"
    conn.sock.sendall(pending + b".\r\n")  # type: ignore[union-attr]


class SmtpNextHop:
    """An SMTP server that takes the route's mail."""

    def __init__(self, host: str, port: int, *, hostname: str, tls: str, connect_timeout: float,
                 command_timeout: float, max_connections: int, tls_ca_file: str | None = None) -> None:
        self.host, self.port = host, port
        self.name = f"smtp://{host}:{port}"
        self.hostname = hostname
        self.tls = tls
        self.tls_ca_file = tls_ca_file
        self._ctx = self._tls_context()
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[tuple[float, smtplib.SMTP, bool]] = []
        self._lock = threading.Lock()

    def _connect(self) -> smtplib.SMTP:
        conn = smtplib.SMTP(timeout=self.connect_timeout, local_hostname=self.hostname)
        conn.connect(self.host, self.port)
        # starttls() names the server (SNI, and the host name checked at the
        # "verify" level) from _host, which only the constructor sets.
        conn._host = self.host  # type: ignore[attr-defined]
        # Commands and the end of data are small writes that wait for a
        # reply: without NODELAY, Nagle and delayed ACKs add 40 ms to each.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        conn.sock.settimeout(self.command_timeout)  # type: ignore[union-attr]
        conn.ehlo()
        if self.tls != "none" and conn.has_extn("starttls"):
            try:
                # smtplib checks the certificate against the host we
                # connected to (server_hostname) when the context asks.
                conn.starttls(context=self._ctx)
            except ssl.SSLCertVerificationError as e:
                _close_quietly(conn)
                raise TlsRequired(f"4.7.5 certificate of {self.name} not verified: {e.verify_message}") from None
            except (ssl.SSLError, smtplib.SMTPException) as e:
                _close_quietly(conn)
                raise TlsRequired(f"4.7.0 TLS handshake with {self.name} failed: {e}") from None
            conn.ehlo()
        elif self.tls in ("required", "verify"):
            conn.close()
            raise TlsRequired(f"4.7.10 TLS is required for {self.name} but it does not offer STARTTLS")
        return conn

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

    def _checkout(self) -> tuple[smtplib.SMTP, bool]:
        """A connection ready for MAIL, and whether it was used before (a
        used one may have been closed by the server meanwhile)."""
        with self._lock:
            while self._idle:
                since, conn, clean = self._idle.pop()
                if time.monotonic() - since < _IDLE_SECONDS:
                    if clean:
                        return conn, True
                    try:
                        if conn.rset()[0] == 250:
                            return conn, True
                    except (smtplib.SMTPException, OSError):
                        pass
                _close_quietly(conn)
        return self._connect(), False

    def _checkin(self, conn: smtplib.SMTP, clean: bool) -> None:
        """Keep ``conn`` for reuse; ``clean`` when its last transaction ended
        (250 after the data), so the next one starts without an RSET."""
        with self._lock:
            self._idle.append((time.monotonic(), conn, clean))

    def _deliver(self, envelope: Envelope, rcpts: list[str], message: Content) -> DeliveryResult:
        result = DeliveryResult()
        try:
            conn, reused = self._checkout()
        except TlsRequired as e:
            return result.defer_all(rcpts, str(e))
        except (OSError, smtplib.SMTPException) as e:
            return result.defer_all(rcpts, f"4.4.1 connect to {self.name} failed: {e}")
        if reused:
            try:
                return self._transaction(conn, envelope, rcpts, message, result)
            except _Stale:
                # The server closed the idle connection before our first
                # command: nothing was said, so try once on a new one.
                try:
                    conn = self._connect()
                except TlsRequired as e:
                    return result.defer_all(rcpts, str(e))
                except (OSError, smtplib.SMTPException) as e:
                    return result.defer_all(rcpts, f"4.4.1 connect to {self.name} failed: {e}")
        return self._transaction(conn, envelope, rcpts, message, result, fresh=True)

    def _transaction(self, conn: smtplib.SMTP, envelope: Envelope, rcpts: list[str], message: Content,
                     result: DeliveryResult, fresh: bool = False) -> DeliveryResult:
        """One mail transaction on ``conn``: MAIL, RCPT and DATA pipelined
        when the server offers PIPELINING (RFC 2920), then the content.
        Raises _Stale when a reused connection turns out closed before any
        reply."""
        reusable = clean = False
        replied = False
        try:
            options = []
            if conn.has_extn("size"):
                options.append(f"SIZE={message.size}")
            if envelope.body_8bit and conn.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if envelope.smtputf8:
                if not conn.has_extn("smtputf8"):
                    for r in rcpts:
                        result.failed[r] = f"5.6.7 {self.name} does not support SMTPUTF8"
                    reusable = clean = True
                    return result
                options.append("SMTPUTF8")
                conn.command_encoding = "utf-8"
            mail = f"MAIL FROM:{_path(envelope.mail_from)}{' ' if options else ''}{' '.join(options)}"
            if conn.has_extn("pipelining"):
                conn.send("".join(f"{line}\r\n" for line in
                                  [mail, *(f"RCPT TO:{_path(r)}" for r in rcpts), "DATA"]))
                codes = [self._first_reply(conn, fresh)]
                replied = True
                codes += [conn.getreply() for _ in rcpts]
                data_reply = conn.getreply()
            else:
                conn.putcmd(mail)
                codes = [self._first_reply(conn, fresh)]
                replied = True
                if codes[0][0] == 250:
                    codes += [conn.docmd(f"RCPT TO:{_path(r)}") for r in rcpts]
                data_reply = None
            code, resp = codes[0]
            if code != 250:
                _record(result, rcpts, code, resp, "MAIL FROM")
                # A pipelined DATA after a refused MAIL is refused too.
                reusable = (code < 500 or code in (550, 553)) and (data_reply is None or data_reply[0] != 354)
                return result
            accepted = []
            for r, (code, resp) in zip(rcpts, codes[1:]):
                if code in (250, 251):
                    accepted.append(r)
                else:
                    _record(result, [r], code, resp, "RCPT TO")
            if data_reply is None and accepted:
                data_reply = conn.docmd("DATA")
            if not accepted:
                if data_reply is not None and data_reply[0] == 354:
                    # RFC 2920: DATA accepted with no recipient; end it empty.
                    conn.send(".\r\n")
                    conn.getreply()
                reusable = True
                return result
            assert data_reply is not None
            code, resp = data_reply
            if code != 354:
                _record(result, accepted, code, resp, "DATA")
                return result
            _send_content(conn, message)
            code, resp = conn.getreply()
            if code == 250:
                result.delivered.extend(accepted)
                reusable = clean = True
            else:
                _record(result, accepted, code, resp, "end of DATA")
            return result
        except (OSError, smtplib.SMTPException) as e:
            if not replied and not fresh:
                raise _Stale() from e
            pending = [r for r in rcpts if r not in result.delivered and r not in result.failed]
            for r in pending:
                result.deferred[r] = f"4.4.2 lost connection with {self.name}: {e}"
            return result
        finally:
            if reusable:
                conn.command_encoding = "ascii"
                self._checkin(conn, clean)
            else:
                _close_quietly(conn)

    @staticmethod
    def _first_reply(conn: smtplib.SMTP, fresh: bool) -> tuple[int, bytes]:
        """The reply to MAIL; on a reused connection a 421 (the server's idle
        timeout, said before it closed) means stale, not a refusal."""
        code, resp = conn.getreply()
        if code == 421 and not fresh:
            raise _Stale()
        return code, resp

    async def deliver(self, envelope: Envelope, rcpts: list[str], message: Content,
                      then: After | None = None) -> DeliveryResult:
        async with self._slots:
            return await asyncio.to_thread(lambda: followed(self._deliver(envelope, rcpts, message), then))

    async def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn, _ in idle:
            await asyncio.to_thread(_quit_quietly, conn)


# An address that needs no parsing to be put in angle brackets.
_PLAIN_ADDRESS = re.compile(r'[^\s<>()\[\]\\,;:"@]+@[^\s<>()\[\]\\,;:"@]+')


def _path(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO (``<>`` for the null sender)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)  # parses: slow, for the odd address


def _record(result: DeliveryResult, rcpts: list[str], code: int, resp: bytes, stage: str) -> None:
    text = f"{code} {resp.decode('utf-8', 'replace')} (in reply to {stage})"
    target = result.failed if 500 <= code < 600 else result.deferred
    for r in rcpts:
        target[r] = text


def _close_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.close()
    except (OSError, socket.error):
        pass


def _quit_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        _close_quietly(conn)
