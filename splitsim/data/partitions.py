"""Which images each data owner holds: seeded, even (IID) shares of an image dataset.

These say what is private to each owner. A ClientApp uses them to find its own images, and the
harness uses them to know every owner's truth; an attack module never imports them
(tests/test_structure.py checks it).
"""

from __future__ import annotations

import numpy as np

from splitsim import seeds
from splitsim.data.score_data import partition_sizes


def train_partition(n_train: int, clients: int, pid: int, seed: int) -> np.ndarray:
    """Owner ``pid``'s training image ids: a seeded, even (IID) split of the classifier set."""
    order = seeds.rng(seed, "split.train_partition").permutation(n_train)
    sizes = partition_sizes(n_train, clients)
    start = sum(sizes[:pid])
    return np.sort(order[start : start + sizes[pid]])


def test_partition(n_test: int, users: int, clients: int, pid: int, seed: int) -> np.ndarray:
    """Owner ``pid``'s share of the first ``users`` test images in a seeded order."""
    order = seeds.rng(seed, "split.test_partition").permutation(n_test)[:users]
    sizes = partition_sizes(users, clients)
    start = sum(sizes[:pid])
    return order[start : start + sizes[pid]]
