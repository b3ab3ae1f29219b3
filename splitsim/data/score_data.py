"""What a score-leakage threat model needs from a dataset: inputs, side information, labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class OfficialTask:
    """The official task: ``multilabel`` (one sigmoid score per label) or ``multiclass``.

    ``released`` is what N_o hands the data owner's app, and so what reaches the server:
    ``probabilities`` (sigmoid or softmax) or the ``logits`` before that map (the R^{k_o}
    codomain of papers/001, Remark 1).
    """

    kind: Literal["multilabel", "multiclass"]
    names: tuple[str, ...]
    released: Literal["probabilities", "logits"] = "probabilities"

    @property
    def outputs(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset offers a score-leakage threat model, known before any data is loaded."""

    official: OfficialTask
    secret_classes: dict[str, tuple[str, ...]]
    side_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoreData:
    """A set of data owners' inputs with every label.

    ``side`` is what the client sends in clear next to the scores (the Covid app's region,
    one-hot); ``side_raw`` is the same as it travels on the wire.
    """

    x: np.ndarray  # (n, ...) float32 network input
    side: np.ndarray  # (n, d) float32, d may be 0
    side_raw: dict[str, np.ndarray]
    official: np.ndarray  # (n, k) int for multilabel, (n,) int for multiclass
    secrets: dict[str, np.ndarray]  # name -> (n,) int class index
    # Per-input loss weights, "official" and per secret; missing means 1 (papers/001 Fn/Ln).
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: np.ndarray) -> ScoreData:
        return ScoreData(
            x=self.x[index],
            side=self.side[index],
            side_raw={k: v[index] for k, v in self.side_raw.items()},
            official=self.official[index],
            secrets={k: v[index] for k, v in self.secrets.items()},
            weights={k: v[index] for k, v in self.weights.items()},
        )

    def weight(self, name: str) -> np.ndarray:
        return self.weights.get(name, np.ones(len(self), dtype=np.float32))


def partition_sizes(users: int, clients: int) -> list[int]:
    """Users per client, as equal as possible, in partition order."""
    return [partition_size(users, clients, i) for i in range(clients)]


def partition_size(users: int, clients: int, pid: int) -> int:
    """Users of client ``pid``: ``partition_sizes(users, clients)[pid]`` without the list,
    which a node computes for every message (10,000 owners: 1.7 ms of each)."""
    base, extra = divmod(users, clients)
    return base + (1 if pid < extra else 0)
