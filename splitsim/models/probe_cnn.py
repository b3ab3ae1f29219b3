"""The served MNIST classifier and the signature decoder of Moran & Juvekar (papers/004).

The paper serves "a convolutional neural network" on MNIST without fixing it; we serve a small
two-convolution CNN (conv 8 - pool - conv 16 - pool - linear, about 97 % on the test set),
cheap enough that the signature search, millions of forward passes, runs on a laptop.

The decoder is "a variant of the generator architecture from [DCGAN], in which the input vector
is projected into a tensor with small spatial extent, which is then upsampled and refined into a
full-resolution image using convolution transpose layers": signature (100) -> linear to
128 x 7 x 7 -> transposed conv to 64 x 14 x 14 -> transposed conv to 1 x 28 x 28, batch norm and
ReLU between, a sigmoid at the end (pixels in [0, 1]).

    >>> net = ProbeCNN.build(ProbeCNN.Params(), (1, 28, 28), 10)
    >>> SignatureDecoder(100)(torch.zeros(2, 100)).shape
    torch.Size([2, 1, 28, 28])
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from splitsim.registry import MODELS


@MODELS.register("probe_cnn")
class ProbeCNN:
    """The model served to data owners: conv 8 - pool - conv 16 - pool - linear (MNIST)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        channels: list[PositiveInt] = Field([8, 16], min_length=2, max_length=2)

    @staticmethod
    def build(params: Params, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
        c_in, height, width = input_shape
        c1, c2 = params.channels
        return nn.Sequential(
            nn.Conv2d(c_in, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (height // 4) * (width // 4), out_dim),
        )


class SignatureDecoder(nn.Module):
    """Signature E_x -> image: DCGAN-style generator (project, then upsample twice)."""

    def __init__(self, signature: int, image_shape: tuple[int, int, int] = (1, 28, 28)) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.seed_shape = (128, height // 4, width // 4)
        self.project = nn.Sequential(
            nn.Linear(signature, 128 * (height // 4) * (width // 4)),
            nn.BatchNorm1d(128 * (height // 4) * (width // 4)),
            nn.ReLU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.up(self.project(e).view(-1, *self.seed_shape))
