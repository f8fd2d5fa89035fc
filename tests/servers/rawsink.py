"""A minimal SMTP next hop on a raw socket that keeps each message's DATA
exactly as it came over the wire: dot-stuffing, line ends and all (aiosmtpd
and smtp-sink undo the stuffing and hide bare line ends)."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from tests.servers.ports import free_port


@dataclass
class RawSink:
    """One thread per connection; no PIPELINING, so the client sends one
    command at a time.  ``wire`` holds the DATA bytes of each message, from
    after the 354 up to and including the final ``<CR><LF>.<CR><LF>``."""

    port: int = field(default_factory=free_port)
    wire: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _sock: socket.socket | None = None

    def start(self) -> "RawSink":
        self._sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""

        def line() -> bytes | None:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            out, buf = buf.split(b"\r\n", 1)
            return out

        with conn:
            conn.sendall(b"220 raw.sink ESMTP\r\n")
            while (cmd := line()) is not None:
                verb = cmd[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-raw.sink\r\n250 8BITMIME\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    data = b"\r\n" + buf  # the end marker may be the first line
                    while (end := data.find(b"\r\n.\r\n")) < 0:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    buf = data[end + 5:]
                    with self.lock:
                        self.wire.append(data[2:end + 5])
                    conn.sendall(b"250 2.0.0 kept\r\n")
                else:
                    conn.sendall(b"250 ok\r\n")

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[bytes]:
        """Wait until ``count`` messages have arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.wire) >= count:
                    return list(self.wire)
            time.sleep(0.05)
        raise AssertionError(f"raw sink got {len(self.wire)} message(s), expected {count}")


def assert_wire_clean(wire: bytes) -> None:
    """What a next hop received is unambiguous: CRLF lines only, no NUL,
    every line that starts with a dot stuffed, and the only end of data the
    last five bytes."""
    assert wire.endswith(b"\r\n.\r\n")
    body = wire[:-3]
    assert b"\x00" not in body
    assert b"\r" not in body.replace(b"\r\n", b""), body
    assert b"\n" not in body.replace(b"\r\n", b""), body
    for line in body.split(b"\r\n"):
        assert not line.startswith(b".") or line.startswith(b".."), line
