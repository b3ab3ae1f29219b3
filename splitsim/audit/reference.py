"""The honest reference: what a supplier with no hidden task would have shipped.

The auditor trains it on its own records for the official task alone, with the loss of the
hidden-learning paper's honest regime To (papers/001, section 4.1: cross-entropy on N_o(x),
Adam, the epoch with the best held-out official accuracy kept).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from splitsim import seeds
from splitsim.audit.data import AuditData
from splitsim.threads import one_thread


def official_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy(logits, y)


@torch.no_grad()
def official_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> float:
    net.eval()
    logits = torch.cat([net(x[i : i + 2048]) for i in range(0, len(x), 2048)])
    pred = (logits >= 0).long() if kind == "multilabel" else logits.argmax(1)
    return float((pred == y).float().mean())


def train_reference(
    build: Callable[[], nn.Module],
    data: AuditData,
    *,
    seed: int,
    index: int,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    validation_fraction: float = 0.1,
) -> nn.Module:
    """One honest network on ``data``'s official labels; ``index`` tells references apart."""
    torch.manual_seed(seeds.int_seed(seed, "audit.reference_init", index))
    net = build()
    order = seeds.rng(seed, "audit.reference_batches", index).permutation(len(data))
    n_val = max(1, int(round(validation_fraction * len(data))))
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.official)
    val, train = order[:n_val], order[n_val:]
    generator = torch.Generator().manual_seed(
        seeds.int_seed(seed, "audit.reference_batches", index)
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    best, best_state = -np.inf, copy.deepcopy(net.state_dict())
    train_t = torch.as_tensor(train)
    with one_thread():  # a small network's step is dispatch-bound; threads only contend
        for _ in range(epochs):
            net.train()
            perm = train_t[torch.randperm(len(train_t), generator=generator)]
            for start in range(0, len(perm), batch_size):
                idx = perm[start : start + batch_size]
                loss = official_loss(net(x[idx]), y[idx], data.kind)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            score = official_accuracy(net, x[val], y[val], data.kind)
            if score > best:
                best, best_state = score, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net.eval()
