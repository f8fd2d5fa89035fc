"""Customer ids as the CRM has them: checked, kept as given, compared as
the config says.

A customer id arrives from a trusted header, an API caller's
``X-CustomerId``, an invitation or (as a label) the envelope sender.  It is
kept exactly as given (case and all) for what people and other systems
read: audit events, link records, the authorisation check, the upload
page.  Object keys use a different, sanitised form made in one place,
``gateway.storage.keys.customer_key``.

``checked`` refuses what could act rather than read (control characters
such as CR and LF, invisible format characters such as bidi overrides),
bytes that did not decode (two ids would read the same), the empty id and
ids longer than ``MAX_LENGTH``; it never rewrites an id, so the id an
agent's authorisation map names is the id the gateway compares.  ``same``
compares two ids the way ``[authorization] customer_id_match`` says:
``case-insensitive`` (Unicode case folding, the default) or ``exact``.
Lookalikes (a Cyrillic "С" for a Latin "C", fullwidth letters, the
Kelvin sign for a "K") are different ids in both modes: nothing is
normalised to ASCII for a comparison, not even by case folding (``fold``).
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Literal

MAX_LENGTH = 128
# The id used when a message names no customer and the route has no fallback.
UNKNOWN = "unknown"

Match = Literal["case-insensitive", "exact"]
MATCHES: tuple[Match, ...] = ("case-insensitive", "exact")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidCustomerId(ValueError):
    """A customer id that cannot be used; ``str()`` says why."""


def checked(value: str) -> str:
    """``value`` without surrounding white space, as given otherwise; raises
    InvalidCustomerId when it is empty, longer than MAX_LENGTH characters,
    or holds a control character (CR, LF, NUL, C1), an invisible Unicode
    format character (category Cf: bidi overrides, zero-width characters)
    or the replacement character of bytes that did not decode."""
    value = value.strip()
    if not value:
        raise InvalidCustomerId("empty customer id")
    if _CONTROL.search(value):
        raise InvalidCustomerId("customer id holds a control character (CR, LF, NUL, ...)")
    if not value.isascii():
        if any(unicodedata.category(ch) == "Cf" for ch in value):
            raise InvalidCustomerId("customer id holds an invisible format character (bidi control, zero-width)")
        if "\ufffd" in value or any(unicodedata.category(ch) == "Cs" for ch in value):
            # Bytes that did not decode: two different ids would read the same.
            raise InvalidCustomerId("customer id holds undecodable bytes (send it as UTF-8 or RFC 2047)")
    if len(value) > MAX_LENGTH:
        raise InvalidCustomerId(f"customer id longer than {MAX_LENGTH} characters ({len(value)})")
    return value


def fold(value: str) -> str:
    """The form ids are compared in when case does not matter: Unicode
    case folding, except for the compatibility characters it would merge
    with the characters they stand in for (``_imitates``), which stay as
    they are."""
    if value.isascii():
        return value.casefold()
    return "".join(ch if _imitates(ch) else ch.casefold() for ch in value)


@functools.cache
def _imitates(ch: str) -> bool:
    """Whether case folding would make ``ch``, a compatibility stand-in for
    another character, the very text that character folds to: the Kelvin
    sign K (U+212A) folds to "k", the long s (U+017F) to "s", the ligature
    fi (U+FB01) to "fi", the Angstrom sign (U+212B) to "å".  Folded,
    ``\u212aunde@example.net`` would be ``kunde@example.net``: the same
    customer to the authorisation map, the same object key prefix, the same
    erasure.  (Fullwidth letters fold to fullwidth ones and are folded as
    before; case folding is per character, so folding the rest one by one
    is the same as folding the whole.)"""
    compat = unicodedata.normalize("NFKC", ch)
    return compat != ch and ch.casefold() == compat.casefold()


def comparable(value: str, match: Match) -> str:
    """The form ``value`` is compared in under ``match``."""
    return value if match == "exact" else fold(value)


def same(a: str, b: str, match: Match) -> bool:
    """Whether ids ``a`` and ``b`` name the same customer under ``match``."""
    return comparable(a, match) == comparable(b, match)
