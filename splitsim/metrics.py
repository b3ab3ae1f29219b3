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
    """ROC AUC; NaN when only one class is present (too few users to say)."""
    if len(np.unique(truth)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score  # lazily: client actors import this module

    return float(roc_auc_score(truth, score))


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
