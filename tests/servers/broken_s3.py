"""An S3 endpoint that is up but broken: it answers GetBucketLocation (so a
gateway can start against it) and 500 InternalError to everything else.

It plays a store that fails while messages are processed, which a real store
cannot be made to do on demand.  ``stop()`` takes it down entirely (connection
refused), for a store that is down.  It counts the requests it answered, so a
test can see that the client retried a bounded number of times.

Usage::

    with BrokenS3(region="eu-west-3") as s3:
        ... endpoint_url = s3.endpoint_url (path-style addressing) ...
"""
from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from .ports import LOOPBACK, free_port

_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
          b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the test asserts on counts, not on an access log

    def _answer(self) -> None:
        # Read the body first, so the client sees the 500 and not a reset.
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
        query = urlsplit(self.path).query
        with self.server.lock:
            self.server.requests[self.command] += 1
        if self.command == "GET" and query == "location":
            body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint '
                    b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                    + self.server.region.encode() + b"</LocationConstraint>")
            status = 200
        else:
            body, status = _ERROR, 500
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, region: str) -> None:
        super().__init__((LOOPBACK, port), _Handler)
        self.region = region
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()


class BrokenS3:
    """Start and stop the broken endpoint on a free loopback port."""

    def __init__(self, region: str = "eu-west-3") -> None:
        self.region = region
        self.port = free_port()
        self._server: _Server | None = None
        self._last: _Server | None = None  # kept after stop(), for its counts
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def requests(self) -> Counter[str]:
        """Requests answered so far, by HTTP method."""
        server = self._server or self._last
        assert server is not None, "never started"
        with server.lock:
            return Counter(server.requests)

    def start(self) -> "BrokenS3":
        self._server = _Server(self.port, self.region)
        self._last = self._server
        self._thread = threading.Thread(target=self._server.serve_forever, name="broken-s3", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: from now on connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "BrokenS3":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
