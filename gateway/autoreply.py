"""The automatic reply to a customer whose file was refused (RFC 3834).

The agent sees a notice in place of the refused file; the customer, who
cannot see it, gets a short reply saying which file was refused and why,
from the route's template or the mail catalogue, in the route's language
(gateway/mailtext.py).  The same reply, in other words, goes when a
file could not be stored and was too large to forward (DESIGN.md rule 2).  RFC 3834's rules hold: the reply carries
``Auto-Submitted: auto-replied`` and goes from the null return path; none
goes to a null sender, to list or bulk mail, to mail that is itself
auto-submitted, or to a sender that answered within the route's interval.
The interval's state is a file per sender (named by a hash of the address)
under the spool, taken under an flock, so every gateway process on the
spool shares it.

When the upload page is enabled and the template shows ``{upload_url}``,
the worker mints a fresh invitation for each reply (the message's customer
id, its Message-ID for the thread, its recipient as the address told when
files arrive), so the customer can send the file on the page instead; a
template line with ``{upload_url}`` is left out when there is no link.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import time
from email.message import EmailMessage, Message
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path

from gateway import mailtext
from gateway.mailtext import fill
from gateway.mime.decode import message_header

# Local parts that are machines, not people (RFC 3834 section 2).
_MACHINE_LOCAL_PARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply", "do-not-reply")


def skip_reason(mail_from: str, headers: Message) -> str | None:
    """Why no automatic reply may go to this message's sender, or None."""
    if not mail_from:
        return "null sender"
    local = mail_from.rsplit("@", 1)[0].lower()
    if "@" not in mail_from or local in _MACHINE_LOCAL_PARTS or local.startswith("owner-") \
            or local.endswith("-request"):
        return "sender is not a person's address"
    auto = message_header(headers, "Auto-Submitted").strip().lower()
    if auto and auto.split(";", 1)[0].strip() != "no":
        return f"message is auto-submitted ({auto.split(';', 1)[0].strip()})"
    for name in ("List-Id", "List-Post", "List-Unsubscribe", "List-Help", "List-Owner"):
        if message_header(headers, name).strip():
            return f"message came through a list ({name})"
    precedence = message_header(headers, "Precedence").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    suppress = message_header(headers, "X-Auto-Response-Suppress").lower()
    if "all" in suppress or "autoreply" in suppress:
        return "X-Auto-Response-Suppress"
    return None


class RateStore:
    """When each sender was last answered; shared by processes on one spool."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, sender: str) -> Path:
        return self.dir / hashlib.sha256(sender.strip().lower().encode("utf-8", "replace")).hexdigest()

    def claim(self, sender: str, interval: int, now: float | None = None) -> bool:
        """True (and the time recorded) when the sender may be answered now;
        False when an answer went to it within ``interval`` seconds."""
        now = time.time() if now is None else now
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self._path(sender)
            try:
                last = float(path.read_text().strip() or 0)
            except (OSError, ValueError):
                last = 0.0
            if now - last < interval:
                return False
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{now:.3f}\n")
            os.replace(tmp, path)
            self._prune(now, interval)
            return True

    def release(self, sender: str) -> None:
        """Forget a claim whose reply could not be sent."""
        try:
            self._path(sender).unlink()
        except FileNotFoundError:
            pass

    def _prune(self, now: float, interval: int) -> None:
        # Entries older than the interval decide nothing; remove them at
        # most once an interval so the directory stays small.
        marker = self.dir / ".pruned"
        try:
            if now - marker.stat().st_mtime < max(interval, 60):
                return
        except FileNotFoundError:
            pass
        marker.touch()
        for p in self.dir.iterdir():
            if p.name.startswith("."):
                continue
            try:
                if now - p.stat().st_mtime > interval:
                    p.unlink()
            except OSError:
                pass


def render(template: str, *, refusals: list[tuple[str, str]], subject: str, upload_url: str) -> str:
    """The reply's text from the route's template (or the catalogue's, in
    the route's language); without an upload URL, the template's lines that
    would show it are left out."""
    lines = "\n".join(f"- {name}: {reason}" for name, reason in refusals)
    return fill(_links_only_if_any(template, upload_url), refusals=lines, subject=subject, upload_url=upload_url)


def _links_only_if_any(template: str, upload_url: str) -> str:
    """The template without its lines showing ``{upload_url}`` when there is none."""
    if upload_url:
        return template
    return "\n".join(line for line in template.split("\n") if "{upload_url}" not in line)


def render_storage_failed(template: str | None, *, files: list[str], subject: str, upload_url: str) -> str:
    """The reply's text when files could not be stored (storage failed and a
    file was too large to forward, DESIGN.md rule 2: the customer's fault is
    nothing, and the way out is to send again or to use the upload page):
    ``template`` (the route's ``storage_failed_template``, or the
    catalogue's), or the built-in English text when that is None."""
    lines = "\n".join(f"- {name}" for name in files)
    if template is None:
        template = mailtext.STORAGE_FAILED if upload_url else mailtext.STORAGE_FAILED_NO_PAGE
    return fill(_links_only_if_any(template, upload_url), files=lines, subject=subject, upload_url=upload_url)


def wants_upload_url(template: str | None) -> bool:
    """Whether the template shows ``{upload_url}`` (worth minting an
    invitation); None is the built-in storage-failed text, which does."""
    return template is None or "upload_url" in mailtext.template_fields(template)


def thread_id(message_id: str) -> str:
    """The Message-ID to answer in the thread of, or "" when it is unusable
    (a CR or LF, or absurdly long)."""
    return message_id if message_id and "\n" not in message_id and "\r" not in message_id \
        and len(message_id) < 1000 else ""


def build(*, sender: str, to: str, subject: str, text: str, in_reply_to: str, hostname: str) -> bytes:
    """The reply as bytes (headers checked by Python's SMTP policy, which
    refuses CR or LF in any value)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "".join(ch for ch in subject if ch.isprintable())[:200]
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "auto_reply"
    if thread_id(in_reply_to):
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    # A text in another language is UTF-8, quoted-printable: 7-bit clean
    # whatever the next hop offers.
    msg.set_content(text, cte=None if text.isascii() else "quoted-printable")
    return msg.as_bytes()
