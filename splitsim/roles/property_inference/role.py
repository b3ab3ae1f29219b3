"""Threat model: an adversarial participant of federated training infers a property of a target
participant's data (papers/002, section 3; attacks/property_inference.py says how).

FedAvg through Flower (engine/federated.py) with ``deployment.clients`` honest participants and
one adversary. Each round every participant trains on ``records_per_round`` records it holds:

- the target (partition ``target``) trains, in a seeded half of the rounds, on records of which
  ``target_fraction`` have the property, and in the others on records without it (the paper's
  "whether another participant's data has the property", one answer per round);
- the other honest participants draw from their share of the population;
- the adversary trains on its own labelled records with ``alpha * L(x, y) + (1 - alpha) * L(x, p)``.

Each value of ``alpha`` (the scenario's, then ``compare_alphas``: by default the passive 1.0) is
one complete federated training with the same data schedule; the report puts them side by side:
property-inference AUC, main-task accuracy of the global model, how well the global model's
features separate the property (a linear probe, and a t-SNE picture: the paper's Figure 3).

The default task is Fashion-MNIST with two visually similar garments per class (T-shirt/shirt,
pullover/coat, sandal/sneaker, trouser/dress, bag/ankle boot), and the property is "the second
garment of the pair": independent of the task label, and of no use to it.
"""

from __future__ import annotations

import functools
import shutil
import time
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitsim import seeds
from splitsim.data.images import FASHION_CLASSES, FashionMNIST, _load
from splitsim.data.score_data import partition_sizes
from splitsim.defences import apply_stage
from splitsim.defences import build as build_defences
from splitsim.engine import federated
from splitsim.engine.local_training import flat_parameters, load_flat, train_locally
from splitsim.engine.node_state import state_root
from splitsim.engine.resources import client_device
from splitsim.engine.simulation import simulate
from splitsim.engine.wire import WireLog
from splitsim.engine.wire import client_records as wire_records
from splitsim.errors import ScenarioError
from splitsim.registry import MODELS, ROLES
from splitsim.roles.property_inference import attack, report
from splitsim.runs import Run
from splitsim.scenario import Deployment, Scenario, Training


@ROLES.register("property_inference")
class PropertyInferenceParticipant:
    """Participant of FedAvg training that infers a target's data property (active or passive)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        task_groups: list[list[int]] = Field(
            [[0, 6], [2, 4], [5, 7], [1, 3], [8, 9]],
            description="the main task: each class is a group of original dataset classes",
        )
        property_classes: list[int] = Field(
            [6, 4, 7, 3, 9], description="original classes that have the property"
        )
        alpha: float = Field(0.7, gt=0, le=1, description="weight of the task loss (paper: 0.7)")
        compare_alphas: list[float] = Field(
            [1.0], description="further alphas run for comparison (1.0: the passive attacker)"
        )
        rounds: int = Field(90, ge=2, description="FedAvg rounds")
        target: int = Field(0, ge=0, description="partition of the target participant")
        target_fraction: float = Field(
            0.2, gt=0, le=1, description="share of property records in a target's property round"
        )
        records_per_round: int = Field(256, ge=8, description="records each participant trains")
        local_epochs: int = Field(1, ge=1)
        local_batch_size: int = Field(32, ge=1)
        local_lr: float = Field(0.05, gt=0, description="local SGD learning rate")
        aux_size: int = Field(10_000, ge=100, description="the adversary's own labelled records")
        synthetic: int = Field(
            20, ge=2, description="update pairs (with / without the property) per round"
        )
        observe: Literal["classifier", "features", "all"] = Field(
            "classifier", description="the layer whose update the adversary reads"
        )
        burn_in: int = Field(30, ge=0, description="early rounds the inference ignores")
        classifier_c: float = Field(0.01, gt=0, description="inverse L2 strength of the probe")
        adaptive: bool = Field(
            False, description="synthetic updates go through the participants' defences"
        )
        projection: Literal["tsne", "pca"] = "tsne"
        projection_points: int = Field(1000, ge=50)

        @model_validator(mode="after")
        def _consistent(self) -> PropertyInferenceParticipant.Params:
            flat = [c for g in self.task_groups for c in g]
            if len(flat) != len(set(flat)) or len(self.task_groups) < 2:
                raise ValueError("task_groups: two or more groups, each class in one group")
            if not set(self.property_classes) <= set(flat) or not self.property_classes:
                raise ValueError("property_classes: a non-empty subset of the task's classes")
            if set(self.property_classes) == set(flat):
                raise ValueError("property_classes: some task classes must lack the property")
            if any(not 0 < a <= 1 for a in self.compare_alphas):
                raise ValueError("compare_alphas: each alpha in (0, 1]")
            if self.burn_in >= self.rounds - 1:
                raise ValueError("burn_in: must leave at least two rounds to score")
            return self

    stages = ("update", "training")
    fault_tolerant = True  # engine.faults / on_client_failure: FedAvg aggregates who answered
    gpu_clients = True  # engine.client_device: local training on the actor's GPU share

    @staticmethod
    def flower_nodes(scenario: Scenario) -> int:
        """Flower nodes the role's phases need (SuperNodes under the deployment engine)."""
        return scenario.deployment.clients + 1

    models = {"federated": "feature_mlp"}
    report = report
    adaptive_override = "role.adaptive=true"

    @staticmethod
    def summary(metrics: dict) -> dict:
        """Matrix numbers: the global model's task accuracy under the scenario's attacker, and
        that attacker's property-inference AUC (no information: 0.5)."""
        head = metrics["attackers"][0]
        return {
            "utility": {"name": "global task accuracy", "value": head["accuracy"],
                        "chance": metrics["chance"]},
            "leakage": [
                {"name": "property-inference AUC", "value": head["auc"], "chance": 0.5},
                {"name": "feature probe AUC", "value": head["features"]["probe_auc"],
                 "chance": 0.5},
            ],
        }  # fmt: skip

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p = scenario.role.params
        if scenario.dataset.name != "fashion_mnist":
            raise ScenarioError(
                source, "dataset.name", "role property_inference runs on fashion_mnist"
            )
        for name in ("tasks",):
            if getattr(scenario, name) is not None:
                raise ScenarioError(source, name, "not used by role property_inference; remove it")
        # Compared with the defaults, not "was it written": a resolved scenario (a matrix
        # cell, a run folder's scenario.yaml) spells every default out.
        if scenario.training != Training():
            raise ScenarioError(
                source,
                "training",
                "not used by role property_inference; set role.rounds, role.local_epochs, "
                "role.local_batch_size, role.local_lr",
            )
        if scenario.deployment.users != Deployment().users:
            raise ScenarioError(
                source, "deployment.users", "not used by role property_inference; remove it"
            )
        clients = scenario.deployment.clients
        if p.target >= clients:
            raise ScenarioError(
                source, "role.target", f"must be below deployment.clients ({clients})"
            )
        if max(p.property_classes + [c for g in p.task_groups for c in g]) >= len(FASHION_CLASSES):
            raise ScenarioError(
                source, "role.task_groups", "classes are Fashion-MNIST class numbers 0-9"
            )
        for i, fault in enumerate(scenario.engine.faults):
            if fault.partition > clients:
                raise ScenarioError(
                    source,
                    f"engine.faults.{i}.partition",
                    f"participants are 0-{clients - 1}, the adversary {clients}",
                )
        most = min(30_000, 60_000 - 4 * clients * p.records_per_round)
        if p.aux_size > most:
            raise ScenarioError(
                source,
                "role.aux_size",
                f"at most {most}: the 60,000 training images must leave each of {clients} "
                "participants 4 x records_per_round",
            )
        if any(d.name == "dp_sgd" for d in scenario.defences) and p.local_batch_size > (
            p.records_per_round
        ):
            raise ScenarioError(
                source, "role.local_batch_size", "must not exceed records_per_round under dp_sgd"
            )

    @staticmethod
    def run(scenario: Scenario, run: Run) -> dict:
        torch.use_deterministic_algorithms(True, warn_only=True)
        p = scenario.role.params
        setup = _Setup(scenario)
        alphas = [p.alpha] + [a for a in p.compare_alphas if a != p.alpha]
        attackers, finals = [], {}
        wire_totals = {"messages": 0, "bytes_to_clients": 0, "bytes_from_clients": 0}
        failures: list[dict] = []
        for k, alpha in enumerate(alphas):
            row, weights, wire = _train_once(scenario, run, setup, alpha, k)
            attackers.append(row)
            finals[alpha] = weights
            failures += [{"alpha": alpha, **f} for f in row.pop("failures")]
            wire_totals["messages"] += wire.messages
            wire_totals["bytes_to_clients"] += wire.bytes["to_clients"]
            wire_totals["bytes_from_clients"] += wire.bytes["from_clients"]

        # Figure 3: the global models' features on test records, coloured by the property.
        with run.phase("feature projection", len(alphas)) as advance:
            rng = seeds.rng(scenario.seed, "property.probe")
            pick = rng.choice(len(setup.x_test), size=min(p.projection_points, len(setup.x_test)),
                              replace=False)  # fmt: skip
            projections = {}
            for alpha, weights in finals.items():
                feats = setup.features(weights, setup.x_test[pick])
                projections[f"{alpha:g}"] = report.project(feats, p.projection, scenario.seed)
                advance()
        client_records = wire_records(run.folder / "wire.jsonl")
        passive = next((a for a in attackers if a["alpha"] == 1.0), None)
        active = attackers[0]
        dp = [d for d in setup.defences if d.stage == "training"]
        return {
            "metrics": {
                "attackers": attackers,
                "active_minus_passive": (
                    None
                    if passive is None or active is passive
                    else {
                        "auc": active["auc"] - passive["auc"],
                        "accuracy": active["accuracy"] - passive["accuracy"],
                        "probe_auc": active["features"]["probe_auc"]
                        - passive["features"]["probe_auc"],
                    }
                ),
                "chance": setup.chance,
                "property": {
                    "classes": [FASHION_CLASSES[c] for c in p.property_classes],
                    "task_groups": [[FASHION_CLASSES[c] for c in g] for g in p.task_groups],
                    "target": p.target,
                    "target_fraction": p.target_fraction,
                    "property_rounds": int(setup.schedule[1:].sum()),
                    "rounds": p.rounds,
                },
                "participants": {"honest": setup.clients, "adversarial": 1},
                "defences": {
                    "epsilon": (
                        dp[0].epsilon(
                            p.local_batch_size / p.records_per_round,
                            p.rounds
                            * p.local_epochs
                            * round(p.records_per_round / p.local_batch_size),
                        )
                        if dp
                        else None
                    ),
                    "adaptive": p.adaptive,
                },
                "failures": failures,
                "wire": {**wire_totals, "client_records": client_records},
            },
            "plots": {
                "projections": projections,
                "property": setup.p_test[pick],
                "attackers": attackers,
            },  # fmt: skip
        }


class _Setup:
    """Data, partitions and the target's schedule, the same for every alpha of a run."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        p = scenario.role.params
        self.p = p
        self.clients = scenario.deployment.clients
        self.task = attack.PropertyTask(
            tuple(tuple(g) for g in p.task_groups), tuple(p.property_classes)
        )
        labels = self._labels(train=True)
        self._keep = np.flatnonzero(np.isin(labels, self.task.classes))
        self.y, self.prop = self.task.task(labels[self._keep]), self.task.prop(labels[self._keep])
        labels_test = self._labels(train=False)
        self._keep_test = np.flatnonzero(np.isin(labels_test, self.task.classes))
        self.y_test = self.task.task(labels_test[self._keep_test])
        self.p_test = self.task.prop(labels_test[self._keep_test])
        order = seeds.rng(scenario.seed, "property.split").permutation(len(self.y))
        self.aux = np.sort(order[: p.aux_size])
        rest = order[p.aux_size :]
        sizes = partition_sizes(len(rest), self.clients)
        bounds = np.cumsum([0, *sizes])
        self.partitions = [np.sort(rest[bounds[i] : bounds[i + 1]]) for i in range(self.clients)]
        sched = seeds.rng(scenario.seed, "property.schedule").random(p.rounds + 1)
        self.schedule = (sched < 0.5).astype(np.int64)  # index = round; round 0 unused
        self.defences = build_defences(scenario.defences)
        self.chance = float(np.bincount(self.y_test).max() / len(self.y_test))
        self.groups = len(p.task_groups)

    def _labels(self, train: bool) -> np.ndarray:
        params = self.scenario.dataset.params
        return _load(FashionMNIST, params.root, params.download, train)[1]

    # The images are read where they are used (``_load`` caches them per process), so that the
    # participants' ClientApp, which holds this object, ships to Ray actors without them.
    def images(self, ids: np.ndarray) -> np.ndarray:
        params = self.scenario.dataset.params
        return _load(FashionMNIST, params.root, params.download, True)[0][self._keep[ids]]

    @functools.cached_property
    def x_test(self) -> np.ndarray:
        params = self.scenario.dataset.params
        return _load(FashionMNIST, params.root, params.download, False)[0][self._keep_test]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "x_test"}

    def build(self) -> torch.nn.Module:
        spec = self.scenario.models.federated
        return MODELS.get(spec.name).build(spec.params, (1, 28, 28), self.groups)

    def features(self, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        net = self.build()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        net.eval()
        with torch.no_grad():
            return net.features(torch.from_numpy(x)).numpy()

    def draw(
        self, pool: np.ndarray, rng: np.random.Generator, with_property: bool | None
    ) -> np.ndarray:
        """``records_per_round`` ids from ``pool``: any (None), a ``target_fraction`` share with
        the property (True), or none with it (False)."""
        n = self.p.records_per_round
        if with_property is None:
            return rng.choice(pool, size=n, replace=False)
        plain = pool[self.prop[pool] == 0]
        if not with_property:
            return rng.choice(plain, size=n, replace=False)
        k = int(round(self.p.target_fraction * n))
        marked = pool[self.prop[pool] == 1]
        return np.concatenate(
            [
                rng.choice(marked, size=k, replace=False),
                rng.choice(plain, size=n - k, replace=False),
            ]
        )

    def round_records(self, pid: int, rnd: int) -> np.ndarray:
        rng = seeds.rng(self.scenario.seed, "property.round_records", pid, rnd)
        if pid == self.p.target:
            return self.draw(self.partitions[pid], rng, bool(self.schedule[rnd]))
        return self.draw(self.partitions[pid], rng, None)

    def honest_update(
        self, weights: dict[str, np.ndarray], ids: np.ndarray, seed: int, noise_seed: tuple
    ) -> dict[str, np.ndarray]:
        """What an honest participant uploads: train locally (DP-SGD if defended), then pass
        the update through its ``update`` defences."""
        net = self.build()
        net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
        before = flat_parameters(net)
        dp = next((d for d in self.defences if d.stage == "training"), None)
        train_locally(
            net,
            self.images(ids),
            self.y[ids],
            epochs=self.p.local_epochs,
            batch_size=self.p.local_batch_size,
            lr=self.p.local_lr,
            seed=seed,
            dp=dp,
            device=client_device(self.scenario.engine),
        )
        update = flat_parameters(net) - before
        rng = np.random.default_rng(
            seeds.stream(self.scenario.seed, "property.update_noise", *noise_seed)
        )
        update = apply_stage(self.defences, "update", update, rng)
        load_flat(net, before + update)
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _train_once(
    scenario: Scenario, run: Run, setup: _Setup, alpha: float, k: int
) -> tuple[dict, dict[str, np.ndarray], WireLog]:
    """One complete federated training with an adversary of this alpha; its inference."""
    p = setup.p
    seed = scenario.seed
    nodes = setup.clients + 1
    adversary = setup.clients  # the last partition
    torch.manual_seed(seeds.int_seed(seed, "property.init"))
    net0 = setup.build()
    initial = {k2: v.detach().numpy().copy() for k2, v in net0.state_dict().items()}
    observed = attack.layer_slice(net0, p.observe)
    storage = state_root()
    store_dir = storage / "adversary"
    wire = WireLog(run.folder / "wire.jsonl")
    outcome = federated.FederatedOutcome()

    def train(pid: int, rnd: int, weights: dict[str, np.ndarray]) -> tuple[dict, dict]:
        if pid != adversary:
            ids = setup.round_records(pid, rnd)
            out = setup.honest_update(
                weights,
                ids,
                seeds.int_seed(seed, "property.local_training", pid, rnd),
                (k, pid, rnd),
            )
            return out, {"num-examples": len(ids)}
        return _adversary_train(setup, store_dir, alpha, rnd, weights, observed), {
            "num-examples": p.records_per_round
        }

    def evaluate(pid: int, rnd: int, weights: dict[str, np.ndarray]) -> tuple[dict, dict]:
        if pid == adversary:
            store = attack.AdversaryStore(store_dir)
            pending = store.take_pending(rnd)
            if pending is not None:
                net = setup.build()
                net.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in weights.items()})
                others = attack.others_update(pending[0], flat_parameters(net), pending[1], nodes)
                store.save_observed(rnd, others[observed])
        return {}, {"num-examples": 1}

    def evaluate_global(weights: dict[str, np.ndarray]) -> dict[str, float]:
        net = setup.build()
        net.load_state_dict({n: torch.from_numpy(v) for n, v in weights.items()})
        net.eval()
        with torch.no_grad():
            pred = net(torch.from_numpy(setup.x_test)).argmax(1).numpy()
        return {"accuracy": float((pred == setup.y_test).mean())}

    label = f"FedAvg, alpha {alpha:g}"
    started = time.perf_counter()
    try:
        with run.phase(label, 2 * p.rounds) as advance:
            server = federated.server_app(
                initial, p.rounds, nodes, evaluate_global, wire, outcome,
                lambda rnd, phase: advance(), scenario.engine, f"alpha {alpha:g} ",
            )  # fmt: skip
            clients = federated.client_app(train, evaluate, scenario.engine.faults, str(storage))
            simulate(server, clients, nodes, scenario.engine)
        if outcome.error is not None:
            raise RuntimeError(f"the Flower ServerApp failed: {outcome.error}") from outcome.error
        if outcome.weights is None:
            raise RuntimeError("the Flower ServerApp ended before training finished")
        with run.phase(f"inference, alpha {alpha:g}", 1):
            inference = attack.infer(attack.AdversaryStore(store_dir), p.burn_in, p.classifier_c)
    finally:
        wire.close()
        shutil.rmtree(storage, ignore_errors=True)  # the participants' devices go away
    run.timings[label] = round(time.perf_counter() - started, 3)
    truth = setup.schedule[inference.rounds]
    feats = setup.features(outcome.weights, setup.x_test)
    row = {
        "alpha": alpha,
        "role": "passive" if alpha == 1.0 else "active",
        "auc": attack.auc(truth, inference.scores),
        "accuracy": outcome.history[-1]["accuracy"],
        "accuracy_history": [h["accuracy"] for h in outcome.history],
        "features": attack.feature_separation(
            feats, setup.p_test, seeds.int_seed(seed, "property.probe")
        ),
        "scored_rounds": len(inference.rounds),
        "rounds": inference.rounds,
        "scores": inference.scores.tolist(),
        "truth": truth.tolist(),
        "failures": outcome.failures,
    }
    return row, outcome.weights, wire


def _adversary_train(
    setup: _Setup,
    store_dir: object,
    alpha: float,
    rnd: int,
    weights: dict[str, np.ndarray],
    observed: slice,
) -> dict[str, np.ndarray]:
    """The adversary's round: synthetic updates from ``w_t`` on its own records (with and
    without the property), then its own (multi-task) training, whose weights it uploads."""
    p = setup.p
    seed = setup.scenario.seed
    store = attack.AdversaryStore(store_dir)
    rng = seeds.rng(seed, "property.synthetic", rnd)
    net = setup.build()
    net.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in weights.items()})
    before = flat_parameters(net)
    feats, labels = [], []
    known = setup.defences if p.adaptive else []
    for j in range(p.synthetic):
        for with_property in (False, True):
            ids = setup.draw(setup.aux, rng, with_property)
            if known:
                out = setup.honest_update(
                    weights,
                    ids,
                    seeds.int_seed(seed, "property.synthetic", rnd, j, with_property),
                    (setup.clients + 1, rnd, j),
                )
                net_j = setup.build()
                net_j.load_state_dict({n: torch.from_numpy(v) for n, v in out.items()})
            else:
                net_j = setup.build()
                load_flat(net_j, before)
                train_locally(
                    net_j,
                    setup.images(ids),
                    setup.y[ids],
                    epochs=p.local_epochs,
                    batch_size=p.local_batch_size,
                    lr=p.local_lr,
                    seed=seeds.int_seed(seed, "property.synthetic", rnd, j, with_property),
                    device=client_device(setup.scenario.engine),
                )
            feats.append((flat_parameters(net_j) - before)[observed])
            labels.append(int(with_property))
    store.save_synthetic(rnd, np.stack(feats).astype(np.float32), np.array(labels))

    head = torch.nn.Linear(net.feature_dim, 2)
    torch.manual_seed(seeds.int_seed(seed, "property.init", 1))
    head.reset_parameters()
    store.load_head(head)
    ids = rng.choice(setup.aux, size=p.records_per_round, replace=False)
    train_locally(
        net,
        setup.images(ids),
        setup.y[ids],
        epochs=p.local_epochs,
        batch_size=p.local_batch_size,
        lr=p.local_lr,
        seed=seeds.int_seed(seed, "property.local_training", setup.clients, rnd),
        head=head,
        p=setup.prop[ids],
        alpha=alpha,
        device=client_device(setup.scenario.engine),
    )
    store.save_head(head)
    after = flat_parameters(net)
    store.save_pending(rnd, before, after - before)
    return {n: v.detach().numpy().copy() for n, v in net.state_dict().items()}
