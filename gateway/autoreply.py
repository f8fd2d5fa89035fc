"""The automatic reply to a customer whose file was refused (RFC 3834).

The agent sees a notice in place of the refused file; the customer, who
cannot see it, gets a short reply saying which file was refused and why,
from the route's template or the mail catalogue, in the route's language
(gateway/mailtext.py).  The same reply, in other words, goes when a
file could not be stored and was too large to forward (the gateway fails
open on availability: the message went, with a notice).  RFC 3834's rules
hold: the reply carries ``Auto-Submitted: auto-replied`` and goes from the
null return path; none goes to a null sender, to list or bulk mail, to mail
that is itself auto-submitted, or to a mailbox answered within the route's
interval (``victim+1@`` and ``victim+2@`` are one mailbox).  Nor, where the
route verifies, to a sender its own domain disowns (SPF fail or softfail,
and no DKIM signature of the domain passed): a reply to a forged sender is
backscatter, spam sent on the forger's behalf.
Where the interval's state lives (``Rates``): on a route whose store is a
cloud store (S3, Azure, GCS), in that store, which every node of a fleet
shares (``SharedRateStore``: claims made with the store's create-if-absent,
so one reply per sender per interval holds across nodes); otherwise a file
per sender (named by a hash of the address) under the spool, taken under an
flock, shared by every gateway process on that spool (``RateStore``).  When
the store does not answer, the claim falls back to the spool's files: the
reply still goes, and the limit holds per node instead of per fleet.

When the upload page is enabled and the template shows ``{upload_url}``,
the worker mints a fresh invitation for each reply (the message's customer
id, its Message-ID for the thread, its recipient as the address told when
files arrive), so the customer can send the file on the page instead; a
template line with ``{upload_url}`` is left out when there is no link.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path

from gateway import logs, mailtext
from gateway.authn.verify import Verification, org_domain
from gateway.mailtext import fill
from gateway.mime.decode import message_header
from gateway.storage.base import ObjectMeta, ObjectNotFound, Storage, StorageError

log = logs.get("autoreply")

# Seconds a claim in the shared store may take before the local files
# decide instead: the message waits for it.
SHARED_CLAIM_TIMEOUT = 5.0

# Local parts that are machines, not people (RFC 3834 section 2).
_MACHINE_LOCAL_PARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply", "do-not-reply")


def skip_reason(mail_from: str, headers: Message, auth: Verification | None = None) -> str | None:
    """Why no automatic reply may go to this message's sender, or None.
    ``auth`` is what the checks found, when the route verifies: a reply to
    a forged sender is backscatter (spam sent on the forger's behalf)."""
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
    return _forged(mail_from, auth)


def _forged(mail_from: str, auth: Verification | None) -> str | None:
    """Why the envelope sender is taken for forged, or None: its domain's SPF
    says the client may not send for it (fail or softfail), and no DKIM
    signature of that domain (or its organisational domain) passed.  Other
    results (none, neutral, temperror) cannot tell, and the reply goes."""
    spf = auth.summary.get("spf", "") if auth is not None else ""
    if auth is None or spf not in ("fail", "softfail"):
        return None
    domain = org_domain(mail_from.rpartition("@")[2])
    if any(org_domain(d) == domain for d in auth.dkim_domains):
        return None
    return f"sender not authenticated (spf={spf}, no DKIM signature of its domain): a reply would be backscatter"


def mailbox(sender: str) -> str:
    """The mailbox an address reaches, for counting replies: lower case and
    without a ``+detail`` (``victim+1@`` and ``victim+2@`` are one person)."""
    local, at, domain = sender.strip().lower().rpartition("@")
    if not at:
        return domain
    return f"{local.split('+', 1)[0] or local}@{domain}"


class RateStore:
    """When each sender was last answered; shared by processes on one spool."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, sender: str) -> Path:
        return self.dir / _sender_hash(sender)

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


def _sender_hash(sender: str) -> str:
    return hashlib.sha256(mailbox(sender).encode("utf-8", "replace")).hexdigest()


class SharedRateStore:
    """When each sender was last answered, in an object store every node shares.

    The interval is cut into slots (``floor(time / interval)``) and a reply
    at time t in slot k is claimed by creating ``autoreply/<hash>/<k>``
    (create-if-absent: one winner).  Two replies in one slot are thereby
    impossible; two in neighbouring slots closer than the interval are
    prevented by the claimer in slot k first creating slot k-1 itself (a
    "hold"): if a reply in k-1 got there first, its time is read and
    decides; if the hold got there first, a late claim in k-1 fails.  So
    any two replies to one sender are at least ``interval`` apart, provided
    the nodes' clocks agree to well within it (NTP)."""

    def __init__(self, store: Storage) -> None:
        self.store = store

    @staticmethod
    def key(sender: str, slot: int) -> str:
        return f"autoreply/{_sender_hash(sender)}/{slot}"

    async def claim(self, sender: str, interval: int, now: float | None = None) -> str | None:
        """The key of the claim made when the sender may be answered now,
        or None when an answer went (or is going) to it within
        ``interval`` seconds.  Raises StorageError."""
        now = time.time() if now is None else now
        slot = int(now // interval)
        meta = ObjectMeta(content_type="application/json")
        nonce = os.urandom(8).hex()
        hold = json.dumps({"hold": True, "at": round(now, 3), "nonce": nonce}).encode()
        if not await self.store.create(self.key(sender, slot - 1), hold, meta):
            before = await self._time_of(self.key(sender, slot - 1))
            if before is not None and now - before < interval:
                return None
        mine = self.key(sender, slot)
        if not await self.store.create(mine, json.dumps({"at": round(now, 3), "nonce": nonce}).encode(), meta):
            return None
        return mine

    async def _time_of(self, key: str) -> float | None:
        """When the reply claimed by ``key`` was made; None for a hold or a
        claim since released."""
        try:
            raw = json.loads(b"".join([c async for c in self.store.open(key)]))
        except ObjectNotFound:
            return None
        except ValueError:
            return None
        return None if raw.get("hold") else float(raw.get("at", 0))

    async def release(self, key: str) -> None:
        """Forget a claim whose reply could not be sent."""
        await self.store.delete(key)


@dataclass(frozen=True)
class Claim:
    """A sender's claim to be answered now: in a shared store (``key``) or
    in the spool's files (``key`` None)."""

    sender: str
    store: Storage | None = None
    key: str | None = None


class Rates:
    """Which rate store decides for a route: its shared store when it has
    one, else (and when that store fails) the spool's files."""

    def __init__(self, local: RateStore, shared: dict[str, Storage]) -> None:
        self.local = local
        self.shared = {name: SharedRateStore(store) for name, store in shared.items()}

    async def claim(self, store_name: str, sender: str, interval: int) -> Claim | None:
        """A claim when the sender may be answered now, else None."""
        shared = self.shared.get(store_name)
        if shared is not None:
            try:
                key = await asyncio.wait_for(shared.claim(sender, interval), SHARED_CLAIM_TIMEOUT)
            except (StorageError, TimeoutError) as e:
                # Fail open: the reply is not worth holding mail back for,
                # and is worth sending; the limit holds on this node.
                log.warning("auto-reply rate claimed on this node only", store=store_name,
                            error=str(e) or f"no answer within {SHARED_CLAIM_TIMEOUT:.0f}s")
            else:
                return Claim(sender, shared.store, key) if key is not None else None
        if await asyncio.to_thread(self.local.claim, sender, interval):
            return Claim(sender)
        return None

    async def release(self, claim: Claim) -> None:
        """Forget a claim whose reply could not be sent (a store that does
        not answer keeps it: one reply fewer, never one more)."""
        if claim.key is None:
            await asyncio.to_thread(self.local.release, claim.sender)
            return
        assert claim.store is not None
        try:
            await SharedRateStore(claim.store).release(claim.key)
        except StorageError as e:
            log.warning("auto-reply claim not released", key=claim.key, error=str(e))


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
    file was too large to forward, so a notice went in its place: the customer's fault is
    nothing, and the way out is to send again or to use the upload page):
    ``template`` (the route's ``storage_failed_template``, or the
    catalogue's), or the built-in English text when that is None."""
    lines = "\n".join(f"- {name}" for name in files)
    if template is None:
        template = mailtext.STORAGE_FAILED if upload_url else mailtext.STORAGE_FAILED_NO_PAGE
    return fill(_links_only_if_any(template, upload_url), files=lines, subject=subject, upload_url=upload_url)


def sign(text: str, contact: list[str]) -> str:
    """``text`` signed with the organisation's name and support contact
    (``[branding]``, ``Branding.contact_lines``) below the usual "-- "
    separator, so mail clients fold it as a signature; unchanged without."""
    lines = [line for line in (" ".join(c.split()) for c in contact) if line]
    if not lines:
        return text
    return text.rstrip("\n") + "\n\n-- \n" + "\n".join(lines) + "\n"


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
