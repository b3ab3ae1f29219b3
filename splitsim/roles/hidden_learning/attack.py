"""The hidden-learning model supplier (da Cunha, Natale, Viennot, OLA 2023; papers/001, section 2).

Threat model: a supplier ships an official network N_o that data owners run on their private
input x; only the scores N_o(x) (and declared side information, e.g. the Covid app's region)
reach the supplier's server. The supplier trained N_o jointly with a secret network N_s that
reads those scores, minimising the paper's combined loss

    L = L_o(N_o(x), y_o) + L_s(N_s(N_o(x)), y_s)                              (section 2)

so that N_o stays accurate on the official task while its scores carry the secret. The paper's
two baselines are trained too: To-then-Ts (N_o trained on L_o alone, then N_s on its frozen
scores: the black-box attacker) and Ts-only (the whole stack trained on L_s: the upper bound).
Model selection keeps the epoch with the best validation accuracy, the sum of both accuracies
for To-and-Ts (section 4.1). Several secrets share one N_o: L_s is their mean.

The stealthiest supplier the loss allows (issue 27, our extension): the shipped N_o minimises

    L_o + lambda * L_s + mu * D(N_o(x), N_honest(x))

with ``secret_weight`` lambda (the paper's loss is lambda = 1) and ``closeness`` mu, D the
per-input KL from an honest N_o's predictions (``scores.divergence``, which says why KL). The
weight bends N_o only: N_s still minimises all of L_s (``scores.scale_gradient``), so at
lambda = 0 it reads an honest-trained N_o as well as it can, a black-box attacker trained
alongside. With Adam this is the same trajectory as minimising lambda * L_s for N_s too, up
to Adam's eps, since Adam is invariant to a gradient's scale. With mu > 0 the honest N_o
trains first (its selected epoch is the reference), then the hidden one against it. Model
selection keeps the epoch with the best official + lambda * secret validation accuracy: at
lambda = 1 the paper's score, at lambda = 0 an honest supplier's; a stealthy supplier ships
what an honest one would have selected, and weighs the secret as its loss does (a threshold
such as "best official accuracy with the secret above x" needs an x that no one can pick
before the curve is known). At lambda = 1, mu = 0 every number is computed as before.

Shapes: x (n, ...) -> scores (n, k_o), in [0, 1] or logits (``OfficialTask.released``);
secret input [scores, side] (n, k_o + d) -> logits (n, k_s).

    >>> models = train_supplier(dataset, scenario, progress)       # all three regimes
    >>> models.decode("cv_risk", scores, side)                     # what the server learns
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from splitsim import seeds
from splitsim.data.score_data import OfficialTask, ScoreData
from splitsim.metrics import accuracy, majority_rate
from splitsim.roles.hidden_learning.scores import (
    ScoreNet,
    check_stealth,
    device_of,
    divergence,
    official_loss,
    official_quality,
    predict_scores,
    predict_secret,
    reference_predictions,
    scale_gradient,
    secret_input,
    to_scores,
)
from splitsim.roles.hidden_learning.stacked import Regime, stackable, train_together

Progress = Callable[[str], None]


@dataclass
class Trained:
    """One regime's networks after model selection, with the epoch that was kept."""

    official: ScoreNet
    secrets: dict[str, nn.Module]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def _evaluate(
    official: ScoreNet, secrets: dict[str, nn.Module], data: ScoreData, task: OfficialTask
) -> dict[str, float]:
    scores = predict_scores(official, data.x)
    out = {"official": official_quality(scores, data.official, task)["accuracy"]}
    for name, net in secrets.items():
        out[name] = accuracy(predict_secret(net, scores, data.side), data.secrets[name])
    return out


def train_regime(
    official: ScoreNet,
    secrets: dict[str, nn.Module],
    train: ScoreData,
    val: ScoreData,
    task: OfficialTask,
    *,
    official_loss_on: bool,
    official_frozen: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_epoch: Progress,
    secret_weight: float = 1.0,
    closeness: float = 0.0,
    reference: ScoreNet | None = None,
) -> Trained:
    """Minimise [L_o] + sum_s L_s with Adam; keep the epoch with the best validation accuracy.

    The selection score sums the accuracies of the tasks this regime optimises: official plus
    secret for To-and-Ts, the official alone for an honest N_o, the secret alone otherwise.
    With several secrets, L_s and the secret accuracy are averaged over them, so the balance
    between official and secret stays the paper's one to one.

    The stealthy supplier (module docstring): N_o minimises L_o + secret_weight * L_s
    + closeness * D(N_o(x), reference(x)), and the secret term of the selection score is
    weighted by ``secret_weight`` too. The defaults are the paper's loss, computed as before.
    """
    if official_loss_on and official_frozen:
        raise ValueError("a frozen N_o cannot be trained on the official loss")
    check_stealth(secret_weight, closeness)
    if closeness and (reference is None or official_frozen):
        raise ValueError("a closeness penalty needs a reference network and an N_o that trains")
    generator = torch.Generator().manual_seed(seed)
    dev = device_of(official)
    params = [p for net in secrets.values() for p in net.parameters()]
    if not official_frozen:
        params += list(official.parameters())
    optimiser = torch.optim.Adam(params, lr=lr)
    x = torch.as_tensor(train.x).to(dev)
    side = torch.as_tensor(train.side).to(dev)
    y_o = torch.as_tensor(train.official).to(dev)
    w_o = torch.as_tensor(train.weight("official")).to(dev)
    targets = {name: torch.as_tensor(train.secrets[name]).to(dev) for name in secrets}
    weights = {name: torch.as_tensor(train.weight(name)).to(dev) for name in secrets}
    # A frozen N_o gives the same scores every epoch: computing them once spares the To-then-Ts
    # regime 40 forward passes of the CNN over the whole training set.
    frozen_scores = (
        torch.as_tensor(predict_scores(official, train.x)).to(dev) if official_frozen else None
    )
    targets_ref = reference_predictions(reference, train.x, task) if closeness else None
    bend = secret_weight != 1.0 and not official_frozen
    best_score, best_epoch = -np.inf, 0
    best_state = copy.deepcopy(
        (official.state_dict(), {k: v.state_dict() for k, v in secrets.items()})
    )
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        official.train(not official_frozen)
        for net in secrets.values():
            net.train()
        order = torch.randperm(len(x), generator=generator).to(dev)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            if frozen_scores is None:
                logits = official(x[idx])
                scores = to_scores(logits, task)
            else:
                scores = frozen_scores[idx]
            loss = official_loss(logits, y_o[idx], task.kind, w_o[idx]) if official_loss_on else 0.0
            if targets_ref is not None:
                loss = loss + closeness * divergence(logits, targets_ref[idx], task).mean()
            if secrets:
                seen = scale_gradient(scores, secret_weight) if bend else scores
                features = secret_input(seen, side[idx])
                secret_loss = sum(
                    official_loss(
                        net(features), targets[name][idx], "multiclass", weights[name][idx]
                    )
                    for name, net in secrets.items()
                )
                loss = loss + secret_loss / len(secrets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        metrics = _evaluate(official, secrets, val, task)
        history.append({"epoch": epoch, **metrics})
        score = (metrics["official"] if official_loss_on else 0.0) + (
            secret_weight * np.mean([metrics[name] for name in secrets]) if secrets else 0.0
        )
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(
                (official.state_dict(), {k: v.state_dict() for k, v in secrets.items()})
            )
        on_epoch(f"epoch {epoch}/{epochs}")
    official.load_state_dict(best_state[0])
    for name, net in secrets.items():
        net.load_state_dict(best_state[1][name])
    return Trained(official=official, secrets=secrets, best_epoch=best_epoch, history=history)


@dataclass
class SupplierModels:
    """Everything the supplier trained: the shipped (hidden) N_o and the baselines."""

    task: OfficialTask
    hidden: Trained  # To-and-Ts: the model that is shipped, and the server's N_s
    honest: Trained  # To: an honest supplier's N_o
    then_secret: dict[str, nn.Module]  # To-then-Ts: N_s on the honest N_o's frozen scores
    secret_only: dict[str, Trained]  # Ts-only: the whole stack trained on L_s

    def decode(self, secret: str, scores: np.ndarray, side: np.ndarray) -> np.ndarray:
        """The malicious server's step: secret classes from what the clients sent."""
        return predict_secret(self.hidden.secrets[secret], scores, side)


def split_validation(data: ScoreData, fraction: float, seed: int) -> tuple[ScoreData, ScoreData]:
    """Hold out ``fraction`` of the supplier's training data for model selection (paper: 10 %)."""
    order = seeds.rng(seed, "hidden.validation_split").permutation(len(data))
    n_val = max(1, int(round(fraction * len(data))))
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def train_supplier(
    train_all: ScoreData,
    task: OfficialTask,
    secrets: list[str],
    secret_classes: dict[str, int],
    build_official: Callable[[], nn.Module],
    build_secret: Callable[[int, int], nn.Module],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    validation_fraction: float,
    seed: int,
    on_epoch: Progress,
    device: str | torch.device = "cpu",
    stack: bool = True,
    secret_weight: float = 1.0,
    closeness: float = 0.0,
    baselines: bool = True,
) -> SupplierModels:
    """Train the three regimes of the paper's Table 1 on the supplier's data (and To, the
    honest N_o). ``stack=False`` trains every regime alone, as before ``stacked`` existed.
    ``secret_weight`` and ``closeness`` make the shipped N_o a stealthy one (module
    docstring); ``baselines=False`` trains only the hidden and the honest N_o (no To-then-Ts,
    no Ts-only), for sweeps that need nothing else."""
    check_stealth(secret_weight, closeness)
    train, val = split_validation(train_all, validation_fraction, seed)
    in_secret = task.outputs + train.side.shape[1]
    common = dict(epochs=epochs, batch_size=batch_size, lr=lr, on_epoch=on_epoch)

    def fresh(salt: int) -> tuple[ScoreNet, int]:
        run_seed = seeds.int_seed(seed, "hidden.network_init", salt)
        torch.manual_seed(run_seed)
        return ScoreNet(build_official(), task).to(device), run_seed

    def secret_nets(names: list[str]) -> dict[str, nn.Module]:
        return {name: build_secret(in_secret, secret_classes[name]).to(device) for name in names}

    # Every network is built first, in the order and from the seeds each regime always had;
    # building reseeds torch, so a regime's initial weights do not depend on what trains when.
    official, s = fresh(0)
    hidden = Regime(official, secret_nets(secrets), True, False, s, secret_weight, closeness)
    official, s = fresh(1)
    honest = Regime(official, {}, True, False, s)
    then_secret, secret_only = [], []
    for i, name in enumerate(secrets if baselines else []):
        _, s = fresh(10 + i)
        then_secret.append(Regime(honest.official, secret_nets([name]), False, True, s))
        official_only, s = fresh(20 + i)
        secret_only.append(Regime(official_only, secret_nets([name]), False, False, s))
    # To-then-Ts reads the honest N_o's scores, so it trains once To has finished; so does a
    # hidden N_o held close to the honest one. Without baselines the honest N_o trains alone
    # too, so that every point of a sweep compares with one honest N_o, bit for bit (stacked
    # with another regime its floats round differently).
    if closeness == 0 and baselines:
        first = [hidden, honest, *secret_only]
        hidden_t, honest_t, *only_t = train_regimes(first, train, val, task, stack=stack, **common)
    else:
        honest_t, *only_t = train_regimes(
            [honest, *secret_only], train, val, task, stack=stack, **common
        )
        hidden.reference = honest_t.official
        (hidden_t,) = train_regimes([hidden], train, val, task, stack=stack, **common)
    then = train_regimes(then_secret, train, val, task, stack=stack, **common)
    trained = secrets if baselines else []
    return SupplierModels(
        task,
        hidden_t,
        honest_t,
        {name: t.secrets[name] for name, t in zip(trained, then, strict=True)},
        dict(zip(trained, only_t, strict=True)),
    )


def train_regimes(
    regimes: list[Regime],
    train: ScoreData,
    val: ScoreData,
    task: OfficialTask,
    *,
    stack: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    on_epoch: Progress,
) -> list[Trained]:
    """Train independent regimes: side by side in one loop (``stacked``) when their networks
    are MLPs, otherwise one after the other with ``train_regime``."""
    if not regimes:
        return []
    common = dict(epochs=epochs, batch_size=batch_size, lr=lr, on_epoch=on_epoch)
    if stack and stackable(regimes):
        kept = train_together(regimes, train, val, task, **common)
        return [
            Trained(r.official, r.secrets, best_epoch=epoch, history=history)
            for r, (epoch, history) in zip(regimes, kept, strict=True)
        ]
    return [
        train_regime(
            r.official,
            r.secrets,
            train,
            val,
            task,
            official_loss_on=r.official_loss_on,
            official_frozen=r.official_frozen,
            seed=r.seed,
            secret_weight=r.secret_weight,
            closeness=r.closeness,
            reference=r.reference,
            **common,
        )  # fmt: skip
        for r in regimes
    ]


def regime_metrics(models: SupplierModels, test: ScoreData, secrets: list[str]) -> dict:
    """Table 1 of the paper for one experiment: official quality and secret accuracy per regime."""
    task = models.task
    hidden_scores = predict_scores(models.hidden.official, test.x)
    honest_scores = predict_scores(models.honest.official, test.x)
    out: dict = {
        "official": {
            "hidden": official_quality(hidden_scores, test.official, task),
            "honest": official_quality(honest_scores, test.official, task),
        },
        "secrets": {},
        "best_epoch": {"to_and_ts": models.hidden.best_epoch, "to": models.honest.best_epoch},
        # validation accuracy per epoch, for tracking (TensorBoard) and a reader's own curves
        "history": {
            "to_and_ts": models.hidden.history,
            "to": models.honest.history,
            **{f"ts_only_{name}": t.history for name, t in models.secret_only.items()},
        },
    }
    for name in secrets:
        y = test.secrets[name]
        cells = {
            "to_and_ts": accuracy(
                predict_secret(models.hidden.secrets[name], hidden_scores, test.side), y
            )
        }
        if name in models.then_secret:  # trained unless train_supplier(baselines=False)
            decoded = predict_secret(models.then_secret[name], honest_scores, test.side)
            cells["to_then_ts"] = accuracy(decoded, y)
        if name in models.secret_only:
            only = models.secret_only[name]
            only_scores = predict_scores(only.official, test.x)
            cells["ts_only"] = accuracy(
                predict_secret(only.secrets[name], only_scores, test.side), y
            )
        out["secrets"][name] = {**cells, "chance": majority_rate(y)}
    return out


def weight_noise_robustness(
    models: SupplierModels,
    test: ScoreData,
    secret: str,
    sigmas: list[float],
    injections: int,
    seed: int,
) -> list[dict[str, float]]:
    """The paper's Table 2: N(0, sigma^2) on every weight of the hidden N_o, N_s unchanged;
    official and secret test accuracy averaged over ``injections`` draws, with their spread.
    At sigma 0 every draw is the network itself, so it is scored once for all of them."""
    net, rows = models.hidden.official, []
    original = copy.deepcopy(net.state_dict())
    for i, sigma in enumerate(sigmas):
        official_acc, secret_acc = [], []
        for j in range(injections if sigma > 0 else 1):
            gen = torch.Generator().manual_seed(
                seeds.int_seed(seed, "hidden.robustness_noise", i, j)
            )
            net.load_state_dict(
                {
                    k: v + sigma * torch.randn(v.shape, generator=gen).to(v.device)
                    for k, v in original.items()
                }
            )
            scores = predict_scores(net, test.x)
            official_acc.append(official_quality(scores, test.official, models.task)["accuracy"])
            decoded = predict_secret(models.hidden.secrets[secret], scores, test.side)
            secret_acc.append(accuracy(decoded, test.secrets[secret]))
        if sigma == 0:
            official_acc, secret_acc = official_acc * injections, secret_acc * injections
        spread = (lambda v: float(np.std(v, ddof=1))) if injections > 1 else (lambda v: 0.0)
        rows.append(
            {
                "sigma": float(sigma),
                "official_mean": float(np.mean(official_acc)),
                "official_std": spread(official_acc),
                "secret_mean": float(np.mean(secret_acc)),
                "secret_std": spread(secret_acc),
            }
        )
    net.load_state_dict(original)
    return rows


def owner_scores(
    official: ScoreNet,
    x: np.ndarray,
    defences: list,
    rng: np.random.Generator,
    *,
    owner_size: int | None = None,
    build_official: Callable[[], ScoreNet] | None = None,
    seed: int = 0,
    part: int = 0,
) -> np.ndarray:
    """The scores the network a defended data owner runs gives on ``x``: its ``weights``
    defences on a copy of N_o, then its ``model`` defences (distillation: for each block of
    ``owner_size`` records, as many as one owner holds, a fresh network from
    ``build_official`` trained on the noisy N_o's top-1 answers for that block, which then
    scores it; seeds from ``hidden.adaptive_distillation``, ``part`` and the block)."""
    from splitsim.defences import apply_stage

    state = official.state_dict()
    noisy = copy.deepcopy(official)
    noisy.load_state_dict(
        {
            k: torch.as_tensor(apply_stage(defences, "weights", v.cpu().numpy(), rng)).to(v.device)
            for k, v in state.items()
        }
    )
    distillers = [(j, d) for j, d in enumerate(defences) if d.stage == "model"]
    if not distillers:
        return predict_scores(noisy, x)
    if owner_size is None or build_official is None:
        raise ValueError("a model-stage defence needs owner_size and build_official")
    parts = []
    for block, start in enumerate(range(0, len(x), owner_size)):
        chunk = x[start : start + owner_size]
        net = noisy
        for j, defence in distillers:
            own = seeds.int_seed(seed, "hidden.adaptive_distillation", part, block, j)
            net = defence.distil(net, build_official, chunk, official.task.kind, own)
        parts.append(predict_scores(net, chunk))
    return np.concatenate(parts)


def released_scores(
    scores: np.ndarray, defences: list, task: OfficialTask, rng: np.random.Generator
) -> np.ndarray:
    """What a data owner sends of its network's scores: its ``scores`` defences (which know
    the task), then its ``payload`` ones."""
    from splitsim.defences import apply_scores, apply_stage

    return apply_stage(defences, "payload", apply_scores(defences, scores, task, rng), rng)


def defended_scores(
    official: ScoreNet,
    x: np.ndarray,
    defences: list,
    rng: np.random.Generator,
    *,
    owner_size: int | None = None,
    build_official: Callable[[], ScoreNet] | None = None,
    seed: int = 0,
    part: int = 0,
) -> np.ndarray:
    """The scores a defended data owner would send, in the order the ClientApp applies its
    defences (hidden_learning/protocol.py): ``owner_scores`` (weights, model; its keyword
    arguments), then ``released_scores`` (scores, payload)."""
    scores = owner_scores(official, x, defences, rng, owner_size=owner_size,
                          build_official=build_official, seed=seed, part=part)  # fmt: skip
    return released_scores(scores, defences, official.task, rng)


def adapt_to_defences(
    models: SupplierModels,
    train_all: ScoreData,
    defences: list,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    validation_fraction: float,
    seed: int,
    on_epoch: Progress,
    owner_size: int | None = None,
    build_official: Callable[[], ScoreNet] | None = None,
) -> list[dict[str, float]]:
    """The adaptive supplier (our extension for the comparison matrix; papers/001 assumes
    undefended clients): knowing the data owners' defences, it fine-tunes each shipped N_s on
    scores defended the way a data owner defends them, computed on its own training records,
    with fresh noise every epoch. N_o, the shipped model, is unchanged. The epoch with the best
    mean secret accuracy on equally defended validation scores is kept.

    Against a distilling owner (``model`` stage) it distils as the owners do, on its own
    records in blocks of ``owner_size`` (one owner's records), a fresh network from
    ``build_official`` per block, once: distilling again every epoch would cost a training per
    block per epoch, while the noise of the stages after it is still drawn afresh each epoch."""
    train, val = split_validation(train_all, validation_fraction, seed)
    nets = models.hidden.secrets
    official = models.hidden.official
    task = official.task
    dev = device_of(official)
    params = [p for net in nets.values() for p in net.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seeds.int_seed(seed, "hidden.adaptive_batches"))
    owner = dict(owner_size=owner_size, build_official=build_official, seed=seed)
    val_scores = defended_scores(
        official, val.x, defences, seeds.rng(seed, "hidden.adaptive_val_noise"), part=1, **owner
    )
    distilled = None
    if any(d.stage == "model" for d in defences):
        noise = seeds.rng(seed, "hidden.adaptive_noise", 0)
        distilled = owner_scores(official, train.x, defences, noise, part=0, **owner)
    side = torch.as_tensor(train.side).to(dev)
    targets = {name: torch.as_tensor(train.secrets[name]).to(dev) for name in nets}
    weights = {name: torch.as_tensor(train.weight(name)).to(dev) for name in nets}

    def val_accuracy() -> float:
        return float(
            np.mean(
                [
                    accuracy(predict_secret(net, val_scores, val.side), val.secrets[name])
                    for name, net in nets.items()
                ]
            )
        )

    best, best_state = val_accuracy(), copy.deepcopy({k: v.state_dict() for k, v in nets.items()})
    history = [{"epoch": 0, "secret_val": best}]
    for epoch in range(1, epochs + 1):
        rng = seeds.rng(seed, "hidden.adaptive_noise", epoch)
        if distilled is None:
            defended = defended_scores(official, train.x, defences, rng)
        else:
            defended = released_scores(distilled, defences, task, rng)
        scores = torch.as_tensor(defended).to(dev)
        for net in nets.values():
            net.train()
        order = torch.randperm(len(scores), generator=generator).to(dev)
        for start in range(0, len(scores), batch_size):
            idx = order[start : start + batch_size]
            features = secret_input(scores[idx], side[idx])
            loss = sum(
                official_loss(net(features), targets[name][idx], "multiclass", weights[name][idx])
                for name, net in nets.items()
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        score = val_accuracy()
        history.append({"epoch": epoch, "secret_val": score})
        if score > best:
            best, best_state = score, copy.deepcopy({k: v.state_dict() for k, v in nets.items()})
        on_epoch(f"epoch {epoch}/{epochs}")
    for name, net in nets.items():
        net.load_state_dict(best_state[name])
    return history
