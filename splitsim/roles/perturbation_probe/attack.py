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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from splitsim.decoding import fit_decoder
from splitsim.defences.base import Defence, apply_stage
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


def search_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the CPU for a search's many small forward passes, its weights in
    channels-last order. PyTorch then runs ProbeCNN's convolutions with oneDNN instead of its
    NCHW fallback: 22 against 62 us an image, one thread, 256 images a pass (512 was the
    fallback's best; at 8,192 both spend their time faulting in fresh pages). The top-1
    classes, and so the signatures, came out the same bit for bit, 2.5x faster
    (scripts/bench_probe.py: the tests' 600 images x 40 directions and the shipped scenario's
    3,000 x 100). A tie between two logits within rounding could still break the other way,
    so the cache key of ``role.cached_signatures`` names the layout."""
    return copy.deepcopy(model).cpu().to(memory_format=torch.channels_last).eval()


def local_oracle(
    model: nn.Module,
    x: np.ndarray,
    dirs: np.ndarray,
    batch: int = 256,
    device: str | torch.device = "cpu",
    defences: Sequence[Defence] = (),
    rng: np.random.Generator | None = None,
) -> Oracle:
    """The adversary's own copy of M on its own images: the same bit, computed locally.
    Small batches of a channels-last copy of M (``search_copy``): 256 perturbed images a
    forward pass. ``device`` 'cuda' keeps a copy of M, the images and the directions on the
    GPU (scripts/gpu_check.py times it); the role computes its signatures on the CPU, where
    its cache was made.

    ``defences`` (built, with ``rng``): the adaptive adversary's simulation of the data
    owners' own, applied as their ClientApp does (protocol._handle): the budget per input,
    then fresh input noise on every probe, then the answer's randomised response."""
    device = torch.device(device)
    if device.type != "cpu":
        model = copy.deepcopy(model).to(device)  # the caller's model stays where it is
    else:
        model = search_copy(model)
    reference = _logits(model, x, device=device).argmax(1)
    dirs_t = torch.from_numpy(dirs).to(device)
    x_t = torch.from_numpy(x).to(device)
    budgets = [d for d in defences if d.stage == "budget"]
    noisy = any(d.stage == "input" for d in defences)
    if defences and rng is None:
        raise ValueError("simulated defences need a random generator")
    spent = np.zeros(len(x), dtype=np.int64)

    @torch.no_grad()
    def ask(idx: np.ndarray, direction: np.ndarray, eps: np.ndarray) -> np.ndarray:
        out = np.full(len(idx), REFUSED, dtype=np.uint8)
        answered = np.ones(len(idx), dtype=bool)
        for budget in budgets:
            answered &= budget.allowed(spent, idx)
        where = np.flatnonzero(answered)
        for s in range(0, len(where), batch):
            part = where[s : s + batch]
            i = torch.from_numpy(idx[part]).to(device)
            d = torch.from_numpy(direction[part]).to(device)
            e = torch.from_numpy(eps[part]).to(device).view(-1, *([1] * (dirs.ndim - 1)))
            probe = x_t[i] + e * dirs_t[d]
            if noisy:
                noised = apply_stage(list(defences), "input", probe.cpu().numpy(), rng)
                probe = torch.from_numpy(noised).to(device)
            top = model(probe).argmax(1).cpu().numpy()
            out[part] = top != reference[idx[part]]
        if defences:
            out[where] = apply_stage(list(defences), "answer", out[where], rng)
        return out

    return ask


def majority_error(p: float, votes: int) -> float:
    """Probability that the majority of ``votes`` answers, each flipped with probability
    ``p`` independently (randomised response), is wrong: P(Binomial(votes, p) > votes / 2)."""
    from scipy.stats import binom  # here: scipy.stats costs every process 0.4 s to import

    return float(binom.sf(votes // 2, votes, p))


MAX_VOTES = 15
VOTE_ERROR = 0.01  # the rule's target: at most 1 % of voted bits wrong


@dataclass(frozen=True)
class Plan:
    """How the adversary probes one session: each query ``votes`` times, the first
    ``directions`` directions."""

    votes: int = 1
    directions: int = 0

    def to_json(self) -> dict[str, int]:
        return {"votes": self.votes, "directions": self.directions}


def plan(
    defences: Sequence[Defence],
    num_directions: int,
    queries_per_direction: float,
    votes: int | None = None,
) -> Plan:
    """The adaptive adversary's rule for spending its queries, from the defences' parameters.

    - No randomised response: one vote, every direction; under a budget the search is cut
      where the budget ends (the directions come out coarse, not wrong, and the decoder is
      trained on equally cut signatures).
    - Randomised response p, no budget: ``votes`` if given, else the smallest odd number of
      votes whose majority is wrong at most 1 % of the time (p = 0.05: 3, p = 0.1: 5;
      at most 15).
    - Randomised response and a budget of B queries per input: those votes, and as many
      directions as the budget then affords, D = min(directions, B // (k * q)), with q what a
      direction cost on the adversary's own images (``queries_per_direction``); the first D
      directions of the kind. Votes before directions: on MNIST with p = 0.1 and B = 500,
      5 votes on 10 directions gave 82.0 % reference accuracy, 1 vote on 54 gave 36.0 % and
      the plain prober's 100, cut by the budget, 21.0 % (docs/perturbation_probe.md). Fewer
      votes only where not even 2 directions fit.
    - ``votes`` given: that many in every case; under a budget the directions are fitted.
    """
    flips = [d.params.p for d in defences if d.stage == "answer" and hasattr(d.params, "p")]
    budgets = [d.params.queries for d in defences if d.stage == "budget"]
    budget, q = (min(budgets) if budgets else None), max(queries_per_direction, 1.0)

    def fit(k: int) -> int:
        if budget is None:
            return num_directions
        return max(2, int(min(num_directions, budget // (k * q))))

    if votes is not None:  # the scenario's choice; only the directions are fitted
        return Plan(votes, fit(votes))
    if not flips:
        return Plan(1, num_directions)
    p = 0.0
    for f in flips:  # two randomised responses in a row: wrong if exactly one flips the bit
        p = p * (1 - f) + f * (1 - p)
    most = next(
        (k for k in range(1, MAX_VOTES + 1, 2) if majority_error(p, k) <= VOTE_ERROR), MAX_VOTES
    )
    if budget is None:
        return Plan(most, num_directions)
    k = max((k for k in range(1, most + 1, 2) if budget // (k * q) >= 2), default=1)
    return Plan(k, fit(k))


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
    votes: int = 1,
    on_step: Callable[[int, int], None] | None = None,
) -> Signatures:
    """Bracket then bisect every (input, direction) at once; one oracle call per step.

    ``votes`` > 1 (odd): every query goes to the oracle that many times in the same call and
    the majority of the answers is the bit (a repetition code against randomised response;
    Feige, Raghavan, Peleg & Upfal, *Computing with Noisy Information*, SIAM J. Comput. 1994,
    the naive repeat-and-vote bisection). Each copy is a query of its own: it counts in
    ``queries`` and against the data owner's budget; a vote with a refused copy is refused."""
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
        bits = np.asarray(
            oracle(
                np.repeat(idx.astype(np.int64), votes),
                np.repeat(dirn.astype(np.int64), votes),
                np.repeat(eps.astype("f4"), votes),
            )
        )
        steps += 1
        np.add.at(queries, idx, votes)
        if votes > 1:
            bits = majority(bits.reshape(len(idx), votes))
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


def majority(answers: np.ndarray) -> np.ndarray:
    """One bit per row of repeated answers: CHANGED where most copies say so, REFUSED where
    any copy was refused (the budget ran out in the middle of the vote)."""
    changed = (answers == CHANGED).sum(1) * 2 > answers.shape[1]
    out = np.where(changed, CHANGED, SAME).astype(np.uint8)
    out[(answers == REFUSED).any(1)] = REFUSED
    return out


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
