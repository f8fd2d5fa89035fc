"""A small HTTP receiver standing in for Splunk's HTTP Event Collector:
it checks the ``Authorization: Splunk TOKEN`` header, answers as HEC does
(``{"text":"Success","code":0}``, 401/403 otherwise) and keeps every event
of every batch (HEC batches are JSON objects one after another)."""
from __future__ import annotations

import json
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from tests.servers.jsonhttp import JsonHandler
from tests.servers.ports import LOOPBACK, free_port


class HecReceiver:
    """``POST /services/collector/event`` on a loopback port, in a thread."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "HecReceiver":
        receiver = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/services/collector/event":
                    return self.answer(404, {"text": "Not found", "code": 404})
                if self.headers.get("Authorization") != f"Splunk {receiver.token}":
                    with receiver.lock:
                        receiver.refused += 1
                    return self.answer(403, {"text": "Invalid token", "code": 4})
                decoder, text, i, got = json.JSONDecoder(), body.decode(), 0, []
                while i < len(text):
                    while i < len(text) and text[i].isspace():
                        i += 1
                    if i >= len(text):
                        break
                    obj, i = decoder.raw_decode(text, i)
                    got.append(obj)
                with receiver.lock:
                    receiver.events.extend(got)
                self.answer(200, {"text": "Success", "code": 0})

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def wait(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.events) >= count:
                    return list(self.events)
            time.sleep(0.05)
        raise AssertionError(f"HEC received {len(self.events)} event(s), expected {count}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HecReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
