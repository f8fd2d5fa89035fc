"""What every subcommand shares: exit codes, where the config file is, loading it."""
from __future__ import annotations

import argparse
import os

from gateway.config import Config, ConfigError, load

# sysexits.h: the codes systemd units and scripts can tell apart.
EX_OK, EX_USAGE, EX_NOTFOUND, EX_SOFTWARE, EX_OSERR, EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = \
    0, 64, 69, 70, 71, 73, 75, 78
# sysexits' name for 69 where a service cannot be reached (storage check).
EX_UNAVAILABLE = EX_NOTFOUND
# storage apply-retention or erase: something failed, and the output says what.
EX_CHECK_FAILED = 1
# What a shell reports for a command killed by SIGPIPE (128 + 13): the
# reader of a pipe (`queue list | head`) went away.
EX_PIPE = 141

CONFIG_ENV = "ATTACHMENT_GATEWAY_CONFIG"
SYSTEM_CONFIG = "/etc/attachment-gateway/gateway.toml"


def config_path(given: str | None) -> tuple[str, str]:
    """The config file to read and where that choice came from: ``-c``,
    then $ATTACHMENT_GATEWAY_CONFIG, then /etc/attachment-gateway/gateway.toml.

    The current directory is never searched: a checkout's conf/gateway.toml
    on a production host would otherwise be read in place of the system's
    file, and ``queue list`` would show the wrong spool without a word.
    """
    if given:
        return given, "-c"
    env = os.environ.get(CONFIG_ENV)
    if env:
        return env, f"${CONFIG_ENV}"
    return SYSTEM_CONFIG, "the default"


def load_config(args: argparse.Namespace) -> Config:
    """Load the config the command line names (``args.config`` is already
    resolved by ``main``); a missing default file says how to name another."""
    try:
        return load(args.config, base_dir=args.base_dir)
    except ConfigError as e:
        if args.config_source == "the default" and not os.path.exists(args.config):
            raise ConfigError(f"{e} (give the config file with -c PATH or ${CONFIG_ENV})") from None
        raise
