"""The command line: every subcommand and its options.

``-c``/``--config`` and ``--base-dir`` are accepted before or after the
subcommand (``attachment-gateway queue list -c FILE``), as administrators
type them: each subparser repeats them with a suppressed default, so a
value given after the subcommand is kept and one given before is not
overwritten.
"""
from __future__ import annotations

import argparse

from gateway import __version__
from gateway.cli import commands, init, queue
from gateway.cli.check import cmd_check_config
from gateway.cli.common import CONFIG_ENV, SYSTEM_CONFIG

ROLES = ("smtp", "worker", "http", "milter")


def _global_options(p: argparse.ArgumentParser, top: bool = False) -> None:
    default = None if top else argparse.SUPPRESS
    p.add_argument("-c", "--config", default=default, metavar="FILE",
                   help=f"config file (default: ${CONFIG_ENV}, else {SYSTEM_CONFIG})")
    p.add_argument("--base-dir", default=default, metavar="DIR",
                   help="directory relative paths in the config are resolved against (default: current)")


def parser() -> argparse.ArgumentParser:
    """The ``attachment-gateway`` argument parser."""
    p = argparse.ArgumentParser(prog="attachment-gateway",
                                description="Inbound mail gateway that offloads large attachments to storage.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub
                ) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        _global_options(c)
        return c

    s = command("serve", "run SMTP ingress, worker and HTTP")
    s.add_argument("--only", nargs="+", choices=ROLES, help="run only these roles")
    s.add_argument("--without", nargs="+", choices=ROLES, help="run all roles but these")
    s.add_argument("--processes", type=int, default=None, metavar="N",
                   help="processes sharing the ports and the spool (default: gateway.processes)")
    s.set_defaults(func=commands.cmd_serve)
    m = command("milter", "run the milter (and the HTTP listener for links) for Postfix or Sendmail")
    m.add_argument("--without", nargs="+", choices=("http",), help="leave out the HTTP listener")
    m.add_argument("--processes", type=int, default=None, metavar="N",
                   help="processes sharing the port (default: gateway.processes)")
    m.set_defaults(func=commands.cmd_serve, only=["milter", "http"])
    c = command("check-config", "validate the config file, the directories it names, the stores' SDKs and "
                                "the TLS files, and exit (78 when something is wrong)")
    c.set_defaults(func=cmd_check_config)
    q = command("queue", "list, show and manage the mail queue (mailq, postcat, postsuper)")
    queue.add_arguments(q)
    i = command("init", "write the example configs and systemd units into DIR")
    init.add_arguments(i)

    dk = command("dkim", "DKIM keys for the gateway's own signatures")
    dk_sub = dk.add_subparsers(dest="action", required=True)
    kg = command("keygen", "write an RSA 2048 key pair and print the DNS TXT records to publish", dk_sub)
    kg.add_argument("--domain", required=True, help="the signing domain (d=)")
    kg.add_argument("--selector", required=True, help="the selector (s=)")
    kg.add_argument("--out", default=".", help="directory for SELECTOR.private and SELECTOR.txt (default: .)")
    kg.add_argument("--srs-domain", help="also print the SPF record of this SRS domain")
    kg.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                    help="an address the gateway sends from, for the SPF record (repeatable)")
    kg.set_defaults(func=commands.cmd_dkim_keygen)

    inv = command("invite", "print an upload-page invitation link for a customer")
    inv.add_argument("--customer", required=True, help="the customer id as the CRM has it (kept as given; "
                     "object keys use its sanitised form)")
    inv.add_argument("--message-id", help="the Message-ID of the email thread the completion email replies to")
    inv.add_argument("--to", help="the contact-centre address told when files arrive (default upload.notify_address)")
    inv.add_argument("--ttl", type=int, help="seconds the link stays valid (default upload.invitation_ttl)")
    inv.set_defaults(func=commands.cmd_invite)

    st = command("storage", "check the stores, or write their retention (lifecycle) rules")
    st_sub = st.add_subparsers(dest="action", required=True)
    sc = command("check", "check credentials, region, encryption and a round trip of each store", st_sub)
    sc.add_argument("--store", metavar="NAME", help="only the [storage.NAME] store (default: all)")
    sc.add_argument("--json", action="store_true", help="machine-readable output")
    sa = command("apply-retention", "write each store's lifecycle rules (retention_days)", st_sub)
    sa.add_argument("--store", metavar="NAME", help="only the [storage.NAME] store (default: all)")
    sa.add_argument("--dry-run", action="store_true", help="show the rules, write nothing")
    sa.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=commands.cmd_storage)

    er = command("erase", "delete every file, link record, job and invitation of one customer on every store, "
                          "revoke their links, and audit it (CustomerErased)")
    er.add_argument("--customer", required=True, metavar="ID", help="the customer id, as in the CRM")
    er.add_argument("--store", default=None, help="only this [storage.NAME] (default: every store)")
    er.add_argument("--json", action="store_true", help="machine-readable output")
    er.set_defaults(func=commands.cmd_erase)

    lk = command("links", "manage agent links")
    lk.add_argument("action", choices=("revoke",))
    what = lk.add_mutually_exclusive_group(required=True)
    what.add_argument("--object", metavar="KEY", help="every link to this object key")
    what.add_argument("--customer", metavar="ID", help="every link for this customer id")
    what.add_argument("--message-id", metavar="ID", help="every link from this Message-ID")
    lk.add_argument("--store", default=None, help="only this [storage.NAME] (default: every store)")
    lk.add_argument("--reason", default=None, help="recorded with the revocation and in the audit event")
    lk.add_argument("--json", action="store_true", help="machine-readable output")
    lk.set_defaults(func=commands.cmd_links)
    return p
