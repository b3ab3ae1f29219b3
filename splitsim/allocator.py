"""glibc's allocator keeps the memory a training step frees for the next step.

By default glibc gives a large freed block back to the kernel: blocks above its mmap threshold
are unmapped, and the top of the heap is trimmed once more than twice that threshold is free.
A training step that frees and allocates the same multi-megabyte tensors every step then asks
the kernel for fresh zeroed pages every step. papers/003's inversion decoder (a 500 x 9,216
projection, 4.6 M parameters, batch 32, Adam, one thread) page-faulted 4,600-8,900 times per
step; with these settings, 0-45 times, and a step took 44.0-55.2 ms of CPU against 54.8-76.6 ms,
1.22-1.39x, in five alternated pairs of fresh processes (``python scripts/bench_allocator.py
--pairs 5 --steps 100`` on the 2-core machine; an earlier three pairs gave 1.50x, 1.12x and
0.96x). The arithmetic is the same, bit for bit: only where the memory comes from changes.

The settings: blocks up to 32 MiB (glibc's own ceiling for its sliding threshold on 64-bit)
come from the heap, and up to 128 MiB free at the top of each of glibc's heaps is kept rather
than given back (freed blocks below the top are kept in any case): the price is memory a
process holds after it no longer uses it. ``splitsim.run`` from Python sets this for the
calling process too, for the rest of its life. A user's own ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or ``glibc.malloc`` tunables (``GLIBC_TUNABLES``) leave it all as
the user set it. Linux with glibc only; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import MutableMapping

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
SETTINGS = {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD}


def child_environment(env: MutableMapping[str, str]) -> None:
    """``env``, for a process to start with: glibc reads these when the process starts."""
    if platform.libc_ver()[0] != "glibc" or _user_set(env):
        return
    for name, value in SETTINGS.items():
        env[name] = str(value)


def keep_freed_memory() -> None:
    """This process from now on, and the processes it starts (through its environment)."""
    if platform.libc_ver()[0] != "glibc" or _user_set(os.environ):
        return
    mallopt = ctypes.CDLL(None).mallopt
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        child_environment(os.environ)


def _user_set(env: MutableMapping[str, str]) -> bool:
    tunables = env.get("GLIBC_TUNABLES", "")
    return any(name in env for name in SETTINGS) or "glibc.malloc." in tunables
