"""Active property inference by a participant of federated training (Shmatikov & Song,
*What Are Machine Learning Models Hiding?*, papers/002, section 3).

The adversarial participant "extends his local copy of the main, collaboratively trained model
with an augmented binary classifier connected to the last layer" and trains on its own records
``(x, y, p)`` with the joint loss (the paper's only equation)

    L_mt = alpha * L(x, y; theta) + (1 - alpha) * L(x, p; theta)          (alpha = 0.7 there)

so that the global model learns "separable representations for the data with and without the
property", and "other participants' updates then reveal whether their data has the property".
``alpha = 1`` is the passive attacker: an honest-looking participant that only watches.

How the updates are read is the batch-property inference of the paper's reference [3] line of
work (Melis, Song, De Cristofaro & Shmatikov, *Exploiting Unintended Feature Leakage in
Collaborative Learning*, 2019), which papers/002 summarises:

1. each round the adversary receives the global weights ``w_t`` (``train``) and, once the round
   is aggregated, ``w_{t+1}`` (``evaluate``). FedAvg gives
   ``w_{t+1} - w_t = sum_k n_k u_k / sum_k n_k``; the adversary knows its own update ``u_a`` and,
   since every participant trains on the same number of records per round, the weights, so it
   recovers the others' mean update ``u_others = (N (w_{t+1} - w_t) - u_a) / (N - 1)``;
2. from ``w_t`` it also computes, on its own records, honest-style updates of record sets with
   the property and without it (``synthetic`` pairs per round);
3. after training it fits a logistic regression (standardised features, L2) on the synthetic
   updates of the rounds after a burn-in, and scores each observed ``u_others``: a high score
   says the target trained on records with the property that round. The harness, which alone
   knows the target's schedule, reports the AUC.

Only one layer's update is read (``observe``): by default the classifier layer on top of the
features the property head shapes, which is where the active attack acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class PropertyTask:
    """Task classes as groups of original classes; the property as a set of original classes."""

    groups: tuple[tuple[int, ...], ...]
    property_classes: tuple[int, ...]

    def task(self, labels: np.ndarray) -> np.ndarray:
        table = np.full(int(labels.max()) + 1 if len(labels) else 1, -1, dtype=np.int64)
        for g, members in enumerate(self.groups):
            table[list(members)] = g
        return table[labels]

    def prop(self, labels: np.ndarray) -> np.ndarray:
        return np.isin(labels, self.property_classes).astype(np.int64)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(sorted(c for g in self.groups for c in g))


def layer_slice(net: nn.Module, observe: str) -> slice:
    """Where the observed layer's weights lie in the flat parameter vector."""
    offset = 0
    start, stop = None, None
    for name, value in net.state_dict().items():
        n = value.numel()
        if observe == "all" or name.startswith(f"{observe}."):
            start = offset if start is None else start
            stop = offset + n
        offset += n
    if start is None or stop is None:
        raise ValueError(f"the model has no layer {observe!r}")
    return slice(start, stop)


def others_update(
    before: np.ndarray, after: np.ndarray, own: np.ndarray, participants: int
) -> np.ndarray:
    """The mean update of everybody else, from two global models and one's own update."""
    return (participants * (after - before) - own) / (participants - 1)


class AdversaryStore:
    """The adversary's own storage: its property head, the round in progress, observations."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def load_head(self, head: nn.Module) -> None:
        path = self.folder / "head.pt"
        if path.exists():
            head.load_state_dict(torch.load(path, weights_only=True))

    def save_head(self, head: nn.Module) -> None:
        torch.save(head.state_dict(), self.folder / "head.pt")

    def save_pending(self, rnd: int, before: np.ndarray, own: np.ndarray) -> None:
        np.savez(self.folder / f"pending-{rnd}.npz", before=before, own=own)

    def take_pending(self, rnd: int) -> tuple[np.ndarray, np.ndarray] | None:
        path = self.folder / f"pending-{rnd}.npz"
        if not path.exists():
            return None
        with np.load(path) as data:
            out = data["before"], data["own"]
        path.unlink()
        return out

    def save_synthetic(self, rnd: int, features: np.ndarray, labels: np.ndarray) -> None:
        np.savez(self.folder / f"synthetic-{rnd}.npz", x=features, p=labels)

    def save_observed(self, rnd: int, features: np.ndarray) -> None:
        np.save(self.folder / f"observed-{rnd}.npy", features)

    def rounds(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("observed-*.npy"))

    def report(self) -> dict[str, np.ndarray]:
        """Everything observed and simulated, stacked by round: what :func:`infer` reads."""
        rounds = self.rounds()
        loaded = [self.load(r) for r in rounds]
        if not loaded:
            return {"rounds": np.zeros(0, np.int64), "synthetic_x": np.zeros((0, 0, 0)),
                    "synthetic_p": np.zeros((0, 0)), "observed": np.zeros((0, 0))}  # fmt: skip
        return {
            "rounds": np.array(rounds, dtype=np.int64),
            "synthetic_x": np.stack([x for x, _, _ in loaded]),
            "synthetic_p": np.stack([p for _, p, _ in loaded]),
            "observed": np.stack([o for _, _, o in loaded]),
        }

    def load(self, rnd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.load(self.folder / f"synthetic-{rnd}.npz") as data:
            x, p = data["x"], data["p"]
        return x, p, np.load(self.folder / f"observed-{rnd}.npy")


@dataclass
class Inference:
    rounds: list[int]
    scores: np.ndarray
    training_rounds: int


def infer(
    rounds: np.ndarray,
    synthetic_x: np.ndarray,
    synthetic_p: np.ndarray,
    observed: np.ndarray,
    burn_in: int,
    c: float,
) -> Inference:
    """Fit the batch-property classifier on the synthetic updates of rounds after ``burn_in``
    and score the observed updates of the same rounds (arrays stacked by round, as the
    adversary reports them)."""
    keep = [i for i, r in enumerate(rounds) if r > burn_in]
    if not keep:
        raise ValueError(f"no observed round after the burn-in of {burn_in} rounds")
    # sklearn is imported where it is used: the participants' actors import this module and
    # never fit a classifier (about a second of start-up each).
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train = np.concatenate([synthetic_x[i] for i in keep])
    p_train = np.concatenate([synthetic_p[i] for i in keep])
    scaler = StandardScaler().fit(x_train)
    classifier = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x_train), p_train)
    scores = classifier.decision_function(scaler.transform(np.stack([observed[i] for i in keep])))
    return Inference(
        rounds=[int(rounds[i]) for i in keep], scores=scores, training_rounds=len(keep)
    )


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; undefined (NaN) when only one class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def feature_separation(features: np.ndarray, prop: np.ndarray, seed: int) -> dict[str, float]:
    """How well a linear probe separates the property in a model's features (held-out AUC):
    the number behind the paper's Figure 3, which shows the separation as a projection."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    half = len(order) // 2
    fit, held = order[:half], order[half:]
    scaler = StandardScaler().fit(features[fit])
    probe = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(features[fit]), prop[fit])
    scores = probe.decision_function(scaler.transform(features[held]))
    return {
        "probe_auc": auc(prop[held], scores),
        "probe_accuracy": float(((scores > 0).astype(np.int64) == prop[held]).mean()),
    }
