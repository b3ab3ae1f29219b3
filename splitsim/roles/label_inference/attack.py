"""The curious data owner's label inference from returned gradients (Li et al., ICLR 2022).

Li, Sun, Yang, Gao, Zhang, Xie, Smith, Wang, *Label Leakage and Protection in Two-party Split
Learning*, section 4. The owner holds, for each example of its batches it watched, the gradient
``g_i = dL/dz_i`` the server returned for its intermediate tensor ``z_i``. With softmax
cross-entropy, ``g_i = J_i^T (softmax(f2(z_i)) - e_{y_i})``:

- **norm attack** (their section 4.1): the score is ``||g_i||_2``. Examples of the rarer class
  are fitted worse (``|1 - p|`` is larger for them), so their gradients are longer. Which class
  is longer is read, per epoch, off the examples whose labels the owner knows (Li et al. take
  the rarer one); where the known negatives' gradients are the longer, the score is negated;
- **direction attack** (section 4.2): gradients of the same class point the same way, of
  different classes apart. Knowing the label of one example, the owner scores every other by
  ``cos(g_i, g_known)``. Its known examples are spread over the epoch, so each example is
  compared with the known example of each class watched at the nearest step of the same epoch
  (the server's f2 changes little between them). Binary: the score is the cosine with the
  nearest known positive (Li et al.'s). Ten classes: the predicted label is the class whose
  nearest known example's gradient is the most similar.

The **adaptive** owner knows the server's isotropic noise (``gradient_noise``: per coordinate
``sigma_b^2 = ratio^2 max_j ||g_j||^2 / d`` in batch b, so it estimates ``sigma_b^2`` from each
noisy batch as ``ratio^2 max_j ||g~_j||^2 / (d (1 + ratio^2))``). It divides each batch by its
``sigma_b`` (the noise becomes N(0, I) everywhere, so quiet batches weigh more), keeps per epoch
the eigen-directions of the whitened gradients' second moment ``G^T G / n`` above the noise's
Marchenko-Pastur edge ``(1 + sqrt(d / n))^2`` (at least one), projects onto them, and scores
linearly: binary, ``<P g_i, m_1 - m_0>`` with ``m_c`` the mean projected gradient of its known
examples of class c this epoch; ten classes, the class whose known mean is the closest in angle.
The norm score is the projection's norm. Marvell's noise lies along the direction between the
class means, which no projection removes; the role refuses ``adaptive`` without
``gradient_noise``.

    >>> scores = infer(kept, task="binary", known_noise_ratio=None)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scores:
    norm: np.ndarray  # ||g_i|| per watched example (after the adaptive projection), signed
    direction: np.ndarray  # binary: cosine with the nearest known positive; else the best cosine
    predicted: np.ndarray  # predicted task label (argmax over the classes' nearest cosines)
    kept_directions: dict[int, int]  # epoch -> directions kept by the adaptive projection


def _unit(g: np.ndarray) -> np.ndarray:
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-30)


def whiten(g: np.ndarray, steps: np.ndarray, ratio: float) -> np.ndarray:
    """Each batch of ``gradient_noise``-ed gradients divided by its noise scale, estimated
    from the batch's largest norm."""
    d = g.shape[1]
    out = g.copy()
    norms = np.linalg.norm(g, axis=1) ** 2
    for s in np.unique(steps):
        batch = steps == s
        sigma2 = norms[batch].max() * ratio**2 / (d * (1 + ratio**2))
        out[batch] /= np.sqrt(max(sigma2, 1e-300))
    return out


def denoise(g: np.ndarray) -> tuple[np.ndarray, int]:
    """Project whitened ``g`` onto the eigen-directions of ``g^T g / n`` above unit isotropic
    noise's Marchenko-Pastur edge; at least one is kept."""
    n, d = g.shape
    _, s, vt = np.linalg.svd(g, full_matrices=False)
    keep = max(1, int((s**2 / n > (1 + np.sqrt(d / n)) ** 2).sum()))
    return g @ vt[:keep].T, keep


def infer(
    grad: np.ndarray,
    rounds: np.ndarray,
    steps: np.ndarray,
    ids: np.ndarray,
    known_ids: np.ndarray,
    known_y: np.ndarray,
    classes: int,
    known_noise_ratio: float | None = None,
) -> Scores:
    """Norm and direction scores of every watched example, epoch by epoch."""
    label_of = dict(zip(known_ids.tolist(), known_y.tolist(), strict=True))
    if known_noise_ratio is not None and known_noise_ratio > 0:
        return _adaptive(grad.astype(np.float64), rounds, steps, ids, label_of, classes,
                         known_noise_ratio)  # fmt: skip
    g = grad.astype(np.float64)
    is_known = np.isin(ids, known_ids)
    unit = _unit(g)
    cos = np.full((len(g), classes), np.nan)
    for r in np.unique(rounds):
        in_round = np.flatnonzero(rounds == r)
        anchors = in_round[is_known[in_round]]
        for c in range(classes):
            mine = anchors[[label_of[int(i)] == c for i in ids[anchors]]]
            if not len(mine):
                continue  # no known example of class c watched this epoch
            gap = np.abs(steps[in_round][:, None] - steps[mine][None, :])
            nearest = mine[gap.argmin(axis=1)]  # argmin takes the first: the earlier on a tie
            cos[in_round, c] = (unit[in_round] * unit[nearest]).sum(axis=1)
    filled = np.where(np.isnan(cos), -np.inf, cos)
    predicted = filled.argmax(axis=1)
    direction = cos[:, 1] if classes == 2 else filled.max(axis=1)
    norm = _oriented(np.linalg.norm(g, axis=1), rounds, ids, label_of)
    return Scores(norm, direction, predicted, {})


def _adaptive(
    g: np.ndarray, rounds: np.ndarray, steps: np.ndarray, ids: np.ndarray,
    label_of: dict[int, int], classes: int, ratio: float,
) -> Scores:  # fmt: skip
    """Whiten per batch, project per epoch, score linearly against the known class means."""
    norm = np.zeros(len(g))
    direction = np.full(len(g), np.nan)
    predicted = np.zeros(len(g), np.int64)
    kept: dict[int, int] = {}
    for r in np.unique(rounds):
        in_round = np.flatnonzero(rounds == r)
        x, kept[int(r)] = denoise(whiten(g[in_round], steps[in_round], ratio))
        norm[in_round] = np.linalg.norm(x, axis=1)
        labels = np.array([label_of.get(int(i), -1) for i in ids[in_round]])
        means = np.array([x[labels == c].mean(0) if (labels == c).any() else np.zeros(x.shape[1])
                          for c in range(classes)])  # fmt: skip
        if classes == 2:
            direction[in_round] = x @ (means[1] - means[0])
        else:
            cos = _unit(x) @ _unit(means).T
            cos[:, ~(np.linalg.norm(means, axis=1) > 0)] = -np.inf
            predicted[in_round] = cos.argmax(axis=1)
            direction[in_round] = cos.max(axis=1)
    if classes == 2:
        predicted = (direction > 0).astype(np.int64)
        norm = _oriented(norm, rounds, ids, label_of)
    return Scores(norm, direction, predicted, kept)


def _oriented(
    norm: np.ndarray, rounds: np.ndarray, ids: np.ndarray, label_of: dict[int, int]
) -> np.ndarray:
    """The norm scores, negated in an epoch where the known examples of class 1 have the
    shorter gradients on average (binary: class 1 scores high)."""
    norm = norm.copy()
    for r in np.unique(rounds):
        in_round = rounds == r
        known_here = [i for i in np.flatnonzero(in_round) if int(ids[i]) in label_of]
        pos = [norm[i] for i in known_here if label_of[int(ids[i])] == 1]
        neg = [norm[i] for i in known_here if label_of[int(ids[i])] == 0]
        if pos and neg and np.mean(pos) < np.mean(neg):
            norm[in_round] = -norm[in_round]
    return norm
