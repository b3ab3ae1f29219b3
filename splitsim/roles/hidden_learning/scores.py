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
from splitsim.inference import images_per_pass
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


def predictive(logits: torch.Tensor, task: OfficialTask) -> torch.Tensor:
    """The distribution N_o predicts, whatever it releases: a probability per label
    (multilabel) or over the classes (multiclass). Works on (..., k_o) logits."""
    return torch.sigmoid(logits) if task.kind == "multilabel" else F.softmax(logits, dim=-1)


def divergence(logits: torch.Tensor, reference: torch.Tensor, task: OfficialTask) -> torch.Tensor:
    """KL(reference || N_o's prediction) per input: (..., k_o) logits and reference
    probabilities -> (...). Per-label binary KL averaged over labels (multilabel), the
    categorical KL otherwise; 0 exactly where the two predictions agree.

    The stealthy supplier's closeness penalty D. Why KL and not a squared error between
    released scores: an auditor who holds both networks tells them apart at best by the
    likelihood ratio of their predictions, and KL is its expectation (Neyman-Pearson;
    Pinsker bounds the total variation by it); it also weighs a shift near 0 or 1, where
    ranking quality (AUC) is decided, more than the same shift near 0.5, while a squared
    error between probabilities hardly sees it. Its gradient is distillation's
    (cross-entropy on the reference's soft labels): the entropy term is a constant.
    """
    if task.kind == "multilabel":
        cross = F.binary_cross_entropy_with_logits(logits, reference, reduction="none")
        entropy = -(torch.xlogy(reference, reference) + torch.xlogy(1 - reference, 1 - reference))
        return (cross - entropy).mean(-1)
    log_p = F.log_softmax(logits, dim=-1)
    return (torch.xlogy(reference, reference) - reference * log_p).sum(-1)


@torch.no_grad()
def reference_predictions(net: ScoreNet, x: np.ndarray, task: OfficialTask) -> torch.Tensor:
    """The honest network's predictive distribution on ``x`` (``predictive``), computed once
    before the stealthy N_o trains against it: (n, k_o), on the network's device."""
    net.eval()
    dev = device_of(net)
    batch = inference_batch(x, dev)
    return torch.cat(
        [
            predictive(net(torch.as_tensor(x[i : i + batch]).to(dev)), task)
            for i in range(0, len(x), batch)
        ]
    )


def check_stealth(secret_weight: float, closeness: float) -> None:
    """The stealthy supplier's weights (``attack`` module docstring) are both >= 0."""
    if not (secret_weight >= 0 and closeness >= 0):  # NaN fails too
        raise ValueError(
            f"secret_weight and closeness must be >= 0, got {secret_weight} and {closeness}"
        )


def scale_gradient(x: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """``x`` unchanged going forward (bit for bit: x - x is exactly 0), ``weight`` times the
    gradient going back: N_o sees ``weight * L_s`` while N_s still learns from all of L_s."""
    frozen = x.detach()
    return frozen + weight * (x - frozen)


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


def inference_batch(x: np.ndarray, device: torch.device) -> int:
    """Images on the CPU: splitsim/inference.py; tabular rows and accelerators: 4,096."""
    return images_per_pass(device, 4096) if x.ndim > 2 else 4096


@torch.no_grad()
def predict_scores(net: ScoreNet, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    net.eval()
    dev = device_of(net)
    batch = batch or inference_batch(x, dev)
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
