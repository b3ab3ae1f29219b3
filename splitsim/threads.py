"""One intra-op torch thread for loops of small operations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: no operation in a loop of small tensors is large enough to split,
    and a second thread that must wait for a busy core makes every step wait too (2 threads:
    40 ms per step while two other processes ran on the 2-core box; 1 thread: 1.7 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
