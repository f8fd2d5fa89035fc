"""Delivery status notifications (RFC 3464) for mail that truly cannot go,
and for mail that is late.

One DSN per failed delivery attempt ("failed", 5.x.x), and at most one
warning per message still being retried after ``[delivery]
delay_warning`` ("delayed", 4.x.x, with Will-Retry-Until), each from the
null sender, carrying the original headers (not the body: it may be
large; at most 64 KiB of them and no line over 998: the envelope sender
may be anyone), and never to a null sender, so bounces cannot loop.
"""
from __future__ import annotations

import gettext
import time
from email.header import Header
from email.utils import formatdate, make_msgid

from gateway import mailtext
from gateway.mime.rewrite import split_fields
from gateway.spool.envelope import Envelope

_ENGLISH = mailtext.MailTexts(gettext.NullTranslations())
# The most of the original header block a DSN returns (Postfix returns at
# most 50,000 bytes of a message): it goes to the envelope sender, whom
# anyone can name, so it is the sender's text sent to a third party.
MAX_RETURNED_HEADERS = 65536
# RFC 5322 section 2.1.1: no line of the DSN is longer.
_MAX_LINE = 998
# Returned first when the block is cut: what a person needs to know the message.
_WANTED = ("from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references")


def _line(text: str) -> str:
    """One header or status line: no CR, LF or other controls from outside."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def build_dsn(envelope: Envelope, failed: dict[str, str], original_headers: bytes, hostname: str,
              action: str = "failed", retry_until: float | None = None,
              texts: mailtext.MailTexts = _ENGLISH) -> bytes:
    """A multipart/report DSN telling ``envelope.mail_from`` about the
    recipients in ``failed`` (recipient: reason): ``action`` "failed" for
    mail returned, "delayed" for mail still being retried (until
    ``retry_until``, a Unix time).  The part a person reads, and the
    subject, are in ``texts``' language; the report itself is RFC 3464's."""
    delayed = action == "delayed"
    boundary = make_msgid(domain=hostname).strip("<>").replace("@", "/")
    if delayed:
        summary = [
            texts.text(mailtext.DSN_DELAYED),
            texts.text(mailtext.DSN_RETRY_UNTIL, date=formatdate(retry_until)) if retry_until is not None
            else texts.text(mailtext.DSN_RETRY),
        ]
    else:
        summary = [texts.text(mailtext.DSN_FAILED)]
    human = [
        texts.text(mailtext.DSN_HOST, hostname=hostname),
        "",
        *summary,
        "",
        *(f"<{_line(r)}>: {_line(reason)}" for r, reason in failed.items()),
    ]
    # A translation may break its sentence over lines: each is a line of its own.
    human = [line for text in human for line in (text.splitlines() or [""])]
    status = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Queue-ID: {envelope.queue_id}",
        f"Arrival-Date: {formatdate(envelope.received_at)}",
    ]
    for rcpt, reason in failed.items():
        status += [
            "",
            f"Final-Recipient: rfc822; {_line(rcpt)}",
            f"Action: {'delayed' if delayed else 'failed'}",
            f"Status: {_status_code(reason, '4' if delayed else '5')}",
            f"Diagnostic-Code: smtp; {_line(reason)}",
            f"Last-Attempt-Date: {formatdate(time.time())}",
        ]
        if delayed and retry_until is not None:
            status.append(f"Will-Retry-Until: {formatdate(retry_until)}")
    said = _line(texts.text(mailtext.DSN_DELAYED_SUBJECT if delayed else mailtext.DSN_FAILED_SUBJECT))
    # A subject in another language is an RFC 2047 encoded word.
    subject = said if said.isascii() else Header(said, "utf-8").encode()
    headers = returned_headers(original_headers)
    out = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{_line(envelope.mail_from)}>",
        f"Subject: {subject}",
        f"Date: {formatdate()}",
        f"Message-ID: {make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 8bit",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    return ("\r\n".join(out) + "\r\n").encode("utf-8") + headers + f"\r\n\r\n--{boundary}--\r\n".encode()


def returned_headers(block: bytes) -> bytes:
    """The fields of the original header block a DSN returns, CRLF-joined
    without the last line end: those whose every line fits in 998
    characters, up to MAX_RETURNED_HEADERS bytes, the fields a person needs
    (From, Subject, Message-ID, ...) first, then the others in order."""
    block = block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    fields = [raw if raw.endswith(b"\r\n") else raw + b"\r\n" for name, raw in split_fields(block)
              if name and max(map(len, raw.split(b"\r\n"))) <= _MAX_LINE]
    if sum(map(len, fields)) > MAX_RETURNED_HEADERS:
        first = [f for f in fields if _field_name(f) in _WANTED]
        fields = first + [f for f in fields if _field_name(f) not in _WANTED]
    out, size = [], 0
    for raw in fields:
        if size + len(raw) > MAX_RETURNED_HEADERS:
            continue
        out.append(raw)
        size += len(raw)
    return b"".join(out).rstrip(b"\r\n")


def _field_name(raw: bytes) -> str:
    return raw.split(b":", 1)[0].strip().lower().decode("ascii", "replace")


def _status_code(reason: str, klass: str = "5") -> str:
    """The enhanced status code in ``reason`` (RFC 3463) with its class
    made ``klass``: "5" for a failure, "4" for a delay."""
    for word in reason.split():
        parts = word.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in ("4", "5"):
            return klass + word[1:]
    return f"{klass}.0.0"
