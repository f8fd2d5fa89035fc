"""A small authoritative DNS server on loopback for the authentication tests.

It answers TXT, A and MX questions (any type whose records are given as
zone-file text) from a table over UDP and TCP, exactly as a real server
would on the wire, so the gateway's own resolver (dnspython with the
configured server and timeouts) is what the tests exercise.  It can be
switched to answer SERVFAIL, or to stay silent (a timeout).
"""
from __future__ import annotations

import errno
import socketserver
import struct
import threading
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.servers.ports import LOOPBACK


def _txt_strings(value: str) -> list[str]:
    """Split a long TXT value into 255-byte character-strings."""
    return [value[i:i + 255] for i in range(0, len(value), 255)] or [""]


@dataclass
class DnsServer:
    """Records by (name, type), as zone-file text; ``mode`` is "answer",
    "servfail" or "silent"."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    mode: str = "answer"
    port: int = 0
    queries: list[tuple[str, str]] = field(default_factory=list)

    def add_txt(self, name: str, value: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), "TXT"), []).append(value)

    def add_a(self, name: str, address: str) -> None:
        """An address record (AAAA when ``address`` is IPv6)."""
        qtype = "AAAA" if ":" in address else "A"
        self.records.setdefault((name.lower().rstrip("."), qtype), []).append(address)

    def add_mx(self, name: str, preference: int, exchange: str) -> None:
        """A mail exchanger for ``name``; ``exchange`` "." is a null MX (RFC 7505)."""
        target = exchange if exchange.endswith(".") else exchange + "."
        self.records.setdefault((name.lower().rstrip("."), "MX"), []).append(f"{preference} {target}")

    def answer(self, wire: bytes) -> bytes | None:
        q = dns.message.from_wire(wire)
        question = q.question[0]
        name = question.name.to_text().lower().rstrip(".")
        qtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, qtype))
        if self.mode == "silent":
            return None
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        if self.mode == "servfail":
            r.set_rcode(dns.rcode.SERVFAIL)
            return r.to_wire()
        values = self.records.get((name, qtype))
        if values:
            if qtype == "TXT":
                texts = [" ".join(f'"{s}"' for s in _txt_strings(v)) for v in values]
            else:
                texts = values
            r.answer.append(dns.rrset.from_text(question.name, 60, "IN", qtype, *texts))
        elif not any(n == name or n.endswith("." + name) for n, _ in self.records):
            # A name with records below it exists (an "empty non-terminal",
            # such as example.com above sel._domainkey.example.com): NODATA,
            # not NXDOMAIN, or a caching resolver (OpenDKIM's unbound)
            # takes everything below it as absent too (RFC 8020).
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r.to_wire(max_size=65535)

    def start(self) -> "DnsServer":
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                out = server.answer(data)
                if out is not None:
                    if len(out) > 512 and not dns.message.from_wire(data).edns >= 0:
                        # Too big for plain UDP: say so, the client asks over TCP.
                        r = dns.message.make_response(dns.message.from_wire(data))
                        r.flags |= dns.flags.TC
                        out = r.to_wire()
                    sock.sendto(out, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = self.request.recv(2)
                if len(head) < 2:
                    return
                (n,) = struct.unpack("!H", head)
                data = b""
                while len(data) < n:
                    chunk = self.request.recv(n - len(data))
                    if not chunk:
                        return
                    data += chunk
                out = server.answer(data)
                if out is not None:
                    self.request.sendall(struct.pack("!H", len(out)) + out)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        # One port number for UDP and TCP: the UDP port the kernel picks may
        # be taken on TCP (by another test's connection), so pick again.
        for attempt in range(50):
            self._udp = socketserver.ThreadingUDPServer((LOOPBACK, self.port), Udp)
            port = self._udp.server_address[1]
            try:
                self._tcp = socketserver.ThreadingTCPServer((LOOPBACK, port), Tcp)
            except OSError as e:
                self._udp.server_close()
                if e.errno != errno.EADDRINUSE or self.port or attempt == 49:
                    raise
                continue
            self.port = port
            break
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
                         for s in (self._udp, self._tcp)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self._udp, self._tcp):
            s.shutdown()
            s.server_close()
