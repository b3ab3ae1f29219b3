"""The curious FedAvg server: labels, then images, from one participant's model update.

**Labels first.** For a softmax cross-entropy loss the gradient of the last layer's bias is
``g_b = (1/B) sum_i (softmax(f(x_i)) - onehot(y_i))``. With one image (Zhao et al., *iDLG*,
2020, section 3.2) its only negative entry is the label. With a batch we count, as Geng et al.
do (*Towards General Deep Leakage in Federated Learning*, arXiv 2110.09074, 2021):
``n_c = B * p_c - B * g_b[c]``, with ``p_c`` the network's mean probability of class ``c`` on
inputs the attacker makes up (it holds no data), rounded to whole counts that sum to ``B``
(Wainakh et al.'s LLG, PETS 2022, counts from the last weight gradient instead). A
participant that took ``E`` local SGD steps at learning rate ``eta`` uploads
``Delta b ~= -eta * E * g_b``; the server chose ``eta`` and ``E`` and reads ``B`` from the
reply's ``num-examples``.

**Then images** (Geiping, Bauermeister, Dröge, Moeller, *Inverting Gradients*, NeurIPS 2020),
equation (4) with section 6's multi-step variant: find dummy images ``x`` (in ``[0, 1]``, here
through a sigmoid) that, trained on with the recovered labels by the same ``E`` unrolled SGD
steps from the round's global weights ``w``, give an update that points where the observed one
does, under a total-variation prior::

    argmin_x  1 - <U(x), U*> / (||U(x)|| ||U*||)  +  alpha * TV(x)
    U(x) = w_E(x) - w,   w_{e+1} = w_e - eta * grad_w L(w_e; x, y)

Adam on signed gradients, step size 0.1 divided by 10 at 3/8, 5/8 and 7/8 of the iterations, as
in the paper. An **adaptive** server that knows the participant's defence does what it can:
- DP-SGD (Abadi et al. 2016): it unrolls the steps with per-example gradients clipped to the
  participant's ``C``, and matches by the likelihood of the Gaussian noise DP-SGD adds instead of
  by cosine (the noise on ``U`` has std ``eta * sigma * C * sqrt(E) / B`` per weight);
- update noise (engine's ``update_noise``): it clips ``U(x)`` as the participant clips its update
  and matches by the noise's likelihood (Gaussian: squared error; Laplace: absolute error).
That is a MAP estimate under the known noise. How strong its TV prior should be depends on the
noise, so the adaptive server also calibrates it (``calibrate``): it runs the participant's round,
defence included, on a batch of images of its own, inverts that with each candidate weight, and
keeps the one that reconstructs its own images best. No attacker can remove the zero-mean noise
itself; how much it still gets is what the defence is worth.

    >>> labels = recover_labels(bias_update, lr=0.1, steps=1, batch=8, mean_probs=p)
    >>> images = invert(net, weights, update, labels, Settings(...))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from splitsim.metrics import image_quality
from splitsim.threads import one_thread


@dataclass(frozen=True)
class Knowledge:
    """What the server knows of the participant's defence (nothing, for a naive server)."""

    example_clip: float | None = None  # DP-SGD's per-example L2 clip C
    update_clip: float | None = None  # update_noise's clip of the whole update
    noise: str | None = None  # "gaussian" or "laplace": the likelihood to match by
    noise_scale: float = 0.0  # update noise: its std (Gaussian) or b (Laplace), per weight
    noise_multiplier: float = 0.0  # DP-SGD's sigma (its noise std is sigma * C per step)

    def scale(self, settings: Settings, batch: int) -> float:
        """The noise's scale per weight of the uploaded update: DP-SGD's std, update noise's
        scale, or, both stacked, the scale whose variance is their sum (Laplace b has
        variance 2 b^2), which matches the sum's spread, not its shape."""
        dp = 0.0
        if self.example_clip is not None:
            dp = dp_noise_std(settings.lr, settings.steps, batch, self.noise_multiplier,
                              self.example_clip)  # fmt: skip
        if dp == 0.0 or self.noise_scale == 0.0:
            return dp or self.noise_scale
        if self.noise == "laplace":
            return math.sqrt(self.noise_scale**2 + dp**2 / 2)
        return math.sqrt(self.noise_scale**2 + dp**2)


@dataclass(frozen=True)
class Settings:
    lr: float  # the participant's local SGD step size (the server set it)
    steps: int  # its local steps (the server set them)
    iterations: int
    tv_weight: float
    seed: int
    knowledge: Knowledge = Knowledge()


def recover_labels(
    bias_update: np.ndarray, *, lr: float, steps: int, batch: int, mean_probs: np.ndarray
) -> np.ndarray:
    """The batch's labels, sorted (the update does not say which image had which)."""
    g = -np.asarray(bias_update, dtype=np.float64) / (lr * steps)
    if batch == 1:
        return np.array([int(np.argmin(g))])
    counts = np.clip(batch * (np.asarray(mean_probs, dtype=np.float64) - g), 0, None)
    whole = np.floor(counts).astype(np.int64)
    short = batch - int(whole.sum())
    order = np.argsort(-(counts - whole), kind="stable")
    if short > 0:
        whole[order[:short]] += 1
    else:
        for c in order[::-1]:  # take back from the least fractional first
            if short == 0:
                break
            take = min(whole[c], -short)
            whole[c] -= take
            short += take
    return np.repeat(np.arange(len(whole)), whole)


def mean_probabilities(net: nn.Module, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The network's mean class probabilities on uniform-noise images: the attacker's stand-in
    for ``p_c`` (it holds no images of the participant's)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probs = F.softmax(net(torch.rand(256, *shape, generator=generator)), dim=1)
    return probs.mean(0).numpy()


def _unrolled(
    net: nn.Module, start: dict[str, torch.Tensor], settings: Settings
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``U(x)``: the flat update ``E`` differentiable SGD steps on ``(x, y)`` give."""
    clip = settings.knowledge.example_clip

    def loss_one(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, params, (x[None],)), y[None])

    def step_gradient(
        params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if clip is None:
            loss = F.cross_entropy(functional_call(net, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            return dict(zip(params, grads, strict=True))
        # DP-SGD: per-example gradients, each clipped to C, summed, over the batch size
        per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()) + 1e-12)
        factor = (clip / norms).clamp(max=1.0)
        return {
            k: (g * factor.view(-1, *([1] * (g.dim() - 1)))).sum(0) / len(x) for k, g in per.items()
        }

    def update(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
        for _ in range(settings.steps):
            grads = step_gradient(params, x, y)
            params = {k: v - settings.lr * grads[k] for k, v in params.items()}
        return torch.cat([(params[k] - start[k]).flatten() for k in start])

    return update


def _mismatch(
    settings: Settings, target: torch.Tensor, batch: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """How far a simulated update is from the observed one: cosine distance (Geiping et al.),
    or, for a server that knows the noise, its negative log-likelihood per weight."""
    knowledge = settings.knowledge
    clip, scale = knowledge.update_clip, knowledge.scale(settings, batch)
    if knowledge.noise is None or scale <= 0:
        return lambda u: 1 - F.cosine_similarity(u, target, dim=0)

    def nll(u: torch.Tensor) -> torch.Tensor:
        if clip is not None:
            u = u * torch.clamp(clip / (u.norm() + 1e-12), max=1.0)
        if knowledge.noise == "laplace":
            return (u - target).abs().mean() / scale
        return (u - target).pow(2).mean() / (2 * scale**2)

    return nll


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV), over the batch."""
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean() + (
        x[:, :, :, 1:] - x[:, :, :, :-1]
    ).abs().mean()


def invert(
    net: nn.Module,
    weights: dict[str, np.ndarray],
    update: np.ndarray,
    labels: np.ndarray,
    shape: tuple[int, ...],
    settings: Settings,
    on_progress: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Reconstruct ``len(labels)`` images from the flat ``update`` (parameter order of
    ``net.named_parameters()``); the images in ``[0, 1]`` and the loss every 50 iterations."""
    start = {
        k: torch.from_numpy(np.ascontiguousarray(weights[k])) for k, _ in net.named_parameters()
    }
    target = torch.from_numpy(np.ascontiguousarray(update, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    simulate = _unrolled(net, start, settings)
    mismatch = _mismatch(settings, target, len(labels))
    generator = torch.Generator().manual_seed(settings.seed)
    z = (0.1 * torch.randn(len(labels), *shape, generator=generator)).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=0.1)
    n = settings.iterations
    milestones = [math.floor(n * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    history: list[float] = []
    with one_thread():
        for it in range(n):
            x = torch.sigmoid(z)
            loss = mismatch(simulate(x, y)) + settings.tv_weight * total_variation(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            z.grad.sign_()  # the paper's signed gradients
            optimizer.step()
            schedule.step()
            if it % 50 == 0 or it == n - 1:
                history.append(float(loss.detach()))
                if on_progress is not None:
                    on_progress(it + 1, history[-1])
    return torch.sigmoid(z).detach().numpy(), history


def pair(reconstructions: np.ndarray, originals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices pairing each original with one reconstruction, least total squared error first
    (an update does not say which image was which); ``(recon_idx, orig_idx)``, in the
    originals' order."""
    from scipy.optimize import linear_sum_assignment

    n, m = len(reconstructions), len(originals)
    diff = reconstructions.reshape(n, 1, -1) - originals.reshape(1, m, -1)
    rec_idx, orig_idx = linear_sum_assignment((diff**2).mean(-1))
    order = np.argsort(orig_idx)
    return rec_idx[order], orig_idx[order]


def calibrate(
    net: nn.Module,
    weights: dict[str, np.ndarray],
    own_images: np.ndarray,
    simulated_update: np.ndarray,
    labels: np.ndarray,
    shape: tuple[int, ...],
    settings: Settings,
    candidates: tuple[float, ...],
) -> tuple[float, dict[str, float]]:
    """The adaptive server's TV weight: invert ``simulated_update`` (its own ``own_images``
    through the participant's round and defence; ``labels`` recovered from it) with each
    candidate, a quarter of the iterations each, and keep the weight with the best PSNR on its
    own images."""
    scores: dict[str, float] = {}
    for weight in candidates:
        trial = Settings(settings.lr, settings.steps, max(10, settings.iterations // 4), weight,
                         settings.seed, settings.knowledge)  # fmt: skip
        recon, _ = invert(net, weights, simulated_update, labels, shape, trial)
        r, o = pair(recon, own_images)
        scores[f"{weight:g}"] = image_quality(own_images[o], recon[r])["psnr"]
    best = max(candidates, key=lambda w: scores[f"{w:g}"])
    return best, scores


def dp_noise_std(lr: float, steps: int, batch: int, noise_multiplier: float, clip: float) -> float:
    """Std per weight of the Gaussian noise ``E`` DP-SGD steps add to the update."""
    return lr * noise_multiplier * clip * math.sqrt(steps) / batch
