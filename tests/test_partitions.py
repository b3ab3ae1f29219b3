"""Non-IID owners: Dirichlet class proportions and label shards, seeded, each image once."""

from __future__ import annotations

import numpy as np
import pytest

from splitsim.data.partitions import non_iid, train_partition
from splitsim.scenario import Partitioner


def labels(n: int = 4000) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 10, n)


def classes_held(y: np.ndarray, parts: list[np.ndarray], least: float = 0.05) -> list[int]:
    """Classes making up at least ``least`` of each owner's images."""
    return [int((np.bincount(y[p], minlength=10) / len(p) >= least).sum()) for p in parts]


@pytest.mark.parametrize(
    "partitioner",
    [Partitioner(name="dirichlet", alpha=0.1), Partitioner(name="dirichlet", alpha=1000.0),
     Partitioner(name="shards", shards_per_owner=2)],
)  # fmt: skip
def test_every_image_goes_to_exactly_one_owner_the_same_way_every_time(partitioner):
    y = labels()
    parts = non_iid(y, 8, seed=3, partitioner=partitioner)
    together = np.concatenate(parts)
    assert len(together) == len(y) and len(np.unique(together)) == len(y)
    again = [train_partition(len(y), 8, pid, 3, y, partitioner) for pid in range(8)]
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other_seed = non_iid(y, 8, seed=4, partitioner=partitioner)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other_seed, strict=True))


def test_small_alpha_and_shards_skew_the_owners_large_alpha_does_not():
    y = labels()
    skewed = classes_held(y, non_iid(y, 8, 0, Partitioner(name="dirichlet", alpha=0.1)))
    flat = classes_held(y, non_iid(y, 8, 0, Partitioner(name="dirichlet", alpha=1000.0)))
    shards = classes_held(y, non_iid(y, 8, 0, Partitioner(name="shards", shards_per_owner=2)))
    assert np.mean(skewed) < 5 and min(flat) == 10  # IID-like at large alpha
    assert max(shards) <= 4  # a label-sorted shard spans at most two digits here
    sizes = [len(p) for p in non_iid(y, 8, 0, Partitioner(name="dirichlet", alpha=0.1))]
    assert min(sizes) >= 10  # min_size holds


def test_iid_is_the_historical_split_and_impossible_draws_are_refused():
    y = labels(400)
    iid = [train_partition(400, 4, pid, 0) for pid in range(4)]
    same = [train_partition(400, 4, pid, 0, y, Partitioner()) for pid in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(iid, same, strict=True))
    with pytest.raises(ValueError, match="no Dirichlet"):
        non_iid(y, 50, 0, Partitioner(name="dirichlet", alpha=0.01, min_size=8))
    with pytest.raises(ValueError, match="more shards than images"):
        non_iid(y[:10], 6, 0, Partitioner(name="shards", shards_per_owner=2))
