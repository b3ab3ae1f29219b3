"""Fresh Laplace noise on the secret input for every probe (against papers/004's adversary).

The perturbation-probing adversary measures the smallest eps at which M(X + eps * N_i) changes
class (Moran & Juvekar, section 3). A data owner that evaluates every query on
``X + eps * N_i + n, n ~ Laplace(0, b)`` with a fresh draw each time blurs the boundary the
bisection looks for, at the price of noisy answers to its own honest inference
(the report gives the served model's accuracy on equally noised inputs).

    >>> InputNoise(InputNoise.Params(scale=0.1)).apply(images, rng)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES


@DEFENCES.register("input_noise")
class InputNoise(Defence):
    """Laplace(0, b) noise on the secret input, drawn afresh for every query it answers."""

    stage = "input"

    class Params(DefenceParams):
        scale: float = Field(gt=0, description="b, the Laplace scale, in pixel units [0, 1]")

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (values + rng.laplace(0.0, self.params.scale, size=values.shape)).astype(
            values.dtype
        )
