"""The queue runner never dies quietly, and a SIGHUP leaves no connection
open to a next hop it replaced.

Through the real interfaces: the gateway as a process, SMTP in, a next hop
that counts its open connections, the spool on disk.
"""
from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

from tests.harness import GatewayProcess, wait_until
from tests.messages import leaves, message, parse, payload, pdf_bytes, send

EXECUTABLE = b"MZ\x90\x00" + bytes(range(256)) * 8


class CountingHop:
    """A loopback SMTP next hop that takes every message and counts the
    connections open to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.open = 0
        self.messages = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        try:
            conn.sendall(b"220 hop ESMTP\r\n")
            for line in f:
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250-hop\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go\r\n")
                    for data in f:
                        if data == b".\r\n":
                            break
                    with self.lock:
                        self.messages += 1
                    conn.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    break
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_sighup_closes_the_connections_to_the_next_hop_it_replaced(tmp_path: Path) -> None:
    hop = CountingHop()
    gw = GatewayProcess(tmp_path, next_hop=f"smtp://127.0.0.1:{hop.port}",
                        sections={"gateway": {"processes": 1}}).start()
    try:
        send(gw.smtp_port, message("pooled\n"))
        wait_until(lambda: hop.messages == 1, what="the message at the next hop")
        assert hop.open == 1  # the connection is pooled for the next message
        gw.reload({"delivery": {"connect_timeout": 20}})
        wait_until(lambda: hop.open == 0, timeout=10, what="the replaced next hop's connection closed")
        send(gw.smtp_port, message("after the reload\n"))
        wait_until(lambda: hop.messages == 2, what="delivery through the new next hop")
    finally:
        gw.stop()
        hop.close()


def test_a_hold_that_fails_leaves_the_runner_running_and_the_message_recoverable(tmp_path: Path) -> None:
    # One task: if a failure ended it, nothing else would ever be delivered.
    gw = GatewayProcess(tmp_path, sections={"worker": {"concurrency": 1}, "gateway": {"processes": 1}}).start()
    hold = gw.spool / "hold"
    quarantine = gw.objects / "quarantine"
    try:
        # The quarantine cannot be written (so the refused file holds the
        # message), and the hold queue is not a directory (so the hold
        # fails too: what a read-only or broken disk does).
        gw.objects.mkdir(parents=True, exist_ok=True)
        quarantine.write_text("not a directory")
        shutil.rmtree(hold)
        hold.write_text("not a directory")
        send(gw.smtp_port, message("with a program\n", attachments=[(EXECUTABLE, "application/octet-stream",
                                                                     "setup.exe")]))
        wait_until(lambda: any(e.get("event", "").startswith("runner: the message could not be handled")
                               for e in gw.log_events()), what="the runner's error logged")
        [error] = [e for e in gw.log_events() if e.get("event", "").startswith("runner: the message")]
        assert error["queue_id"] and error["level"] == "error"
        assert list((gw.spool / "active").iterdir()), "the message is left in active for recovery"
        # The loop goes on: the next message is delivered.
        send(gw.smtp_port, message("still running\n", attachments=[(pdf_bytes(500), "application/pdf", "a.pdf")]))
        wait_until(lambda: len(gw.outbox_messages()) == 1, what="the second message delivered")
        metrics = gw.metrics()
        assert 'gateway_runner_errors_total{loop="message"} 1.0' in metrics
    finally:
        gw.stop()
    # Repaired, the gateway recovers the message at start and handles it.
    hold.unlink()
    hold.mkdir()
    quarantine.unlink()
    gw.start()
    try:
        wait_until(lambda: len(gw.outbox_messages()) == 2, what="the recovered message delivered")
        texts = [payload(p) for m in gw.outbox_messages() for p in leaves(parse(m))]
        assert not any(t == EXECUTABLE for t in texts)
        assert [p for p in quarantine.rglob("*") if p.is_file()]
    finally:
        gw.stop()
