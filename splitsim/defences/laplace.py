"""Laplace noise on what leaves the data owner (Titcombe et al., papers/003, section 4.1).

The data owner adds noise drawn from Laplace(0, b) to every element of the payload before it
is sent: ``z' = z + n, n ~ Laplace(mu=0, b)``. The paper applies it to the intermediate tensor of
a split network (after training, section 4; with ``during_training: true`` also while
training, Appendix B, Algorithm 1); on the Covid app it noises the two official scores.

With ``clip: c`` each record's payload (a row: one phone's scores, one image's tensor) is first
scaled to an L1 norm of at most ``c``, so two payloads of a record differ by at most ``2c`` in
L1 and each release is ``2c / b``-differentially private (the Laplace mechanism, Dwork & Roth
2014, Thm 3.6; local DP, neighbouring = any two values of one record). Without it the paper's
noise has no finite epsilon, and the run reports it so.

    >>> Laplace(Laplace.Params(scale=0.1)).apply(scores, rng)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.defences.privacy import INF, pure
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
        clip: float | None = Field(
            None, gt=0, description="L1 norm each record's payload is scaled to first (for DP)"
        )

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.params.clip is not None:
            values = clip_rows(values, self.params.clip)
        if self.params.scale == 0:
            return values
        noise = rng.laplace(0.0, self.params.scale, size=values.shape)
        return (values + noise).astype(values.dtype)

    def budget(self, releases: int, **context: Any) -> dict[str, Any]:
        p = self.params
        if p.clip is None:
            return pure("Laplace", INF, releases, sensitivity_l1=INF, scale=p.scale,
                        unbounded="no clip: the payload's sensitivity is unbounded")  # fmt: skip
        per = INF if p.scale == 0 else 2 * p.clip / p.scale
        return pure("Laplace", per, releases, sensitivity_l1=2 * p.clip, scale=p.scale)


def clip_rows(values: np.ndarray, bound: float) -> np.ndarray:
    """Each record's values (a row of ``values``; a 1-D array is one record) scaled down to an
    L1 norm of at most ``bound``."""
    rows = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(1, -1)
    norms = np.abs(rows).sum(axis=1, keepdims=True)
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-30))
    return (rows * scale).reshape(values.shape).astype(values.dtype)
