"""Giving the heap back to the system: glibc malloc's arenas and its trim.

A gateway process's resting memory after a burst of mail is not Python
objects (after the bench's mix a process holds a few MiB of them) but
memory glibc's malloc has been given back and keeps: freed chunks inside
its heaps, one heap per *arena*, and glibc makes up to 8 arenas a CPU as
the pool's threads (``asyncio.to_thread``) allocate at the same time.
glibc's dynamic mmap threshold rises to the size of the largest buffer
freed (up to 32 MiB), so multi-megabyte buffers come from those heaps, and
what is freed at the top of a thread arena's heap stays resident.

Two calls cut it without changing how buffers are allocated while mail
flows: :func:`limit_arenas` at process start (one heap, the one
``malloc_trim`` can empty) and :func:`trim` once the process is idle (the
runner calls it when no message has been in hand for 2 s).  Both do
nothing where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import functools
import os
import time

from gateway import logs

log = logs.get("memory")

#: mallopt(3)'s parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas a process may use: one.  malloc_trim(0) gives back the free top of
#: the main arena only; a thread arena keeps its top until that grows past
#: the trim threshold, which follows the dynamic mmap threshold up to 64 MiB.
#: Measured with bench/memory.py (the mix's 100 messages, one process, 2
#: CPUs, serve process 10 s after the last delivery, two runs each): 16
#: arenas (the default here) 260-284 MiB, trim alone 205-243 MiB, 2 arenas
#: and trim 107-157 MiB, 1 arena and trim 105-107 MiB (86-87 MiB with
#: sniff's pooled libmagic handles), at the same CPU for the sends
#: (1.4-2.2 s against 1.8-1.9 s): Python allocates under the GIL, so
#: the threads hardly contend for the one arena.
ARENAS = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, if that is the C library (it has ``malloc_trim``); else None."""
    try:
        libc = ctypes.CDLL(None)  # the C library the process already runs on
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; call it before the process
    starts any thread (an arena made before stays).  True if glibc took it.

    ``MALLOC_ARENA_MAX`` in the environment, when set, wins: an operator's
    own choice is left alone.
    """
    libc = _libc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """``malloc_trim(0)``: give every whole free page of every arena back to
    the system.  Blocking (it holds each arena's lock in turn): call it when
    the process is idle.  True if memory was released."""
    libc = _libc()
    if libc is None:
        return False
    t0 = time.monotonic()
    released = bool(libc.malloc_trim(0))
    log.debug("heap trimmed", released=released, seconds=round(time.monotonic() - t0, 4))
    return released
