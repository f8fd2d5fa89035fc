"""What the pipeline's steps share: the config, the stores, the policies,
the scanner, the signing keys and the reply next hops, built once per
config and rebuilt on SIGHUP."""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import policies
from gateway import autoreply, logs, mailtext
from gateway.authn.resolver import Resolver
from gateway.authn.seal import Key, Sealer
from gateway.authn.verify import Verifier
from gateway.config import Config
from gateway.delivery import NextHop, build as build_next_hop
from gateway.delivery.leases import Leases
from gateway.links.tokens import Keyring
from gateway.mime.parse import Limits
from gateway.scan import Clamd
from gateway.storage.base import Storage

log = logs.get("worker")


class Services:
    """The long-lived things a message's processing uses (no per-message state)."""

    def __init__(self, cfg: Config, stores: dict[str, Storage], keyring: Keyring, audit: logs.AuditLog,
                 spool_root: Path) -> None:
        self.stores = stores
        self.keyring = keyring
        self.audit = audit
        # Failures that fail open, counted in this process for the log lines
        # that report them (gateway/metrics.py counts them across processes).
        self.counts: Counter[str] = Counter()
        # Shared by every process on the spool directory, the milter's too.
        self.local_rates = autoreply.RateStore(spool_root / "autoreply")
        self.autoreply_hops: dict[str, NextHop] = {}
        self.leases = Leases()
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded config; the reply next hops it replaces are
        closed once the replies using them have gone."""
        self.cfg = cfg
        # Cloud stores are shared by every node of a fleet: the auto-reply
        # rate is claimed there, so it holds across nodes (gateway/autoreply.py).
        self.rates = autoreply.Rates(self.local_rates, {
            name: store for name, store in self.stores.items()
            if name in cfg.storage and cfg.storage[name].backend != "filesystem"})
        self.policies = {r.name: [policies.build(p.name, p.settings) for p in r.policies] for r in cfg.routes}
        # The texts each route's mail is written in (catalogues read now, and
        # again on SIGHUP, so an operator's edited catalogue is taken then).
        catalogues = mailtext.catalogues(cfg.path(cfg.i18n.directory) if cfg.i18n.directory else None)
        self.texts = {r.name: mailtext.for_language(catalogues, r.language) for r in cfg.routes}
        base = Path(cfg.base_dir)
        for hop in self.autoreply_hops.values():
            self.leases.retire(hop)
        self.autoreply_hops = {
            r.name: build_next_hop(r.autoreply.next_hop, base_dir=base, hostname=cfg.gateway.hostname,
                                   connect_timeout=cfg.delivery.connect_timeout,
                                   command_timeout=cfg.delivery.command_timeout)
            for r in cfg.routes if r.autoreply is not None}
        self.scanner = Clamd(cfg.clamd.address, cfg.clamd.timeout) if cfg.clamd is not None else None
        self.limits = Limits(max_header_bytes=cfg.worker.max_header_bytes, max_depth=cfg.worker.max_mime_depth,
                             max_parts=cfg.worker.max_parts, max_header_fields=cfg.worker.max_header_fields,
                             max_header_line=cfg.worker.max_header_line,
                             max_params=cfg.worker.max_header_params)
        for r in cfg.routes:
            if r.unexamined == "forward-unexamined":
                log.error("route forwards parts it could not examine to the next hop as they came "
                          "(unexamined = \"forward-unexamined\"); executables behind a MIME limit reach agents",
                          route=r.name)
        self.offload_slots = asyncio.Semaphore(cfg.worker.offload_concurrency)
        auth = cfg.auth
        self.authserv_id = (auth.authserv_id or cfg.gateway.hostname).lower()
        self.verifier = Verifier(self.authserv_id, Resolver(auth.servers(), auth.dns_timeout),
                                 cfg.worker.max_header_bytes) if auth.verify else None
        keys = {name: Key.load(k.domain, k.selector, cfg.path(k.key_file)) if k is not None else None
                for name, k in (("arc", auth.arc), ("dkim", auth.dkim))}
        self.sealer = Sealer(self.authserv_id, keys["arc"], keys["dkim"]) if any(keys.values()) else None

    async def close(self) -> None:
        """Close the reply next hops' pooled connections."""
        await self.leases.drain()
        for hop in self.autoreply_hops.values():
            await hop.close()
