"""NoPeek: the data owner minimises distance correlation between its inputs and what it sends.

Vepakomma et al., *Reducing leakage in distributed deep learning for sensitive health data*
(2019), as used by Titcombe et al. (papers/003, section 2.2 and Appendix B, Algorithm 1): the
data owner's loss becomes ``L_task + alpha * DCor(X, Z)`` with ``Z = f1(X)`` the intermediate
tensor of the batch. ``DCor`` follows the paper's published implementation: double-centred
matrices of *squared* Euclidean distances (``dcor``'s ``exponent=2``),
``DCor(X, Z) = sqrt(sum(A * B)) / (sum(A^2) * sum(B^2)) ** (1/4)``. It is written here in torch
because the ``dcor`` package is not differentiable; tests check it against ``dcor``.

    >>> NoPeek(NoPeek.Params(alpha=0.1)).loss(x, z)   # add to the data owner's loss
"""

from __future__ import annotations

import torch
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES


def _centred(values: torch.Tensor, exponent: float) -> torch.Tensor:
    flat = values.reshape(len(values), -1)
    sq = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(-1)
    # sqrt has an infinite gradient at 0 (the diagonal): only take it when asked for.
    dist = sq if exponent == 2 else (sq + 1e-12).pow(exponent / 2)
    return dist - dist.mean(0, keepdim=True) - dist.mean(1, keepdim=True) + dist.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor, exponent: float = 2.0) -> torch.Tensor:
    """Sample distance correlation of two batches (V-statistic), differentiable."""
    a, b = _centred(x, exponent), _centred(z, exponent)
    dcov2 = (a * b).mean().clamp_min(0)
    dvar2 = (a * a).mean() * (b * b).mean()
    return (dcov2 / dvar2.sqrt().clamp_min(1e-12)).sqrt()


@DEFENCES.register("nopeek")
class NoPeek(Defence):
    """NoPeek: alpha * distance correlation(inputs, intermediate) added to the owner's loss."""

    stage = "loss"

    class Params(DefenceParams):
        alpha: float = Field(ge=0, description="weight of the distance-correlation term")

    def loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.params.alpha == 0:
            return z.new_zeros(())
        return self.params.alpha * distance_correlation(x, z)
