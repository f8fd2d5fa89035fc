"""DNS for the authentication checks: dnspython with bounded timeouts.

One resolver serves dkimpy (its ``dnsfunc``), pyspf (its module-level
``DNSLookup``) and the DMARC lookups.  A lookup that times out or gets
SERVFAIL raises ``DnsTempError``, which the checks turn into ``temperror``
so the message goes on (fail open); NXDOMAIN and no-answer are plain
"nothing there".  Lookups block: callers run them in worker threads, never
on the event loop.
"""
from __future__ import annotations

from typing import Any

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver


class DnsTempError(Exception):
    """A DNS lookup could not be answered now (timeout, SERVFAIL, no server)."""


class Resolver:
    """A dnspython resolver with the configured servers and time bounds."""

    def __init__(self, servers: list[tuple[str, int]], timeout: float) -> None:
        if servers:
            self._r = dns.resolver.Resolver(configure=False)
            self._r.nameservers = [host for host, _ in servers]
            # dnspython has one port for all nameservers; the config check
            # makes them agree.
            self._r.port = servers[0][1]
        else:
            self._r = dns.resolver.Resolver(configure=True)
        self._r.timeout = timeout
        self._r.lifetime = timeout
        self.timeout = timeout

    def query(self, name: str, qtype: str) -> list[Any]:
        """The answer's records, [] when the name or type does not exist."""
        try:
            answer = self._r.resolve(name, qtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as e:
            raise DnsTempError(f"{qtype} {name}: {e}") from None
        except dns.exception.DNSException as e:
            raise DnsTempError(f"{qtype} {name}: {e}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record at ``name``, its strings joined."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]

    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's ``dnsfunc``: the key record (names arrive as bytes with
        a trailing dot), or None when there is none."""
        qname = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        records = self.txt(qname)
        return records[0] if records else None

    def spf_lookup(self, name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
        """pyspf's ``DNSLookup``: ((name, type), value) pairs in its shapes."""
        import spf

        try:
            records = self.query(name, qtype)
        except DnsTempError as e:
            raise spf.TempError(f"DNS {e}") from None
        out: list[Any] = []
        for r in records:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), r.address))
            elif qtype == "MX":
                out.append(((name, qtype), (r.preference, r.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), r.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), list(r.strings)))
        return out
