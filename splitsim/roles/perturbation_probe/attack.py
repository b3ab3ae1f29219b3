"""The perturbation-probing adversary (Moran & Juvekar, *Reconstructing Network Inputs with
Additive Perturbation Signatures*; papers/004, section 3).

Threat model: a data owner's secret input X is classified by a served model M under
encryption, so the model owner never sees X nor M(X). It can add perturbations of its choice
and learn one bit per query: whether the top-1 class of M(X + eps * N_i) differs from M(X).
For a fixed set of directions {N_i} the *signature* of x is

    E_x = [eps_0, eps_1, ...],   eps_i = min { eps > 0 : M(x + eps * N_i) != M(x) }     (sec. 3)

and a decoder trained with L2 loss on (E_x, x) pairs of the adversary's own images maps a
victim's signature back to its input.

Here: eps_i is found by bracketing (eps_start, doubling up to eps_max; a direction that never
flips is recorded as eps_max) then bisection until ``hi - lo <= tolerance * hi``; every query of
one step, for every input and direction still open, goes in one oracle call (one Flower message
per data owner), so a signature costs a handful of round trips. Directions: ``random`` (the
paper: unit-norm Gaussian), and the paper's future work: ``centroid`` (differences of the
adversary's class centroids) and ``gradient`` (the adversary's own model's mean input gradient
from one class's logit towards another's, an adversarial direction), each topped up with random
directions to the requested count. The decoder sees log(eps), standardised per direction on the
adversary's signatures.

    >>> dirs = directions("random", 100, (1, 28, 28), seed=0)
    >>> sig = search(local_oracle(model, x, dirs), len(x), 100, eps_start=1, eps_max=64,
    ...              tolerance=0.02, max_steps=40)
    >>> decoder, history = train_decoder(sig.features(stats), x, ...)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from splitsim.decoding import fit_decoder
from splitsim.models.probe_cnn import SignatureDecoder

DIRECTION_KINDS = ("random", "centroid", "gradient")
CHANGED, SAME, REFUSED = 1, 0, 2
# oracle(input index, direction index, eps) -> one of CHANGED / SAME / REFUSED per query
Oracle = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _unit(d: np.ndarray) -> np.ndarray:
    flat = d.reshape(len(d), -1)
    return (
        (flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12))
        .reshape(d.shape)
        .astype(np.float32)
    )


def _pairs(classes: int) -> list[tuple[int, int]]:
    # Interleaved so that a short prefix still covers every class.
    out = []
    for gap in range(1, classes):
        out += [(c, (c + gap) % classes) for c in range(classes)]
    return out


@torch.no_grad()
def _logits(
    model: nn.Module, x: np.ndarray, batch: int = 4096, device: torch.device | None = None
) -> np.ndarray:
    model.eval()
    return np.concatenate(
        [
            model(torch.from_numpy(x[i : i + batch]).to(device)).cpu().numpy()
            for i in range(0, len(x), batch)
        ]
    )


def directions(
    kind: str,
    count: int,
    shape: tuple[int, ...],
    seed: int,
    model: nn.Module | None = None,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
) -> np.ndarray:
    """``count`` unit-norm directions of ``shape``; see the module docstring for the kinds."""
    rng = np.random.default_rng(seed)
    random = _unit(rng.standard_normal((count, *shape)).astype(np.float32))
    if kind == "random":
        return random
    if x is None or y is None:
        raise ValueError(f"{kind} directions need the adversary's images")
    classes = int(y.max()) + 1
    chosen: list[np.ndarray] = []
    if kind == "centroid":
        centroids = np.stack([x[y == c].mean(0) for c in range(classes)])
        chosen = [centroids[b] - centroids[a] for a, b in _pairs(classes)]
    elif kind == "gradient":
        if model is None:
            raise ValueError("gradient directions need the adversary's model")
        model.eval()
        for a, b in _pairs(classes):
            xa = torch.from_numpy(x[y == a][:200]).requires_grad_(True)
            out = model(xa)
            (out[:, b] - out[:, a]).sum().backward()
            chosen.append(xa.grad.mean(0).numpy())
    else:
        raise ValueError(f"unknown direction kind {kind!r}; allowed: {', '.join(DIRECTION_KINDS)}")
    picked = _unit(np.stack(chosen[:count]).astype(np.float32))
    return np.concatenate([picked, random[len(picked) :]]) if len(picked) < count else picked


def local_oracle(
    model: nn.Module,
    x: np.ndarray,
    dirs: np.ndarray,
    batch: int = 512,
    device: str | torch.device = "cpu",
) -> Oracle:
    """The adversary's own copy of M on its own images: the same bit, computed locally.
    Small batches: 512 perturbed images a forward pass ran 2.2x faster than 8,192 here (the
    large ones spend their time allocating and faulting in fresh pages). ``device`` 'cuda'
    keeps a copy of M, the images and the directions on the GPU (scripts/gpu_check.py times
    it); the role computes its signatures on the CPU, where its cache was made."""
    device = torch.device(device)
    if device.type != "cpu":
        model = copy.deepcopy(model).to(device)  # the caller's model stays where it is
    reference = _logits(model, x, device=device).argmax(1)
    dirs_t = torch.from_numpy(dirs).to(device)
    x_t = torch.from_numpy(x).to(device)

    @torch.no_grad()
    def ask(idx: np.ndarray, direction: np.ndarray, eps: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx), dtype=np.uint8)
        for s in range(0, len(idx), batch):
            i = torch.from_numpy(idx[s : s + batch]).to(device)
            d = torch.from_numpy(direction[s : s + batch]).to(device)
            e = torch.from_numpy(eps[s : s + batch]).to(device).view(-1, *([1] * (dirs.ndim - 1)))
            top = model(x_t[i] + e * dirs_t[d]).argmax(1).cpu().numpy()
            out[s : s + batch] = top != reference[idx[s : s + batch]]
        return out

    return ask


@dataclass
class Signatures:
    """Minimal flipping eps per (input, direction), and what finding them cost."""

    eps: np.ndarray  # (n, d) float32; eps_max where the class never changed
    flipped: np.ndarray  # (n, d) bool
    refused: np.ndarray  # (n, d) bool: the data owner stopped answering
    queries: np.ndarray  # (n,) int: queries spent per input
    steps: int  # oracle calls (round trips)

    def features(self, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The decoder's input: log(eps) standardised with the adversary's own statistics."""
        mean, std = stats
        return ((np.log(self.eps) - mean) / std).astype(np.float32)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        log = np.log(self.eps)
        return log.mean(0), log.std(0) + 1e-6


def search(
    oracle: Oracle,
    n_inputs: int,
    n_dirs: int,
    *,
    eps_start: float,
    eps_max: float,
    tolerance: float,
    max_steps: int,
    on_step: Callable[[int, int], None] | None = None,
) -> Signatures:
    """Bracket then bisect every (input, direction) at once; one oracle call per step."""
    shape = (n_inputs, n_dirs)
    lo = np.zeros(shape)
    hi = np.full(shape, np.inf)
    probe = np.full(shape, float(eps_start))
    settled = np.zeros(shape, dtype=bool)
    refused = np.zeros(shape, dtype=bool)
    queries = np.zeros(n_inputs, dtype=np.int64)
    steps = 0
    while steps < max_steps and not settled.all():
        idx, dirn = np.nonzero(~settled)
        eps = probe[idx, dirn]
        bits = np.asarray(oracle(idx.astype(np.int64), dirn.astype(np.int64), eps.astype("f4")))
        steps += 1
        np.add.at(queries, idx, 1)
        no = bits == REFUSED
        refused[idx[no], dirn[no]] = True
        settled[idx[no], dirn[no]] = True
        yes = bits == CHANGED
        hi[idx[yes], dirn[yes]] = eps[yes]
        same = bits == SAME
        lo[idx[same], dirn[same]] = eps[same]
        # A direction that still does not flip at eps_max is settled as "never flips".
        capped = same & (eps >= eps_max)
        settled[idx[capped], dirn[capped]] = True
        open_ = ~settled[idx, dirn]
        i, d = idx[open_], dirn[open_]
        bracketed = np.isfinite(hi[i, d])
        done = bracketed & (hi[i, d] - lo[i, d] <= tolerance * hi[i, d])
        settled[i[done], d[done]] = True
        grow = ~bracketed
        probe[i[grow], d[grow]] = np.minimum(lo[i[grow], d[grow]] * 2, eps_max)
        halve = bracketed & ~done
        probe[i[halve], d[halve]] = (lo[i[halve], d[halve]] + hi[i[halve], d[halve]]) / 2
        if on_step is not None:
            on_step(steps, int((~settled).sum()))
    flipped = np.isfinite(hi)
    eps_out = np.where(flipped, hi, eps_max).astype(np.float32)
    return Signatures(eps_out, flipped, refused, queries, steps)


def train_decoder(
    features: np.ndarray,
    x: np.ndarray,
    val_features: np.ndarray,
    val_x: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Fit the generator with L2 loss on (E_x, x); keep the epoch with the best val MSE."""
    torch.manual_seed(seed)
    decoder = SignatureDecoder(features.shape[1], tuple(x.shape[1:]))
    return fit_decoder(
        decoder, torch.from_numpy(features), torch.from_numpy(x), val_features, val_x,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, min_batch=2,
        on_epoch=on_epoch,
    )  # fmt: skip
