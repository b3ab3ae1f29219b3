"""What the official network N_o releases, and how its outputs are scored and decoded
(hidden-learning paper, papers/001, section 2: scores N_o(x) in, secret classes N_s(...) out).

Shapes: x (n, ...) -> scores (n, k_o), in [0, 1] or logits (``OfficialTask.released``);
secret input [scores, side] (n, k_o + d) -> logits (n, k_s). ``to_scores`` also maps stacked
(R, n, k_o) logits (``stacked.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from splitsim.data.score_data import OfficialTask
from splitsim.metrics import accuracy, roc_auc


def to_scores(logits: torch.Tensor, task: OfficialTask) -> torch.Tensor:
    """What leaves N_o: the logits, or a sigmoid per label (multilabel) or a softmax over classes.

    The choice matters for a two-class N_o: its two softmax probabilities sum to one, so N_s
    reads a single number, while its two logits are two (their sum is free of the official task).
    """
    if task.released == "logits":
        return logits
    return torch.sigmoid(logits) if task.kind == "multilabel" else F.softmax(logits, dim=-1)


class ScoreNet(nn.Module):
    """An official network with its output map (``to_scores``)."""

    def __init__(self, body: nn.Module, task: OfficialTask) -> None:
        super().__init__()
        self.body = body
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return to_scores(self.body(x), self.task)


def official_loss(
    logits: torch.Tensor, y: torch.Tensor, kind: str, weight: torch.Tensor
) -> torch.Tensor:
    """Per-input loss times its weight (1, or the paper's Fn/Ln re-weighting), averaged."""
    if kind == "multilabel":
        per_input = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1)
    else:
        per_input = F.cross_entropy(logits, y, reduction="none")
    return (per_input * weight).mean()


def device_of(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def official_predictions(scores: np.ndarray, task: OfficialTask) -> np.ndarray:
    if task.kind == "multiclass":
        return scores.argmax(axis=1)
    return (scores >= (0.0 if task.released == "logits" else 0.5)).astype(np.int64)


def official_quality(scores: np.ndarray, y: np.ndarray, task: OfficialTask) -> dict[str, float]:
    """Accuracy (mean over labels for multilabel tasks) and, per binary label, ROC AUC."""
    pred = official_predictions(scores, task)
    out = {"accuracy": accuracy(pred, y)}
    if task.kind == "multilabel":
        for j, name in enumerate(task.names):
            out[f"{name}_accuracy"] = accuracy(pred[:, j], y[:, j])
            out[f"{name}_auc"] = roc_auc(y[:, j], scores[:, j])
    return out


def secret_input(scores: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    return torch.cat([scores, side], dim=1)


@torch.no_grad()
def predict_scores(net: ScoreNet, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    net.eval()
    dev = device_of(net)
    parts = [
        net.scores(torch.as_tensor(x[i : i + batch]).to(dev)).cpu() for i in range(0, len(x), batch)
    ]
    return torch.cat(parts).numpy()


@torch.no_grad()
def predict_secret(net: nn.Module, scores: np.ndarray, side: np.ndarray) -> np.ndarray:
    net.eval()
    dev = device_of(net)
    features = secret_input(torch.as_tensor(scores), torch.as_tensor(side)).to(dev)
    return net(features).argmax(dim=1).cpu().numpy()
