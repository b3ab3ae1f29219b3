"""Official-task quality of a model's probabilities: accuracy, ranking (ROC AUC) and calibration.

Calibration is the expected calibration error (Guo et al., *On Calibration of Modern Neural
Networks*, ICML 2017, eq. 3: the confidence-weighted gap between confidence and accuracy over
equal-width bins) and the Brier score. papers/001's hidden network keeps accuracy but loses
ranking quality (docs/covid_app.md: severe AUC 0.877 against 0.966): accuracy alone does not
show a hidden task.
"""

from __future__ import annotations

import numpy as np

from splitsim.metrics import roc_auc

BINS = 10


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    edges = np.linspace(0.0, 1.0, BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, BINS - 1)
    total = 0.0
    for b in range(BINS):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(total)


def quality(prob: np.ndarray, y: np.ndarray, kind: str, names: tuple[str, ...]) -> dict:
    """``prob``: (n, k) probabilities (sigmoid per label, or softmax); ``y`` the labels."""
    if kind == "multilabel":
        out: dict = {}
        pred = (prob >= 0.5).astype(np.int64)
        out["accuracy"] = float((pred == y).mean())
        for j, name in enumerate(names):
            p, t = prob[:, j], y[:, j]
            confidence = np.maximum(p, 1 - p)
            out[name] = {
                "accuracy": float((pred[:, j] == t).mean()),
                "auc": roc_auc(t, p),
                "ece": expected_calibration_error(confidence, pred[:, j] == t),
                "brier": float(np.mean((p - t) ** 2)),
            }
        return out
    pred = prob.argmax(1)
    onehot = np.eye(prob.shape[1])[y]
    auc = float("nan")
    present = np.unique(y)
    if len(present) > 1:
        from sklearn.metrics import roc_auc_score

        auc = (
            float(
                roc_auc_score(
                    y,
                    prob[:, present] / prob[:, present].sum(1, keepdims=True),
                    multi_class="ovr",
                    labels=present,
                )
            )
            if len(present) > 2
            else roc_auc(y == present[1], prob[:, present[1]])
        )
    return {
        "accuracy": float((pred == y).mean()),
        names[0]: {
            "accuracy": float((pred == y).mean()),
            "auc": auc,
            "ece": expected_calibration_error(prob.max(1), pred == y),
            "brier": float(np.mean(((prob - onehot) ** 2).sum(1))),
        },
    }
