"""Threat model: an adversarial participant of federated training infers a property of a target
participant's data (papers/002, section 3; attack.py says how).

FedAvg through Flower (engine/federated.py) with ``deployment.clients`` honest participants and
one adversary (protocol.py). Each round every participant trains on ``records_per_round``
records it holds:

- the target (partition ``target``) trains, in a seeded half of the rounds, on records of which
  ``target_fraction`` have the property, and in the others on records without it (the paper's
  "whether another participant's data has the property", one answer per round);
- the other honest participants draw from their share of the population;
- the adversary trains on its own labelled records with ``alpha * L(x, y) + (1 - alpha) * L(x, p)``.

Phases, in the order they run:

1. deploy: for each value of ``alpha`` (the scenario's, then ``compare_alphas``: by default the
   passive 1.0) one complete federated training with the same data schedule; after it, the
   adversary reports its observations and simulated updates to the harness;
2. attack: per alpha, the adversary's batch-property classifier scores each observed round;
3. truth: the target's schedule, which only the harness knows, and the public test set;
4. evaluate: property-inference AUC, main-task accuracy of the global model, how well the
   global model's features separate the property (a linear probe, and a t-SNE picture: the
   paper's Figure 3).

The default task is Fashion-MNIST with two visually similar garments per class (T-shirt/shirt,
pullover/coat, sandal/sneaker, trouser/dress, bag/ankle boot), and the property is "the second
garment of the pair": independent of the task label, and of no use to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitsim.data import fetch
from splitsim.data.images import FASHION_CLASSES, FashionMNIST, _load
from splitsim.data.partitions import class_histograms
from splitsim.engine import federated
from splitsim.errors import ScenarioError
from splitsim.roles.base import (
    AttackOutput,
    Evaluation,
    Received,
    Role,
    Truth,
    check_faults,
    register,
)
from splitsim.roles.property_inference import attack, report
from splitsim.roles.property_inference.protocol import (
    alphas,
    client_app,
    most_records_per_round,
    participants,
    population,
)
from splitsim.scenario import Deployment, Scenario, Training

RECORDS_MIN, AUX_MIN = 8, 100


@dataclass(kw_only=True)
class PropertyReceived(Received):
    """Per federated training (one per alpha): the final global model, which every participant
    receives, the honest server's per-round history and failures, and what the adversary
    reported it observed (others' mean updates) and simulated (its synthetic updates)."""

    alphas: list[float]
    final: dict[str, np.ndarray]  # "<k>/<parameter>": training k's final global weights
    histories: list[list[dict[str, float]]]
    failures: list[list[dict[str, Any]]]
    rounds: list[np.ndarray]  # per training: the rounds the adversary observed
    synthetic_x: list[np.ndarray]
    synthetic_p: list[np.ndarray]
    observed: list[np.ndarray]

    def weights(self, k: int) -> dict[str, np.ndarray]:
        return {
            name.removeprefix(f"{k}/"): v
            for name, v in self.final.items()
            if name.startswith(f"{k}/")
        }


@dataclass(kw_only=True)
class PropertyOutput(AttackOutput):
    inferences: list[attack.Inference]  # per training


@dataclass(kw_only=True)
class PropertyTruth(Truth):
    schedule: np.ndarray  # the target's property rounds (index = round)
    x_test: np.ndarray  # the public test set, for the global model's features
    y_test: np.ndarray
    p_test: np.ndarray


@register("property_inference")
class PropertyInferenceParticipant(Role):
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
        rounds: int = Field(90, ge=2, le=10_000, description="FedAvg rounds (the paper: 90)")
        target: int = Field(0, ge=0, description="partition of the target participant")
        target_fraction: float = Field(
            0.2, gt=0, le=1, description="share of property records in a target's property round"
        )
        records_per_round: int = Field(
            256, ge=RECORDS_MIN, description="records each participant trains"
        )
        local_epochs: int = Field(1, ge=1)
        local_batch_size: int = Field(32, ge=1)
        local_lr: float = Field(0.05, gt=0, description="local SGD learning rate")
        aux_size: int = Field(
            10_000, ge=AUX_MIN, description="the adversary's own labelled records"
        )
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
    partitioners = ("iid", "dirichlet", "shards")  # the honest participants' shares
    fault_tolerant = True  # engine.faults / on_client_failure: FedAvg aggregates who answered
    gpu_clients = True  # engine.client_device: local training on the actor's GPU share

    @staticmethod
    def flower_nodes(scenario: Scenario) -> int:
        """Flower nodes the role's phases need (SuperNodes under the deployment engine)."""
        return scenario.deployment.clients + 1

    models = {"federated": "feature_mlp"}
    report = report
    datasets = ("fashion_mnist",)
    received_type = PropertyReceived
    adaptive_override = "role.adaptive=true"
    attack_params = frozenset({"burn_in", "classifier_c", "projection", "projection_points"})

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str):  # noqa: ANN206
        return client_app(scenario, storage)

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
        check_faults(scenario, source, ("train", "evaluate"), "federated training", clients + 1,
                     f"participants are 0-{clients - 1}, the adversary {clients}")  # fmt: skip
        cls._check_draws(scenario, source)
        most = min(30_000, 60_000 - 4 * clients * p.records_per_round)
        if most < AUX_MIN:  # no aux_size is small enough: records_per_round is what is too large
            raise ScenarioError(
                source,
                "role.records_per_round",
                f"at most {(60_000 - AUX_MIN) // (4 * clients)}: the 60,000 training images must "
                f"leave each of {clients} participants 4 x records_per_round",
            )
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
    def _check_draws(scenario: Scenario, source: str) -> None:
        """Each round draws records_per_round records without replacement from every share;
        one the task's classes cannot fill fails in every round, so it is refused here."""
        params = scenario.dataset.params
        try:
            labels = fetch.read_labels(params.root, "fashion_mnist")
        except FileNotFoundError:  # download: true, nothing here yet; the run fetches it
            return
        except (OSError, ValueError) as err:
            raise ScenarioError(source, "dataset.root", str(err)) from None
        try:
            most = most_records_per_round(labels, scenario)
        except ValueError as err:  # a Dirichlet draw that cannot give every share min_size
            raise ScenarioError(source, "deployment.partitioner", str(err)) from None
        p, clients = scenario.role.params, scenario.deployment.clients
        if most < RECORDS_MIN:
            raise ScenarioError(
                source,
                "role.records_per_round",
                f"none fits (the least is {RECORDS_MIN}): the task's classes, split between "
                "role.aux_size and deployment.clients, leave a share too small; lower either",
            )
        if p.records_per_round > most:
            raise ScenarioError(
                source,
                "role.records_per_round",
                f"at most {most} for these task_groups, property_classes, target_fraction, "
                f"aux_size, partitioner and {clients} participants: a round draws it without "
                "replacement from every share, with and without the property",
            )

    # -- 1. deploy: one federated training per alpha -----------------------------------

    def deploy(self) -> PropertyReceived:
        p, scenario = self.params, self.scenario
        nodes = scenario.deployment.clients + 1
        adversary = scenario.deployment.clients  # the last partition
        people = population(scenario)
        truth = self._test_set()
        got: dict[str, list] = {
            key: [] for key in ("histories", "failures", "rounds", "sx", "sp", "observed")
        }
        final: dict[str, np.ndarray] = {}
        for k, alpha in enumerate(alphas(scenario)):
            torch.manual_seed(self.seeds.int("property.init"))
            net0 = people.build()
            initial = {n: v.detach().numpy().copy() for n, v in net0.state_dict().items()}

            def evaluate_global(weights: dict[str, np.ndarray]) -> dict[str, float]:
                # The honest server's own evaluation on the public test set.
                net = people.build()
                net.load_state_dict({n: torch.from_numpy(v) for n, v in weights.items()})
                net.eval()
                with torch.no_grad():
                    pred = net(torch.from_numpy(truth[0])).argmax(1).numpy()
                return {"accuracy": float((pred == truth[1]).mean())}

            outcome = federated.FederatedOutcome()
            label = f"FedAvg, alpha {alpha:g}"
            with self.run.phase(label, 2 * p.rounds) as advance:
                server = federated.server_app(
                    initial, p.rounds, nodes, evaluate_global, self.wire, outcome,
                    lambda rnd, phase: advance(), scenario.engine, f"alpha {alpha:g} ",
                    experiment=k, report_from=adversary,
                )  # fmt: skip
                self.flower(server, outcome, timing=label)
            if outcome.weights is None:
                raise RuntimeError("the Flower ServerApp ended before training finished")
            final.update({f"{k}/{n}": v for n, v in outcome.weights.items()})
            got["histories"].append(outcome.history)
            got["failures"].append(outcome.failures)
            got["rounds"].append(outcome.report["rounds"])
            got["sx"].append(outcome.report["synthetic_x"])
            got["sp"].append(outcome.report["synthetic_p"])
            got["observed"].append(outcome.report["observed"])
        return PropertyReceived(
            alphas=alphas(scenario),
            final=final,
            histories=got["histories"],
            failures=got["failures"],
            rounds=got["rounds"],
            synthetic_x=got["sx"],
            synthetic_p=got["sp"],
            observed=got["observed"],
        )

    # -- 2. attack: the adversary's inference, per training ----------------------------

    def attack(self, received: PropertyReceived) -> PropertyOutput:
        p = self.params
        inferences = []
        for k, alpha in enumerate(received.alphas):
            with self.run.phase(f"inference, alpha {alpha:g}", 1):
                inferences.append(
                    attack.infer(received.rounds[k], received.synthetic_x[k],
                                 received.synthetic_p[k], received.observed[k],
                                 p.burn_in, p.classifier_c)
                )  # fmt: skip
        return PropertyOutput(inferences=inferences)

    # -- 3. truth: the target's schedule, known to the harness alone -------------------

    def truth(self, received: PropertyReceived) -> PropertyTruth:
        x_test, y_test, p_test = self._test_set()
        return PropertyTruth(
            schedule=participants(self.scenario).schedule,
            x_test=x_test,
            y_test=y_test,
            p_test=p_test,
        )

    # -- 4. evaluate -------------------------------------------------------------------

    def evaluate(
        self, received: PropertyReceived, truth: PropertyTruth, output: PropertyOutput
    ) -> Evaluation:
        p, seed = self.params, self.scenario.seed
        attackers = []
        for k, alpha in enumerate(received.alphas):
            inference, history = output.inferences[k], received.histories[k]
            scored = truth.schedule[inference.rounds]
            feats = self._features(received.weights(k), truth.x_test)
            attackers.append(
                {
                    "alpha": alpha,
                    "role": "passive" if alpha == 1.0 else "active",
                    "auc": attack.auc(scored, inference.scores),
                    "accuracy": history[-1]["accuracy"],
                    "accuracy_history": [h["accuracy"] for h in history],
                    "features": attack.feature_separation(
                        feats, truth.p_test, self.seeds.int("property.probe")
                    ),
                    "scored_rounds": len(inference.rounds),
                    "rounds": inference.rounds,
                    "scores": inference.scores.tolist(),
                    "truth": scored.tolist(),
                }
            )
        failures = [
            {"alpha": alpha, **f}
            for alpha, fails in zip(received.alphas, received.failures, strict=True)
            for f in fails
        ]
        # Figure 3: the global models' features on test records, coloured by the property.
        with self.run.phase("feature projection", len(received.alphas)) as advance:
            rng = self.seeds.rng("property.probe")
            pick = rng.choice(len(truth.x_test), size=min(p.projection_points, len(truth.x_test)),
                              replace=False)  # fmt: skip
            projections = {}
            for k, alpha in enumerate(received.alphas):
                feats = self._features(received.weights(k), truth.x_test[pick])
                projections[f"{alpha:g}"] = report.project(feats, p.projection, seed)
                advance()
        passive = next((a for a in attackers if a["alpha"] == 1.0), None)
        active = attackers[0]
        # an honest participant uploads an update every round, after its local DP-SGD steps
        privacy_updates = self.privacy("update", {"participant": p.rounds},
                                       size=self._update_size())  # fmt: skip
        steps = p.rounds * p.local_epochs * round(p.records_per_round / p.local_batch_size)
        privacy_dp = self.privacy("training", {"participant": steps},
                                  sample_rate=p.local_batch_size / p.records_per_round)  # fmt: skip
        chance = float(np.bincount(truth.y_test).max() / len(truth.y_test))
        metrics = {
            "attackers": attackers,
            "active_minus_passive": (
                None
                if passive is None or active is passive
                else {
                    "auc": active["auc"] - passive["auc"],
                    "accuracy": active["accuracy"] - passive["accuracy"],
                    "probe_auc": active["features"]["probe_auc"] - passive["features"]["probe_auc"],
                }
            ),
            "chance": chance,
            "property": {
                "classes": [FASHION_CLASSES[c] for c in p.property_classes],
                "task_groups": [[FASHION_CLASSES[c] for c in g] for g in p.task_groups],
                "target": p.target,
                "target_fraction": p.target_fraction,
                "property_rounds": int(truth.schedule[1:].sum()),
                "rounds": p.rounds,
            },
            "participants": self._participants(),
            "defences": {
                "epsilon": privacy_dp[0]["epsilon"] if privacy_dp else None,
                "adaptive": p.adaptive,
            },
            "privacy": privacy_updates + privacy_dp,
            "failures": failures,
            "wire": received.wire,
        }
        plots = {"projections": projections, "property": truth.p_test[pick],
                 "attackers": attackers}  # fmt: skip
        return Evaluation(metrics, plots)

    def _participants(self) -> dict:
        """Who took part, and each honest participant's records per dataset class under the
        partitioner (the harness's truth, for the report)."""
        d, truth = self.scenario.deployment, participants(self.scenario)
        used = sorted({c for g in self.params.task_groups for c in g})
        rows = class_histograms(truth.classes, truth.partitions, len(FASHION_CLASSES))
        counts = {str(pid): [row[c] for c in used] for pid, row in enumerate(rows)}
        return {"honest": d.clients, "adversarial": 1, "partitioner": d.partitioner.model_dump(),
                "classes": [FASHION_CLASSES[c] for c in used], "class_counts": counts}  # fmt: skip

    def _update_size(self) -> int:
        """The number of values in one uploaded update (``local_training.flat_parameters``)."""
        return sum(t.numel() for t in population(self.scenario).build().state_dict().values())

    def _test_set(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The public test set, restricted to the task's classes: images, task, property."""
        people = population(self.scenario)
        params = self.scenario.dataset.params
        x, labels = _load(FashionMNIST, params.root, params.download, False)
        keep = np.flatnonzero(np.isin(labels, people.task.classes))
        return x[keep], people.task.task(labels[keep]), people.task.prop(labels[keep])

    def _features(self, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        net = population(self.scenario).build()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        net.eval()
        with torch.no_grad():
            return net.features(torch.from_numpy(x)).numpy()
