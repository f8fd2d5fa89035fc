"""``check-config``, and the checks ``serve`` repeats before it listens.

Validation of the file (gateway/config.py) says whether the config is well
formed; what is here finds, without the network, what would otherwise fail
later with the config already in service: a directory the gateway must
write that cannot be created or written, a store whose SDK is not
installed, a certificate and key that are unreadable or do not match.
"""
from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
from pathlib import Path

from gateway import logs
from gateway.cli.common import EX_CONFIG, EX_OK, load_config
from gateway.config import Config
from gateway.storage.admin import missing_sdk

_PROBE = ".attachment-gateway-check-"


class MissingExtra(Exception):
    """A store's SDK is not installed; ``str()`` names the store and the pip line."""


def sdk_problems(cfg: Config) -> list[str]:
    """One line per store whose backend's SDK cannot be imported, with the
    command that installs it into this interpreter's environment."""
    out = []
    for name, settings in sorted(cfg.storage.items()):
        missing = missing_sdk(settings.backend)
        if missing is None:
            continue
        extra, modules = missing
        package = f"'attachment-gateway[{extra}]'" if extra else " ".join(modules)
        out.append(f"storage.{name}.backend: {settings.backend!r} needs {', '.join(modules)}, which "
                   f"cannot be imported; install it with: {sys.executable} -m pip install {package}")
    return out


def require_sdks(cfg: Config) -> None:
    """Raise MissingExtra when a store's SDK is missing (commands that talk to stores)."""
    problems = sdk_problems(cfg)
    if problems:
        raise MissingExtra("\n".join(problems))


def directory_problem(path: Path) -> str | None:
    """Why the directory ``path`` cannot be created or written to, or None.

    Tried, not guessed from mode bits: a file is made and removed in it (or
    a directory in its nearest existing ancestor), so root on a read-only
    filesystem, ACLs and a parent that is a file are all found."""
    existing = path
    try:
        while not existing.exists():
            if existing.parent == existing:
                break
            existing = existing.parent
    except OSError as e:
        return f"cannot be checked: {e.strerror}"
    if not existing.is_dir():
        return f"cannot be created: {existing} is not a directory"
    try:
        if existing == path:
            fd, probe = tempfile.mkstemp(prefix=_PROBE, dir=existing)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=_PROBE, dir=existing))
    except OSError as e:
        where = "is not writable" if existing == path else f"cannot be created in {existing}"
        return f"{where}: {e.strerror}"
    return None


def _directories(cfg: Config) -> list[tuple[str, str, Path]]:
    """(config key, value, directory) for every directory the gateway writes."""
    out = [("gateway.spool_dir", cfg.gateway.spool_dir, cfg.path(cfg.gateway.spool_dir))]
    if cfg.gateway.audit_log != "-":
        out.append(("gateway.audit_log", cfg.gateway.audit_log, cfg.path(cfg.gateway.audit_log).parent))
    for name, settings in sorted(cfg.storage.items()):
        if settings.backend == "filesystem":
            out.append((f"storage.{name}.path", settings.path, cfg.path(settings.path)))
    hops = [("delivery.bounce_next_hop", cfg.delivery.bounce_next_hop)]
    for i, route in enumerate(cfg.routes):
        hops.append((f"routes[{i}].next_hop", route.next_hop))
        if route.autoreply is not None:
            hops.append((f"routes[{i}].autoreply.next_hop", route.autoreply.next_hop))
    out += [(key, hop, cfg.path(hop.removeprefix("maildir:"))) for key, hop in hops if hop.startswith("maildir:")]
    return out


def tls_problem(cfg: Config, cert_key: str, cert: str, key_key: str, key: str) -> str | None:
    """Why the certificate and key cannot serve TLS together, or None."""
    try:
        # A throwaway context: load_verify_locations reads a PEM certificate
        # alone, so a bad certificate is told from a bad or mismatched key.
        ssl.create_default_context().load_verify_locations(cafile=str(cfg.path(cert)))
    except (ssl.SSLError, OSError) as e:
        return f"{cert_key}: {cert!r}: expected a readable PEM certificate ({_reason(e)})"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cfg.path(cert)), str(cfg.path(key)))
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            return f"{key_key}: {key!r}: is not the private key of {cert_key} {cert!r}"
        return f"{key_key}: {key!r}: expected a readable PEM private key, unencrypted ({_reason(e)})"
    except OSError as e:
        return f"{key_key}: {key!r}: cannot be read ({_reason(e)})"
    return None


def _reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def preflight(cfg: Config) -> list[str]:
    """What ``check-config`` and ``serve`` find wrong beyond the file's
    validation, one line each naming the key, the value and the trouble."""
    problems = [f"{key}: {value!r}: {why}" for key, value, path in _directories(cfg)
                if (why := directory_problem(path)) is not None]
    problems += sdk_problems(cfg)
    pairs = [("smtp.tls_cert_file", cfg.smtp.tls_cert_file, "smtp.tls_key_file", cfg.smtp.tls_key_file),
             ("http.tls_cert", cfg.http.tls_cert, "http.tls_key", cfg.http.tls_key)]
    for cert_key, cert, key_key, key in pairs:
        if cert is not None and key is not None and (why := tls_problem(cfg, cert_key, cert, key_key, key)):
            problems.append(why)
    return problems


def report(args: argparse.Namespace, problems: list[str]) -> int:
    """Print ``problems`` as ``check-config`` does; the exit code."""
    for p in problems:
        print(f"{args.config}: {p}", file=sys.stderr)
    return EX_CONFIG if problems else EX_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config as ``serve`` would, including keys and policies,
    the directories it writes, the stores' SDKs and the TLS files."""
    cfg = load_config(args)
    if problems := preflight(cfg):
        return report(args, problems)
    from gateway.links.tokens import Keyring

    keyring = Keyring(cfg.links.keys, Path(cfg.base_dir))
    # Read every secret the running gateway would (API keys, audit sinks,
    # sign-in, authorisation), so a missing file is found before a reload.
    from gateway import audit_sinks
    from gateway.http.apikeys import ApiKeys
    from gateway.http.app import build_links

    ApiKeys(cfg)
    audit_sinks.build(cfg)
    links = build_links(cfg, keyring, {}, logs.AuditLog("-", cfg.gateway.hostname))
    # The pages in every language (catalogues whose placeholders do not fit).
    if problems := links.pages.check():
        return report(args, problems)
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
