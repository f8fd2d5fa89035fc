"""TLS for the SMTP ingress: the server context, reloadable.

The certificate and key are read at start and again on SIGHUP; a reload
that fails (missing file, key not matching) keeps the context in force and
logs why, as a bad config does.  TLS 1.2 is the minimum version: 1.0 and
1.1 are refused in the handshake.  Each new connection takes the context
in force when it arrives, so a renewed certificate needs no restart.
"""
from __future__ import annotations

import ipaddress
import ssl

from gateway import logs
from gateway.config import Config

log = logs.get("tls")


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side context with the certificate chain, TLS 1.2 or later."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class IngressTls:
    """The context new SMTP connections use, and who must use it."""

    def __init__(self, cfg: Config) -> None:
        self.context: ssl.SSLContext | None = None
        self.required_from: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.load(cfg, initial=True)

    def load(self, cfg: Config, initial: bool = False) -> None:
        """(Re)read the certificate and key named in ``cfg``."""
        s = cfg.smtp
        if s.tls_cert_file is None or s.tls_key_file is None:
            self.context = None
            self.required_from = []
            return
        try:
            ctx = server_context(str(cfg.path(s.tls_cert_file)), str(cfg.path(s.tls_key_file)))
        except (OSError, ssl.SSLError) as e:
            if initial:
                raise
            log.error("TLS certificate reload failed; the old one stays in force", error=str(e))
            return
        self.context = ctx
        self.required_from = [ipaddress.ip_network(n, strict=False) for n in s.require_tls_from]
        if not initial:
            log.info("TLS certificate reloaded", cert=s.tls_cert_file)

    def required_for(self, client: str) -> bool:
        """Whether this client address must STARTTLS before MAIL."""
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(addr in net for net in self.required_from)
