"""NoPeek: the data owner minimises distance correlation between its inputs and what it sends.

Vepakomma et al., *Reducing leakage in distributed deep learning for sensitive health data*
(2019), as used by Titcombe et al. (papers/003, section 2.2 and Appendix B, Algorithm 1): the
data owner's loss becomes ``L_task + alpha * DCor(X, Z)`` with ``Z = f1(X)`` the intermediate
tensor of the batch. ``DCor`` follows the paper's published implementation: double-centred
matrices of *squared* Euclidean distances (``dcor``'s ``exponent=2``),
``DCor(X, Z) = sqrt(sum(A * B)) / (sum(A^2) * sum(B^2)) ** (1/4)``. It is
``splitsim.metrics.distance_correlation``, in torch because the ``dcor`` package is not
differentiable; tests check it against ``dcor``.

    >>> NoPeek(NoPeek.Params(alpha=0.1)).loss(x, z)   # add to the data owner's loss
"""

from __future__ import annotations

import torch
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.metrics import distance_correlation
from splitsim.registry import DEFENCES


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
