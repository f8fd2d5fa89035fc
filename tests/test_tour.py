"""The README's five-minute tour, run as written.

The commands are taken from README.md itself (the swaks block of step 2,
the grep of step 4, the swaks and queue lines of step 5, and ``make demo``
run through the Makefile's own recipe), and run in a temporary directory
laid out like a checkout after ``make run``: ``conf/gateway.toml`` is the
embedded default with its three loopback ports moved to free ones,
``scripts/`` is the repository's, and ``.venv/bin/python`` and
``.venv/bin/attachment-gateway`` run this interpreter.  The only change to
a command is the port numbers.  The gateway is the real ``serve`` process
started from that directory, as ``make run`` starts it.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ROOT, GatewayProcess, wait_until
from tests.servers.ports import free_port

README = (ROOT / "README.md").read_text()
TOUR = README[README.index("## A five-minute tour"):README.index("## Running it")]
DEFAULT_PORTS = {"2525": "smtp", "8025": "http", "2526": "platform"}


@dataclass
class Checkout:
    """The temporary checkout, its running gateway and its ports."""

    dir: Path
    gw: GatewayProcess
    ports: dict[str, int]

    def rewrite(self, command: str) -> str:
        """The command with the default ports replaced by this run's."""
        return re.sub(r"127\.0\.0\.1:(2525|8025|2526)",
                      lambda m: f"127.0.0.1:{self.ports[DEFAULT_PORTS[m.group(1)]]}", command)

    def sh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a README command in the checkout, as the reader's shell would."""
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", self.rewrite(command)], cwd=self.dir,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def files(self, sub: str) -> list[Path]:
        d = self.dir / sub
        return sorted(d.iterdir()) if d.exists() else []


def _wrapper(path: Path, *argv: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    d = tmp_path_factory.mktemp("checkout")
    ports = {"smtp": free_port(), "http": free_port(), "platform": free_port()}
    conf = (ROOT / "conf" / "gateway.toml").read_text()
    for default, name in DEFAULT_PORTS.items():
        assert f"127.0.0.1:{default}" in conf, f"the embedded default no longer uses port {default}"
        conf = conf.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
    (d / "conf").mkdir()
    (d / "conf" / "gateway.toml").write_text(conf)
    (d / "scripts").symlink_to(ROOT / "scripts")
    _wrapper(d / ".venv" / "bin" / "python", sys.executable)
    _wrapper(d / ".venv" / "bin" / "attachment-gateway", sys.executable, "-m", "gateway")
    gw = GatewayProcess(d)
    gw.config_path = d / "conf" / "gateway.toml"  # the embedded default, not the harness's own
    gw.smtp_port, gw.http_port = ports["smtp"], ports["http"]
    gw.log_path = d / "gateway.log"
    gw.start()
    try:
        yield Checkout(d, gw, ports)
    finally:
        gw.stop()


def _sh_block(text: str) -> str:
    m = re.search(r"```sh\n(.*?)```", text, re.S)
    assert m, "no sh block"
    return "\n".join(line.strip() for line in m.group(1).splitlines())


def _step(n: int) -> str:
    m = re.search(rf"^{n}\. (.*?)(?=^\d\. |\Z)", TOUR, re.S | re.M)
    assert m, f"no step {n} in the README's tour"
    return m.group(1)


def test_the_readme_opens_with_the_flow_diagram() -> None:
    first = README.split("\n\n")[1]
    m = re.fullmatch(r"!\[[^\]]+\]\((docs/[a-z_]+\.svg)\)", first.strip())
    assert m, first
    svg = (ROOT / m.group(1)).read_text()
    assert svg.startswith("<svg") and "attachment-gateway" in svg
    for box in ("Customer's MTA", "Contact-centre", "Object storage", "Agents", "SIEM"):
        assert box in svg, box


def test_step_2_swaks_lines_send_real_files_and_step_4_link_brings_the_pdf_back(checkout: Checkout) -> None:
    block = _sh_block(_step(2))
    assert "swaks" in block and "--write-files" in block
    before = checkout.files("var/outbox/new")
    checkout.sh(block.replace("\\\n", " "))
    wait_until(lambda: len(checkout.files("var/outbox/new")) > len(before), what="the forwarded message")
    out = checkout.files("var/outbox/new")[-1].read_bytes()
    assert len(out) < 1 << 20, "the 12 MiB PDF was offloaded"
    assert b'filename="photo.png"' in out or b"filename=photo.png" in out, "the PNG stays attached"

    grep = re.search(r"`(grep -o [^`]+)`", _step(4))
    assert grep, "step 4 shows how to find the link"
    links = checkout.sh(grep.group(1)).stdout.split()
    assert links, "the grep finds the link"
    with urllib.request.urlopen(links[-1], timeout=60) as r:
        got = r.read()
        assert "invoice_123.pdf" in r.headers["Content-Disposition"]
    assert got == (checkout.dir / "invoice_123.pdf").read_bytes()
    assert got.startswith(b"%PDF-") and b"%%EOF" in got[-32:]
    assert checkout.files("var/autoreplies/new") == [], "nothing refused: no automatic reply"
    assert not checkout.files("var/objects/quarantine")


def test_step_5_lines_show_a_message_waiting_in_deferred(checkout: Checkout) -> None:
    step = _step(5)
    swaks = re.search(r"`(swaks [^`]+)`", step)
    queue = re.search(r"`(\.venv/bin/attachment-gateway [^`]+ queue list)`", step)
    assert swaks and queue, step
    before = checkout.files("var/spool/deferred")
    checkout.sh(swaks.group(1))
    wait_until(lambda: len(checkout.files("var/spool/deferred")) > len(before), what="a deferred message")
    qid = (set(checkout.files("var/spool/deferred")) - set(before)).pop().name
    listed = checkout.sh(queue.group(1)).stdout
    assert qid in listed and "deferred" in listed, listed
    assert f"127.0.0.1:{checkout.ports['platform']}" in listed, "the reason names the next hop"


def test_make_demo_shows_the_link_and_a_deferral(checkout: Checkout) -> None:
    assert "`make demo`" in TOUR
    replies = checkout.files("var/autoreplies/new")
    done = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-o", ".venv/.installed-run", "demo"],
                          cwd=checkout.dir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = done.stdout + done.stderr
    print(out)  # shown with -s: what the reader sees
    assert done.returncode == 0, out
    assert "PDF byte for byte: yes" in out, out
    assert "the PNG is still attached: yes" in out, out
    assert "automatic replies to the customer: 0" in out, out
    assert "queue list --queue deferred" in out and "queue flush" in out, out
    assert "delivered: the platform got it" in out, out
    assert checkout.files("var/autoreplies/new") == replies
