"""Rounding of the scores before they leave the data owner (output truncation).

The hidden-learning paper (papers/001, footnote 5) expects its framework to survive output
truncation; this defence lets a user measure it: ``s' = round(s, decimals)``.

    >>> Rounding(Rounding.Params(decimals=1)).apply(scores, rng)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES


@DEFENCES.register("rounding")
class Rounding(Defence):
    """Round every element the data owner sends to a number of decimals."""

    stage = "payload"

    class Params(DefenceParams):
        decimals: int = Field(ge=0, le=12, description="decimals kept (float32 holds about 7)")

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.round(values, self.params.decimals).astype(values.dtype)
