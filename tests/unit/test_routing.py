"""Recipients as an MTA passes them to the milter (gateway/ingress/routing.py):
read as the MTA delivers them, and never taken for mail of no route while
they name a route's domain."""
from __future__ import annotations

import pytest

from gateway.config import RouteSettings
from gateway.ingress.routing import as_delivered, hidden_route_address, names_a_route_domain, route_for

ROUTES = [RouteSettings(name="contact", domains=["contact.example"], next_hop="maildir:/tmp/x", storage="s"),
          RouteSettings(name="one", addresses=["help@other.example"], next_hop="maildir:/tmp/y", storage="s")]


@pytest.mark.parametrize("written,delivered", [
    ('"support"@contact.example', "support@contact.example"),
    ("@relay.example:support@contact.example", "support@contact.example"),
    ("@a.example,@b.example:support@contact.example", "support@contact.example"),
    ('"sup port"@contact.example', '"sup port"@contact.example'),
    ("support@contact.example", "support@contact.example"),
])
def test_as_delivered(written: str, delivered: str) -> None:
    assert as_delivered(written) == delivered


@pytest.mark.parametrize("address", [
    "support@contact.example.", "support%contact.example@mx.example", "contact.example!support@mx.example",
    '"support@contact.example"@mx.example', "support@CONTACT.EXAMPLE.", "support@contact\u3002example",
    "help@other.example.", '"sup port"@contact.example',
])
def test_forms_naming_a_route_domain_are_never_mail_of_no_route(address: str) -> None:
    assert route_for(ROUTES, as_delivered(address)) is None
    assert hidden_route_address(ROUTES, as_delivered(address))


@pytest.mark.parametrize("address", ["someone@elsewhere.example", "support@contact.example.evil.example",
                                     "other@other.example.net"])
def test_other_domains_are_not_ours(address: str) -> None:
    assert not names_a_route_domain(ROUTES, address)
    assert not hidden_route_address(ROUTES, address)


def test_another_mailbox_at_the_domain_of_a_route_address_is_not_ours() -> None:
    """A route that takes one address leaves the rest of its domain to the MTA."""
    assert route_for(ROUTES, "other@other.example") is None
    assert not hidden_route_address(ROUTES, "other@other.example")
    assert route_for(ROUTES, "HELP@Other.Example") is ROUTES[1]
