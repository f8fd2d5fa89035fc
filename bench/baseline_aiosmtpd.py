"""The aiosmtpd baseline: an aiosmtpd server whose handler only answers 250.

It is what a Python SMTP front end costs before doing any work: no spool, no
fsync, no parsing. The bench starts it as a subprocess on a loopback port::

    python bench/baseline_aiosmtpd.py --port 2525

It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session

#: Large enough for the 25 MiB benchmark message (aiosmtpd's default is 32 MiB).
DATA_SIZE_LIMIT = 200 * 1024 * 1024


class AcceptHandler:
    """aiosmtpd handler that accepts every message and throws it away."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Answer 250 without looking at the message."""
        return "250 2.0.0 Ok: discarded"


async def serve(host: str, port: int) -> None:
    """Listen on host:port until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    handler = AcceptHandler()

    def factory() -> SMTP:
        # hostname given explicitly: the default calls socket.getfqdn() per connection.
        return SMTP(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            hostname="aiosmtpd.localhost",
            ident="aiosmtpd baseline",
            loop=loop,
        )

    server = await loop.create_server(factory, host=host, port=port, backlog=512)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"aiosmtpd baseline listening on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("the baseline listens on 127.0.0.1 only")
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
