"""Which images each data owner holds: seeded shares of an image dataset, even and IID, or
non-IID by ``deployment.partitioner`` (Dirichlet class proportions, label shards).

These say what is private to each owner. A ClientApp uses them to find its own images, and the
harness uses them to know every owner's truth; an attack module never imports them
(tests/test_structure.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from splitsim import seeds
from splitsim.data.score_data import partition_sizes

if TYPE_CHECKING:
    from splitsim.scenario import Partitioner


def train_partition(
    n_train: int, clients: int, pid: int, seed: int,
    labels: np.ndarray | None = None, partitioner: Partitioner | None = None,
) -> np.ndarray:  # fmt: skip
    """Owner ``pid``'s training image ids: a seeded, even (IID) split of the classifier set,
    or the ``partitioner``'s non-IID one of the images with these ``labels``."""
    if partitioner is not None and partitioner.name != "iid":
        return train_partitions(n_train, clients, seed, labels, partitioner)[pid]
    order = seeds.rng(seed, "split.train_partition").permutation(n_train)
    sizes = partition_sizes(n_train, clients)
    start = sum(sizes[:pid])
    return np.sort(order[start : start + sizes[pid]])


def train_partitions(
    n_train: int, clients: int, seed: int,
    labels: np.ndarray | None = None, partitioner: Partitioner | None = None,
) -> list[np.ndarray]:  # fmt: skip
    """Every owner's ``train_partition``, computed once (a non-IID split is drawn whole)."""
    if partitioner is None or partitioner.name == "iid":
        return [train_partition(n_train, clients, pid, seed) for pid in range(clients)]
    if labels is None or len(labels) != n_train:
        raise ValueError("a non-IID partition needs the label of every training image")
    return non_iid(labels, clients, seed, partitioner)


def test_partition(n_test: int, users: int, clients: int, pid: int, seed: int) -> np.ndarray:
    """Owner ``pid``'s share of the first ``users`` test images in a seeded order."""
    order = seeds.rng(seed, "split.test_partition").permutation(n_test)[:users]
    sizes = partition_sizes(users, clients)
    start = sum(sizes[:pid])
    return order[start : start + sizes[pid]]


def non_iid(
    labels: np.ndarray, clients: int, seed: int, partitioner: Partitioner
) -> list[np.ndarray]:
    """Every owner's image ids (sorted) under a non-IID ``partitioner``.

    Written here in numpy rather than taken from flwr-datasets, whose partitioners work on
    Hugging Face ``datasets`` tables (that package and pyarrow would come with it), to the
    same definitions:

    - ``dirichlet`` (Hsu, Qi, Brown 2019, as flwr-datasets' ``DirichletPartitioner``): for
      each class, the shares of its images the owners get are drawn from Dirichlet(alpha,
      ..., alpha); drawn again (up to 100 times) until every owner has ``min_size`` images.
      Small alpha: each owner holds few classes; large alpha: close to IID.
    - ``shards`` (McMahan et al. 2017, as ``ShardPartitioner``): images sorted by label, cut
      into ``clients * shards_per_owner`` equal shards, each owner given
      ``shards_per_owner`` of them at random."""
    rng = seeds.rng(seed, "split.non_iid_partition", clients)
    labels = np.asarray(labels)
    if partitioner.name == "shards":
        k = int(partitioner.shards_per_owner)
        if clients * k > len(labels):
            raise ValueError(f"{clients} owners x {k} shards is more shards than images")
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, clients * k)
        dealt = rng.permutation(clients * k)
        return [np.sort(np.concatenate([shards[j] for j in dealt[i * k : (i + 1) * k]]))
                for i in range(clients)]  # fmt: skip
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for _ in range(100):
        owners: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for ids in by_class:
            shares = rng.dirichlet(np.full(clients, float(partitioner.alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(ids)).astype(int)
            for owner, part in enumerate(np.split(ids, cuts)):
                owners[owner].append(part)
        out = [np.sort(np.concatenate(parts)) for parts in owners]
        if min(len(o) for o in out) >= partitioner.min_size:
            return out
    raise ValueError(
        f"no Dirichlet(alpha={partitioner.alpha:g}) draw in 100 gave each of {clients} owners "
        f"{partitioner.min_size} images; raise alpha or lower min_size"
    )


def class_histograms(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> list[list[int]]:
    """Each owner's image count per class, for the report."""
    return [np.bincount(labels[p], minlength=classes).tolist() for p in parts]
