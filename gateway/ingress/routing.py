"""Which route, if any, accepts a recipient address.

The gateway is never an open relay: a recipient is accepted only when a
route lists its exact address or its domain.  Address forms that let a
downstream server relay elsewhere (percent hack, bang paths, quoted local
parts holding ``@``, IP-literal domains) or that hide control characters are
refused before any route is consulted, and so is a malformed domain
(``check_domain``: a trailing dot, an empty label, a label that is not LDH).

Inside an MTA (the milter) the address arrives as the client wrote it, and
the MTA may deliver one of those forms to a route's domain all the same: it
is read as the MTA delivers it (``as_delivered``), and one that still names
a route's domain somewhere (``hidden_route_address``) is refused, never left
alone as mail for no route.
"""
from __future__ import annotations

import ipaddress
import re

from gateway.config import RouteSettings

# Control characters: never part of an address the gateway accepts.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BAD_LOCAL = re.compile(r"[%!@\"\\\s]")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
# A source route before the mailbox (RFC 5321 appendix C): MTAs drop it.
_SOURCE_ROUTE = re.compile(r"^@[^:]*:(?=[^@]*@)")
# A quoted local part whose quotes quote nothing (dot-atom text inside).
_NEEDLESS_QUOTES = re.compile(r'^"([A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]+)"(@[^@]+)$')
# What separates the domain-like pieces of an address, however it is written.
_ADDRESS_SEPARATORS = re.compile(r'[@%!:,;"<>()\[\]\\\s]+')


class AddressRefused(ValueError):
    """An address form the gateway does not accept (answered 553 5.1.3)."""


def check_domain(domain: str, *, literals: bool = False) -> str:
    """The lower-case form of a mail domain, or AddressRefused.

    A domain is LDH labels of 1-63 characters (no leading or trailing
    hyphen), at most 253 characters in all, with no trailing dot and no
    empty label; an internationalised one is checked in its IDNA (punycode)
    form.  ``literals`` lets ``[IPv4]`` and ``[IPv6:...]`` through (a
    sender's address; never a recipient's)."""
    domain = domain.lower()
    if domain.startswith("["):
        if literals and _literal_ok(domain):
            return domain
        raise AddressRefused("address literals are not accepted" if not literals else "invalid address literal")
    if domain.endswith("."):
        raise AddressRefused("invalid domain: trailing dot")
    if domain.isascii():
        ascii_domain = domain
    else:
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressRefused("invalid domain") from None
    if not _DOMAIN.match(ascii_domain):
        raise AddressRefused("invalid domain")
    return domain


def _literal_ok(domain: str) -> bool:
    if not domain.endswith("]"):
        return False
    inner = domain[1:-1]
    try:
        if inner.startswith("ipv6:"):
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def invalid_utf8(text: str) -> bool:
    """Whether ``text`` came from bytes that were not UTF-8: aiosmtpd
    decodes command arguments with ``surrogateescape``, which turns each
    such byte into a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def split_address(address: str) -> tuple[str, str]:
    """(local part, lower-case domain) of a recipient, or AddressRefused."""
    if CONTROL_CHARS.search(address):
        raise AddressRefused("control characters in address")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressRefused("address without a domain")
    if _BAD_LOCAL.search(local):
        raise AddressRefused("source-routing or quoted characters in the local part")
    return local, check_domain(domain)


def check_sender(address: str) -> None:
    """AddressRefused unless ``address`` (not the null sender) is a mailbox
    with a well-formed domain (an address literal allowed)."""
    if CONTROL_CHARS.search(address):
        raise AddressRefused("control characters in address")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressRefused("address without a domain")
    check_domain(domain, literals=True)


def as_delivered(address: str) -> str:
    """``address`` in the form an MTA delivers it to: a source route
    dropped, quotes that quote nothing removed (``"support"@d`` is
    ``support@d``).  The relay's parser (aiosmtpd) does this itself; an MTA
    passes its milter the address as the client wrote it."""
    address = _SOURCE_ROUTE.sub("", address)
    m = _NEEDLESS_QUOTES.match(address)
    return m.group(1) + m.group(2) if m else address


def names_a_route_domain(routes: list[RouteSettings], address: str) -> bool:
    """Whether any domain-like piece of ``address`` (after the last ``@``
    with or without a trailing dot, after a ``%`` or before a ``!`` in the
    local part, inside quotes, in a source route) is a domain a route takes
    or the domain of an address a route takes.  An MTA that reads such forms
    (Postfix's percent hack and bang paths, a trailing dot) may deliver the
    message to the route's next hop: it is never one for no route."""
    ours = {d for r in routes for d in r.domains} | {a.rpartition("@")[2] for r in routes for a in r.addresses}
    for piece in _ADDRESS_SEPARATORS.split(address.lower()):
        name = piece.rstrip(".")
        if name and not name.isascii():
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                continue
        if name and name in ours:
            return True
    return False


def hidden_route_address(routes: list[RouteSettings], address: str) -> bool:
    """Whether ``address``, which ``route_for`` gives no route, may still be
    delivered to a route's next hop by an MTA: a form ``split_address``
    refuses that names a route's domain anywhere, or a plain address whose
    Unicode domain is a route's in its IDNA form (an MTA looks domains up
    that way: ``contact\u3002example`` is ``contact.example``)."""
    try:
        _, domain = split_address(address)
    except AddressRefused:
        return names_a_route_domain(routes, address)
    return not domain.isascii() and names_a_route_domain(routes, domain)


def route_for(routes: list[RouteSettings], address: str) -> RouteSettings | None:
    """The first route accepting ``address``: exact addresses before domains."""
    try:
        local, domain = split_address(address)
    except AddressRefused:
        return None
    full = f"{local.lower()}@{domain}"
    for route in routes:
        if full in route.addresses:
            return route
    for route in routes:
        if domain in route.domains:
            return route
    return None
