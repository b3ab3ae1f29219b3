"""Distillation by the data owner: it never runs the supplied model on what it releases.

Hinton, Vinyals, Dean (*Distilling the Knowledge in a Neural Network*, NIPS Deep Learning
Workshop 2015, section 2) train a fresh network on a trained one's outputs for a transfer set;
here the hard-label variant (their temperature T -> 0, targets the teacher's top-1 answers,
the "correct labels" term of their objective without the soft one). On receiving N_o the data
owner labels its own users' records, which it holds without labels, with N_o's answers:

    y_hat(x) = argmax_j N_o(x)_j            (multiclass)
    y_hat(x)_j = [N_o(x)_j >= 0.5]          (multilabel: one decision per label)

and trains a network of the same architecture from its own random initialisation on
``(x, y_hat(x))`` with cross-entropy (binary cross-entropy per label for a multilabel task),
Adam, ``epochs`` passes. From then on it runs only that network; N_o's scores never leave.

Why it should strip a hidden channel (papers/001): the secret lives in where N_o puts its
scores inside a decision region, which y_hat discards; everything the fresh network knows of
N_o went through y_hat, so its scores carry at most what the official answers carry, plus what
any network trained on these inputs for this task would say about them. The price: the fresh
network learns the task from the owner's few records only, and agrees with N_o less on others.

    >>> distil = Distillation(Distillation.Params(epochs=50)).distil
    >>> student = distil(n_o, build, x, "multilabel", seed=1)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES
from splitsim.threads import one_thread


def top1(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The official answers a network's logits give: a class (multiclass), or a 0/1 per label
    (multilabel, sigmoid >= 0.5, i.e. logit >= 0)."""
    if kind == "multilabel":
        return (logits >= 0).float()
    return logits.argmax(dim=-1)


@DEFENCES.register("distillation")
class Distillation(Defence):
    """Run a fresh network trained on the received model's answers for the owner's inputs."""

    stage = "model"

    class Params(DefenceParams):
        epochs: int = Field(100, ge=1, le=10_000, description="passes over the owner's records")
        lr: float = Field(1e-3, gt=0, le=10, description="Adam's learning rate")
        batch_size: int = Field(32, ge=1, le=100_000)

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise TypeError("distillation trains a network on the owner's inputs; use distil()")

    def distil(
        self,
        teacher: nn.Module,
        build: Callable[[], nn.Module],
        x: np.ndarray,
        kind: str,
        seed: int,
    ) -> nn.Module:
        """A network from ``build()`` (initialised from ``seed``) trained on ``teacher``'s
        top-1 answers for ``x``; both networks map inputs to logits."""
        p = self.params
        dev = next(teacher.parameters()).device
        xs = torch.as_tensor(x).to(dev)
        teacher.eval()
        with torch.no_grad():
            targets = top1(teacher(xs), kind)
        with torch.random.fork_rng(devices=[]):  # the owner's own seed, and no one else's
            torch.manual_seed(seed)
            student = build().to(dev)
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(student.parameters(), lr=p.lr)
        student.train()
        # batches of a few dozen records: on a busy 2-core machine two intra-op threads made
        # one owner's distillation 12x slower (7.0 s against 0.58 s)
        with one_thread():
            self._fit(student, optimiser, xs, targets, kind, generator)
        student.eval()
        return student

    def _fit(
        self,
        student: nn.Module,
        optimiser: torch.optim.Optimizer,
        xs: torch.Tensor,
        targets: torch.Tensor,
        kind: str,
        generator: torch.Generator,
    ) -> None:
        p = self.params
        dev = xs.device
        for _ in range(p.epochs):
            order = torch.randperm(len(xs), generator=generator).to(dev)
            for start in range(0, len(order), p.batch_size):
                idx = order[start : start + p.batch_size]
                logits = student(xs[idx])
                if kind == "multilabel":
                    loss = F.binary_cross_entropy_with_logits(logits, targets[idx])
                else:
                    loss = F.cross_entropy(logits, targets[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
