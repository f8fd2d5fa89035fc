"""A real reverse proxy (Debian's nginx) on a loopback port in front of the
gateway's HTTP listener: it terminates TLS and forwards to the gateway from
an address of its own (``proxy_bind``), so the gateway can tell a request
that came through the proxy from one that did not.

Run in the foreground (``daemon off``) with its own prefix, config, pid and
log paths in a scratch directory: no system service, nothing under
/etc/nginx or /var/log/nginx.  The server block is the one the recipe in
docs/integrations/reverse-proxy.md shows, with the sign-in at the proxy
given by the test (HTTP basic authentication with an htpasswd file the
test writes, or none when the gateway signs agents in itself).
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.ports import LOOPBACK, free_port, port_is_open
from tests.servers.procs import ServerProcess, log_tail

NGINX = "/usr/sbin/nginx"
# The address nginx connects to the gateway from: on Linux every 127.0.0.0/8
# address is the loopback interface, so a second one tells the proxy apart
# from a client on 127.0.0.1.
PROXY_ADDRESS = "127.0.0.2"


class NginxError(RuntimeError):
    """nginx did not start; the message carries its error log."""


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry in nginx's salted SHA-1 form ({SSHA})."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return f"{user}:{{SSHA}}{base64.b64encode(digest + salt).decode()}"


class Nginx(ServerProcess):
    """nginx terminating TLS on a loopback port and proxying to ``upstream``
    (host:port).  ``users`` (name -> password) turns on basic authentication
    and sends the signed-in name to the gateway in ``identity_header``;
    without users the header is cleared (the gateway signs agents in)."""

    def __init__(self, upstream: str, cert: Path, key: Path, users: dict[str, str] | None = None,
                 identity_header: str = "X-Forwarded-User") -> None:
        self.upstream = upstream
        self.cert, self.key = cert, key
        self.users = users
        self.identity_header = identity_header
        self.port = free_port()
        self.base_url = f"https://{LOOPBACK}:{self.port}"

    def config(self, directory: Path) -> str:
        """nginx.conf for this proxy, every path inside ``directory``: the
        server block of docs/integrations/reverse-proxy.md, with basic
        authentication standing in for the single sign-on at the proxy."""
        d = directory
        forward = "".join(f"            {line}\n" for line in (
            f"proxy_pass http://{self.upstream};",
            f"proxy_bind {PROXY_ADDRESS};",
            "proxy_http_version 1.1;",
            "proxy_set_header Host $http_host;",
            # Set, never appended: a client's own X-Forwarded-* are dropped.
            "proxy_set_header X-Forwarded-For $remote_addr;",
            "proxy_set_header X-Forwarded-Proto https;",
            "proxy_set_header X-Forwarded-Host $http_host;",
            "proxy_buffering off;",
            "proxy_request_buffering off;",
        ))
        clear = f'            proxy_set_header {self.identity_header} "";\n'
        if self.users:
            (d / "htpasswd").write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            # Agents' links sign in at the proxy, which names the agent; the
            # agent's password is for the proxy only.
            agents = (f'        location ~ ^/(a|p)/ {{\n'
                      f'            auth_basic "agents";\n'
                      f'            auth_basic_user_file {d}/htpasswd;\n'
                      f'{forward}'
                      f'            proxy_set_header {self.identity_header} $remote_user;\n'
                      f'            proxy_set_header Authorization "";\n'
                      f'        }}\n')
        else:
            agents = ""
        # Running as root (as tests do here), the workers would drop to
        # "nobody", who cannot read the htpasswd file in a private
        # temporary directory; they stay root, on loopback, for the test only.
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "".join(f"    {kind}_temp_path {d}/tmp/{kind};\n"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
{temps}    server {{
        listen {LOOPBACK}:{self.port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size 0;
{agents}        location / {{
{forward}{clear}        }}
    }}
}}
"""

    def start(self) -> Nginx:
        if not os.access(NGINX, os.X_OK):
            raise NginxError(f"{NGINX} is missing: run scripts/install-test-deps.sh (Debian nginx-light)")
        self.dir = Path(tempfile.mkdtemp(prefix="gw-nginx-"))
        (self.dir / "tmp").mkdir()
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config(self.dir))
        # -e: the error log before the config is read (else /var/log/nginx).
        args = [NGINX, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            text = check.stderr
            self.stop()
            raise NginxError(f"nginx -t refused the config:\n{text}")
        log = open(self.dir / "stderr.log", "wb")
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while not port_is_open(LOOPBACK, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                text = log_tail(self.dir / "error.log") + "\n" + log_tail(self.dir / "stderr.log")
                self.stop()
                raise NginxError(f"nginx did not start:\n{text}")
            time.sleep(0.05)
        return self

    def error_log(self) -> str:
        """nginx's error log so far (for assertion messages)."""
        return log_tail(self.dir / "error.log", 200) if self.dir else ""
