"""Isotropic Gaussian noise on the gradient the label holder returns (Li et al., ICLR 2022).

Li, Sun, Yang, Gao, Zhang, Xie, Smith, Wang, *Label Leakage and Protection in Two-party Split
Learning* (ICLR 2022), section 6, the ``iso`` baseline that Marvell is compared with: to each
example's cut-layer gradient ``g_i`` of a batch the server adds ``n_i ~ N(0, sigma^2 I_d)`` with
``sigma = ratio * max_j ||g_j||_2 / sqrt(d)``, so that the expected noise norm is ``ratio`` times
the batch's largest gradient norm. It does not use the labels. It is not a differential-privacy
mechanism (its scale follows the data), so it has no epsilon.

    >>> GradientNoise(GradientNoise.Params(ratio=1.0)).protect(g, y, rng)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from splitsim.defences.base import DefenceParams, GradientDefence
from splitsim.registry import DEFENCES


@DEFENCES.register("gradient_noise")
class GradientNoise(GradientDefence):
    """N(0, (ratio * max norm)^2 / d I) on every returned gradient (Li et al.'s iso)."""

    class Params(DefenceParams):
        ratio: float = Field(
            ge=0, le=1000, description="noise norm as a multiple of the batch's largest gradient"
        )

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._sigmas: list[float] = []
        self._dim = 0

    def protect(self, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flat = g.reshape(len(g), -1).astype(np.float64)
        sigma = (
            self.params.ratio * float(np.linalg.norm(flat, axis=1).max()) / math.sqrt(flat.shape[1])
        )
        self._sigmas.append(sigma)
        self._dim = flat.shape[1]
        return (flat + rng.normal(0.0, 1.0, flat.shape) * sigma).astype(g.dtype).reshape(g.shape)

    def summary(self) -> dict[str, Any]:
        s = np.asarray(self._sigmas)
        return {
            "batches": len(s),
            "mean_sigma": float(s.mean()) if len(s) else 0.0,
            # per example, as Marvell's mean_power: the two defences' noise compares directly
            # expected ||noise||^2 per example
            "mean_power": float((s**2).mean() * self._dim) if len(s) else 0.0,
        }
