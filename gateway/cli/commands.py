"""The commands that run or change the gateway: serve, milter, invite,
storage, links, dkim (check-config: check.py; queue: queue.py)."""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway import logs, memory
from gateway.cli.check import preflight, report, require_sdks
from gateway.cli.common import EX_CHECK_FAILED, EX_CONFIG, EX_OK, EX_OSERR, EX_UNAVAILABLE, EX_USAGE, load_config
from gateway.config import Config
from gateway.storage.base import Storage, StorageError


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    """Write a DKIM key pair and print the DNS records to publish."""
    from gateway.authn import keygen
    from gateway.ingress.routing import AddressRefused, check_domain

    try:
        domain = check_domain(args.domain)
        srs_domain = check_domain(args.srs_domain) if args.srs_domain else None
    except AddressRefused as e:
        print(f"dkim keygen: {e}", file=sys.stderr)
        return EX_USAGE
    try:
        pair = keygen.generate(domain, args.selector, Path(args.out))
    except FileExistsError as e:
        print(f"dkim keygen: {e.filename}: exists; a key in use is never overwritten", file=sys.stderr)
        return EX_USAGE
    print(f"# Private key (keep it secret; auth.dkim.key_file): {pair.private_path}")
    print("# Publish in DNS, then sign with [auth.dkim] domain/selector/key_file:")
    print(keygen.zone_line(pair.dns_name, pair.dns_value), end="")
    if srs_domain is not None:
        print("# SPF of the SRS domain ([srs] domain): the addresses the gateway sends from")
        print(keygen.zone_line(srs_domain, keygen.spf_record(args.ip)), end="")
    return EX_OK


def cmd_invite(args: argparse.Namespace) -> int:
    """Print an upload-page invitation link for a customer."""
    cfg = load_config(args)
    require_sdks(cfg)
    from gateway import customers, invitations, storage as storage_mod
    from gateway.ingress.routing import route_for
    from gateway.links.tokens import Keyring

    try:
        customer = customers.checked(args.customer)
    except customers.InvalidCustomerId as e:
        print(f"invite: --customer {args.customer!r}: {e}", file=sys.stderr)
        return EX_USAGE
    notify = args.to or cfg.upload.notify_address
    if not notify:
        print("invite: no address to tell: give --to ADDRESS or set upload.notify_address", file=sys.stderr)
        return EX_USAGE
    route = route_for(cfg.routes, notify)
    if route is None:
        print(f"invite: no route accepts {notify!r}", file=sys.stderr)
        return EX_USAGE
    keyring = Keyring(cfg.links.keys, Path(cfg.base_dir))
    store = storage_mod.build(route.storage, cfg.storage[route.storage], Path(cfg.base_dir))

    async def make() -> str:
        await store.start()
        try:
            _, url = await invitations.create(
                store, keyring, cfg.http.base_url, customer_id=customer,
                message_id=args.message_id or "", notify=notify, route=route.name,
                ttl=args.ttl if args.ttl is not None else cfg.upload.invitation_ttl)
            return url
        finally:
            await store.close()

    print(asyncio.run(make()))
    return EX_OK


def cmd_storage(args: argparse.Namespace) -> int:
    """storage check|apply-retention, for every store or ``--store NAME``."""
    cfg = load_config(args)
    require_sdks(cfg)
    if args.store is not None and args.store not in cfg.storage:
        print(f"storage {args.action}: no [storage.{args.store}] table (have: "
              f"{', '.join(sorted(cfg.storage)) or 'none'})", file=sys.stderr)
        return EX_USAGE
    names = [args.store] if args.store is not None else sorted(cfg.storage)
    run = _storage_check if args.action == "check" else _storage_retention
    reports = asyncio.run(run(cfg, names, args))
    if args.json:
        print(json.dumps({"ok": all(r["ok"] for r in reports), "stores": reports}, indent=2))
    if args.action == "check":
        return next((r["exit"] for r in reports if not r["ok"]), EX_OK)
    return EX_OK if all(r["ok"] for r in reports) else EX_CHECK_FAILED


async def _storage_check(cfg: Config, names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from gateway import storage as storage_mod
    from gateway.storage.admin import check_store, failed
    from gateway.storage.retention import plan_for

    reports = []
    for name in names:
        settings = cfg.storage[name]
        store = storage_mod.build(name, settings, Path(cfg.base_dir))
        try:
            findings = await check_store(store, plan_for(cfg, name))
        finally:
            await store.close()
        first = failed(findings)
        # sysexits: 69 the store cannot be used at all (unreachable, or the
        # credentials refused); 78 it answers but is not as the config says.
        code = EX_OK if first is None else EX_UNAVAILABLE if first.check == "credentials" else EX_CONFIG
        reports.append({"name": name, "backend": settings.backend, "ok": first is None, "exit": code,
                        "failed": first.check if first else None, "checks": [f.as_dict() for f in findings]})
        if not args.json:
            print(f"storage {name} ({settings.backend}): "
                  + ("OK" if first is None else f"FAILED at check {first.check!r}; later checks not run"))
            for f in findings:
                print(f"  {f.status:<4}  {f.check:<11} {f.detail}")
    return reports


async def _storage_retention(cfg: Config, names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from gateway import storage as storage_mod
    from gateway.storage.retention import plan_for
    from gateway.storage.sweep import sweep

    reports = []
    for name in names:
        settings = cfg.storage[name]
        rules = plan_for(cfg, name)
        store: Any = storage_mod.build(name, settings, Path(cfg.base_dir))
        report: dict[str, Any] = {"name": name, "backend": settings.backend, "ok": True, "applied": False,
                                  "dry_run": args.dry_run, "retention_days": settings.retention_days,
                                  "prefixes": [{"prefix": r.prefix, "days": r.days, "key": r.key, "what": r.what}
                                               for r in rules]}
        lines: list[str] = [f"{r.prefix:<16} {r.days:>5} days  ({r.key}: {r.what})" for r in rules]
        try:
            if settings.backend == "s3" or settings.backend == "gcs":
                report["lifecycle"] = await store.apply_retention(rules, args.dry_run)
                report["applied"] = not args.dry_run
                where = ", ".join(report["lifecycle"])
                lines.append(f"would write these lifecycle rules to {where} (dry run)" if args.dry_run else
                             f"lifecycle rules written to {where}; the bucket now reports:")
            elif settings.backend == "azure":
                report["management_policy"] = store.management_policy(rules)
                lines += ["not applied: an Azure lifecycle is a management policy of the storage account, which",
                          "the data-plane SDK the gateway uses cannot set.  Merge these rules into the account's",
                          "policy (docs/CONFIG.md, \"Retention\") and set it with",
                          "  az storage account management-policy create --account-name ACCOUNT \\",
                          "      --resource-group GROUP --policy @policy.json"]
            elif args.dry_run:
                lines.append(f"dry run: nothing deleted; the worker processes sweep {store.root} every hour")
            else:
                report["deleted"] = await asyncio.to_thread(sweep, store.root, rules)
                report["applied"] = True
                lines.append(f"swept {store.root} now (the worker processes also sweep it every hour); deleted: "
                             + (", ".join(f"{k} {v}" for k, v in report["deleted"].items() if v) or "nothing"))
        except StorageError as e:
            report.update(ok=False, applied=False, error=str(e))
            lines.append(f"FAILED: {e}")
        finally:
            await store.close()
        reports.append(report)
        if not args.json:
            print(f"storage {name} ({settings.backend}):")
            for line in lines:
                print(f"  {line}")
            for doc in ("lifecycle", "management_policy"):
                if doc in report:
                    print(json.dumps(report[doc], indent=2, default=str))
    return reports


def prepare_metrics() -> str:
    """Give prometheus_client a fresh directory for the values of every
    process (it must be set before prometheus_client is first imported);
    a temporary one, so a read-only or full spool does not stop metrics."""
    path = tempfile.mkdtemp(prefix="attachment-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM."""
    # A crash in native code (libmagic, OpenSSL, a C extension) kills a
    # process with no Python traceback: with this, every thread's stack is
    # written to stderr (the journal) first, and forked processes inherit it.
    faulthandler.enable()
    # Before anything starts a thread: an arena made before the limit stays
    # (gateway/memory.py says why one, with the figures).
    memory.limit_arenas()
    cfg = load_config(args)
    # What check-config finds stops serve too, with the same lines and exit
    # 78 before any port listens, rather than a traceback (and exit 1, which
    # systemd restarts) from the first process to trip on it.
    if problems := preflight(cfg):
        return report(args, problems)
    logs.setup(cfg.gateway.log_level)
    descriptors(cfg)
    metrics_dir = prepare_metrics()
    try:
        return _serve(cfg, args)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


# Descriptors beyond the sessions and connections: the spool, the stores,
# the next hops, the listeners, the fork server.
SPARE_DESCRIPTORS = 512


def descriptors(cfg: Config) -> None:
    """Raise the soft limit on open files so that full SMTP and HTTP bounds
    (TLS handshakes included) leave room for the spool; warn when the hard
    limit does not allow it (the limits then do not protect the spool)."""
    # A session streaming a large message holds its socket, its spool file
    # and its directory's lock.
    need = 3 * cfg.smtp.max_sessions + 2 * cfg.http.max_connections + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need or soft == resource.RLIM_INFINITY:
        return
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft < need:
        logs.get("server").warning(
            "open files limit below the session and connection limits", limit=soft, needed=need,
            fix="raise LimitNOFILE, or lower smtp.max_sessions or http.max_connections")


def _serve(cfg: Config, args: argparse.Namespace) -> int:
    default = ("smtp", "worker", "http", "milter") if cfg.milter is not None else ("smtp", "worker", "http")
    roles = tuple(r for r in (args.only or default) if r not in (args.without or []))
    from gateway.server import Gateway, Supervisor

    processes = args.processes or cfg.process_count()
    try:
        gw = Gateway(cfg, args.config, roles)  # built once here to report config errors before forking
    except ValueError as e:  # key files and similar, found while building
        print(f"{args.config}: {e}", file=sys.stderr)
        return EX_CONFIG
    if processes > 1:
        gw.audit.close()
        # The stores' start-up checks (bucket, region, credentials, staging
        # recovery) run once here, before forking: a child that failed them
        # would be started again and again, and serve would never exit.
        try:
            asyncio.run(_check_stores(gw.stores))
        except StorageError as e:
            print(f"attachment-gateway: storage: {e}", file=sys.stderr)
            return EX_CONFIG
        except OSError as e:
            print(f"attachment-gateway: cannot start: {e}", file=sys.stderr)
            return EX_OSERR
        return Supervisor(cfg, args.config, roles, processes).run()
    try:
        asyncio.run(gw.run())
    except OSError as e:
        print(f"attachment-gateway: cannot start: {e}", file=sys.stderr)
        return EX_OSERR
    except StorageError as e:  # the stores' start-up checks
        print(f"attachment-gateway: storage: {e}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


def cmd_links(args: argparse.Namespace) -> int:
    """links revoke --object KEY | --customer ID | --message-id ID: write a
    revocation marker into the store(s), which every node reads at a click."""
    cfg = load_config(args)
    require_sdks(cfg)
    from gateway import audit_sinks, storage as storage_mod
    from gateway.links import revocations

    given: list[tuple[revocations.Kind, str | None]] = [("object", args.object), ("customer", args.customer),
                                                        ("message", args.message_id)]
    kind, value = next((k, v) for k, v in given if v is not None)
    names = [args.store] if args.store else sorted(cfg.storage)
    if args.store and args.store not in cfg.storage:
        print(f"links revoke: --store {args.store!r} names no [storage.*] table", file=sys.stderr)
        return EX_USAGE
    admin = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    audit = logs.AuditLog(cfg.path(cfg.gateway.audit_log) if cfg.gateway.audit_log != "-" else "-",
                          cfg.gateway.hostname, audit_sinks.build(cfg))
    field = {"object": "TargetFilePath", "customer": "CustomerId", "message": "InternetMessageId"}[kind]

    async def run() -> list[dict[str, Any]]:
        audit.start()
        out = []
        try:
            for name in names:
                store = storage_mod.build(name, cfg.storage[name], Path(cfg.base_dir))
                await store.start()
                try:
                    marker = await revocations.revoke(store, kind, value, args.reason or "", f"cli:{admin}")
                finally:
                    await store.close()
                audit.event("LinkRevoked", "Success", EventOriginalType="revoke", ActorUsername=f"cli:{admin}",
                            EventResultDetails=f"{kind} revoked in store {name}" +
                            (f": {args.reason}" if args.reason else ""),
                            **{field: revocations.normalise(kind, value)})
                out.append({"store": name, "revoked": kind, "value": revocations.normalise(kind, value),
                            "marker": marker})
        finally:
            await audit.stop()
        return out

    for row in asyncio.run(run()):
        print(json.dumps(row) if args.json else " ".join(f"{k}={v}" for k, v in row.items()))
    return EX_OK


def cmd_erase(args: argparse.Namespace) -> int:
    """erase --customer ID: every object, link record, job and invitation of
    the customer on every store (or ``--store``); one audit event."""
    cfg = load_config(args)
    require_sdks(cfg)
    from gateway import audit_sinks, erase, storage as storage_mod
    from gateway.storage.retention import quarantine_prefixes

    if args.store and args.store not in cfg.storage:
        print(f"erase: --store {args.store!r} names no [storage.*] table (have: "
              f"{', '.join(sorted(cfg.storage))})", file=sys.stderr)
        return EX_USAGE
    customer = args.customer.strip()
    if not customer:
        print("erase: --customer is empty", file=sys.stderr)
        return EX_USAGE
    names = [args.store] if args.store else sorted(cfg.storage)
    admin = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    audit = logs.AuditLog(cfg.path(cfg.gateway.audit_log) if cfg.gateway.audit_log != "-" else "-",
                          cfg.gateway.hostname, audit_sinks.build(cfg))

    async def run() -> tuple[dict[str, dict[str, int]], str, list[dict[str, str]], str]:
        audit.start()
        by_store: dict[str, dict[str, int]] = {}
        error = ""
        try:
            for name in names:
                store = storage_mod.build(name, cfg.storage[name], Path(cfg.base_dir))
                try:
                    await store.start()
                    by_store[name] = await erase.erase_store(store, customer,
                                                             quarantine_prefixes(cfg.routes, name))
                except StorageError as e:
                    error = str(e)
                    break
                finally:
                    await store.close()
            spool = await asyncio.to_thread(erase.spooled, cfg.path(cfg.gateway.spool_dir), customer)
            total = {k: sum(c.get(k, 0) for c in by_store.values()) for k in erase.KINDS}
            details = (f"erased {erase.summary(total)}" if any(total.values())
                       else "nothing to erase (already erased, or never stored)")
            details += f" in {', '.join(by_store) or 'no store'}"
            if error:
                details += f"; stopped: {error}"
            if spool:
                details += f"; {len(spool)} message(s) naming the customer still in the local spool, not erased"
            audit.event("CustomerErased", "Failure" if error else "Success", EventOriginalType="erase",
                        ActorUsername=f"cli:{admin}", CustomerId=customer, EventResultDetails=details,
                        ErasedCounts=total, ErasedByStore=by_store,
                        SpooledMessages=[m["queue_id"] for m in spool] or None)
        finally:
            await audit.stop()
        return by_store, error, spool, details

    by_store, error, spool, details = asyncio.run(run())
    total = {k: sum(c.get(k, 0) for c in by_store.values()) for k in erase.KINDS}
    if args.json:
        print(json.dumps({"customer": customer, "ok": not error, "erased": total, "stores": by_store,
                          "error": error or None, "spooled": spool}, indent=2))
    else:
        for name, counts in by_store.items():
            print(f"store {name}: " + (f"erased {erase.summary(counts)}" if any(counts.values()) else
                                       "nothing to erase (already erased, or never stored)"))
        if error:
            print(f"erase: stopped: {error}; what was erased stays erased: run it again", file=sys.stderr)
        for m in spool:
            print(f"spool: message {m['queue_id']} in {m['queue']} names customer {customer!r}; it is mail in "
                  f"transit and was not erased: erase again once it has been delivered, or remove it with "
                  f"`attachment-gateway queue delete {m['queue_id']}`")
        print(f"customer {customer!r}: {details}")
    return EX_CHECK_FAILED if error else EX_OK


async def _check_stores(stores: dict[str, Storage]) -> None:
    """Start every store (its checks raise StorageError) and close it again."""
    try:
        for store in stores.values():
            await store.start()
    finally:
        for store in stores.values():
            await store.close()
