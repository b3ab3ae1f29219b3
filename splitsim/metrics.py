"""Utility and leakage metrics shared by every threat model."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def load_dcor():  # noqa: ANN201
    """Import ``dcor`` and compile its kernels under a machine-wide lock.

    dcor's numba kernels are cached on disk (``cache=True``); two processes compiling them at
    once corrupt the cache for every later process ("LLVM ERROR: Symbol not found" on import;
    seen here with two comparison cells side by side). Holding a file lock while the first
    process compiles and writes makes the others wait, then load a complete cache."""
    import fcntl
    import tempfile
    import warnings

    lock_path = Path(tempfile.gettempdir()) / "splitsim-numba-dcor.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            import dcor

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                probe = np.random.default_rng(0).random((8, 3))
                dcor.distance_correlation(probe, probe[:, :2], exponent=2.0)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dcor


def distance_correlation_batches(
    x: np.ndarray, z: np.ndarray, batch_size: int = 32, exponent: float = 2.0
) -> dict[str, float]:
    """Distance correlation between inputs and intermediate tensors as papers/003 reports it:
    computed per batch (their batch of 32), then the mean and its standard error over batches.
    ``exponent=2`` (squared distances) is the paper's published implementation; the ``dcor``
    package warns that this exponent does not characterise independence, which is the paper's
    choice, not ours, so the warning is silenced."""
    import warnings

    dcor = load_dcor()
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            xb = x[start : start + batch_size].reshape(batch_size, -1).astype(np.float64)
            zb = z[start : start + batch_size].reshape(batch_size, -1).astype(np.float64)
            values.append(dcor.distance_correlation(xb, zb, exponent=exponent))
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
