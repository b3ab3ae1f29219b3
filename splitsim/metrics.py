"""Utility and leakage metrics shared by every threat model."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


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
    return float(roc_auc_score(truth, score))
