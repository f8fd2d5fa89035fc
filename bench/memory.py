"""Resting memory of one gateway process after the realistic mix (issue 18).

Starts ``python -m gateway -c CONFIG serve`` with ``processes = 1`` (the
bench's gateway config, relaying to a counting smtp-sink), reads every
gateway process's RSS 2 s after start (``fresh``), sends the seeded mix
(``bench/mix.py``) and waits until the sink has every message, then reads
RSS again ``--rest`` seconds after the last delivery (``after``).  CPU is
the gateway's processes' (user + system, children reaped included) from the
first message until the last arrived::

    python bench/memory.py --runs 2
    python bench/memory.py --runs 2 --label arena2 --env MALLOC_ARENA_MAX=2

``--env`` sets a variable for the gateway only (allocator tunables; a
``PYTHONPATH`` naming another tree, e.g. the main branch's, to run that
code instead of this one's); candidates compared
side by side must get the same ``--messages``, ``--seed`` and ``--rest``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/memory.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from bench.candidates import Gateway, _wait_ready  # noqa: E402
from bench.mix import build_mix, send_mix  # noqa: E402
from bench.procs import ManagedProcess, cpu_seconds  # noqa: E402


@dataclass
class Run:
    """One gateway started, loaded and left to rest."""

    label: str
    messages: int
    #: ``{"role[pid]": VmRSS KiB}`` 2 s after start and ``rest`` s after the last delivery.
    fresh_kib: dict[str, int] = field(default_factory=dict)
    after_kib: dict[str, int] = field(default_factory=dict)
    #: RssAnon of the same processes after (the heap: what an allocator change moves).
    after_anon_kib: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def serve_mib(self, which: str) -> float:
        """The serve process's RSS (MiB), ``fresh`` or ``after``."""
        table = self.fresh_kib if which == "fresh" else self.after_kib
        return next((kib for name, kib in table.items() if name.startswith("serve[")), 0) / 1024


class ModuleGateway(Gateway):
    """The bench's gateway, run as ``PYTHON -m gateway`` from this tree with extra environment."""

    def __init__(self, workdir: Path, python: str, env: dict[str, str]) -> None:
        super().__init__(workdir, executable=python, sink_dump=False, processes=1)
        self.env = env

    def command(self) -> list[str]:
        assert self.executable is not None
        # -P: not the working directory first on sys.path, so PYTHONPATH says which tree runs.
        return [self.executable, "-P", "-m", "gateway", "-c", str(self.config_path), "serve"]

    def start(self) -> None:
        sink = self._start_sink(self.sink_dump)
        self.write_config(sink.port)
        self.argv = self.command()
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        self.proc = ManagedProcess("gateway", self.argv, self.workdir / "gateway.log", env=env).start()
        _wait_ready(self.proc, self.smtp_port, timeout=30)


def _role(pid: int, serve_pid: int) -> str:
    if pid == serve_pid:
        return "serve"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "forkserver" in cmdline:
        return "forkserver"
    if "resource_tracker" in cmdline:
        return "resource_tracker"
    return "child"


def _status(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in fields:
                    out[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def snapshot(gw: ModuleGateway) -> tuple[dict[str, int], dict[str, int]]:
    """``({"role[pid]": VmRSS KiB}, {"role[pid]": RssAnon KiB})`` of every gateway process now."""
    assert gw.proc is not None
    rss: dict[str, int] = {}
    anon: dict[str, int] = {}
    for pid in gw.all_pids():
        st = _status(pid, ("VmRSS", "RssAnon"))
        if "VmRSS" in st:
            key = f"{_role(pid, gw.proc.pid)}[{pid}]"
            rss[key] = st["VmRSS"]
            anon[key] = st.get("RssAnon", 0)
    return rss, anon


def one_run(label: str, env: dict[str, str], python: str, messages: int, seed: int, sessions: int,
            rest: float, keep: bool = False) -> Run:
    """Start a gateway, measure it fresh, send the mix, measure it rested; stop it."""
    mix = build_mix(messages, seed)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-memory-"))
    os.chmod(workdir, 0o755)
    gw = ModuleGateway(workdir, python, env)
    run = Run(label, messages)
    try:
        gw.start()
        sink = gw.arrival_sink
        assert sink is not None and gw.proc is not None
        time.sleep(2.0)
        run.fresh_kib, _ = snapshot(gw)
        base = sink.received_count()
        pids = set(gw.all_pids())
        cpu0 = cpu_seconds(pids)
        t0 = time.monotonic()
        sent = send_mix(gw.smtp_port, mix, sessions, 600)
        if sent.refused:
            raise RuntimeError(f"{len(sent.refused)} refused, the first: {sent.refused[0]}")
        sink.wait_for_count(base + len(sent.sent), timeout=600)
        run.wall_s = time.monotonic() - t0
        # Processes started during the sends (the disarm fork server) count from zero.
        pids |= set(gw.all_pids())
        run.cpu_s = cpu_seconds(pids) - cpu0
        time.sleep(rest)
        run.after_kib, run.after_anon_kib = snapshot(gw)
    finally:
        gw.stop()
        if keep:
            print(f"kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return run


def _parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env {item!r}: NAME=VALUE expected")
        env[name] = value
    return env


def main(argv: list[str] | None = None) -> int:
    """Run ``--runs`` gateways one after the other; print a line each; append JSON to ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", default="default")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the gateway (repeatable)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--messages", type=int, default=100, help="messages of the mix (default 100, as --quick)")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--rest", type=float, default=10.0, help="seconds after the last delivery (default 10)")
    p.add_argument("--python", default=sys.executable, help="the Python that runs the gateway")
    p.add_argument("--keep", action="store_true", help="keep each run's directory (config, spool, gateway.log)")
    p.add_argument("--out", type=Path, help="a JSON-lines file each run is appended to")
    args = p.parse_args(argv)
    env = _parse_env(args.env)
    for _ in range(args.runs):
        run = one_run(args.label, env, args.python, args.messages, args.seed, args.sessions, args.rest, args.keep)
        others = ", ".join(f"{k} {v / 1024:.0f}" for k, v in run.after_kib.items() if not k.startswith("serve["))
        anon = next((v for k, v in run.after_anon_kib.items() if k.startswith("serve[")), 0) / 1024
        print(f"{run.label}: serve fresh {run.serve_mib('fresh'):.1f} MiB, after {run.serve_mib('after'):.1f} MiB "
              f"(anon {anon:.1f}); others after: {others or '-'} MiB; CPU {run.cpu_s:.2f} s, "
              f"{run.messages} msgs in {run.wall_s:.1f} s", flush=True)
        if args.out is not None:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(asdict(run)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
