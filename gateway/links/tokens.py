"""Link tokens: short, HMAC-signed, expiring, with a key id for rotation.

A token is ``KID.STORE.EXP.OID.SIG``: the key id, the storage the object is
in, the expiry (Unix seconds, base 36), a random object id and the first 128
bits of HMAC-SHA256 over the rest, all URL-safe.  It stays near 60
characters, so the whole link fits comfortably in a line of mail, and it
names nothing guessable: the object id leads to a link record in the store
that says which object, customer and message the link is for.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ApiKey, ConfigError, LinkKey, read_secret

_TOKEN = re.compile(r"^([A-Za-z0-9_-]{1,16})\.([A-Za-z0-9_-]{1,32})\.([0-9a-z]{1,13})\."
                    r"([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{22})$")


class TokenError(Exception):
    """The token is not one of ours: malformed, tampered, or signed by an
    unknown or retired key (answered 403)."""


def key_id(token: str) -> str | None:
    """The key id a token claims (unchecked), for audit events about tokens
    that failed."""
    kid = token.split(".", 1)[0]
    return kid if re.fullmatch(r"[A-Za-z0-9_-]{1,16}", kid) else None


def object_id(token: str) -> str | None:
    """The object id a token claims (unchecked), for audit events about
    tokens that failed: which link was altered or replayed with a retired
    key.  Only the MAC makes a token; the id alone opens nothing."""
    parts = token.split(".")
    oid = parts[3] if len(parts) == 5 else ""
    return oid if re.fullmatch(r"[A-Za-z0-9_-]{16}", oid) else None


class TokenExpired(TokenError):
    """The token was ours but its time is up (answered 410, with a page to
    refresh it); ``claims`` are what it said, checked and signed."""

    def __init__(self, message: str, claims: Claims) -> None:
        super().__init__(message)
        self.claims = claims


@dataclass(frozen=True)
class Claims:
    """What a valid token says."""

    kid: str
    store: str
    expires: int
    object_id: str


@dataclass(frozen=True)
class _Key:
    id: str
    secret: bytes
    retire: float | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_secret(key: LinkKey | ApiKey, base_dir: Path, where: str = "links.keys") -> bytes:
    """A key's secret (16 characters or more) from its environment variable
    or file (``where`` names the config list in errors); raise ValueError."""
    path = Path(key.file or "")
    path = path if path.is_absolute() else base_dir / path
    if key.file is not None and not path.exists() and getattr(key, "create_missing", False):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another gateway process made it first (start-up or SIGHUP)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    try:
        return read_secret(key, base_dir, f"{where}[{key.id}]", min_length=16).encode()
    except ConfigError as e:
        raise ValueError(str(e)) from None


class Keyring:
    """The link keys: the current one signs, every unretired one verifies."""

    def __init__(self, keys: list[LinkKey], base_dir: Path) -> None:
        self._keys, self.current = self._read(keys, base_dir)

    @staticmethod
    def _read(keys: list[LinkKey], base_dir: Path) -> tuple[dict[str, _Key], str]:
        found: dict[str, _Key] = {}
        current = None
        for k in keys:
            retire = _timestamp(k.retire) if k.retire else None
            found[k.id] = _Key(k.id, load_secret(k, base_dir), retire)
            if current is None and retire is None:
                current = k.id
        if current is None:
            raise ValueError("links.keys: every key has a retire date; one current key is needed to sign")
        return found, current

    def prepare(self, keys: list[LinkKey], base_dir: Path) -> Callable[[], None]:
        """Read a reloaded config's keys (raise ValueError as at start-up);
        return what swaps them in, in place, for every holder of this ring."""
        found, current = self._read(keys, base_dir)

        def apply() -> None:
            self._keys, self.current = found, current
        return apply

    def sign(self, store: str, object_id: str, expires: int, purpose: str = "") -> str:
        """A token for ``object_id`` in ``store`` valid until ``expires``.

        ``purpose`` is mixed into the MAC (not written in the token) so a
        token made for one use (a landing page, an upload invitation) never
        verifies as another (a download link)."""
        key = self._keys[self.current]
        body = f"{key.id}.{store}.{_b36(expires)}.{object_id}"
        return body + "." + _mac(key.secret, purpose, body)

    def verify(self, token: str, now: float | None = None, purpose: str = "") -> Claims:
        """The claims of a valid token; raise TokenError or TokenExpired."""
        # fullmatch: "$" would let a token end in a newline (%0A in a URL).
        m = _TOKEN.fullmatch(token)
        if m is None:
            raise TokenError("malformed token")
        kid, store, exp36, oid, sig = m.groups()
        key = self._keys.get(kid)
        if key is None:
            raise TokenError(f"unknown key id {kid!r}")
        body = token.rpartition(".")[0]
        expected = _mac(key.secret, purpose, body)
        if not hmac.compare_digest(expected, sig):
            raise TokenError("bad signature")
        now = time.time() if now is None else now
        if key.retire is not None and now >= key.retire:
            raise TokenError(f"key {kid!r} retired")
        claims = Claims(kid=kid, store=store, expires=int(exp36, 36), object_id=oid)
        if now >= claims.expires:
            raise TokenExpired(f"expired at {claims.expires}", claims)
        return claims


def _mac(secret: bytes, purpose: str, body: str) -> str:
    # Link tokens (purpose "") keep the MAC they always had.
    data = (purpose + "\n" + body if purpose else body).encode()
    return _b64(hmac.new(secret, data, hashlib.sha256).digest()[:16])


def new_object_id() -> str:
    """A random, unguessable object id (96 bits)."""
    return _b64(secrets.token_bytes(12))


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _timestamp(iso: str) -> float:
    """An ISO 8601 date or time as Unix seconds; naive values are UTC."""
    when = dt.datetime.fromisoformat(iso)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
