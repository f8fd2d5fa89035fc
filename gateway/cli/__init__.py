"""The ``attachment-gateway`` command: serve, milter, check-config, queue,
links, storage, erase, invite, dkim, init.

Exit codes follow sysexits: 0 ok, 64 usage, 69 not found, 70 internal
error, 71 cannot start or cannot read (a port in use, a spool the user may
not read), 73 cannot create (``init``), 75 temporary failure (locked), 78
configuration error (what a restart cannot mend: a unit's
``RestartPreventExitStatus=78`` keeps systemd from trying);
``storage check`` exits 69 when a store cannot be used and 78 when it is
not as the config says; ``storage apply-retention`` and ``erase`` exit 1
when a write failed; output cut short by a closed pipe ends with 141, as a command
killed by SIGPIPE does.  No Python traceback reaches the administrator:
``ATTACHMENT_GATEWAY_DEBUG=1`` prints it for a bug report.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

from gateway.cli.check import MissingExtra
from gateway.cli.common import EX_CONFIG, EX_OSERR, EX_PIPE, EX_SOFTWARE, config_path
from gateway.config import ConfigError

__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run one command line; return its exit code."""
    from gateway.cli.parser import parser

    args = parser().parse_args(argv)
    args.config, args.config_source = config_path(args.config)
    try:
        status: int = args.func(args)
        # Flushed here, inside the try: a reader that went away is found
        # now rather than by the interpreter's own flush at exit.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return EX_PIPE
    except KeyboardInterrupt:
        return 130
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG
    except MissingExtra as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return EX_CONFIG
    except ValueError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return EX_CONFIG
    except PermissionError as e:  # most often: not run as the service user
        print(f"attachment-gateway {args.command}: {e.filename}: {e.strerror} (run it as the user the "
              f"gateway runs as, e.g. sudo -u attachment-gateway)", file=sys.stderr)
        return EX_OSERR
    except OSError as e:
        print(f"attachment-gateway {args.command}: {e}", file=sys.stderr)
        return EX_OSERR
    except Exception as e:  # noqa: BLE001 - a bug: one line for the administrator, the trace on request
        print(f"attachment-gateway {args.command}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("ATTACHMENT_GATEWAY_DEBUG"):
            traceback.print_exc()
        else:
            print("(run again with ATTACHMENT_GATEWAY_DEBUG=1 for the traceback to report)", file=sys.stderr)
        return EX_SOFTWARE


def run() -> NoReturn:
    """The command itself (``attachment-gateway``, ``python -m gateway``):
    ``main``, then out at once.  Everything the gateway writes is flushed,
    fsynced and closed by the time ``main`` returns, so the interpreter's
    teardown (a quarter of a second of freeing the objects of a served
    process, each stop and each command) would only delay the exit that a
    restart, a test or a script is waiting for."""
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a reader gone or a stream closed: nothing left to lose
    os._exit(status)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's flush at exit does not
    hit the closed pipe again (and print its own error)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
