"""gateway/memory.py: with the arena limit, what threads freed goes back to
the system at the trim.

In a fresh interpreter (the limit only holds when set before any thread):
eight threads each hold 12 MiB of multi-megabyte buffers at the same time,
free them, and the heap is trimmed.  With glibc's own arenas (one a thread
here) most of it stays resident in the threads' heaps, whatever the trim.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import memory

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import threading
from gateway import memory

def anon_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

print("limited", memory.limit_arenas())
# Raises glibc's dynamic mmap threshold, as the gateway's large buffers do:
# the threads' buffers below then come from the arenas' heaps.
big = b"x" * (8 << 20)
del big
base = anon_kib()
threads = 8
start, hold = threading.Barrier(threads), threading.Barrier(threads)

def work():
    start.wait()
    buffers = [b"x" * ((3 << 20) + i * 4096) for i in range(4)]
    hold.wait()
    del buffers

pool = [threading.Thread(target=work) for _ in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join()
memory.trim()
print("kept_kib", anon_kib() - base)
"""


def _run_child() -> dict[str, str]:
    # MALLOC_ARENA_MAX in the environment would make limit_arenas stand aside.
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-P", "-c", CHILD], capture_output=True, text=True, timeout=60,
                         env={**env, "PYTHONPATH": str(REPO)}, check=True).stdout
    return {k: v for k, _, v in (line.partition(" ") for line in out.splitlines()) if k in ("limited", "kept_kib")}


@pytest.mark.skipif(memory._libc() is None or not Path("/proc/self/status").exists(),
                    reason="glibc and /proc only")
def test_the_trim_gives_back_what_threads_freed_when_arenas_are_limited() -> None:
    result = _run_child()
    assert result["limited"] == "True"
    # 96 MiB were held at once; a few MiB may stay (the interpreter's own).
    assert int(result["kept_kib"]) < 16 << 10
