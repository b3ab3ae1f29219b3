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

from splitsim.cache_lock import compute_once
from splitsim.inference import CPU_IMAGES
from splitsim.models.split_cnn import ReferenceCNN
from splitsim.runs import write_atomic
from splitsim.threads import one_thread

EPOCHS = 3


def reference_classifier(
    x: np.ndarray, y: np.ndarray, root: str, seed: int, key: str = "mnist"
) -> nn.Module:
    """Train (or load the cached) reference classifier on ``(x, y)``."""
    # "_1t": trained in one thread. Two thread counts train two different networks (a conv's
    # backward sums in another order), and a cache filled by whichever process came first made
    # a run's judge depend on who trained it (a clean CI clone: same-seed runs disagreed).
    path = Path(root) / "splitsim-cache" / f"reference_{key}_n{len(x)}_seed{seed}_1t.pt"
    # cells side by side: one trains, the others wait and read
    return compute_once(path, lambda: _fit(x, y, seed, path), lambda: _load(path, y))


def _load(path: Path, y: np.ndarray) -> nn.Module:
    model = ReferenceCNN(int(y.max()) + 1)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def _fit(x: np.ndarray, y: np.ndarray, seed: int, path: Path) -> nn.Module:
    with one_thread():
        torch.manual_seed(seed)  # before the network is built: its initial weights come from it
        model = ReferenceCNN(int(y.max()) + 1)
        generator = torch.Generator().manual_seed(seed)
        # foreach: the single-tensor loop's arithmetic, bit for bit (measured, as for the
        # decoders in decoding.py), in a few vectorised calls
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
        model.train()
        _train(model, optimizer, torch.from_numpy(x), torch.from_numpy(y), generator)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomic(path, buffer.getvalue())
    return model.eval()


def _train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    xt: torch.Tensor,
    yt: torch.Tensor,
    generator: torch.Generator,
) -> None:
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def predict(model: nn.Module, x: np.ndarray, batch: int = CPU_IMAGES) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch]))))
    return torch.cat(out).argmax(1).numpy()
