"""DP-SGD in a federated participant's local training, through Opacus (Abadi et al. 2016).

Each honest participant trains its local copy with per-example gradients clipped to an L2 norm
``C`` (``max_grad_norm``) and Gaussian noise ``N(0, (sigma C)^2)`` added to their sum before the
step (``noise_multiplier`` = sigma), with Poisson-sampled batches: the standard DP-SGD update
``g = (sum_i clip_C(grad_i) + N(0, sigma^2 C^2 I)) / B``. Opacus (a well-kept PyTorch library)
does the per-example gradients and the RDP accounting; we report the participant's epsilon at
``delta`` over all its rounds. papers/002 asks whether differentially private training stops
models learning unintended properties; this defence measures it.

    >>> DPSGD(DPSGD.Params(noise_multiplier=1.0, max_grad_norm=1.0)).make_private(m, o, loader)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.defences.privacy import accounted
from splitsim.registry import DEFENCES


@DEFENCES.register("dp_sgd")
class DPSGD(Defence):
    """DP-SGD (per-example clipping plus Gaussian noise) in local training, through Opacus."""

    stage = "training"

    class Params(DefenceParams):
        noise_multiplier: float = Field(ge=0, description="sigma: noise std / max_grad_norm")
        max_grad_norm: float = Field(1.0, gt=0, description="C: per-example gradient clip")
        delta: float = Field(1e-5, gt=0, lt=1, description="delta of the reported epsilon")

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise TypeError("dp_sgd changes how a participant trains; it has no values to transform")

    def make_private(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: torch.utils.data.DataLoader,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader]:
        """Opacus' private module, optimiser and Poisson-sampling loader. Randomness comes
        from torch's global generator, which the caller seeds, so runs are repeatable."""
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        return engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.params.noise_multiplier,
            max_grad_norm=self.params.max_grad_norm,
        )

    def budget(self, releases: int, **context: Any) -> dict[str, Any]:
        """``releases``: the participant's local steps over the run; ``sample_rate``: its
        Poisson sampling rate (batch size / records)."""
        p = self.params
        return accounted("DP-SGD (sampled Gaussian)", p.noise_multiplier,
                         float(context["sample_rate"]), releases, p.delta,
                         max_grad_norm=p.max_grad_norm)  # fmt: skip
