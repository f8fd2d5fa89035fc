"""The ``attachment-gateway`` command: serve, milter, check-config, queue, links, storage, dkim.

Exit codes follow sysexits: 0 ok, 64 usage, 69 not found, 75 temporary
failure (locked), 78 configuration error; ``storage check`` and ``storage
apply-retention`` exit 1 when a check or a write failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import __version__, logs
from gateway.config import Config, ConfigError, load
from gateway.spool import QUEUES, REWRITTEN, Locked, Spool, message_source
from gateway.storage.base import Storage, StorageError

EX_OK, EX_USAGE, EX_NOTFOUND, EX_TEMPFAIL, EX_CONFIG = 0, 64, 69, 75, 78
DEFAULT_CONFIGS = ("conf/gateway.toml", "/etc/attachment-gateway/gateway.toml")


def _default_config() -> str:
    env = os.environ.get("ATTACHMENT_GATEWAY_CONFIG")
    if env:
        return env
    for c in DEFAULT_CONFIGS:
        if Path(c).exists():
            return c
    return DEFAULT_CONFIGS[-1]


def _load(args: argparse.Namespace) -> Config:
    return load(args.config, base_dir=args.base_dir)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config as ``serve`` would, including keys and policies."""
    cfg = _load(args)
    from gateway.links.tokens import Keyring

    keyring = Keyring(cfg.links.keys, Path(cfg.base_dir))
    # Read every secret the running gateway would (API keys, audit sinks,
    # sign-in, authorisation), so a missing file is found before a reload.
    from gateway import audit_sinks
    from gateway.http.apikeys import ApiKeys
    from gateway.http.app import build_links

    ApiKeys(cfg)
    audit_sinks.build(cfg)
    build_links(cfg, keyring, {}, logs.AuditLog("-", cfg.gateway.hostname))
    for warning in config_warnings(cfg):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    from gateway.srs import BOUNCE_ROUTE

    routes = [r for r in cfg.routes if r.name != BOUNCE_ROUTE]  # not the one made for SRS bounces
    print(f"{args.config}: OK ({len(routes)} route(s), {len(cfg.storage)} store(s))")
    return EX_OK


def config_warnings(cfg: Config) -> list[str]:
    """What a valid config does that an operator should know about."""
    from gateway.srs import BOUNCE_ROUTE

    out = []
    for i, route in enumerate(cfg.routes):
        if route.name != BOUNCE_ROUTE and route.next_hop.startswith("smtp://") and cfg.auth.dkim is None:
            out.append(f"routes[{i}] ({route.name}): forwards changed mail to an SMTP next hop without DKIM "
                       f"signing: the customer's signature breaks when a part is offloaded and nothing "
                       f"replaces it; set [auth.dkim] (attachment-gateway dkim keygen makes a key)")
    if any(r.srs for r in cfg.routes) and cfg.delivery.bounce_next_hop.startswith("maildir:"):
        out.append("srs: bounces to SRS addresses are reversed into delivery.bounce_next_hop, a Maildir: "
                   "customers never get them; set it to the outbound relay (smtp://HOST:PORT)")
    return out


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
    cfg = _load(args)
    from gateway import invitations, storage as storage_mod
    from gateway.ingress.routing import route_for
    from gateway.links.tokens import Keyring

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
                store, keyring, cfg.http.base_url, customer_id=filenames.sanitise_customer(args.customer),
                message_id=args.message_id or "", notify=notify, route=route.name,
                ttl=args.ttl if args.ttl is not None else cfg.upload.invitation_ttl)
            return url
        finally:
            await store.close()

    from gateway.mime import filenames

    print(asyncio.run(make()))
    return EX_OK


EX_CHECK_FAILED = 1  # storage check or apply-retention: something failed, and the output says what


def cmd_storage(args: argparse.Namespace) -> int:
    """storage check|apply-retention, for every store or ``--store NAME``."""
    cfg = _load(args)
    if args.store is not None and args.store not in cfg.storage:
        print(f"storage {args.action}: no [storage.{args.store}] table (have: "
              f"{', '.join(sorted(cfg.storage)) or 'none'})", file=sys.stderr)
        return EX_USAGE
    names = [args.store] if args.store is not None else sorted(cfg.storage)
    run = _storage_check if args.action == "check" else _storage_retention
    reports = asyncio.run(run(cfg, names, args))
    if args.json:
        print(json.dumps({"ok": all(r["ok"] for r in reports), "stores": reports}, indent=2))
    return EX_OK if all(r["ok"] for r in reports) else EX_CHECK_FAILED


async def _storage_check(cfg: Config, names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from gateway import storage as storage_mod
    from gateway.storage.admin import FAIL, check_store

    reports = []
    for name in names:
        settings = cfg.storage[name]
        store = storage_mod.build(name, settings, Path(cfg.base_dir))
        try:
            findings = await check_store(store)
        finally:
            await store.close()
        ok = not any(f.status == FAIL for f in findings)
        reports.append({"name": name, "backend": settings.backend, "ok": ok,
                        "checks": [f.as_dict() for f in findings]})
        if not args.json:
            print(f"storage {name} ({settings.backend}): {'OK' if ok else 'FAILED'}")
            for f in findings:
                print(f"  {f.status:<4}  {f.check:<11} {f.detail}")
    return reports


async def _storage_retention(cfg: Config, names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from gateway import storage as storage_mod
    from gateway.storage import admin

    reports = []
    for name in names:
        settings = cfg.storage[name]
        store: Any = storage_mod.build(name, settings, Path(cfg.base_dir))
        report: dict[str, Any] = {"name": name, "backend": settings.backend, "ok": True, "applied": False,
                                  "dry_run": args.dry_run, "retention_days": settings.retention_days}
        lines: list[str] = []
        try:
            if settings.backend == "s3" or settings.backend == "gcs":
                report["lifecycle"] = await store.apply_retention(args.dry_run)
                report["applied"] = not args.dry_run
                where = ", ".join(report["lifecycle"])
                lines.append(f"would write these lifecycle rules to {where} (dry run)" if args.dry_run else
                             f"lifecycle rules written to {where}; the bucket now reports:")
            elif settings.backend == "azure":
                report["management_policy"] = store.management_policy()
                lines += ["not applied: an Azure lifecycle is a management policy of the storage account, which",
                          "the data-plane SDK the gateway uses cannot set.  Merge these rules into the account's",
                          "policy (docs/CONFIG.md, \"Retention\") and set it with",
                          "  az storage account management-policy create --account-name ACCOUNT \\",
                          "      --resource-group GROUP --policy @policy.json"]
            else:
                report.update(admin.filesystem_retention(settings, str(store.root)))
                lines += [f"not applied: {report['why']}.  To delete attachments after "
                          f"{settings.retention_days} days, install a systemd-tmpfiles rule such as",
                          f"  {report['systemd_tmpfiles']}", "or run daily", f"  {report['find']}"]
        except StorageError as e:
            report.update(ok=False, applied=False, error=str(e))
            lines.append(f"FAILED: {e}")
        finally:
            await store.close()
        reports.append(report)
        if not args.json:
            print(f"storage {name} ({settings.backend}), retention {settings.retention_days} days:")
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
    cfg = _load(args)
    logs.setup(cfg.gateway.log_level)
    metrics_dir = prepare_metrics()
    try:
        return _serve(cfg, args)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


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
        return Supervisor(cfg, args.config, roles, processes).run()
    try:
        asyncio.run(gw.run())
    except OSError as e:
        print(f"attachment-gateway: cannot start: {e}", file=sys.stderr)
        return 71  # EX_OSERR
    except StorageError as e:  # the stores' start-up checks
        print(f"attachment-gateway: storage: {e}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


def cmd_links(args: argparse.Namespace) -> int:
    """links revoke --object KEY | --customer ID | --message-id ID: write a
    revocation marker into the store(s), which every node reads at a click."""
    cfg = _load(args)
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


async def _check_stores(stores: dict[str, Storage]) -> None:
    """Start every store (its checks raise StorageError) and close it again."""
    try:
        for store in stores.values():
            await store.start()
    finally:
        for store in stores.values():
            await store.close()


def _spool(args: argparse.Namespace) -> Spool:
    cfg = _load(args)
    return Spool(cfg.path(cfg.gateway.spool_dir))


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("Mail queue is empty")
        return
    print(f"{'Queue ID':<20} {'Queue':<9} {'Size':>10} {'Arrival':<20} {'Attempts':>8}  Sender / Recipients")
    for r in rows:
        arrival = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("received_at") or 0))
        print(f"{r['queue_id']:<20} {r['queue']:<9} {r.get('size', 0):>10} {arrival:<20} "
              f"{r.get('attempts', 0):>8}  {r.get('mail_from') or '<>'}")
        for rcpt in r.get("rcpt_tos", []):
            print(f"{'':<71}{rcpt}")
        if r.get("last_error"):
            print(f"{'':<71}({r['last_error']})")
        if r.get("hold_reason"):
            print(f"{'':<71}(held: {r['hold_reason']})")


def cmd_queue(args: argparse.Namespace) -> int:
    """queue list|show|flush|hold|release|delete."""
    spool = _spool(args)
    action = args.action
    if action == "list":
        queues = tuple(args.queue) if args.queue else QUEUES
        rows = list(spool.entries(queues))
        now = time.time()
        if args.older_than is not None:
            rows = [r for r in rows if now - (r.get("received_at") or now) >= args.older_than]
        if args.recipient:
            rows = [r for r in rows if any(args.recipient.lower() in x.lower() for x in r.get("rcpt_tos", []))]
        if args.json:
            print(json.dumps(rows, indent=None))
        else:
            _print_table(rows)
        return EX_OK
    if not args.ids and action != "flush":
        print(f"queue {action}: give one or more queue ids", file=sys.stderr)
        return EX_USAGE
    status = EX_OK
    out: list[dict[str, Any]] = []
    ids = args.ids or ([] if action != "flush" else spool.ids("deferred"))
    for qid in ids:
        queue = spool.find(qid)
        if queue is None:
            out.append({"queue_id": qid, "error": "not found"})
            status = EX_NOTFOUND
            continue
        try:
            out.append(_queue_action(spool, action, qid, queue, args))
        except Locked:
            out.append({"queue_id": qid, "error": "in use by a running worker; try again"})
            status = EX_TEMPFAIL
    if args.json:
        print(json.dumps(out))
    else:
        for r in out:
            print(" ".join(f"{k}={v}" for k, v in r.items() if k != "headers") if "headers" not in r else
                  json.dumps(r, indent=2, ensure_ascii=False))
    return status


def _queue_action(spool: Spool, action: str, qid: str, queue: str, args: argparse.Namespace) -> dict[str, Any]:
    if action == "show":
        entry = next(e for e in spool.entries((queue,)) if e["queue_id"] == qid)
        path = spool.root / queue / qid
        with message_source(path) as src:
            head = src.read(0, 65536)
        end = head.find(b"\r\n\r\n")
        entry["headers"] = head[: end if end >= 0 else len(head)].decode("utf-8", "replace")
        result = path / "result.json"
        if result.exists():
            entry["result"] = json.loads(result.read_text())
        return entry
    if action == "delete":
        with spool.claim(qid, queue, queue) as h:
            h.remove()
        return {"queue_id": qid, "deleted": True}
    if action == "hold":
        with spool.claim(qid, queue, queue) as h:
            state = h.state()
            state.hold_reason = args.reason or "held by administrator"
            h.save_state(state)
            if queue != "hold":
                h.move("hold")
        return {"queue_id": qid, "queue": "hold"}
    if action == "release":
        with spool.claim(qid, queue, queue) as h:
            state = h.state()
            state.hold_reason = ""
            state.next_attempt = 0
            h.save_state(state)
            dst = "deferred" if h.has(REWRITTEN) else "incoming"
            if queue != dst:
                h.move(dst)
        return {"queue_id": qid, "queue": dst}
    if action == "flush":
        if queue != "deferred":
            return {"queue_id": qid, "queue": queue, "flushed": False}
        with spool.claim(qid, queue, queue) as h:
            state = h.state()
            state.next_attempt = 0
            h.save_state(state)
        return {"queue_id": qid, "flushed": True}
    raise ValueError(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attachment-gateway",
                                description="Inbound mail gateway that offloads large attachments to storage.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-c", "--config", default=_default_config(),
                   help="config file (default: $ATTACHMENT_GATEWAY_CONFIG, conf/gateway.toml, "
                        "/etc/attachment-gateway/gateway.toml)")
    p.add_argument("--base-dir", default=None,
                   help="directory relative paths in the config are resolved against (default: current)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run SMTP ingress, worker and HTTP")
    roles = ("smtp", "worker", "http", "milter")
    s.add_argument("--only", nargs="+", choices=roles, help="run only these roles")
    s.add_argument("--without", nargs="+", choices=roles, help="run all roles but these")
    s.add_argument("--processes", type=int, default=None, metavar="N",
                   help="processes sharing the ports and the spool (default: gateway.processes)")
    s.set_defaults(func=cmd_serve)
    m = sub.add_parser("milter", help="run the milter (and the HTTP listener for links) for Postfix or Sendmail")
    m.add_argument("--without", nargs="+", choices=("http",), help="leave out the HTTP listener")
    m.add_argument("--processes", type=int, default=None, metavar="N",
                   help="processes sharing the port (default: gateway.processes)")
    m.set_defaults(func=cmd_serve, only=["milter", "http"])
    c = sub.add_parser("check-config", help="validate the config file and exit")
    c.set_defaults(func=cmd_check_config)
    dk = sub.add_parser("dkim", help="DKIM keys for the gateway's own signatures")
    dk_sub = dk.add_subparsers(dest="action", required=True)
    kg = dk_sub.add_parser("keygen", help="write an RSA 2048 key pair and print the DNS TXT records to publish")
    kg.add_argument("--domain", required=True, help="the signing domain (d=)")
    kg.add_argument("--selector", required=True, help="the selector (s=)")
    kg.add_argument("--out", default=".", help="directory for SELECTOR.private and SELECTOR.txt (default: .)")
    kg.add_argument("--srs-domain", help="also print the SPF record of this SRS domain")
    kg.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                    help="an address the gateway sends from, for the SPF record (repeatable)")
    kg.set_defaults(func=cmd_dkim_keygen)
    i = sub.add_parser("invite", help="print an upload-page invitation link for a customer")
    i.add_argument("--customer", required=True, help="the customer id the uploads are filed under")
    i.add_argument("--message-id", help="the Message-ID of the email thread the completion email replies to")
    i.add_argument("--to", help="the contact-centre address told when files arrive (default upload.notify_address)")
    i.add_argument("--ttl", type=int, help="seconds the link stays valid (default upload.invitation_ttl)")
    i.set_defaults(func=cmd_invite)
    st = sub.add_parser("storage", help="check the stores, or write their retention (lifecycle) rules")
    st_sub = st.add_subparsers(dest="action", required=True)
    sc = st_sub.add_parser("check", help="check credentials, region, encryption and a round trip of each store")
    sc.add_argument("--store", metavar="NAME", help="only the [storage.NAME] store (default: all)")
    sc.add_argument("--json", action="store_true", help="machine-readable output")
    sa = st_sub.add_parser("apply-retention", help="write each store's lifecycle rules (retention_days)")
    sa.add_argument("--store", metavar="NAME", help="only the [storage.NAME] store (default: all)")
    sa.add_argument("--dry-run", action="store_true", help="show the rules, write nothing")
    sa.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_storage)
    q = sub.add_parser("queue", help="list and manage the mail queue")
    q.add_argument("action", choices=("list", "show", "flush", "hold", "release", "delete"))
    q.add_argument("ids", nargs="*", help="queue ids")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--queue", nargs="+", choices=QUEUES, help="list only these queues")
    q.add_argument("--older-than", type=float, default=None, metavar="SECONDS", help="list only older messages")
    q.add_argument("--recipient", default=None, help="list only messages with a recipient containing this")
    q.add_argument("--reason", default=None, help="with hold: why")
    q.set_defaults(func=cmd_queue)
    lk = sub.add_parser("links", help="manage agent links")
    lk.add_argument("action", choices=("revoke",))
    what = lk.add_mutually_exclusive_group(required=True)
    what.add_argument("--object", metavar="KEY", help="every link to this object key")
    what.add_argument("--customer", metavar="ID", help="every link for this customer id")
    what.add_argument("--message-id", metavar="ID", help="every link from this Message-ID")
    lk.add_argument("--store", default=None, help="only this [storage.NAME] (default: every store)")
    lk.add_argument("--reason", default=None, help="recorded with the revocation and in the audit event")
    lk.add_argument("--json", action="store_true", help="machine-readable output")
    lk.set_defaults(func=cmd_links)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG
    except ValueError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return EX_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
