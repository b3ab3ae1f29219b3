"""An independent MNIST classifier that says whether a reconstruction is still recognisable.

"Attack success as a number a reader understands": the accuracy of a classifier that neither
the data owners nor the attacker trained, on the attacker's reconstructions. It is trained on
MNIST training images 50,000-60,000, which no other part of a run touches (data/mnist.py), for
a few epochs (about 98-99 % on the test set), and cached under ``<root>/splitsim-cache`` so
every run with the same seed scores reconstructions with the same judge.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitsim.models.split_cnn import ReferenceCNN
from splitsim.runs import write_atomic

EPOCHS = 3


def reference_classifier(
    x: np.ndarray, y: np.ndarray, root: str, seed: int, key: str = "mnist"
) -> nn.Module:
    """Train (or load the cached) reference classifier on ``(x, y)``."""
    path = Path(root) / "splitsim-cache" / f"reference_{key}_n{len(x)}_seed{seed}.pt"
    model = ReferenceCNN(int(y.max()) + 1)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomic(path, buffer.getvalue())  # matrix cells side by side share this cache
    return model.eval()


def predict(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch]))))
    return torch.cat(out).argmax(1).numpy()
