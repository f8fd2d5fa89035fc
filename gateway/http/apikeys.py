"""Bearer API keys for every ``/api/v1`` route, and the JSON error answer.

One ``[api].keys`` list serves the upload API (gateway.http.api) and the
links API (gateway.http.links_api), so both check a key the same way: 401
without a bearer key, 403 for a key that is not one of ours (as
docs/openapi.json says), comparing with every key in constant time.  Key
files are read when this is built and again on SIGHUP, so a key that cannot
be read stops start-up or refuses the reload rather than the first call.
"""
from __future__ import annotations

import hmac
from pathlib import Path

from aiohttp import web

from gateway.config import Config
from gateway.links.tokens import load_secret


def error(status: int, message: str, **headers: str) -> web.Response:
    """The API's answer for anything but success: ``{"error": message}``."""
    return web.json_response({"error": message}, status=status, headers={"Cache-Control": "no-store", **headers})


class ApiKeys:
    """The configured keys, by id."""

    def __init__(self, cfg: Config) -> None:
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Read the keys of a (re)loaded config; raise ValueError, keeping
        the old keys, when one cannot be read."""
        self._keys = {k.id: load_secret(k, Path(cfg.base_dir), "api.keys") for k in cfg.api.keys}

    def caller(self, request: web.Request) -> str | web.Response:
        """The id of the key presented, or the 401/403 answer."""
        value = request.headers.get("Authorization", "")
        scheme, _, presented = value.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return error(401, "Missing bearer API key", **{"WWW-Authenticate": 'Bearer realm="attachment-gateway"'})
        given = presented.strip().encode("utf-8", "surrogateescape")
        found = None
        for kid, secret in self._keys.items():
            # Every key is compared (no early exit), each in constant time.
            if hmac.compare_digest(given, secret):
                found = kid
        return found if found is not None else error(403, "Invalid API key")
