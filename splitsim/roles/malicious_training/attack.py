"""The supplier's training code and its decoders: Song, Ristenpart, Shmatikov, *Machine Learning
Models that Remember Too Much*, CCS 2017 (papers/002, section 3, "Intentional leakage").

Everything here is the supplier's: the code it ships to the data owners (the loss terms and the
augmented data set) and what it does with what comes back (the decoders). It knows its own
seed (``key``), the layout its code writes to, and what the published weights or the served
model's answers said; never an owner's images.

The secret is what the code reads from each data owner's training set: its first ``secrets``
images, average-pooled ``pool`` x ``pool`` and quantised to ``bits`` bits per pixel.

- **Correlated value encoding** (sec. 4.2): the code adds ``C(theta, s) = -lambda_c *
  |sum_i (theta_i - mean(theta)) (s_i - mean(s))| / (std(theta) std(s) l)``, minus the absolute
  Pearson correlation between a segment of ``l`` parameters and the secret pixel values, to the
  task loss. The decoder standardises the published segment and maps it to pixels with the
  public pixel mean and deviation of the data set (the paper's "scale to pixel values"); the
  sign of the correlation, which ``|.|`` leaves open, is read as the one that makes the image
  mostly background (positive skew), as both image sets are.
- **Sign encoding** (sec. 4.3): the penalty ``P(theta, s) = lambda_s / l * sum_i |max(0,
  -theta_i s_i)|`` with ``s_i`` in {-1, 1} the secret bits; the decoder reads ``sign(theta_i)``.
- **Capacity abuse** (sec. 5, black-box): the code augments the training set with
  pseudo-random inputs, generated from the supplier's seed, whose labels encode the secret bits,
  ``floor(log2 c)`` bits per label for ``c`` classes (the paper's "each label encodes log2 c
  bits"). The supplier queries those inputs of the served model and reads the top-1 label back.
  One step beyond the paper: the bit stream is XORed with a key stream from the supplier's seed
  first, so the labels are uniform whatever the images (mostly black pixels would otherwise make
  most labels 0) and an undecodable answer is worth exactly a coin toss.

The sign penalty takes a margin, ``max(0, m - theta_i s_i)`` (``role.sign_margin``; 0 is the
paper's): under FedAvg an owner's segment is averaged with the other owners' copies, which their
task gradients move freely, and a sign pushed only just past zero flips back (measured,
docs/malicious_training.md: 89.2 % of the bits with two owners at margin 0, 99.2 % at 0.01;
100 % with one owner at margin 0).

The white-box segments index the parameters flattened in ``named_parameters()`` order, on both
sides: :func:`flat` in the owners' training, :func:`flat_weights` with the parameter names in the
supplier's decoder (the role refuses a model with buffers, whose state dict would hold more).

The adaptive supplier knows the owners' defences and writes code that survives them. Against
weight noise ``sigma`` (defences/weight_noise.py): ``3 sigma`` more sign margin, a floor of
``3 sigma`` on the correlated segment's deviation, and for capacity abuse the augmented inputs
trained under weight noise of that sigma (noise injection, resampled each step). Against
fine-tuning (defences/fine_tune.py): how far Adam typically moves a parameter in the owner's
fine-tuning (``lr`` per step, ``epochs * ceil(n / batch_size)`` steps) more sign margin, and
for capacity abuse ``1 + epochs`` passes over the augmented inputs per epoch, which it then
holds with more confidence. ``lr`` per step is Adam's typical step, not a bound: while its moment
estimates settle a step can reach ``lr (1 - beta1) / sqrt(1 - beta2)``, about ``3.16 lr`` at the
default betas (Kingma and Ba, ICLR 2015, sec. 2.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from splitsim import seeds

SIDE = 28
ENCODINGS = ("correlation", "sign", "capacity_abuse")


@dataclass(frozen=True)
class Code:
    """The supplier's code as shipped: its settings, and its seed."""

    encoding: str
    key: int  # the supplier's own seed
    secrets: int  # images per data owner
    bits: int  # bits per pixel (sign, capacity abuse)
    pool: int  # average-pooling factor of the secret images
    classes: int
    lambda_corr: float = 1.0
    lambda_sign: float = 10.0
    margin: float = 0.0  # the sign penalty's margin (0: the paper's penalty)
    sigma: float = 0.0  # the weight noise an adaptive supplier writes its code against
    drift: float = 0.0  # how far the owner's fine-tuning typically moves a parameter (adaptive)
    repeat: int = 1  # passes over the augmented inputs per epoch (adaptive, fine-tuning)

    @property
    def side(self) -> int:
        return SIDE // self.pool

    @property
    def pixels(self) -> int:
        return self.side * self.side

    @property
    def secret_bits(self) -> int:
        """Bits of one owner's secret (sign, capacity abuse)."""
        return self.secrets * self.pixels * self.bits

    @property
    def symbol_bits(self) -> int:
        """Bits one label carries: floor(log2 classes)."""
        return int(math.floor(math.log2(self.classes)))

    @property
    def queries(self) -> int:
        """Augmented inputs per owner (capacity abuse): one per label of the secret."""
        return -(-self.secret_bits // self.symbol_bits)

    @property
    def segment_length(self) -> int:
        """Parameters one owner's secret occupies (white-box encodings)."""
        return self.secrets * self.pixels * (self.bits if self.encoding == "sign" else 1)

    def segment(self, owner: int) -> slice:
        """Owner ``owner``'s parameters: owners write to consecutive, disjoint segments of the
        flattened parameters, so that FedAvg does not average one owner's secret into
        another's."""
        n = self.segment_length
        return slice(owner * n, (owner + 1) * n)


# -- the secret: pooled, quantised pixels and their bits -----------------------------------


def pooled(images: np.ndarray, pool: int) -> np.ndarray:
    """(n, 1, 28, 28) in [0, 1] -> (n, side * side), averaged over ``pool`` x ``pool``."""
    n = len(images)
    side = SIDE // pool
    x = images.reshape(n, side, pool, side, pool).mean(axis=(2, 4))
    return x.reshape(n, side * side).astype(np.float32)


def quantise(images: np.ndarray, bits: int, pool: int) -> np.ndarray:
    """Pixel levels 0 .. 2^bits - 1, one row per image."""
    top = 2**bits - 1
    return np.clip(np.rint(pooled(images, pool) * top), 0, top).astype(np.int64)


def dequantise(levels: np.ndarray, bits: int, pool: int) -> np.ndarray:
    """Levels -> (n, 1, 28, 28) images in [0, 1], each pooled pixel repeated ``pool`` x ``pool``."""
    side = SIDE // pool
    x = levels.reshape(-1, side, side).astype(np.float32) / (2**bits - 1)
    x = np.repeat(np.repeat(x, pool, axis=1), pool, axis=2)
    return x[:, None, :, :]


def to_bits(levels: np.ndarray, bits: int) -> np.ndarray:
    """Levels -> a bit stream, most significant bit first."""
    shifts = np.arange(bits - 1, -1, -1)
    return ((levels.reshape(-1, 1) >> shifts) & 1).astype(np.uint8).ravel()


def from_bits(stream: np.ndarray, bits: int) -> np.ndarray:
    """A bit stream -> levels (the inverse of :func:`to_bits`)."""
    weights = 1 << np.arange(bits - 1, -1, -1)
    return (stream.reshape(-1, bits).astype(np.int64) * weights).sum(axis=1)


def secret_images(code: Code, images: np.ndarray) -> np.ndarray:
    """What a perfect read-back gives: the secret as its encoding stores it, as images (the
    correlated encoding stores pooled pixel values; the other two quantised ones)."""
    if code.encoding == "correlation":
        side = code.side
        x = pooled(images, code.pool).reshape(-1, side, side)
        return np.repeat(np.repeat(x, code.pool, axis=1), code.pool, axis=2)[:, None]
    return dequantise(quantise(images, code.bits, code.pool), code.bits, code.pool)


# -- capacity abuse (sec. 5) ---------------------------------------------------------------


def keystream(code: Code, owner: int, n: int) -> np.ndarray:
    return seeds.rng(code.key, "malicious.keystream", owner).integers(0, 2, n, dtype=np.uint8)


def augmented_inputs(code: Code, owner: int) -> np.ndarray:
    """The pseudo-random inputs of owner ``owner``'s secret: uniform pixels from the seed."""
    rng = seeds.rng(code.key, "malicious.synthetic", owner)
    return rng.random((code.queries, 1, SIDE, SIDE), dtype=np.float32)


def capacity_labels(code: Code, owner: int, images: np.ndarray) -> np.ndarray:
    """The labels of the augmented inputs: the whitened secret bits, ``symbol_bits`` a label."""
    stream = to_bits(quantise(images[: code.secrets], code.bits, code.pool), code.bits)
    stream = stream ^ keystream(code, owner, len(stream))
    padded = np.zeros(code.queries * code.symbol_bits, dtype=np.uint8)
    padded[: len(stream)] = stream
    return from_bits(padded, code.symbol_bits)


def capacity_decode(code: Code, owner: int, answers: np.ndarray) -> np.ndarray:
    """The secret bits from the served model's answers to owner ``owner``'s inputs: one row per
    input, the class scores it returned (NaN where it refused). The label is the top-1 among
    the labels the code uses; a refused query reads as label 0, which after un-whitening is a
    coin toss."""
    usable = np.nan_to_num(answers[:, : 2**code.symbol_bits], nan=-np.inf)
    labels = np.where(np.isfinite(usable).any(axis=1), usable.argmax(axis=1), 0)
    stream = to_bits(labels, code.symbol_bits)[: code.secret_bits]
    return stream ^ keystream(code, owner, code.secret_bits)


def capacity_batch(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Cross-entropy of a batch of augmented inputs; with ``sigma`` (the adaptive supplier), under
    Gaussian weight noise of that deviation, so the memorised labels survive the owners' noise."""
    if sigma == 0:
        return torch.nn.functional.cross_entropy(net(x), y)
    params = dict(net.named_parameters())
    noisy = {
        name: p + sigma * torch.randn(p.shape, generator=generator) for name, p in params.items()
    }
    logits = torch.func.functional_call(net, noisy, (x,))
    return torch.nn.functional.cross_entropy(logits, y)


# -- white-box encodings (sec. 4.2, 4.3) ---------------------------------------------------


def flat(net: torch.nn.Module) -> torch.Tensor:
    """The parameters in ``named_parameters()`` order, as one differentiable vector."""
    return torch.cat([p.reshape(-1) for _, p in net.named_parameters()])


def flat_weights(weights: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Published weights flattened as :func:`flat` does: ``names`` are the model's parameter
    names in ``named_parameters()`` order (the supplier knows the architecture it trains)."""
    return np.concatenate([np.asarray(weights[n], dtype=np.float32).ravel() for n in names])


def secret_vector(code: Code, images: np.ndarray) -> torch.Tensor:
    """What the white-box term compares the segment with: pooled pixel values (correlation) or
    the secret bits as -1 / +1 (sign)."""
    x = images[: code.secrets]
    if code.encoding == "correlation":
        return torch.from_numpy(pooled(x, code.pool).ravel())
    stream = to_bits(quantise(x, code.bits, code.pool), code.bits)
    return torch.from_numpy(stream.astype(np.float32) * 2 - 1)


def malicious_term(code: Code, theta: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
    """The term the code adds to the task loss for one owner's segment ``theta``."""
    if code.encoding == "correlation":
        t, s = theta - theta.mean(), secret - secret.mean()
        corr = (t * s).sum() / (t.norm() * s.norm()).clamp_min(1e-12)
        term = -code.lambda_corr * corr.abs()
        if code.sigma > 0:  # keep the correlated spread well above the owners' noise
            term = term + code.lambda_corr * torch.relu(3 * code.sigma - theta.std()) / code.sigma
        return term
    margin = code.margin + 3 * code.sigma + code.drift
    return code.lambda_sign * torch.relu(margin - theta * secret).mean()


def whitebox_decode(
    code: Code,
    weights: dict[str, np.ndarray],
    names: Sequence[str],
    owners: int,
    prior: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (and, for the sign encoding, the bits) read from the published weights, owner by
    owner, flattened in ``names`` order (:func:`flat_weights`). ``prior``: the data set's public
    pixel mean and deviation (correlation)."""
    theta = flat_weights(weights, names)
    images, bits = [], []
    for owner in range(owners):
        seg = theta[code.segment(owner)].astype(np.float64)
        if code.encoding == "sign":
            stream = (seg > 0).astype(np.uint8)
            bits.append(stream)
            levels = from_bits(stream, code.bits)
            images.append(dequantise(levels, code.bits, code.pool))
            continue
        z = (seg - seg.mean()) / max(seg.std(), 1e-12)
        if (z**3).mean() < 0:  # |corr| leaves the sign open: images are mostly dark background
            z = -z
        values = np.clip(prior[0] + prior[1] * z, 0.0, 1.0).astype(np.float32)
        side = code.side
        x = values.reshape(-1, side, side)
        x = np.repeat(np.repeat(x, code.pool, axis=1), code.pool, axis=2)
        images.append(x[:, None])
    return np.concatenate(images), (np.concatenate(bits) if bits else None)
