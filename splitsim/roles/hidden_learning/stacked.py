"""Several hidden-learning regimes trained at once, their MLPs stacked along a leading axis.

Why: a Covid-app regime (papers/001, section 4.1: To-and-Ts, To, To-then-Ts, Ts-only) is a few
thousand parameters trained for 60 epochs of 282 Adam steps of batch 64. On a CPU such a step
costs 1.3-2.1 ms of dispatch, autograd and optimiser bookkeeping and microseconds of arithmetic
(issue 24). Stacking the regimes' same-shaped layers into (R, in, out) tensors lets one
``baddbmm`` per layer serve every regime, and one flat parameter buffer makes Adam seven tensor
operations per step for all of them.

Each regime keeps what it has when trained alone (``attack.train_regime``): its initial
weights, its own batch order (a generator seeded with its seed), its loss, its Adam state and
its model selection. Their parameters are disjoint, so the gradient of the summed loss on a
regime's slot is that regime's own gradient, and Adam is elementwise: each slot follows the
trajectory it follows alone, up to float rounding (tests/test_hidden_stacked.py).

Secret networks of different class counts share one stack: their output layers are padded to
the widest, and the padded logits are masked to -inf, so they take no probability, receive a
zero gradient, and Adam never moves them.

A stealthy regime (``attack``'s docstring: a weight lambda on what N_o learns from L_s, a
closeness mu to an honest network) carries its own lambda and mu; the honest predictions it
is held to are gathered in its batch order like its labels. Regimes that use neither
compute exactly what they computed before these terms existed.

Shapes: official stack (J, B, d) -> (J, B, k_o); secret stack (S, B, k_o + d_side) ->
(S, B, max classes), one slot per (regime, secret) pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from splitsim.data.score_data import OfficialTask, ScoreData
from splitsim.metrics import accuracy
from splitsim.roles.hidden_learning.scores import (
    check_stealth,
    device_of,
    divergence,
    official_quality,
    predict_scores,
    reference_predictions,
    scale_gradient,
    to_scores,
)
from splitsim.threads import one_thread


@dataclass
class Regime:
    """One regime to train: what ``attack.train_regime`` takes, minus the shared settings."""

    official: nn.Module  # a ScoreNet; its ``body`` must be an MLP (``mlp_layers``)
    secrets: dict[str, nn.Module]
    official_loss_on: bool
    official_frozen: bool
    seed: int
    secret_weight: float = 1.0  # lambda: N_o minimises L_o + lambda * L_s (attack's docstring)
    closeness: float = 0.0  # mu: + mu * D(N_o(x), reference(x))
    reference: nn.Module | None = None  # the honest ScoreNet that ``closeness`` pulls toward


def mlp_layers(module: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``Sequential(Linear, ReLU, ..., Linear)``, or None for anything else
    (a CNN, another activation): only that shape is stacked."""
    if not isinstance(module, nn.Sequential) or len(module) % 2 != 1:
        return None
    layers = list(module)
    linears = layers[0::2]
    if not all(type(m) is nn.Linear for m in linears):
        return None
    if not all(type(m) is nn.ReLU for m in layers[1::2]):
        return None
    return linears


def _widths(layers: list[nn.Linear]) -> list[int]:
    return [layers[0].in_features] + [m.out_features for m in layers]


class _Flat:
    """One buffer for every stacked tensor, and one for their gradients.

    Each stacked weight is a leaf view into ``data`` whose ``.grad`` is preset to the matching
    view of ``grad``; autograd accumulates into an existing gradient in place, so after
    ``backward`` the whole gradient is ``grad`` and Adam runs on two flat tensors."""

    def __init__(self, shapes: list[tuple[int, ...]], device: torch.device) -> None:
        total = sum(math.prod(s) for s in shapes)
        self.data = torch.zeros(total, device=device)
        self.grad = torch.zeros(total, device=device)
        self.views: list[torch.Tensor] = []
        offset = 0
        for shape in shapes:
            n = math.prod(shape)
            view = self.data[offset : offset + n].view(shape)
            view.requires_grad_(True)
            view.grad = self.grad[offset : offset + n].view(shape)
            self.views.append(view)
            offset += n


class _Adam:
    """torch.optim.Adam's update (default betas and eps, no weight decay) on one flat tensor.

    Written out because torch.optim.Adam's per-step Python bookkeeping costs more than the
    update itself at this size (0.29 against 0.12 ms per step, measured under load); the
    arithmetic is the same sequence of operations as its single-tensor path."""

    def __init__(self, flat: _Flat, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.flat, self.lr, self.betas, self.eps = flat, lr, betas, eps
        self.exp_avg = torch.zeros_like(flat.data)
        self.exp_avg_sq = torch.zeros_like(flat.data)
        self.step_count = 0

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        grad = self.flat.grad
        self.step_count += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.step_count
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.step_count)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        self.flat.data.addcdiv_(self.exp_avg, denom, value=-self.lr / bias_correction1)


class _Stack:
    """Same-shaped MLPs as (R, in, out) weights and (R, 1, out) biases; the last layer padded
    to the widest output, padded logits masked."""

    def __init__(self, nets: list[list[nn.Linear]]) -> None:
        self.nets = nets
        self.outs = [layers[-1].out_features for layers in nets]
        widths = _widths(nets[0])
        self.widths = widths[:-1] + [max(self.outs)]
        self.size = len(nets)

    def shapes(self) -> list[tuple[int, ...]]:
        pairs = list(zip(self.widths, self.widths[1:], strict=False))
        return [(self.size, a, b) for a, b in pairs] + [(self.size, 1, b) for _, b in pairs]

    def bind(self, views: list[torch.Tensor]) -> None:
        n = len(self.widths) - 1
        self.weights, self.biases = views[:n], views[n:]
        with torch.no_grad():
            for r, layers in enumerate(self.nets):
                for w, b, layer in zip(self.weights, self.biases, layers, strict=True):
                    w[r, :, : layer.out_features] = layer.weight.T
                    b[r, 0, : layer.out_features] = layer.bias
        padded = torch.tensor(
            [[j >= out for j in range(self.widths[-1])] for out in self.outs],
            device=views[0].device,
        )
        self.padding = padded[:, None, :]  # (R, 1, width): True where a class does not exist
        self.padded = bool(padded.any())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = torch.baddbmm(b, z, w)
            if k < last:
                z = torch.relu(z)
        return z.masked_fill(self.padding, -math.inf) if self.padded else z

    @torch.no_grad()
    def write_back(self, r: int, flat_copy: torch.Tensor, flat: _Flat) -> None:
        """Slot r's weights, taken from ``flat_copy`` (a snapshot of ``flat.data``), into its
        original nn.Linear layers."""
        for w, b, layer in zip(self.weights, self.biases, self.nets[r], strict=True):
            out = layer.out_features
            layer.weight.copy_(_at(flat_copy, w, flat)[r, :, :out].T)
            layer.bias.copy_(_at(flat_copy, b, flat)[r, 0, :out])


def _at(flat_copy: torch.Tensor, view: torch.Tensor, flat: _Flat) -> torch.Tensor:
    """The same view as ``view`` (a view of ``flat.data``) but into ``flat_copy``."""
    offset = (view.data_ptr() - flat.data.data_ptr()) // view.element_size()
    return flat_copy[offset : offset + view.numel()].view(view.shape)


def _per_input_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """attack.official_loss before its weighting, on (R, B, k) logits: (R, B)."""
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(2)
    r, b, k = logits.shape
    return F.cross_entropy(logits.reshape(r * b, k), y.reshape(r * b), reduction="none").view(r, b)


def stackable(regimes: list[Regime]) -> bool:
    """Whether ``train_together`` can take these regimes: all frozen or none, every trained
    official the same MLP, every secret network the same MLP up to its output width."""
    if len({r.official_frozen for r in regimes}) != 1:
        return False
    if not regimes[0].official_frozen:
        bodies = [mlp_layers(r.official.body) for r in regimes]
        if any(b is None for b in bodies) or len({tuple(_widths(b)) for b in bodies}) != 1:
            return False
    secrets = [mlp_layers(net) for r in regimes for net in r.secrets.values()]
    if any(s is None for s in secrets):
        return False
    return len({tuple(_widths(s)[:-1]) for s in secrets}) <= 1


def train_together(
    regimes: list[Regime],
    train: ScoreData,
    val: ScoreData,
    task: OfficialTask,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    on_epoch: Callable[[str], None],
) -> list[tuple[int, list[dict[str, float]]]]:
    """Train ``regimes`` (``stackable``) side by side, as ``attack.train_regime`` trains each.

    Each regime's networks end at its selected epoch, written back into its own modules.
    Returns, per regime, the epoch kept and the validation history."""
    for r in regimes:
        if r.official_loss_on and r.official_frozen:
            raise ValueError("a frozen N_o cannot be trained on the official loss")
        check_stealth(r.secret_weight, r.closeness)
        if r.closeness and (r.reference is None or r.official_frozen):
            raise ValueError("a closeness penalty needs a reference network and an N_o that trains")
    with one_thread():
        together = _Together(regimes, train, task, lr)
        best_score = [-np.inf] * len(regimes)
        best_epoch = [0] * len(regimes)
        best_flat = [together.flat.data.clone() for _ in regimes]
        histories: list[list[dict[str, float]]] = [[] for _ in regimes]
        for epoch in range(1, epochs + 1):
            together.data.shuffle()
            for batch in together.data.batches(batch_size):
                together.step(batch)
            for j, metrics in enumerate(together.validate(val)):
                r = regimes[j]
                histories[j].append({"epoch": epoch, **metrics})
                score = (metrics["official"] if r.official_loss_on else 0.0) + (
                    r.secret_weight * np.mean([metrics[name] for name in r.secrets])
                    if r.secrets
                    else 0.0
                )
                if score > best_score[j]:
                    best_score[j], best_epoch[j] = score, epoch
                    best_flat[j] = together.flat.data.clone()
                on_epoch(f"epoch {epoch}/{epochs}")
        together.write_back(best_flat)
        return list(zip(best_epoch, histories, strict=True))


class _Together:
    """The stacks, their flat buffer, Adam and the data of one ``train_together`` call."""

    def __init__(self, regimes: list[Regime], train: ScoreData, task: OfficialTask, lr: float):
        self.regimes, self.task = regimes, task
        self.frozen = regimes[0].official_frozen
        self.device = device_of(regimes[0].official)
        self.officials = (
            None if self.frozen else _Stack([mlp_layers(r.official.body) for r in regimes])
        )
        self.slots = [(j, name) for j, r in enumerate(regimes) for name in r.secrets]
        self.secrets = (
            _Stack([mlp_layers(regimes[j].secrets[n]) for j, n in self.slots])
            if self.slots
            else None
        )
        stacks = [s for s in (self.officials, self.secrets) if s is not None]
        self.flat = _Flat([shape for s in stacks for shape in s.shapes()], self.device)
        at = 0
        for s in stacks:
            s.bind(self.flat.views[at : at + len(s.shapes())])
            at += len(s.shapes())
        self.adam = _Adam(self.flat, lr)
        self.data = _Batches(regimes, self.slots, train, self.device)
        # The stealthy supplier's terms (attack's docstring), only where a regime asks for them,
        # so that the paper's regimes compute exactly what they computed before.
        weights = [r.secret_weight for r in regimes]
        self.bend = (
            None
            if self.frozen or all(w == 1.0 for w in weights)
            else torch.tensor(weights, device=self.device)[:, None, None]
        )
        self.close = [j for j, r in enumerate(regimes) if r.closeness]
        self.mu = torch.tensor([regimes[j].closeness for j in self.close], device=self.device)

    def step(self, batch: _Batch) -> None:
        loss = torch.zeros((), device=self.device)
        if self.frozen:
            scores = batch.scores
        else:
            logits = self.officials.forward(batch.x)
            scores = to_scores(logits, self.task)
            per_input = _per_input_loss(logits, batch.official, self.task.kind)
            loss = loss + ((per_input * batch.w_official).mean(1) * self.data.loss_on).sum()
            if self.close:
                d = divergence(logits[self.close], batch.reference, self.task).mean(1)
                loss = loss + (d * self.mu).sum()
            if self.bend is not None:
                scores = scale_gradient(scores, self.bend)
        if self.slots:
            features = torch.cat([scores[self.data.slot_of], batch.side], dim=2)
            per_input = _per_input_loss(self.secrets.forward(features), batch.secret, "multiclass")
            loss = loss + ((per_input * batch.w_secret).mean(1) * self.data.slot_share).sum()
        self.flat.grad.zero_()
        loss.backward()
        self.adam.step()

    @torch.no_grad()
    def validate(self, val: ScoreData) -> list[dict[str, float]]:
        """Per regime, what ``attack._evaluate`` measures: official and secret accuracy."""
        if self.frozen:
            scores = np.stack([predict_scores(r.official, val.x) for r in self.regimes])
        else:
            x = torch.as_tensor(val.x).to(self.device)
            scores = to_scores(
                self.officials.forward(x.expand(len(self.regimes), *x.shape)), self.task
            )
            scores = scores.cpu().numpy()
        out = [
            {"official": official_quality(s, val.official, self.task)["accuracy"]} for s in scores
        ]
        if self.slots:
            side = torch.as_tensor(val.side).to(self.device)
            chosen = torch.as_tensor(scores).to(self.device)[self.data.slot_of]
            features = torch.cat([chosen, side.expand(len(self.slots), *side.shape)], dim=2)
            decoded = self.secrets.forward(features).argmax(dim=2).cpu().numpy()
            for (j, name), guess in zip(self.slots, decoded, strict=True):
                out[j][name] = accuracy(guess, val.secrets[name])
        return out

    def write_back(self, best_flat: list[torch.Tensor]) -> None:
        """Each regime's networks at its kept epoch, into its own modules."""
        if self.officials is not None:
            for j, kept in enumerate(best_flat):
                self.officials.write_back(j, kept, self.flat)
        for i, (j, _) in enumerate(self.slots):
            self.secrets.write_back(i, best_flat[j], self.flat)


@dataclass
class _Batch:
    x: torch.Tensor | None  # (J, B, d), None when N_o is frozen
    scores: torch.Tensor | None  # (J, B, k_o), the frozen N_o's scores
    official: torch.Tensor  # (J, B) or (J, B, k_o)
    w_official: torch.Tensor  # (J, B)
    side: torch.Tensor  # (S, B, d_side)
    secret: torch.Tensor  # (S, B)
    w_secret: torch.Tensor  # (S, B)
    reference: torch.Tensor | None = None  # (C, B, k_o): the honest predictions, C close regimes


class _Batches:
    """The training data in each regime's batch order, gathered once per epoch so that a step
    only slices. Orders are drawn as train_regime draws them: one randperm per epoch from a
    generator seeded with the regime's seed."""

    def __init__(
        self, regimes: list[Regime], slots: list[tuple[int, str]], train: ScoreData, device
    ) -> None:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a).to(device)

        self.frozen = regimes[0].official_frozen
        self.n = len(train)
        self.x, self.side, self.official = t(train.x), t(train.side), t(train.official)
        self.w_official = t(train.weight("official"))
        self.secret = torch.stack([t(train.secrets[name]) for _, name in slots]) if slots else None
        self.w_secret = torch.stack([t(train.weight(name)) for _, name in slots]) if slots else None
        self.frozen_scores = (
            torch.stack([t(predict_scores(r.official, train.x)) for r in regimes])
            if self.frozen
            else None
        )
        self.slot_of = torch.tensor([j for j, _ in slots], dtype=torch.long, device=device)
        self.slot_share = torch.tensor(
            [1.0 / len(regimes[j].secrets) for j, _ in slots], device=device
        )
        self.loss_on = torch.tensor([float(r.official_loss_on) for r in regimes], device=device)
        self.has_slots = bool(slots)
        close = [r for r in regimes if r.closeness]
        self.close = torch.tensor([j for j, r in enumerate(regimes) if r.closeness], device=device)
        self.reference = (
            torch.stack(
                [reference_predictions(r.reference, train.x, r.official.task) for r in close]
            )
            if close
            else None
        )
        self.generators = [torch.Generator().manual_seed(r.seed) for r in regimes]
        self.device = device

    def shuffle(self) -> None:
        order = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators])
        order = order.to(self.device)
        self.epoch_x = None if self.frozen else self.x[order]
        self.epoch_scores = (
            torch.stack([s[o] for s, o in zip(self.frozen_scores, order, strict=True)])
            if self.frozen
            else None
        )
        self.epoch_official, self.epoch_w_official = self.official[order], self.w_official[order]
        if self.has_slots:
            by_slot = order[self.slot_of]
            self.epoch_side = self.side[by_slot]
            self.epoch_secret = self.secret.gather(1, by_slot)
            self.epoch_w_secret = self.w_secret.gather(1, by_slot)
        if self.reference is not None:
            by_close = order[self.close]
            self.epoch_reference = torch.stack(
                [ref[o] for ref, o in zip(self.reference, by_close, strict=True)]
            )

    def batches(self, size: int):
        for start in range(0, self.n, size):
            b = slice(start, start + size)
            yield _Batch(
                x=None if self.frozen else self.epoch_x[:, b],
                scores=self.epoch_scores[:, b] if self.frozen else None,
                official=self.epoch_official[:, b],
                w_official=self.epoch_w_official[:, b],
                side=self.epoch_side[:, b] if self.has_slots else None,
                secret=self.epoch_secret[:, b] if self.has_slots else None,
                w_secret=self.epoch_w_secret[:, b] if self.has_slots else None,
                reference=None if self.reference is None else self.epoch_reference[:, b],
            )
