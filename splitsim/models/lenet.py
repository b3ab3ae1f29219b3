"""The hidden-learning paper's official network for images (papers/001, section 4.1).

"A convolutional layer with 16 kernels 3x3, stride 1x1, padding of one, and ReLU activation
function; which is followed by 2x2 max pooling; two convolutional layers with 32 kernels, and
otherwise identical to the previous (including the max pooling); a fully connected linear
layer." Glorot-uniform initialisation, as for every network of the paper.

    >>> net = LeNetLike.build(LeNetLike.Params(), (1, 28, 28), 10)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from splitsim.models.mlp import glorot_
from splitsim.registry import MODELS


@MODELS.register("lenet")
class LeNetLike:
    """The paper's LeNet-like official network: conv 16-32-32 (3x3, pad 1), max-pool, linear."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        channels: list[PositiveInt] = Field([16, 32, 32], min_length=1)

    @staticmethod
    def build(params: Params, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for channels in params.channels:
            layers += [
                nn.Conv2d(in_channels, channels, 3, stride=1, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels = channels
            height, width = height // 2, width // 2
        layers += [nn.Flatten(), nn.Linear(in_channels * height * width, out_dim)]
        return glorot_(nn.Sequential(*layers))


__all__ = ["LeNetLike", "torch"]
