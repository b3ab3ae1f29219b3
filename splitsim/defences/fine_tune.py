"""Fine-tuning before release: the data owner retrains the model on its own data, with its own
code, before it publishes or serves it.

Song, Ristenpart, Shmatikov (*Machine Learning Models that Remember Too Much*, CCS 2017,
section 7) discuss it among the countermeasures a data owner can take without trusting the
supplier's training code: what the code made the model remember is not part of the task, so
further training on the task alone may overwrite it. Here the owner that releases the model runs
``epochs`` epochs of plain cross-entropy on its own training images (Adam, ``lr``,
``batch_size``): ``theta' = argmin_theta L(x, y)`` started from the trained ``theta``.

    >>> FineTune(FineTune.Params(epochs=2)).fine_tune(net, x, y, seed=0)
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES


@DEFENCES.register("fine_tune")
class FineTune(Defence):
    """Retrain the model on the owner's own images with honest code before releasing it."""

    stage = "release"

    class Params(DefenceParams):
        epochs: int = Field(ge=1, le=1000, description="epochs on the owner's own images")
        lr: float = Field(1e-3, gt=0, le=10, description="Adam's learning rate")
        batch_size: int = Field(64, ge=1, le=100_000)

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise TypeError("fine-tuning trains a model on data; use fine_tune()")

    def fine_tune(self, net: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        """Train ``net`` in place on ``(x, y)``."""
        p = self.params
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        optimiser = torch.optim.Adam(net.parameters(), lr=p.lr)
        net.train()
        for _ in range(p.epochs):
            order = torch.randperm(len(xs), generator=generator)
            for s in range(0, len(order), p.batch_size):
                idx = order[s : s + p.batch_size]
                loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        net.eval()
