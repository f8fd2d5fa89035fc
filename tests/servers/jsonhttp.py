"""A quiet request handler that answers JSON, for the small HTTP services
the tests stand up (the HEC receiver, an authorisation callout)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """BaseHTTPRequestHandler with ``answer`` and no request log on stderr."""

    def answer(self, status: int, obj: Any) -> None:
        """Send ``obj`` as a JSON response with ``status``."""
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass
