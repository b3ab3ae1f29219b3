"""The small ConvNet of Deep Leakage from Gradients, for federated gradient inversion.

Zhu, Liu, Han, *Deep Leakage from Gradients* (NeurIPS 2019), attack "a LeNet variant": three
5x5 convolutions of 12 channels (stride 2, 2, 1), no pooling, and one linear layer. DLG used
sigmoid activations because its L2 gradient-matching loss needs a twice-differentiable network;
Geiping et al., *Inverting Gradients* (NeurIPS 2020), match by cosine similarity and invert ReLU
networks, so ReLU is the default here (``activation: sigmoid`` gives DLG's). No pooling and no
batch norm: a participant's update is then a function of its images alone. On 28x28 inputs the
features are 12 x 7 x 7 = 588.

    >>> net = DLGConvNet.build(DLGConvNet.Params(), (1, 28, 28), 10)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from splitsim.registry import MODELS


@MODELS.register("dlg_cnn")
class DLGConvNet:
    """DLG's LeNet variant: conv 5x5 (stride 2, 2, 1, no pooling), then one linear layer."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        channels: PositiveInt = Field(12, le=256, description="channels of every convolution")
        activation: Literal["relu", "sigmoid"] = "relu"

    @staticmethod
    def build(params: Params, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
        c_in, height, width = input_shape
        act = nn.ReLU if params.activation == "relu" else nn.Sigmoid
        c = params.channels
        layers: list[nn.Module] = []
        for stride in (2, 2, 1):
            layers += [nn.Conv2d(c_in, c, 5, stride=stride, padding=2), act()]
            c_in = c
        side = ((height + 1) // 2 + 1) // 2, ((width + 1) // 2 + 1) // 2
        layers += [nn.Flatten(), nn.Linear(c * side[0] * side[1], out_dim)]
        return nn.Sequential(*layers)


__all__ = ["DLGConvNet", "torch"]
