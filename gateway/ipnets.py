"""IP addresses and networks as the gateway compares them.

An IPv6 socket bound to ``::`` (the TLS listener's) reports an IPv4 client
as ``::ffff:a.b.c.d``; and an operator may write an IPv4 network in that
form.  Both are turned into the IPv4 address or network they carry, so a
proxy listed as ``10.0.0.5`` is recognised on any listener and
``::ffff:0:0/96`` is seen for what it is: every IPv4 address."""
from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def address(text: str) -> IPAddress:
    """The address ``text`` names, IPv4 when it is IPv4-mapped; raises ValueError."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def network(text: str) -> IPNetwork:
    """The network ``text`` names (host bits allowed), IPv4 when it lies in
    the IPv4-mapped range; raises ValueError."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net
