"""``serve``: the SMTP ingress, the worker, the HTTP listener and the milter.

Start order follows the flow: storage first (a misconfigured bucket stops
start-up before any port listens; with several processes ``cli.cmd_serve``
checks the stores once before forking), then the spool (recover what a crash
left), the worker, HTTP, and SMTP last, so nothing is accepted before it can
be processed; the milter, which needs neither spool nor worker tasks, starts
with them.  SIGTERM and SIGINT drain: new sessions get 421, sessions and
messages in hand get ``gateway.drain_seconds`` to finish, and whatever is
left stays in the spool for the next start.  SIGHUP re-reads the config and
keeps the old one when the new one is invalid, and re-reads the SMTP
certificate and key (new connections use the new ones).

With several processes a ``Supervisor`` forks them and is the one systemd
talks to: it says READY=1 once every process listens, and pings the
watchdog only while every process's event loop is alive.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from gateway import audit_sinks, config as config_mod, disarm, logs, metrics, sdnotify, storage as storage_mod
from gateway.config import Config
from gateway.delivery.queue import Deliverer
from gateway.http import app as http_app
from gateway.http.api import UploadApi
from gateway.http.apikeys import ApiKeys
from gateway.http.health import Health
from gateway.http.upload_page import UploadPage
from gateway.ingress.milter import MilterServer
from gateway.ingress.smtp import Handler, start_server
from gateway.ingress.tls import IngressTls
from gateway.jobs import JobRunner
from gateway.links.authz import AllowAll
from gateway.links.tokens import Keyring
from gateway.pipeline import Pipeline
from gateway.pipeline.services import Services
from gateway.runner import Runner
from gateway.spool import Spool
from gateway.storage.base import Storage
from gateway.storage.filesystem import FilesystemStorage
from gateway.storage.retention import PrefixRetention, plan_for
from gateway.storage.sweep import Sweeper
from gateway.uploads import Uploads

log = logs.get("server")

ROLES = ("smtp", "worker", "http")
HEARTBEAT_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1
# Every role a process can run; "milter" runs when the config has [milter]
# or when asked for (``attachment-gateway milter``, ``serve --only milter``).
ALL_ROLES = (*ROLES, "milter")


class Gateway:
    """One gateway process and the roles it runs."""

    def __init__(self, cfg: Config, config_path: str, roles: tuple[str, ...] = ROLES, *,
                 shared_ports: bool = False, recover: bool = True, report_fd: int | None = None,
                 slot: int = 0) -> None:
        self.cfg = cfg
        # What the process started with: the keys a reload cannot change
        # keep these values (config.RESTART_KEYS).
        self.started_cfg = cfg
        self.config_path = config_path
        self.roles = roles
        # With several processes, each listens on the same ports
        # (SO_REUSEPORT) and the kernel spreads connections between them.
        self.shared_ports = shared_ports
        self.recover = recover
        # Under a supervisor: where to say "ready" and send heartbeats.
        self.report_fd = report_fd
        self.slot = slot
        self.spool = Spool(cfg.path(cfg.gateway.spool_dir))
        self.audit = logs.AuditLog(cfg.path(cfg.gateway.audit_log) if cfg.gateway.audit_log != "-" else "-",
                                   cfg.gateway.hostname, audit_sinks.build(cfg))
        self.keyring = Keyring(cfg.links.keys, Path(cfg.base_dir))
        self.stores = {name: storage_mod.build(name, s, Path(cfg.base_dir)) for name, s in cfg.storage.items()}
        # Built now so that a missing secret stops start-up before any port listens.
        self.api_keys = ApiKeys(cfg)
        self.links = http_app.build_links(cfg, self.keyring, self.stores, self.audit) if "http" in roles else None
        self.pipeline: Pipeline | None = None
        self._prestart: asyncio.Future[None] | None = None
        self.runner: Runner | None = None
        self.smtp: asyncio.AbstractServer | None = None
        self.smtp_handler: Handler | None = None
        self.http: http_app.Listener | None = None
        self.uploads: Uploads | None = None
        self.jobs: JobRunner | None = None
        self.api: UploadApi | None = None
        self.upload_page: UploadPage | None = None
        self.tls: IngressTls | None = None
        self.milter: MilterServer | None = None
        self.admin: web.AppRunner | None = None
        self.sweeper: Sweeper | None = None
        self.health = Health(lambda: self.cfg, self.spool if "smtp" in roles or "worker" in roles else None,
                             self.stores, self._listeners)
        self._stop = asyncio.Event()

    def _listeners(self) -> dict[str, bool]:
        """Each listener this process should have, and whether it is up."""
        up: dict[str, bool] = {}
        if "smtp" in self.roles:
            up["smtp"] = self.smtp is not None and self.smtp.is_serving()
        if "http" in self.roles:
            up["http"] = self.http is not None
        if "milter" in self.roles:
            server = getattr(self.milter, "_server", None)
            up["milter"] = server is not None and server.is_serving()
        return up

    async def start(self) -> None:
        # Spool and storage calls run in threads and most of them wait on
        # fsync or the network: give them more threads than the default.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64,
                                                                           thread_name_prefix="io"))
        for store in self.stores.values():
            await store.start()
        # Every known series at zero before the first event.
        metrics.initialise(self.cfg.routes, self.stores)
        self.health.start()
        self.audit.start()
        if "smtp" in self.roles or "worker" in self.roles:
            await asyncio.to_thread(self.spool.create)
        if "worker" in self.roles and self.recover:
            recovery = await asyncio.to_thread(self.spool.recover)
            for found in recovery.found:
                log.info("spool recovery took an entry no live process holds", **found.fields())
            if recovery:
                log.info("spool recovered", **recovery.counts())
        if "worker" in self.roles or "milter" in self.roles:
            # One pipeline for the relay's runner and the milter.
            self.pipeline = Pipeline(Services(self.cfg, self.stores, self.keyring, self.audit, self.spool.root))
        if {"worker", "milter", "http"} & set(self.roles) \
                and any(r.disarm.pdf != "allow" or r.disarm.office != "allow" for r in self.cfg.routes):
            # Disarm's fork server (mail's parts, and the files uploaded over
            # HTTP), started beside the rest rather than by the first file
            # that needs it.
            self._prestart = asyncio.get_running_loop().run_in_executor(None, disarm.prestart)
            self._prestart.add_done_callback(_prestarted)
        if "worker" in self.roles:
            assert self.pipeline is not None
            self.runner = Runner(self.cfg, self.spool, self.pipeline,
                                 Deliverer(self.cfg, self.pipeline.services.limits))
            await self.runner.start()
        # Uploads over HTTP: the API and page take them in processes with
        # the http role; jobs run where the worker role is (their markers
        # are in the spool, like messages).
        self.uploads = Uploads(self.cfg, self.stores, self.keyring, self.audit)
        self.jobs = JobRunner(self.spool.root, self.uploads, self.cfg.api.job_lease)
        if "worker" in self.roles:
            await self.jobs.start()
        if "worker" in self.roles and self.slot == 0:
            # Filesystem stores have no lifecycle of their own: one worker
            # process per node deletes what has expired (safe beside others).
            self.sweeper = Sweeper(self._swept_stores)
            self.sweeper.start()
        if "http" in self.roles:
            assert self.links is not None
            runner = self.runner
            self.api = UploadApi(self.cfg, self.api_keys, self.uploads, self.jobs, self.audit)
            if self.cfg.upload.enabled:
                self.upload_page = UploadPage(self.cfg, self.keyring, self.uploads, self.spool, self.audit,
                                              lambda qid: runner.enqueue(qid) if runner is not None else None,
                                              self.links.pages)
                self.upload_page.start_sweeper()
            app = http_app.build_app(self.cfg, self.links, self.spool, self.api_keys, self.api, self.upload_page,
                                     health=self.health, settings=lambda: self.cfg)
            self.http = await http_app.start(self.cfg, app, self.audit, reuse_port=self.shared_ports)
            if self.cfg.metrics.on_http == "api-key" and not self.cfg.api.keys:
                log.warning("metrics.on_http is \"api-key\" but [api] has no keys: /metrics is served to no one "
                            "on the HTTP listener")
        if self.cfg.metrics.listen and ("http" in self.roles or "worker" in self.roles):
            self.admin = await http_app.start_admin(
                self.cfg, http_app.build_admin_app(self.spool, self.health, self.audit),
                reuse_port=self.shared_ports)
        if "milter" in self.roles:
            assert self.pipeline is not None
            self.milter = MilterServer(self.cfg, self.pipeline)
            await self.milter.start(reuse_port=self.shared_ports)
        if "smtp" in self.roles:
            self.tls = IngressTls(self.cfg)
            self.smtp, self.smtp_handler = await start_server(
                self.cfg, self.spool, self.runner, reuse_port=self.shared_ports, tls=self.tls)
        if self.http is not None:
            self._warn_allow_all()
        log.info("ready", roles=list(self.roles), smtp=self.cfg.smtp.listen if self.smtp else None,
                 http=self.cfg.http.listen if self.http else None,
                 metrics=self.cfg.metrics.listen if self.admin else None,
                 milter=self.milter.settings.listen if self.milter else None, spool=str(self.spool.root))

    def _swept_stores(self) -> list[tuple[str, Storage, Path, list[PrefixRetention]]]:
        """The filesystem stores and their retention plans, as the config in force says."""
        return [(name, store, store.root, plan_for(self.cfg, name)) for name, store in self.stores.items()
                if isinstance(store, FilesystemStorage)]

    def _warn_allow_all(self) -> None:
        if self.links is not None and isinstance(self.links.authoriser, AllowAll):
            log.warning("authorisation is allow-all: every agent sees every customer's files",
                        agents_auth=self.cfg.agents.auth, explicit=self.cfg.authorization.mode == "allow-all")

    def reload(self) -> None:
        """SIGHUP: validate the config file again; swap it in only if valid."""
        try:
            cfg = config_mod.load(self.config_path, base_dir=self.cfg.base_dir)
        except config_mod.ConfigError as e:
            log.error("reload refused; old config stays in force", error=str(e))
            return
        try:
            # Every secret is read before anything changes: one that cannot
            # be read refuses the whole reload.
            swap_keys = self.keyring.prepare(cfg.links.keys, Path(cfg.base_dir))
            access = http_app.build_access(cfg) if self.links is not None else None
            self.api_keys.configure(cfg)
        except (ValueError, config_mod.ConfigError) as e:  # a key or secret that cannot be read
            log.error("reload refused; old config stays in force", error=str(e))
            return
        unapplied = config_mod.restart_changes(self.started_cfg, cfg)
        if unapplied:
            log.warning("reload leaves these keys as they were until a restart", keys=unapplied)
        self.cfg = cfg
        swap_keys()
        if self.links is not None and access is not None:
            http_app.reconfigure_links(self.links, cfg, access)
            self._warn_allow_all()
        if self.api is not None:
            self.api.configure(cfg)
        if self.runner is not None:
            self.runner.configure(cfg)
        elif self.pipeline is not None:
            self.pipeline.services.configure(cfg)
        if self.uploads is not None:
            self.uploads.configure(cfg)
        if self.upload_page is not None:
            self.upload_page.configure(cfg)
        if self.tls is not None:
            self.tls.load(cfg)
        if self.smtp_handler is not None:
            self.smtp_handler.cfg = cfg
        if self.milter is not None:
            self.milter.configure(cfg)
        log.info("config reloaded", path=self.config_path)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        await self.start()
        beats = asyncio.create_task(self._heartbeats())
        if self.report_fd is None:
            sdnotify.notify(READY=1, STATUS=f"accepting mail on {self.cfg.smtp.listen}", MAINPID=os.getpid())
        else:
            _report(self.report_fd, f"R{self.slot}")
        await self._stop.wait()
        if self.report_fd is None:
            sdnotify.notify(STOPPING=1, STATUS="draining")
        beats.cancel()
        await self.stop(self.cfg.gateway.drain_seconds)

    def _on_hup(self) -> None:
        if self.report_fd is None:
            sdnotify.notify(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1e6))
        self.reload()
        if self.report_fd is None:
            sdnotify.notify(READY=1, STATUS=f"accepting mail on {self.cfg.smtp.listen}")

    async def _heartbeats(self) -> None:
        """Prove the event loop turns: to the supervisor, or to systemd's
        watchdog when this is the only process."""
        interval = HEARTBEAT_SECONDS if self.report_fd is not None else sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:
            if self.report_fd is not None:
                _report(self.report_fd, f"H{self.slot}")
            else:
                sdnotify.notify(WATCHDOG=1)
            await asyncio.sleep(interval)

    async def stop(self, grace: float = 30.0) -> None:
        """Drain: 421 to new sessions, wait for those in progress and the
        messages in hand (at most ``grace`` seconds), leave the rest spooled."""
        log.info("stopping", grace=grace)
        deadline = time.monotonic() + grace
        waits = []
        if self.smtp_handler is not None:
            self.smtp_handler.draining = True
            waits.append(self._sessions_done(deadline))
        if self.milter is not None:
            waits.append(self.milter.stop(grace))
        if self.runner is not None:
            waits.append(self.runner.stop(grace))
        await asyncio.gather(*waits)
        if self.runner is None and self.pipeline is not None:
            await self.pipeline.services.close()
        if self.smtp is not None:
            self.smtp.close()
        if self.http is not None:
            await self.http.cleanup()
        if self.admin is not None:
            await self.admin.cleanup()
        await self.health.stop()
        if self.upload_page is not None:
            await self.upload_page.stop()
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self.jobs is not None:
            # A job cut short keeps its marker and is finished at the next start.
            await self.jobs.stop()
        for store in self.stores.values():
            await store.close()
        await self.audit.stop()
        log.info("stopped")

    async def _sessions_done(self, deadline: float) -> None:
        assert self.smtp_handler is not None
        # A bounded poll, once at shutdown: the handler signals no "last session ended".
        while self.smtp_handler.sessions > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.smtp_handler.sessions:
            log.warning("sessions still open at the end of the drain", sessions=self.smtp_handler.sessions)


def _prestarted(future: asyncio.Future[None]) -> None:
    """Log a fork server that would not start (the first file that needs it
    tries again)."""
    if not future.cancelled() and future.exception() is not None:
        log.error("disarm's fork server did not start", error=repr(future.exception()))


def _exit_fields(code: int) -> dict[str, object]:
    """How a child ended, for the supervisor's line: its exit code, and the
    signal's name when a signal killed it (``code`` -11 is SIGSEGV, a crash
    whose stacks faulthandler wrote just before)."""
    if code >= 0:
        return {"code": code}
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return {"code": code, "signal": name}


def _report(fd: int, message: str) -> None:
    """One line to the supervisor (a pipe write under PIPE_BUF is atomic)."""
    with contextlib.suppress(OSError):
        os.write(fd, (message + "\n").encode())


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the supervisor dies, so a
    killed gateway never leaves orphans holding its ports and messages."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Supervisor:
    """``serve`` with several processes: forks them, passes signals on,
    speaks for them to systemd, and starts a process again when one dies.

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
        self.ready: set[int] = set()  # slots that have said "ready" since they started
        self.beats: dict[int, float] = {}  # slot -> monotonic time of the last heartbeat
        self.stopping = False
        self.read_fd, self.write_fd = os.pipe()
        # Woken by SIGCHLD (signal.set_wakeup_fd), so a child's exit is seen
        # at once rather than at the next poll: stopping takes as long as
        # the children's drain, not the poll interval on top.
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _die_with_parent()
                os.close(self.read_fd)
                signal.set_wakeup_fd(-1)
                os.close(self.wake_read)
                os.close(self.wake_write)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                gw = Gateway(self.cfg, self.config_path, self.roles, shared_ports=True, recover=False,
                             report_fd=self.write_fd, slot=slot)
                asyncio.run(gw.run())
            except BaseException as e:  # noqa: BLE001 - report, and let the supervisor restart us
                log.error("process failed", slot=slot, error=f"{type(e).__name__}: {e}")
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = slot
        self.ready.discard(slot)
        self.beats[slot] = time.monotonic()

    def _signal_children(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def run(self) -> int:
        spool = Spool(self.cfg.path(self.cfg.gateway.spool_dir))
        if "smtp" in self.roles or "worker" in self.roles:
            spool.create()
        if "worker" in self.roles:
            recovery = spool.recover()
            for found in recovery.found:
                log.info("spool recovery took an entry no live process holds", **found.fields())
            if recovery:
                log.info("spool recovered", **recovery.counts())

        def on_stop(signum: int, frame: object) -> None:
            if not self.stopping:
                sdnotify.notify(STOPPING=1, STATUS="draining")
            self.stopping = True
            self._signal_children(signal.SIGTERM)

        def on_hup(signum: int, frame: object) -> None:
            try:
                self.cfg = config_mod.load(self.config_path, base_dir=self.cfg.base_dir)
            except config_mod.ConfigError as e:
                log.error("reload refused; old config stays in force", error=str(e))
                return
            self._signal_children(signal.SIGHUP)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        # A handler (even one that does nothing) is what makes the wakeup fd
        # receive SIGCHLD; the default disposition ignores it.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        for slot in range(self.processes):
            self._spawn(slot)
        log.info("supervisor started", processes=self.processes)
        watchdog = sdnotify.watchdog_interval()
        last_ping = 0.0
        announced = False
        status = 0
        buffered = b""
        while self.children:
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select([self.read_fd, self.wake_read], [], [], 0.5)
                if self.wake_read in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_read, 4096)
                if self.read_fd in readable:
                    buffered += os.read(self.read_fd, 65536)
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        kind, slot = line[:1], int(line[1:] or -1)
                        self.beats[slot] = time.monotonic()
                        if kind == b"R":
                            self.ready.add(slot)
            if not announced and len(self.ready) == self.processes:
                announced = True
                sdnotify.notify(READY=1, STATUS=f"{self.processes} processes accepting mail on "
                                                f"{self.cfg.smtp.listen}", MAINPID=os.getpid())
                log.info("all processes ready", processes=self.processes)
            now = time.monotonic()
            if watchdog and now - last_ping >= watchdog and \
                    all(now - self.beats.get(slot, 0) < 3 * HEARTBEAT_SECONDS for slot in self.children.values()):
                sdnotify.notify(WATCHDOG=1)
                last_ping = now
            status = self._reap(status)
        log.info("supervisor stopped")
        return status

    def _reap(self, status: int) -> int:
        """Collect exited children; start them again unless stopping."""
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                return status
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            how = _exit_fields(code)
            if not self.stopping and slot not in self.ready:
                # It never got as far as listening (a port in use, storage
                # refusing): starting it again would fail the same way.
                log.error("a process failed to start; stopping", slot=slot, child=pid, **how)
                self.stopping = True
                self._signal_children(signal.SIGTERM)
                status = 1
            elif not self.stopping:
                log.error("process exited; starting it again", slot=slot, child=pid, **how)
                time.sleep(1.0)
                if not self.stopping:
                    self._spawn(slot)
            elif code not in (0, -signal.SIGTERM):
                status = 1
