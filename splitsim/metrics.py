"""Utility and leakage metrics shared by every threat model."""

from __future__ import annotations

import numpy as np
import torch


def accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(truth)))


def majority_rate(labels: np.ndarray) -> float:
    """Chance level for an attacker who always guesses the most frequent class."""
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / counts.sum())


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of a two-class ``truth`` (the greater label positive, as scikit-learn's
    ``roc_auc_score``); NaN when only one class is present (too few users to say).

    Written out as the Mann-Whitney statistic, U / (positives x negatives) with tied scores at
    their average rank, which is the area under the ROC curve: scikit-learn's function gives
    the same value (tests/test_hidden_learning.py compares them) but spends 1.9 ms a call
    checking its input, and the hidden-learning supplier asks 720 times (six networks, sixty
    epochs, two labels): 1.4 s of the Covid run, and 0.9 s more to import scikit-learn,
    against 0.1 ms."""
    truth = np.asarray(truth).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    classes = np.unique(truth)
    if len(classes) < 2:
        return float("nan")
    if len(classes) > 2 or len(truth) != len(score) or not np.isfinite(score).all():
        from sklearn.metrics import roc_auc_score  # its own error for what AUC cannot take

        return float(roc_auc_score(truth, score))
    positive = truth == classes[1]
    order = np.argsort(score, kind="mergesort")
    ordered = score[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # the first of each run of equal scores
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(score)]
    ranks = np.empty(len(score))
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]  # 1-based, ties averaged
    n_pos = int(positive.sum())
    n_neg = len(score) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _double_centred(values: torch.Tensor, exponent: float) -> torch.Tensor:
    flat = values.reshape(len(values), -1)
    sq = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(-1)
    # sqrt has an infinite gradient at 0 (the diagonal): only take it when asked for.
    dist = sq if exponent == 2 else (sq + 1e-12).pow(exponent / 2)
    return dist - dist.mean(0, keepdim=True) - dist.mean(1, keepdim=True) + dist.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor, exponent: float = 2.0) -> torch.Tensor:
    """Sample distance correlation of two batches (Szekely et al. 2007, the V-statistic),
    differentiable, so NoPeek can train on it.

    Written here in torch rather than taken from the ``dcor`` package: dcor is not
    differentiable, and importing it compiles its numba kernels, 11-12 s per process on the
    2-core box (dcor 0.6 and 0.7), which every model-inversion run paid for one metric. The
    tests check this function against ``dcor.distance_correlation`` to a relative 1e-6."""
    a, b = _double_centred(x, exponent), _double_centred(z, exponent)
    dcov2 = (a * b).mean().clamp_min(0)
    dvar2 = (a * a).mean() * (b * b).mean()
    return (dcov2 / dvar2.sqrt().clamp_min(1e-12)).sqrt()


def distance_correlation_batches(
    x: np.ndarray, z: np.ndarray, batch_size: int = 32, exponent: float = 2.0
) -> dict[str, float]:
    """Distance correlation between inputs and intermediate tensors as papers/003 reports it:
    computed per batch (their batch of 32), then the mean and its standard error over batches.
    ``exponent=2`` (squared distances) is the paper's published implementation; it does not
    characterise independence (dcor warns so), which is the paper's choice, not ours."""
    values = []
    with torch.no_grad():
        for start in range(0, len(x) - batch_size + 1, batch_size):
            xb = torch.from_numpy(x[start : start + batch_size].astype(np.float64))
            zb = torch.from_numpy(z[start : start + batch_size].astype(np.float64))
            values.append(float(distance_correlation(xb, zb, exponent)))
    arr = np.asarray(values)
    return {
        "mean": float(arr.mean()),
        "se": float(arr.std() / np.sqrt(len(arr))),
        "batches": len(arr),
        "exponent": exponent,
    }


def image_quality(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """Mean MSE, PSNR (dB) and SSIM per image, pixels in [0, 1] (scikit-image's SSIM)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    mse, psnr, ssim = [], [], []
    for a, b in zip(originals, reconstructions, strict=True):
        a2, b2 = (
            a.reshape(a.shape[-2:]).astype(np.float64),
            b.reshape(b.shape[-2:]).astype(np.float64),
        )
        mse.append(float(np.mean((a2 - b2) ** 2)))
        psnr.append(float(peak_signal_noise_ratio(a2, b2, data_range=1.0)))
        ssim.append(float(structural_similarity(a2, b2, data_range=1.0)))
    return {"mse": float(np.mean(mse)), "psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}
