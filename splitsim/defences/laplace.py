"""Laplace noise on what leaves the data owner (Titcombe et al., papers/003, section 4.1).

The data owner adds noise drawn from Laplace(0, b) to every element of the payload before it
is sent: ``z' = z + n, n ~ Laplace(mu=0, b)``. The paper applies it to the intermediate tensor of
a split network (after training, section 4; with ``during_training: true`` also while
training, Appendix B, Algorithm 1); on the Covid app it noises the two official scores.

    >>> Laplace(Laplace.Params(scale=0.1)).apply(scores, rng)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES


@DEFENCES.register("laplace")
class Laplace(Defence):
    """Laplace(0, b) noise added by the data owner to every element it sends."""

    stage = "payload"

    class Params(DefenceParams):
        scale: float = Field(ge=0, description="b, the Laplace scale")
        during_training: bool = Field(
            False, description="also noise what is sent while training (papers/003, Alg. 1)"
        )

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.params.scale == 0:
            return values
        noise = rng.laplace(0.0, self.params.scale, size=values.shape)
        return (values + noise).astype(values.dtype)
