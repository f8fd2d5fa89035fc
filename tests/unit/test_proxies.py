"""Which reverse proxies are believed: addresses as a dual-stack listener
(the TLS one, bound to ``::``) reports IPv4 clients, ``::ffff:a.b.c.d``."""
from __future__ import annotations

from gateway.links.agents import Proxies


def test_an_ipv4_mapped_peer_is_the_ipv4_address_it_carries() -> None:
    proxies = Proxies(["10.0.0.5", "192.0.2.0/24"])
    assert proxies.trusted("::ffff:10.0.0.5") and proxies.trusted("::ffff:192.0.2.77")
    assert not proxies.trusted("::ffff:10.0.0.6") and not proxies.trusted("::ffff:7f00:1")


def test_a_network_written_ipv4_mapped_means_its_ipv4_addresses() -> None:
    proxies = Proxies(["::ffff:10.0.0.0/120"])
    assert proxies.trusted("10.0.0.9") and proxies.trusted("::ffff:10.0.0.9")
    assert not proxies.trusted("10.0.1.9") and not proxies.trusted("fe80::1")
