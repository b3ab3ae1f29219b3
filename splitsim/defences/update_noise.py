"""Noise on the model update a federated participant uploads (client-side, papers/002 setting).

Each honest participant perturbs what leaves it, the update ``u = w_local - w_global`` of one
round, before upload: optionally clipped to an L2 norm ``C`` (``u <- u * min(1, C / ||u||)``),
then ``u' = u + n`` with ``n ~ Laplace(0, b)`` (the Laplace mechanism of papers/003, section 4.1,
applied to the update instead of the intermediate tensor) or ``n ~ N(0, sigma^2)`` (the Gaussian
mechanism of client-level DP-FedAvg, McMahan et al. 2018, which is not one of our papers). The
clip bounds one participant's influence so that the noise scale means something.

Privacy (client level: one participant's whole update added or removed, so the clipped update
has L2 sensitivity ``C``): the Gaussian mechanism's epsilon at ``delta`` over the rounds a
participant uploaded, from Opacus's accountants at sampling rate 1 with noise multiplier
``sigma / C``; the Laplace mechanism's ``sqrt(d) C / b`` per round (an L2 ball of radius ``C`` in
``d`` dimensions has L1 radius ``sqrt(d) C``), composed over the rounds. Without a clip the
sensitivity is unbounded and epsilon infinite.

    >>> UpdateNoise(UpdateNoise.Params(mechanism="gaussian", scale=0.01, clip=1.0)).apply(u, rng)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.defences.privacy import INF, accounted, pure
from splitsim.registry import DEFENCES


@DEFENCES.register("update_noise")
class UpdateNoise(Defence):
    """Laplace or Gaussian noise (after optional L2 clipping) on a participant's uploaded update."""

    stage = "update"

    class Params(DefenceParams):
        mechanism: Literal["laplace", "gaussian"] = "laplace"
        scale: float = Field(ge=0, description="Laplace b or Gaussian sigma, per element")
        clip: float | None = Field(
            None, gt=0, description="L2 norm the whole update is clipped to before noising"
        )
        delta: float = Field(1e-5, gt=0, lt=1, description="delta of the Gaussian's epsilon")

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        out = values.astype(np.float64)
        if p.clip is not None:
            norm = float(np.linalg.norm(out))
            if norm > p.clip:
                out *= p.clip / norm
        if p.scale > 0:
            if p.mechanism == "laplace":
                out += rng.laplace(0.0, p.scale, size=out.shape)
            else:
                out += rng.normal(0.0, p.scale, size=out.shape)
        return out.astype(values.dtype)

    def budget(self, releases: int, **context: Any) -> dict[str, Any]:
        p = self.params
        if p.clip is None:
            return pure(p.mechanism, INF, releases, scale=p.scale,
                        unbounded="no clip: the update's sensitivity is unbounded")  # fmt: skip
        if p.mechanism == "gaussian":
            return accounted("Gaussian", p.scale / p.clip, 1.0, releases, p.delta,
                             sensitivity_l2=p.clip, scale=p.scale)  # fmt: skip
        size = int(context["size"])
        sensitivity = math.sqrt(size) * p.clip
        per = INF if p.scale == 0 else sensitivity / p.scale
        return pure("Laplace", per, releases, sensitivity_l1=sensitivity, scale=p.scale,
                    values=size)  # fmt: skip
