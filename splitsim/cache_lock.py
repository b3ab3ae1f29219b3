"""One process computes an entry of ``<root>/splitsim-cache``; the others wait for it and read it.

Cache files are written atomically (``runs.write_atomic``), so a reader never sees half of one.
Without a lock, processes that miss an entry at the same time each compute it. The comparison
matrix's cells side by side did: two probing cells computed the same 2,000 x 100 undefended
signatures at once (331 s and 333 s, measured with ``python -m splitsim compare`` on
docs/perturbation_probe.md's ``probe_matrix.yaml``).
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def computing(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock (``<path>.lock``, an flock) for the block. Inside it, the caller
    checks again whether another process wrote ``path`` while this one waited."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compute_once(path: Path, compute: Callable[[], T], load: Callable[[], T]) -> T:
    """``load()`` the entry at ``path``; where it is missing, ``compute()`` it (which writes
    ``path``) under its lock, unless another process wrote it while this one waited."""
    if not path.exists():
        with computing(path):
            if not path.exists():
                return compute()
    return load()
