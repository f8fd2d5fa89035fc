"""``attachment-gateway init DIR``: write the example configs and systemd
units that docs/DEPLOY.md starts from.

They travel inside the package (gateway/examples/, links to the checkout's
conf/ and systemd/ that the wheel carries as files), so an installation
from pip has them as well as a checkout does.
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from gateway.cli.common import EX_CANTCREAT, EX_OK

KINDS = ("conf", "systemd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``init`` subcommand's arguments."""
    p.add_argument("dir", metavar="DIR", help="where to write conf/ and systemd/ (made if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist (default: keep them)")
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    """Write DIR/conf/*.toml and DIR/systemd/*.service; never overwrite
    without --force (an edited config is worth more than the example)."""
    root = Path(args.dir)
    examples = resources.files("gateway") / "examples"
    written, kept = [], []
    try:
        for kind in KINDS:
            (root / kind).mkdir(parents=True, exist_ok=True)
            for item in sorted(examples.joinpath(kind).iterdir(), key=lambda t: t.name):
                if not item.is_file() or not item.name.endswith((".toml", ".service")):
                    continue
                dest = root / kind / item.name
                if dest.exists() and not args.force:
                    kept.append(dest)
                    continue
                dest.write_bytes(item.read_bytes())
                written.append(dest)
    except OSError as e:
        print(f"init: {e.filename or args.dir}: {e.strerror}", file=sys.stderr)
        return EX_CANTCREAT
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept  {path} (exists; --force overwrites it)")
    print(f"Next: edit {root / 'conf' / 'gateway.toml'} into /etc/attachment-gateway/gateway.toml and install "
          f"the units from {root / 'systemd'}, as docs/DEPLOY.md describes.")
    return EX_OK
