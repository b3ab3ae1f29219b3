"""Multilayer perceptrons with Glorot-uniform initialisation (hidden-learning paper, section 4).

``secret_mlp`` is the paper's secret network N_s: two hidden ReLU layers of 16 and 32 units.
``health_mlp`` is the official network N_o of the Covid app: an MLP on the encoded health record.

    >>> net = MODELS.get("secret_mlp").build(MODELS.get("secret_mlp").Params(), (10,), 3)
    >>> net(torch.zeros(4, 10)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from splitsim.registry import MODELS


def glorot_(module: nn.Module) -> nn.Module:
    """The paper initialises every network with Glorot uniform weights and zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return glorot_(nn.Sequential(*layers))


class _MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: list[PositiveInt] = Field(min_length=1)


@MODELS.register("secret_mlp")
class SecretMLP:
    """The paper's secret network N_s: an MLP with hidden ReLU layers of 16 and 32 units."""

    class Params(_MLPParams):
        hidden: list[PositiveInt] = Field([16, 32], min_length=1)

    @staticmethod
    def build(params: Params, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
        return mlp(math.prod(input_shape), params.hidden, out_dim)


@MODELS.register("health_mlp")
class HealthMLP:
    """Official network of the Covid app: an MLP from the encoded record to the two logits."""

    class Params(_MLPParams):
        hidden: list[PositiveInt] = Field([32, 32], min_length=1)

    @staticmethod
    def build(params: Params, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
        return mlp(math.prod(input_shape), params.hidden, out_dim)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["glorot_", "mlp", "count_parameters", "torch"]
