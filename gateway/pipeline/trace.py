"""The trace headers the gateway puts on top of every message it forwards:
``Received`` (RFC 5321 section 4.4) and ``X-Attachment-Offload``, the
summary of what it did."""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from gateway.spool.envelope import Envelope

if TYPE_CHECKING:
    from gateway.pipeline.job import Offloaded

# An address literal as HELO gives it (RFC 5321 section 4.1.3).
_LITERAL = re.compile(r"\[(?:[0-9.]{7,15}|IPv6:[0-9A-Fa-f:.]{2,45})\]")
# What a host name never holds: whatever opens a comment, a literal or a new clause.
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")


def trace(hostname: str, envelope: Envelope, offloaded: list[Offloaded], note: str = "", refused: int = 0,
          replaced: int = 0, tnef_unpacked: bool = False, disarmed: int = 0) -> bytes:
    """The two trace header fields, CRLF-terminated."""
    helo = host_name(envelope.helo) or "unknown"
    client = host_name(envelope.client_name) or "unknown"
    addr = clean(envelope.client_addr)
    proto = "UTF8SMTP" if envelope.smtputf8 else "ESMTP"
    if envelope.tls:
        proto += "S"
    rcpt = f"\r\n\tfor <{clean(envelope.rcpt_tos[0])}>" if len(envelope.rcpt_tos) == 1 else ""
    received = (f"Received: from {helo} ({client} [{addr}])\r\n"
                f"\tby {hostname} (attachment-gateway) with {proto} id {envelope.queue_id}"
                f"{rcpt};\r\n\t{rfc5322_date(envelope.received_at)}\r\n")
    summary = f"offloaded={len(offloaded)} bytes={sum(o.size for o in offloaded)}"
    if refused:
        summary += f" refused={refused}"
    if replaced:
        summary += f" replaced={replaced}"
    if disarmed:
        summary += f" disarmed={disarmed}"
    if tnef_unpacked:
        summary += " tnef=unpacked"
    if note:
        summary += f"; {note}"
    return (received + f"X-Attachment-Offload: {clean(summary)}\r\n").encode("utf-8", "replace")


def rfc5322_date(ts: float) -> str:
    """An RFC 5322 date in UTC, as email.utils.format_datetime writes it
    (strftime: this runs for every message, and that builds a datetime;
    day and month names are English, as LC_TIME is never set)."""
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ts))


def host_name(text: str) -> str:
    """A name the client gave (HELO), for the Received field: its first
    word, in ASCII, an internationalised one as its A-labels, any character
    a host name or an address literal does not have as ``?``.

    aiosmtpd takes the whole rest of the EHLO line (Postfix takes one word):
    spaces, parentheses and brackets would write a second client, at an
    address of the sender's choosing, into the field the next hop's filters
    read the message's path from.  The field goes on with the message
    whether or not the next hop takes 8-bit headers (SMTPUTF8 is asked for
    only when the addresses or the body need it), so a HELO in UTF-8 must
    not make the header 8-bit."""
    words = clean(text).split(None, 1)
    word = words[0] if words else ""
    if _LITERAL.fullmatch(word):
        return word  # "[192.0.2.1]", "[IPv6:2001:db8::1]": what the client said it is
    if not word.isascii():
        try:
            word = word.encode("idna").decode("ascii")[:200]
        except UnicodeError:
            word = word.encode("ascii", "replace").decode("ascii")
    return _NOT_IN_NAME.sub("?", word)


def clean(text: str) -> str:
    """Text from the envelope or client, safe inside a header."""
    if text.isprintable():  # the usual case; CR and LF are not printable
        return text[:200]
    return "".join(ch for ch in text if ch.isprintable())[:200]
