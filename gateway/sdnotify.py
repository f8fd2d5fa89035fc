"""systemd's notify protocol: readiness, status, watchdog, stopping.

With ``Type=notify`` systemd considers the gateway started only when it says
``READY=1``, which it does once every process listens; with
``WatchdogSec=`` it restarts a gateway that stops saying ``WATCHDOG=1``.
Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.  The
protocol is one datagram per message to a unix socket, small enough to
write here rather than add a dependency.
"""
from __future__ import annotations

import os
import socket


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    # A leading "@" names a socket in the abstract namespace.
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(**fields: str | int) -> bool:
    """Send ``KEY=value`` lines (READY=1, STATUS=..., WATCHDOG=1, ...);
    False when not under systemd or the message could not be sent."""
    addr = _address()
    if addr is None:
        return False
    data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(data)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 2_000_000)
    except ValueError:
        return None
