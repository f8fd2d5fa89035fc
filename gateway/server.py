"""``serve``: the SMTP ingress, the worker and the HTTP listener in one process.

Start order follows the flow: storage first (a misconfigured bucket stops
start-up before any port listens), then the spool (recover what a crash
left), the worker, HTTP, and SMTP last, so nothing is accepted before it can
be processed.  SIGTERM and SIGINT stop accepting, let the messages in hand
finish within a bound and leave the rest in the spool; SIGHUP re-reads the
config and keeps the old one when the new one is invalid.
"""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from gateway import config as config_mod
from gateway import logs
from gateway import storage as storage_mod
from gateway.config import Config
from gateway.http import app as http_app
from gateway.links.tokens import Keyring
from gateway.smtp import start_server
from gateway.spool import Spool
from gateway.worker import Worker

log = logs.get("server")

ROLES = ("smtp", "worker", "http")


class Gateway:
    """One gateway process and the roles it runs."""

    def __init__(self, cfg: Config, config_path: str, roles: tuple[str, ...] = ROLES) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.roles = roles
        self.spool = Spool(cfg.path(cfg.gateway.spool_dir))
        self.audit = logs.AuditLog(cfg.path(cfg.gateway.audit_log) if cfg.gateway.audit_log != "-" else "-",
                                   cfg.gateway.hostname)
        self.keyring = Keyring(cfg.links.keys, Path(cfg.base_dir))
        self.stores = {name: storage_mod.build(name, s, Path(cfg.base_dir)) for name, s in cfg.storage.items()}
        self.worker: Worker | None = None
        self.smtp: asyncio.AbstractServer | None = None
        self.http: object | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        for store in self.stores.values():
            await store.start()
        await asyncio.to_thread(self.spool.create)
        if "worker" in self.roles:
            counts = await asyncio.to_thread(self.spool.recover)
            if any(counts.values()):
                log.info("spool recovered", **counts)
            self.worker = Worker(self.cfg, self.spool, self.stores, self.keyring, self.audit)
            await self.worker.start()
        if "http" in self.roles:
            host, port = self.cfg.http.address
            self.http = await http_app.start(http_app.build_app(self.keyring, self.stores, self.audit), host, port)
        if "smtp" in self.roles:
            worker = self.worker
            self.smtp = await start_server(self.cfg, self.spool,
                                           lambda qid: worker.kick() if worker is not None else None)
        log.info("ready", roles=list(self.roles), smtp=self.cfg.smtp.listen if self.smtp else None,
                 http=self.cfg.http.listen if self.http else None, spool=str(self.spool.root))

    def reload(self) -> None:
        """SIGHUP: validate the config file again; swap it in only if valid."""
        try:
            cfg = config_mod.load(self.config_path, base_dir=self.cfg.base_dir)
        except config_mod.ConfigError as e:
            log.error("reload refused; old config stays in force", error=str(e))
            return
        self.cfg = cfg
        if self.worker is not None:
            self.worker.configure(cfg)
        log.info("config reloaded", path=self.config_path)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        await self._stop.wait()
        await self.stop()

    async def stop(self, grace: float = 30.0) -> None:
        log.info("stopping")
        if self.smtp is not None:
            self.smtp.close()
        if self.worker is not None:
            await self.worker.stop(grace)
        if self.http is not None:
            await self.http.cleanup()  # type: ignore[attr-defined]
        for store in self.stores.values():
            await store.close()
        self.audit.close()
        log.info("stopped")
