"""Sender Rewriting Scheme: forwarded mail's envelope sender in a domain of ours.

The platform behind the gateway (Amazon SES for Genesys Cloud and NICE
CXone) checks SPF of the MAIL FROM domain against the connecting address:
the gateway's.  A customer's own MAIL FROM fails that check wherever the
customer publishes a strict SPF record, so on routes with ``srs = true`` the
envelope sender of forwarded mail becomes an address in ``[srs] domain``
(whose SPF record names the gateway), and mail to that address (the
platform's bounces) is turned back into mail to the original sender.

The address format is the one postsrsd, Exim and libsrs2 use (the "guarded"
scheme of the SRS paper)::

    SRS0=HASH=TT=orig.example=alice@srs.gateway.example
    SRS1=HASH=fwd.example==HASH0=TT=orig.example=alice@srs.gateway.example

``TT`` is the day (days since the epoch, modulo 1024, two base-32
characters) and ``HASH`` the first characters of the base64 HMAC-SHA1 of
the rest under a secret: the scheme's name and its fields joined by ``=``
as they are in the address (the name, so that no SRS0 hash is an SRS1's).
postsrsd and libsrs2 hash the fields run together (``TTbank.combob``):
then the hash of ``mbob@bank.co``'s address also holds for
``bob@bank.com``, and anyone who once saw the address made for a sender of
theirs could relay through the gateway to every domain that begins with
their own.  SRS0 addresses hashed that older way (made before this change)
are still reversed, and expire with their age.  A reversal checks hash
and age: a forged address (wrong hash) or an old one (past
``max_age_days``) is refused, so the SRS domain
is not an open relay to arbitrary addresses.

Why not the ``srslib`` package (PyPI, one release since 2017): it checks a
hash only as long as the one in the address, so a forger who writes a
one-character hash gets through after a few dozen tries; it compares hashes
with ``==`` (timing); and it reads the clock without a seam for tests.
``pysrs`` (2018) is Python 2-era code built around Sendmail's milter.  The
scheme is thirty lines, written here with those points right.

The null sender is never rewritten: a bounce must not cause a bounce.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import string
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.delivery import After, Content, DeliveryResult, NextHop
from gateway.spool.envelope import Envelope

if TYPE_CHECKING:
    from gateway.config import Config, RouteSettings

#: The reserved route name of mail to SRS addresses (the platform's bounces).
BOUNCE_ROUTE = "srs-bounces"

_DAY = 86400
_TS_ALPHABET = string.ascii_uppercase + "234567"
_TS_MOD = 1024  # two base-32 characters: the day wraps every 1024 days
# Local parts the scheme can carry unquoted: dot-atom text (no quotes,
# spaces, backslashes, @) and not empty.  Others are forwarded as they are.
_PLAIN_LOCAL = re.compile(r"^[^\s\"\\@<>()\[\],;:]+$")
_SRS0 = re.compile(r"^SRS0[-+=]([^=]+)=([^=]+)=([^=]+)=(.+)$", re.IGNORECASE)
_SRS1 = re.compile(r"^SRS1[-+=]([^=]+)=([^=]+)=([-+=].+)$", re.IGNORECASE)


class SrsError(ValueError):
    """An address in the SRS domain that cannot be reversed; ``str()`` says why."""


class Srs:
    """Forward and reverse SRS addresses in ``domain`` with ``secrets``.

    The first secret makes new addresses; all of them are accepted when
    reversing (keep the old one listed for ``max_age_days`` after a change)."""

    def __init__(self, domain: str, secrets: list[bytes], *, max_age_days: int = 21, hash_length: int = 6,
                 clock: Callable[[], float] = time.time) -> None:
        if not secrets or not all(secrets):
            raise ValueError("SRS needs at least one non-empty secret")
        if not 1 <= max_age_days < _TS_MOD:
            raise ValueError(f"max_age_days must be 1..{_TS_MOD - 1}")
        self.domain = domain.lower()
        self.secrets = secrets
        self.max_age_days = max_age_days
        self.hash_length = hash_length
        self.clock = clock

    # -- forward -----------------------------------------------------------

    def forward(self, sender: str) -> str:
        """The envelope sender to forward with: ``sender`` rewritten into
        our domain; unchanged when it is the null sender, already ours, or
        a form the scheme cannot carry (a quoted local part, an address
        literal)."""
        if not sender:
            return sender
        local, at, domain = sender.rpartition("@")
        if not at or not local or not domain or domain.startswith("[") or not _PLAIN_LOCAL.match(local):
            return sender
        if domain.lower() == self.domain:
            return sender  # ours already (a message looping back): never SRS of SRS of our own
        m = _SRS1.match(local)
        if m:
            # Hop n > 2: keep the first hop's opaque part, sign it anew.
            first_host, opaque = m.group(2), m.group(3)
            return self._srs1(first_host, opaque)
        if local[:4].upper() == "SRS0" and len(local) > 4 and local[4] in "-+=":
            # Someone else's SRS0: bounces go back through them (SRS1).
            return self._srs1(domain, local[4:])
        ts = self._timestamp(self.clock())
        return f"SRS0={self._hash(f'SRS0={ts}={domain}={local}')}={ts}={domain}={local}@{self.domain}"

    def _srs1(self, first_host: str, opaque: str) -> str:
        return f"SRS1={self._hash(f'SRS1={first_host}={opaque}')}={first_host}={opaque}@{self.domain}"

    # -- reverse -----------------------------------------------------------

    def owns(self, address: str) -> bool:
        """Whether ``address`` is in our SRS domain (valid or not)."""
        return address.rpartition("@")[2].lower() == self.domain

    def reverse(self, address: str) -> str:
        """The address a message to ``address`` goes to, or SrsError when it
        is not an SRS address of ours, its hash is wrong or it is too old."""
        local, at, domain = address.rpartition("@")
        if not at or domain.lower() != self.domain:
            raise SrsError("not in the SRS domain")
        m = _SRS0.match(local)
        if m:
            digest, ts, host, orig_local = m.groups()
            # The fields run together: only for addresses made before the
            # hash joined them, which expire within max_age_days.
            self._check_hash(digest, f"SRS0={ts}={host}={orig_local}", legacy=ts + host + orig_local)
            self._check_age(ts)
            if not host or not orig_local:
                raise SrsError("malformed SRS0 address")
            return f"{orig_local}@{host}"
        m = _SRS1.match(local)
        if m:
            digest, host, opaque = m.groups()
            self._check_hash(digest, f"SRS1={host}={opaque}")
            # The first hop checks its own hash and age when it gets the bounce.
            return f"SRS0{opaque}@{host}"
        raise SrsError("not an SRS0 or SRS1 address")

    def _hash(self, data: str, secret: bytes | None = None) -> str:
        mac = hmac.new(secret or self.secrets[0], data.lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(mac).decode("ascii")[:self.hash_length]

    def _check_hash(self, digest: str, data: str, legacy: str | None = None) -> None:
        # Exactly our length: a shorter hash in the address is not checked
        # as far as it goes (that would let a forger guess one character).
        # Case-insensitive, as libsrs2: some MTAs fold local parts.
        if len(digest) != self.hash_length:
            raise SrsError("bad SRS hash")
        given = digest.lower().encode("ascii", "replace")
        texts = [data] if legacy is None else [data, legacy]
        if not any(hmac.compare_digest(given, self._hash(t, s).lower().encode("ascii"))
                   for t in texts for s in self.secrets):
            raise SrsError("bad SRS hash")

    def _check_age(self, ts: str) -> None:
        ts = ts.upper()
        if len(ts) != 2 or any(c not in _TS_ALPHABET for c in ts):
            raise SrsError("bad SRS timestamp")
        then = _TS_ALPHABET.index(ts[0]) * 32 + _TS_ALPHABET.index(ts[1])
        today = int(self.clock() // _DAY) % _TS_MOD
        if (today - then) % _TS_MOD > self.max_age_days:
            raise SrsError("SRS address expired")

    @staticmethod
    def _timestamp(now: float) -> str:
        day = int(now // _DAY) % _TS_MOD
        return _TS_ALPHABET[day >> 5] + _TS_ALPHABET[day & 31]


class SrsNextHop:
    """A next hop that sends with the SRS envelope sender on routes that ask.

    ``rewriter(envelope)`` says which Srs applies to the envelope (its
    route); None leaves the envelope as it is.  The spooled envelope is never
    changed: DSNs and the customer id still use the customer's address."""

    def __init__(self, inner: NextHop, rewriter: Callable[[Envelope], Srs | None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.rewriter = rewriter

    async def deliver(self, envelope: Envelope, rcpts: list[str], message: Content,
                      then: After | None = None) -> DeliveryResult:
        srs = self.rewriter(envelope) if envelope.mail_from else None
        if srs is not None:
            envelope = dataclasses.replace(envelope, mail_from=srs.forward(envelope.mail_from))
        return await self.inner.deliver(envelope, rcpts, message, then)

    async def close(self) -> None:
        await self.inner.close()


def always(srs: Srs) -> Callable[[Envelope], Srs | None]:
    """The rewriter of a next hop whose every message goes with ``srs``."""
    def rewriter(envelope: Envelope) -> Srs | None:
        return srs
    return rewriter


# -- the config's SRS, for the ingress (reversal) and the next hops (forward) --

# The last config's Srs, so a config's secrets are read once, not at every
# RCPT (a memo by identity, not a setting: each caller passes its config).
_memo: tuple[Config, Srs | None] | None = None


def from_config(cfg: Config) -> Srs | None:
    """The Srs of ``cfg``'s ``[srs]`` table (secrets read now), or None
    without one; ConfigError naming the key when a secret cannot be read.
    The same Srs is returned for the same config object."""
    global _memo
    if _memo is not None and _memo[0] is cfg:
        return _memo[1]
    from gateway.config import read_secret

    settings = cfg.srs
    srs: Srs | None = None
    if settings is not None:
        secrets = [read_secret(ref, cfg.base_dir, key, min_length=16).encode("utf-8")
                   for key, ref in (("srs.secret", settings.secret),
                                    *((f"srs.previous_secrets[{i}]", r)
                                      for i, r in enumerate(settings.previous_secrets)))]
        srs = Srs(settings.domain, secrets, max_age_days=settings.max_age_days, hash_length=settings.hash_length)
    _memo = (cfg, srs)
    return srs


def bounce_route(cfg: Config) -> RouteSettings:
    """The route of mail to SRS addresses: delivered as it came (no
    policies, no offloads, no TNEF unpacking) to ``delivery.bounce_next_hop``,
    the route of the gateway's own DSNs."""
    from gateway.config import CustomerIdRule, RouteSettings

    assert cfg.srs is not None
    first = next(r for r in cfg.routes if r.srs)
    return RouteSettings(name=BOUNCE_ROUTE, domains=[cfg.srs.domain], next_hop=cfg.delivery.bounce_next_hop,
                         storage=first.storage, policies=[], unpack_tnef=False, max_attachments=None,
                         next_hop_max_size=1 << 50, offload_threshold=1 << 50, srs=False,
                         customer_id=CustomerIdRule(header=None, fallback="none"))


def accept_bounce(cfg: Config, srs: Srs, mail_from: str, address: str) -> str:
    """The original sender a message to the SRS ``address`` goes to (on the
    ``BOUNCE_ROUTE``), or SrsError saying why it is refused: forged,
    expired, malformed, or a non-null sender where only bounces are taken."""
    from gateway.ingress.routing import AddressRefused, split_address

    assert cfg.srs is not None
    if cfg.srs.accept == "null-sender" and mail_from not in ("", "<>"):
        raise SrsError("this address takes bounces only (null sender)")
    original = srs.reverse(address)
    try:
        split_address(original)
    except AddressRefused as e:
        raise SrsError(f"the original sender is not deliverable: {e}") from None
    return original
