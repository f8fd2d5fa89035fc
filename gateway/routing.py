"""Which route, if any, accepts a recipient address.

The gateway is never an open relay: a recipient is accepted only when a
route lists its exact address or its domain.  Address forms that let a
downstream server relay elsewhere (percent hack, bang paths, quoted local
parts holding ``@``, IP-literal domains) or that hide control characters are
refused before any route is consulted.
"""
from __future__ import annotations

import re

from gateway.config import RouteSettings

# Control characters: never part of an address the gateway accepts.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BAD_LOCAL = re.compile(r"[%!@\"\\\s]")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


class AddressRefused(ValueError):
    """An address form the gateway does not accept (answered 553 5.1.3)."""


def split_address(address: str) -> tuple[str, str]:
    """(local part, lower-case domain) of a recipient, or AddressRefused."""
    if CONTROL_CHARS.search(address):
        raise AddressRefused("control characters in address")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressRefused("address without a domain")
    if _BAD_LOCAL.search(local):
        raise AddressRefused("source-routing or quoted characters in the local part")
    domain = domain.lower().rstrip(".")
    if domain.startswith("["):
        raise AddressRefused("address literals are not accepted")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise AddressRefused("invalid domain") from None
    if not _DOMAIN.match(ascii_domain):
        raise AddressRefused("invalid domain")
    return local, domain


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
