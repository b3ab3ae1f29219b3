"""SplitGuard: a split-learning data owner detects a server that hijacks its training.

Erdoğan, Küpçü, Çiçek, *SplitGuard: Detecting and Mitigating Training-Hijacking Attacks in Split
Learning*, WPES 2022 (arXiv 2108.09052), section 4. After its first ``start`` batches the data
owner sends, with probability ``p_fake``, a *fake batch*: the labels of a share ``b_fake`` of it
are changed (each shifted by a random non-zero amount modulo the number of classes), so that
success on the real task means failure on the fake one. It keeps the gradient the server
returns for its first layer's weights, and does not apply the update of a fake batch. Regular
batches' gradients go at random to R1 or R2. After each fake batch it scores, with F the fakes'
gradients (section 4.2, eq. 6 and the authors' published code):

    d(A, B) = | mean ||a|| - mean ||b|| |          theta(A, B) = angle(mean a, mean b)
    S  = ( theta(F, R) d(F, R) - theta(R1, R2) d(R1, R2) ) / ( d(F, R) + d(R1, R2) )
    SG = sigmoid(mult * S) ** exp                   (mult 5, exp 2 in their experiments)

where R's mean is the average of R1's and R2's. An honest server learns the task, so the fakes'
gradients point elsewhere and are larger than the regular ones: SG near 1. A hijacking server
(FSHA) ignores the labels, so fakes look like regular batches: S near 0 and SG near
sigmoid(0) ** exp (0.25). The owner declares hijacking when the mean of its last ``window``
scores is below ``threshold`` (the paper leaves the decision policy to the owner) and stops
training: it answers no more training or inference messages.

It needs the owner to hold the labels (``deployment.labels: owner``), as the paper's setting
does. It is a detector, not a differential-privacy mechanism: it has no epsilon.

    >>> guard = SplitGuard(SplitGuard.Params())
    >>> sg_score(fakes, r1, r2, mult=5, exp=2)  # each a (n, d) array of first-layer gradients
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES
from splitsim.runs import write_atomic

SETS = ("fake", "r1", "r2")


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    cos = float(u @ v) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-30)
    return math.acos(max(-1.0, min(1.0, cos)))


def sg_score_from_sums(
    sums: dict[str, np.ndarray], norms: dict[str, float], counts: dict[str, int],
    mult: float, exp: float,
) -> float:  # fmt: skip
    """SG from each set's sum of gradients, sum of their norms and count (eq. 6, squashed)."""
    mean = {k: sums[k] / counts[k] for k in SETS}
    mag = {k: norms[k] / counts[k] for k in SETS}
    r_mean, r_mag = (mean["r1"] + mean["r2"]) / 2, (mag["r1"] + mag["r2"]) / 2
    d_fr, d_rr = abs(mag["fake"] - r_mag), abs(mag["r1"] - mag["r2"])
    if d_fr + d_rr == 0:
        return 1.0 / (1.0 + math.exp(0.0)) ** exp
    s = (_angle(mean["fake"], r_mean) * d_fr - _angle(mean["r1"], mean["r2"]) * d_rr) / (
        d_fr + d_rr
    )
    return float((1.0 / (1.0 + math.exp(-mult * s))) ** exp)


def sg_score(
    fakes: np.ndarray, r1: np.ndarray, r2: np.ndarray, mult: float = 5.0, exp: float = 2.0
) -> float:
    """SG of three sets of flattened gradients (rows)."""
    sets = {"fake": fakes, "r1": r1, "r2": r2}
    return sg_score_from_sums(
        {k: v.sum(0) for k, v in sets.items()},
        {k: float(np.linalg.norm(v, axis=1).sum()) for k, v in sets.items()},
        {k: len(v) for k, v in sets.items()},
        mult,
        exp,
    )


@DEFENCES.register("splitguard")
class SplitGuard(Defence):
    """The data owner's fake batches and SG score (Erdoğan et al., WPES 2022, eq. 6)."""

    stage = "detector"

    class Params(DefenceParams):
        p_fake: float = Field(0.1, gt=0, lt=1, description="chance a batch is sent fake")
        b_fake: float = Field(
            1.0, gt=0, le=1, description="share of a fake batch whose labels are changed"
        )
        start: int = Field(20, ge=0, le=100_000, description="batches before the first fake")
        mult: float = Field(5.0, gt=0, le=1000, description="the squashing's multiplier")
        exp: float = Field(2.0, gt=0, le=100, description="the squashing's exponent")
        threshold: float = Field(
            0.6, gt=0, lt=1, description="hijacking below this mean of the last scores"
        )
        window: int = Field(3, ge=1, le=1000, description="scores the decision averages")

    # -- the owner's bookkeeping, on its own storage --------------------------------------

    def is_fake(self, rng: np.random.Generator, batches_before: int) -> bool:
        return batches_before >= self.params.start and bool(rng.random() < self.params.p_fake)

    def fake_labels(self, y: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
        """The batch's labels with the first ``b_fake`` share shifted by 1..classes-1."""
        out = y.copy()
        n = max(1, round(self.params.b_fake * len(y)))
        out[:n] = (y[:n] + rng.integers(1, classes, size=n)) % classes
        return out

    def record(self, folder: Path, pid: int, grad: np.ndarray, kind: str, at: tuple[int, int]
               ) -> float | None:  # fmt: skip
        """Add one first-layer gradient (``kind``: fake, r1 or r2) to the owner's running
        sums; after a fake, return the new SG score (None until every set has one)."""
        path = folder / f"splitguard-{pid}.npz"
        state = _load(path, grad.size)
        g = grad.reshape(-1).astype(np.float64)
        state[f"sum_{kind}"] += g
        state["norm"][SETS.index(kind)] += float(np.linalg.norm(g))
        state["count"][SETS.index(kind)] += 1
        score = None
        if kind == "fake" and (state["count"] > 0).all():
            score = sg_score_from_sums(
                {k: state[f"sum_{k}"] for k in SETS},
                {k: float(state["norm"][i]) for i, k in enumerate(SETS)},
                {k: int(state["count"][i]) for i, k in enumerate(SETS)},
                self.params.mult,
                self.params.exp,
            )
            state["scores"] = np.append(state["scores"], score)
            state["at"] = np.vstack([state["at"], np.asarray(at, np.int64)[None]])
        _save(path, state)
        return score

    def verdict(self, folder: Path, pid: int) -> bool:
        """Hijacked: the mean of the last ``window`` scores is under the threshold."""
        path = folder / f"splitguard-{pid}.npz"
        if not path.is_file():
            return False
        scores = _load(path, 0)["scores"]
        if len(scores) < self.params.window:
            return False
        return bool(scores[-self.params.window :].mean() < self.params.threshold)

    @staticmethod
    def log(folder: Path, pid: int) -> dict[str, np.ndarray]:
        """The owner's scores and the (round, step) of the fake batch behind each."""
        path = folder / f"splitguard-{pid}.npz"
        if not path.is_file():
            return {"scores": np.zeros(0), "at": np.zeros((0, 2), np.int64),
                    "count": np.zeros(3, np.int64)}  # fmt: skip
        state = _load(path, 0)
        return {"scores": state["scores"], "at": state["at"], "count": state["count"]}


def _load(path: Path, size: int) -> dict[str, np.ndarray]:
    if path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k].copy() for k in saved.files}
    return {
        **{f"sum_{k}": np.zeros(size) for k in SETS},
        "norm": np.zeros(3),
        "count": np.zeros(3, np.int64),
        "scores": np.zeros(0),
        "at": np.zeros((0, 2), np.int64),
    }


def _save(path: Path, state: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **state)
    write_atomic(path, buffer.getvalue())
