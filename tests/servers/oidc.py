"""A real OpenID Connect provider (npm ``oidc-provider`` 9.x on Node) on a
loopback port, and a scripted agent that signs in through its pages.

The provider's development interactions accept any login name (the agent
id becomes ``sub``) and then ask for consent; ``sign_in`` fills both forms
with ``requests`` exactly as a browser would post them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

import requests

from tests.servers.ports import LOOPBACK, free_port, port_is_open
from tests.servers.procs import ServerProcess

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "oidc-provider.mjs"


class OidcProviderError(RuntimeError):
    """The provider did not start; the message carries its log."""


class OidcProvider(ServerProcess):
    """``node oidc-provider.mjs`` with one confidential client."""

    def __init__(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = redirect_uris
        self.port = free_port()
        self.issuer = f"http://{LOOPBACK}:{self.port}"
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "OidcProvider":
        if not (NODE_DIR / "node_modules" / "oidc-provider").exists():
            raise OidcProviderError("oidc-provider is not installed in tests/servers/node; "
                                    "run scripts/install-storage-deps.sh")
        if shutil.which("node") is None:
            raise OidcProviderError("node is not on PATH")
        self.dir = Path(tempfile.mkdtemp(prefix="gw-oidc-"))
        conf = self.dir / "provider.json"
        conf.write_text(json.dumps({"port": self.port, "clients": [
            {"client_id": self.client_id, "client_secret": self.client_secret,
             "redirect_uris": self.redirect_uris}]}))
        log = open(self.dir / "provider.log", "wb")
        self._proc = subprocess.Popen(["node", str(SCRIPT), str(conf)], cwd=NODE_DIR, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NODE_ENV": "test"})
        log.close()
        deadline = time.monotonic() + 30
        while not port_is_open(LOOPBACK, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                text = (self.dir / "provider.log").read_text(errors="replace")
                self.stop()
                raise OidcProviderError(f"oidc-provider did not start:\n{text}")
            time.sleep(0.05)
        return self



_FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', re.S | re.I)
_INPUT = re.compile(r'<input([^>]*)>', re.I)
_ATTR = re.compile(r'([a-z-]+)="([^"]*)"', re.I)


def follow(session: requests.Session, response: requests.Response, login: str, stop_at: str,
           max_steps: int = 20) -> requests.Response:
    """Follow redirects from ``response`` and fill the provider's login and
    consent forms, until a redirect leads to a URL starting with ``stop_at``
    (the link, after sign-in); return that response, not followed."""
    for _ in range(max_steps):
        if response.is_redirect:
            response = session.get(urljoin(response.url, response.headers["Location"]), allow_redirects=False)
            if response.url.startswith(stop_at):
                return response
            continue
        m = _FORM.search(response.text)
        if m is None:
            raise AssertionError(f"no form at {response.url}: {response.status_code} {response.text[:500]}")
        action, inner = m.group(1), m.group(2)
        fields = {}
        for attrs in _INPUT.findall(inner):
            a = dict((k.lower(), v) for k, v in _ATTR.findall(attrs))
            if "name" in a:
                fields[a["name"]] = a.get("value", "")
        if "login" in fields:
            fields["login"] = login
            fields["password"] = "any"
        response = session.post(urljoin(response.url, action), data=fields, allow_redirects=False)
    raise AssertionError("sign-in did not finish")
