"""Agent link clicks under HTTP load: ``wrk --latency`` against one link of the gateway.

The bench sends one message with a 64 KiB attachment to the gateway's
low-threshold route, takes the link (``http://127.0.0.1:PORT/a/TOKEN``) from the
slimmed message that arrived at the sink, checks one GET answers 200 with the
whole file (filesystem backend: the gateway streams the object), then runs wrk:

- ``paced``: wrk has no rate option, so a small Lua script paces each thread
  (LuaJIT's ffi reads CLOCK_MONOTONIC; ``delay()`` holds each request until its
  slot in a fixed schedule of TARGET/threads per second). Latency is measured by
  wrk from the moment a request is written, so when the gateway cannot keep up the
  achieved rate drops below the target and the figure says so.
- ``saturating``: no pacing, 2 threads x 20 connections: the most clicks a second.
- ``few connections``: no pacing, 1 thread x 2 connections.

With two CPUs or more, wrk is pinned to the last one and every thread of the
gateway's processes to the others for the runs (``pin_apart``), so the figure
reflects the gateway, not the contest for cores; on one CPU they share it.
Every run's summary comes from the script's ``done()`` (JSON on one line), the
percentiles from wrk's own latency histogram.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRK = "/usr/bin/wrk"
WRK_INSTALL = "apt-get install -y --no-install-recommends wrk"

#: The target of issue 3: p99 under 20 ms at 500 clicks/s.
TARGET_RATE = 500
TARGET_P99_MS = 20.0

LINK = re.compile(r"https?://127\.0\.0\.1:\d+/a/[A-Za-z0-9._~-]+")

# Written to a file and passed with -s. PACE_PER_THREAD (requests/s, 0 = unpaced) is
# substituted by the bench. Each thread keeps a schedule: request n goes at
# start + n / rate; delay() returns how long until the next free slot.
WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local rate = PACE_PER_THREAD
local interval = rate > 0 and 1000 / rate or 0
local next_slot = nil

function delay()
  if interval == 0 then return 0 end
  local t = now_ms()
  if next_slot == nil or next_slot < t - 1000 then next_slot = t end  -- never bank more than 1 s of slots
  local wait = next_slot - t
  next_slot = next_slot + interval
  if wait < 0 then return 0 end
  return math.floor(wait)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: its name and shape."""

    name: str
    threads: int
    connections: int
    rate: int  # requests/s for the whole run, 0 = as fast as it goes


def wrk_missing() -> str | None:
    """Why wrk cannot run (None when it can)."""
    if shutil.which("wrk") is None and not Path(WRK).exists():
        return f"wrk is missing: install it with `{WRK_INSTALL}` (as root)"
    return None


def find_link(text: str) -> str | None:
    """The first gateway link in a message's decoded text."""
    m = LINK.search(text)
    return m.group(0) if m else None


def fetch_once(url: str, timeout: float = 10.0) -> tuple[int, int]:
    """GET the link once: (status, body bytes)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
        return resp.status, len(resp.read())


def run_wrk(url: str, run: WrkRun, duration_s: int, workdir: Path, timeout: float,
            cpus: list[int] | None = None) -> dict[str, Any]:
    """Run wrk once (pinned to ``cpus`` when given); return its figures
    (requests/s, latency percentiles in ms, errors)."""
    exe = shutil.which("wrk") or WRK
    script = workdir / f"wrk-{run.name}.lua"
    per_thread = run.rate / run.threads if run.rate else 0
    script.write_text(WRK_SCRIPT.replace("PACE_PER_THREAD", repr(float(per_thread))))
    pin = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
    argv = [
        *pin, exe, "--latency", "-t", str(run.threads), "-c", str(run.connections), "-d", f"{duration_s}s",
        "--timeout", "5s", "-s", str(script), url,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exit {proc.returncode}: {(proc.stderr or out)[-500:]}")
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"wrk printed no summary: {out[-500:]}")
    raw = json.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    duration = raw["duration_us"] / 1e6
    return {
        "run": run.name,
        "threads": run.threads,
        "connections": run.connections,
        "target_rate": run.rate or None,
        "duration_s": round(duration, 2),
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / duration if duration else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "errors": {
            k: raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
        },
        "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0,
        "mb_per_s": raw["bytes"] / duration / 1e6 if duration else 0.0,
        "argv": argv,
        "wrk_output": out.replace(m.group(0), "").strip(),
    }


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (sched_setaffinity moves one thread only)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # gone meanwhile


class pin_apart:  # noqa: N801 - used as a context manager, named for what it does
    """While in use: the processes ``pids`` on every CPU but the last, which
    is left to the load generator (``load_cpus``); restored after."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        cpus = sorted(os.sched_getaffinity(0))
        self.all = set(cpus)
        self.load_cpus: list[int] | None = [cpus[-1]] if len(cpus) >= 2 else None
        self.server_cpus = set(cpus[:-1]) if len(cpus) >= 2 else self.all

    def __enter__(self) -> pin_apart:
        if self.load_cpus is not None:
            for pid in self.pids:
                _set_affinity(pid, self.server_cpus)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.load_cpus is not None:
            for pid in self.pids:
                _set_affinity(pid, self.all)
