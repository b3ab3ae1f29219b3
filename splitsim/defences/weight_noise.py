"""Gaussian noise on the received weights (hidden-learning paper, papers/001, Table 2).

The paper's robustness experiment adds N(0, sigma^2) noise "to each weight of the official
network"; as a defence, each data owner perturbs its own copy once, on installation, so the
secret network no longer matches exactly: ``w' = w + n, n ~ N(0, sigma^2)`` for every weight
and bias.

    >>> WeightNoise(WeightNoise.Params(sigma=0.05)).apply(weight, rng)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES


@DEFENCES.register("weight_noise")
class WeightNoise(Defence):
    """Gaussian N(0, sigma^2) noise on every weight of the model the data owner received."""

    stage = "weights"

    class Params(DefenceParams):
        sigma: float = Field(ge=0, description="standard deviation of the weight noise")

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.params.sigma == 0:
            return values
        return (values + rng.normal(0.0, self.params.sigma, size=values.shape)).astype(values.dtype)
