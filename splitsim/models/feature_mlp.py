"""The jointly trained model of federated property inference (papers/002, section 3).

An MLP whose last hidden layer is exposed as ``features``: the adversarial participant connects
its property classifier there ("an augmented binary classifier connected to the last layer"),
and the report projects those features (the paper's Figure 3).

    >>> net = MODELS.get("feature_mlp").build(MODELS.get("feature_mlp").Params(), (1, 28, 28), 5)
    >>> net.features(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 64])
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from splitsim.models.mlp import glorot_
from splitsim.registry import MODELS


class FeatureNet(nn.Module):
    """``features`` (flatten, hidden ReLU layers) then ``classifier`` (one linear layer)."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, out_dim)
        self.feature_dim = width
        glorot_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("feature_mlp")
class FeatureMLP:
    """MLP with its last hidden layer exposed, for federated training and property heads."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        hidden: list[PositiveInt] = Field([128, 64], min_length=1)

    @staticmethod
    def build(params: Params, input_shape: tuple[int, ...], out_dim: int) -> FeatureNet:
        return FeatureNet(math.prod(input_shape), list(params.hidden), out_dim)
