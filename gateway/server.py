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
import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway import audit_sinks
from gateway import config as config_mod
from gateway import logs
from gateway import storage as storage_mod
from gateway.config import Config
from gateway.http import app as http_app
from gateway.links.authz import AllowAll
from gateway.links.tokens import Keyring
from gateway.smtp import start_server
from gateway.spool import Spool
from gateway.worker import Worker

log = logs.get("server")

ROLES = ("smtp", "worker", "http")


class Gateway:
    """One gateway process and the roles it runs."""

    def __init__(self, cfg: Config, config_path: str, roles: tuple[str, ...] = ROLES, *,
                 shared_ports: bool = False, recover: bool = True) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.roles = roles
        # With several processes, each listens on the same ports
        # (SO_REUSEPORT) and the kernel spreads connections between them.
        self.shared_ports = shared_ports
        self.recover = recover
        self.spool = Spool(cfg.path(cfg.gateway.spool_dir))
        self.audit = logs.AuditLog(cfg.path(cfg.gateway.audit_log) if cfg.gateway.audit_log != "-" else "-",
                                   cfg.gateway.hostname, audit_sinks.build(cfg))
        self.keyring = Keyring(cfg.links.keys, Path(cfg.base_dir))
        self.stores = {name: storage_mod.build(name, s, Path(cfg.base_dir)) for name, s in cfg.storage.items()}
        # Built now so that a missing secret stops start-up before any port listens.
        self.links = http_app.build_links(cfg, self.keyring, self.stores, self.audit) if "http" in roles else None
        self.api_keys = http_app.api_keys(cfg) if "http" in roles else {}
        self.worker: Worker | None = None
        self.smtp: asyncio.AbstractServer | None = None
        self.http: http_app.Listener | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        # Spool and storage calls run in threads and most of them wait on
        # fsync or the network: give them more threads than the default.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64,
                                                                           thread_name_prefix="io"))
        for store in self.stores.values():
            await store.start()
        self.audit.start()
        await asyncio.to_thread(self.spool.create)
        if "worker" in self.roles and self.recover:
            counts = await asyncio.to_thread(self.spool.recover)
            if any(counts.values()):
                log.info("spool recovered", **counts)
        if "worker" in self.roles:
            self.worker = Worker(self.cfg, self.spool, self.stores, self.keyring, self.audit)
            await self.worker.start()
        if "http" in self.roles:
            assert self.links is not None
            self.http = await http_app.start(self.cfg, self.links, self.audit, self.api_keys, self.spool,
                                             reuse_port=self.shared_ports)
        if "smtp" in self.roles:
            worker = self.worker
            self.smtp = await start_server(self.cfg, self.spool,
                                           lambda qid: worker.enqueue(qid) if worker is not None else None,
                                           reuse_port=self.shared_ports)
        if self.http is not None and self.links is not None and isinstance(self.links.authoriser, AllowAll):
            log.warning("authorisation is allow-all: every agent sees every customer's files",
                        agents_auth=self.cfg.agents.auth, explicit=self.cfg.authorization.mode == "allow-all")
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
            await self.http.cleanup()
        for store in self.stores.values():
            await store.close()
        await self.audit.stop()
        log.info("stopped")


class Supervisor:
    """``serve`` with several processes: forks the workers, passes signals
    on, and starts a process again when one dies.

    Every child runs the same roles on the same ports (SO_REUSEPORT) over
    the one spool; claims are renames under a lock, so no message is taken
    twice.  The supervisor recovers the spool once before forking; while
    running, each worker also takes back what a dead sibling left.
    """

    def __init__(self, cfg: Config, config_path: str, roles: tuple[str, ...], processes: int) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.roles = roles
        self.processes = processes
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False

    def _spawn(self, slot: int) -> None:
        import os

        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                gw = Gateway(self.cfg, self.config_path, self.roles, shared_ports=True, recover=False)
                asyncio.run(gw.run())
            except BaseException as e:  # noqa: BLE001 - report, and let the supervisor restart us
                log.error("process failed", slot=slot, error=f"{type(e).__name__}: {e}")
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = slot

    def run(self) -> int:
        import os
        import time

        spool = Spool(self.cfg.path(self.cfg.gateway.spool_dir))
        spool.create()
        if "worker" in self.roles:
            counts = spool.recover()
            if any(counts.values()):
                log.info("spool recovered", **counts)

        def on_stop(signum: int, frame: object) -> None:
            self.stopping = True
            for pid in list(self.children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

        def on_hup(signum: int, frame: object) -> None:
            try:
                config_mod.load(self.config_path, base_dir=self.cfg.base_dir)
            except config_mod.ConfigError as e:
                log.error("reload refused; old config stays in force", error=str(e))
                return
            for pid in list(self.children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        for slot in range(self.processes):
            self._spawn(slot)
        log.info("supervisor started", processes=self.processes)
        status = 0
        while self.children:
            try:
                pid, wstatus = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            if not self.stopping:
                log.error("process exited; starting it again", slot=slot, pid=pid, code=code)
                time.sleep(1.0)
                if not self.stopping:
                    self._spawn(slot)
            elif code not in (0, -signal.SIGTERM):
                status = 1
        log.info("supervisor stopped")
        return status
