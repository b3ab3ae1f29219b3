"""Randomised response on the label-change bit (against papers/004's adversary).

The probing adversary learns one bit per query, "did the top-1 class change?" (Moran &
Juvekar, section 3). Warner's randomised response returns the true bit with probability 1 - p
and its negation with probability p (each query independently), so every bisection step is
wrong with probability p and the signature drifts; with p = 0.5 the bit says nothing.

Each answer is ``ln((1 - p) / p)``-differentially private (Dwork & Roth 2014, section 3.2):
0 at p = 0.5, infinite at p = 0; an input that answered ``k`` probes has spent ``k`` times that.

    >>> RandomisedResponse(RandomisedResponse.Params(p=0.1)).apply(bits, rng)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.defences.privacy import INF, pure
from splitsim.registry import DEFENCES


@DEFENCES.register("randomised_response")
class RandomisedResponse(Defence):
    """Flip each returned label-change bit with probability p."""

    stage = "answer"

    class Params(DefenceParams):
        p: float = Field(ge=0, le=0.5, description="probability of flipping each bit")

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = rng.random(values.shape) < self.params.p
        return np.where(flip, 1 - values, values).astype(values.dtype)

    def budget(self, releases: int, **context: Any) -> dict[str, Any]:
        p = self.params.p
        per = INF if p == 0 else math.log((1 - p) / p)
        return pure("randomised response", per, releases, flip_probability=p)
