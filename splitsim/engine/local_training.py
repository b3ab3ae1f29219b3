"""One participant's local training in a federated round: plain SGD, multi-task, or DP-SGD.

Honest participants minimise the task loss L(x, y). The adversarial participant of papers/002
(section 3) minimises ``L_mt = alpha * L(x, y) + (1 - alpha) * L(x, p)`` through a property head
on the model's last hidden layer; the head stays on its side, only the shared model is uploaded.
A participant defended by DP-SGD trains through Opacus (defences/dp_sgd.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from splitsim.defences.dp_sgd import DPSGD
from splitsim.engine.resources import release_cuda


@dataclass
class LocalResult:
    steps: int
    sample_rate: float
    loss: float


class _MultiTask(nn.Module):
    """The adversary's local model: the shared network plus its private property head."""

    def __init__(self, net: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net.features(x)
        return self.net.classifier(f), self.head(f)


def train_locally(
    net: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    head: nn.Module | None = None,
    p: np.ndarray | None = None,
    alpha: float = 1.0,
    dp: DPSGD | None = None,
    device: str = "cpu",
) -> LocalResult:
    """Train ``net`` (and ``head``) in place on ``(x, y[, p])``; ``alpha < 1`` needs the head.
    The training runs on ``device``; ``net`` and ``head`` are back on the CPU afterwards."""
    torch.manual_seed(seed)  # batch order and Opacus' sampling and noise
    multitask = alpha < 1.0
    if multitask and (head is None or p is None):
        raise ValueError("the multi-task loss needs a property head and property labels")
    if multitask and dp is not None:
        raise ValueError("DP-SGD is an honest participant's defence; the adversary trains freely")
    tensors = [torch.from_numpy(x), torch.from_numpy(y)]
    if multitask:
        tensors.append(torch.from_numpy(p))
    module: nn.Module = _MultiTask(net, head) if multitask else net
    module.to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    if dp is not None:
        module, optimizer, loader = dp.make_private(module, optimizer, loader)
    module.train()
    steps, total = 0, 0.0
    for _ in range(epochs):
        for batch in loader:
            if len(batch[0]) == 0:  # Poisson sampling can draw an empty batch
                continue
            batch = [t.to(device) for t in batch]
            if multitask:
                bx, by, bp = batch
                task_logits, prop_logits = module(bx)
                loss = alpha * F.cross_entropy(task_logits, by) + (1 - alpha) * F.cross_entropy(
                    prop_logits, bp
                )
            else:
                bx, by = batch
                loss = F.cross_entropy(module(bx), by)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            total += float(loss.detach())
    module.cpu().eval()
    release_cuda(device)
    return LocalResult(steps=steps, sample_rate=batch_size / len(x), loss=total / max(steps, 1))


def flat_parameters(net: nn.Module) -> np.ndarray:
    return np.concatenate([t.detach().cpu().numpy().ravel() for t in net.state_dict().values()])


def load_flat(net: nn.Module, flat: np.ndarray) -> None:
    state = net.state_dict()
    offset = 0
    with torch.no_grad():
        for value in state.values():
            n = value.numel()
            value.copy_(torch.from_numpy(flat[offset : offset + n].reshape(value.shape)))
            offset += n
