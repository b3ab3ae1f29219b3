"""The split MNIST classifier and the inversion decoder of Titcombe et al. (papers/003, App. D).

The paper trains "a simple convolutional neural network" and an attack model "with similar size
and architecture". Its published code fixes both; we follow it:

- data owner segment f1: conv 32 (3x3) - ReLU - conv 64 (3x3) - ReLU - 2x2 max-pool - linear to
  500 - tanh (bounded, so that Laplace noise of a fixed scale means the same everywhere);
- computational server segment f2: linear 500 -> 128 - ReLU - linear -> 10 (logits);
- ``cut: conv`` instead ends f1 after the pooling and sends its feature map (channels x 12 x 12,
  flattened): a spatial cut, like the convolutional client networks of Pasquini et al. (CCS
  2021), whose hijacking attack needs one (docs/split_hijacking.md); f2 is then linear from the
  feature map to ``server_hidden`` - ReLU - linear to the classes;
- decoder: linear 500 -> 64x12x12, then four transposed convolutions back to 1x28x28. The
  published decoder (``paper``) has no non-linearity between them; ``deep`` puts a ReLU between
  them and a sigmoid at the end. On MNIST both reconstruct undefended tensors equally well, but
  ``deep`` sees better through Laplace noise it was not trained on (a stronger attacker).

    >>> parts = SplitCNN.build(SplitCNN.Params(), (1, 28, 28), 10)
    >>> parts.client(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 500])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from splitsim.registry import MODELS


@dataclass
class SplitParts:
    client: nn.Module
    server: nn.Module


class Standardise(nn.Module):
    """Fixed input scaling, as the paper's code feeds MNIST (mean 0.1307, std 0.3081)."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@MODELS.register("split_cnn")
class SplitCNN:
    """The split classifier of papers/003: conv 32-64, pool, linear 500 (tanh) | 128 | classes."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        channels: list[PositiveInt] = Field([32, 64], min_length=1)
        intermediate: PositiveInt = Field(500, description="width of the tensor that is sent")
        server_hidden: PositiveInt = 128
        input_mean: float = 0.1307
        input_std: float = Field(0.3081, gt=0)
        cut: Literal["linear", "conv"] = Field(
            "linear", description="linear: f1 ends linear-tanh (papers/003); conv: a feature map"
        )

    @staticmethod
    def build(params: Params, input_shape: tuple[int, ...], out_dim: int) -> SplitParts:
        in_channels, height, width = input_shape
        layers: list[nn.Module] = [Standardise(params.input_mean, params.input_std)]
        for channels in params.channels:
            layers += [nn.Conv2d(in_channels, channels, 3), nn.ReLU()]
            in_channels, height, width = channels, height - 2, width - 2
        layers += [nn.MaxPool2d(2), nn.Flatten()]
        flat = in_channels * (height // 2) * (width // 2)
        if params.cut == "linear":
            layers += [nn.Linear(flat, params.intermediate), nn.Tanh()]
        server = nn.Sequential(
            nn.Linear(sent_width(params), params.server_hidden),
            nn.ReLU(),
            nn.Linear(params.server_hidden, out_dim),
        )
        return SplitParts(client=nn.Sequential(*layers), server=server)


def feature_map(params: SplitCNN.Params) -> tuple[int, int, int]:
    """``cut: conv``: the shape of the feature map f1 sends (flattened) for 28x28 images."""
    side = (28 - 2 * len(params.channels)) // 2
    return params.channels[-1], side, side


def sent_width(params: SplitCNN.Params) -> int:
    """How many numbers f1 sends per image."""
    if params.cut == "linear":
        return params.intermediate
    channels, height, width = feature_map(params)
    return channels * height * width


def decoder_for(params: SplitCNN.Params, deep: bool) -> nn.Module:
    """The attacker's decoder for what this split sends: papers/003's attack model for the
    linear cut, a transposed-convolution decoder for the feature map of the conv cut."""
    if params.cut == "linear":
        return InversionDecoder(params.intermediate, (1, 28, 28), deep)
    return FeatureMapDecoder(feature_map(params))


class FeatureMapDecoder(nn.Module):
    """Feature map (flattened) -> image: 2x upsampling by a transposed convolution, then
    transposed convolutions back to 1x28x28 and a sigmoid (pixels in [0, 1])."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape
        channels, side, _ = shape
        grown = 2 * side  # after the 2x upsampling
        layers: list[nn.Module] = [nn.ConvTranspose2d(channels, 32, 2, stride=2)]
        steps = (28 - grown) // 2  # each 3x3 transposed convolution adds 2 pixels
        widths = ([32] * max(0, steps - 2) + [16, 1])[-steps:]
        previous = 32
        for width in widths:
            layers += [nn.ReLU(), nn.ConvTranspose2d(previous, width, 3)]
            previous = width
        layers.append(nn.Sigmoid())
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z.view(-1, *self.shape))


class InversionDecoder(nn.Module):
    """Intermediate tensor -> image, the attack model of papers/003 (code: ConvAttackModel)."""

    def __init__(self, intermediate: int, image_shape: tuple[int, int, int], deep: bool) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.seed_shape = (64, (height - 4) // 2, (width - 4) // 2)
        self.project = nn.Linear(intermediate, 64 * self.seed_shape[1] * self.seed_shape[2])
        convs = [
            nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1),
            nn.ConvTranspose2d(64, 32, 3, padding=1),
            nn.ConvTranspose2d(32, 8, 3),
            nn.ConvTranspose2d(8, channels, 3),
        ]
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [nn.ReLU(), conv] if deep else [conv]
        if deep:
            layers.append(nn.Sigmoid())
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(self.project(z).view(-1, *self.seed_shape))


class ReferenceCNN(nn.Module):
    """An independent MNIST classifier that scores reconstructions ("is it still a 7?")."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
