"""Threat model: a curious data owner of split learning infers the server's labels from the
gradients the server returns (Li et al., ICLR 2022).

Phases, in the order they run:

1. deploy: split training over Flower (protocol.py, the exchange of engine/split_training.py).
   The server holds f2 and the task labels, keyed by image id (``deployment.labels: server``),
   and applies its ``gradient`` defences to what it returns. Data owner ``role.attacker`` is
   curious: it keeps the returned gradients of the batches it watches and knows the labels of
   ``role.known_labels`` of its own examples per class. After inference the server returns its
   answers for the owner's test images and its defence accounting; the owner reports what it
   kept. That is ``LabelReceived``;
2. attack: the norm and direction scores of every watched example (attack.py); the adaptive
   owner projects the gradients onto their signal subspace first, knowing the noise scale;
3. truth: the task labels of the watched examples and of the owner's test images, which only
   the harness (and the server) knows;
4. evaluate: per epoch and over all epochs, the norm and direction attacks' AUC (binary; chance
   0.5) or the direction attack's accuracy (ten classes; chance: the majority class), on the
   watched examples whose labels the owner did not know; the task accuracy of the server's
   answers (the defences' cost) and the defences' accounting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from splitsim.data.mnist import MNIST
from splitsim.data.partitions import test_partition
from splitsim.defences import build as build_defences
from splitsim.engine.split_training import SplitOutcome, task_labels
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, majority_rate, roc_auc
from splitsim.registry import DATASETS
from splitsim.roles.base import (
    AttackOutput,
    Evaluation,
    Received,
    Role,
    Truth,
    check_faults,
    register,
)
from splitsim.roles.label_inference import report
from splitsim.roles.label_inference.attack import Scores, infer
from splitsim.roles.label_inference.protocol import client_app, published, server_app
from splitsim.roles.label_inference.protocol import setting as split_setting
from splitsim.scenario import Scenario

MNIST_TEST = 10_000


@dataclass(kw_only=True)
class LabelReceived(Received):
    """What the curious owner holds: the gradients the server returned for the batches it
    watched, with their example ids, epochs and steps; its own known labels; the server's
    answers for its test images and the server's published defence accounting."""

    partition: int
    grad: np.ndarray  # (examples, d): one returned gradient per watched example
    ids: np.ndarray  # their training image ids (the owner's own images)
    rounds: np.ndarray
    steps: np.ndarray
    known_ids: np.ndarray  # the examples whose label the owner knows
    known_y: np.ndarray
    answers: np.ndarray  # the server's answers for the owner's test images
    protection: dict[str, float] = field(default_factory=dict)
    round_trips: int = 0


@dataclass(kw_only=True)
class LabelOutput(AttackOutput):
    scores: Scores
    defences_known: list[str]


@dataclass(kw_only=True)
class LabelTruth(Truth):
    y: np.ndarray  # task labels of the watched examples, in LabelReceived order
    y_test: np.ndarray  # task labels of the owner's test images


@register("label_inference")
class CuriousDataOwner(Role):
    """Split-learning data owner that infers the server's labels from returned gradients."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        task: Literal["binary", "multiclass"] = Field(
            "binary", description="binary: role.positive digits against the rest; or ten digits"
        )
        positive: list[int] = Field(
            [0], min_length=1, max_length=9, description="binary: the digits of class 1"
        )
        attacker: int = Field(0, ge=0, description="partition of the curious data owner")
        observed_batches: int = Field(
            20, ge=1, le=100_000, description="batches per epoch whose gradients it keeps"
        )
        known_labels: int = Field(
            5, ge=1, le=1000, description="own examples per class whose label it knows"
        )
        schedule: Literal["parallel", "sequential"] = Field(
            "parallel", description="SplitFed (all owners each step, FedAvg) or owners in turn"
        )
        adaptive: bool = Field(
            False, description="knows the gradient_noise ratio and projects the noise out"
        )

    stages = ("gradient", "payload", "loss")
    models = {"split": "split_cnn"}
    report = report
    datasets = ("mnist",)
    received_type = LabelReceived
    adaptive_override = "role.adaptive=true"
    attack_params = frozenset({"adaptive"})

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str, keep: str | None = None):  # noqa: ANN206
        return client_app(scenario, storage, keep)

    @staticmethod
    def summary(metrics: dict) -> dict:
        """The comparison matrix's numbers: the server's task accuracy; leakage as the
        direction attack's AUC (binary) or accuracy (ten classes), then the norm attack's."""
        u, leak = metrics["utility"], metrics["leakage"]["all_epochs"]
        rows = [{"name": leak["direction_name"], "value": leak["direction"],
                 "chance": leak["chance"]}]  # fmt: skip
        if "norm" in leak:
            rows.append({"name": "norm attack AUC", "value": leak["norm"], "chance": 0.5})
        return {
            "utility": {"name": "task accuracy", "value": u["accuracy"], "chance": u["chance"]},
            "leakage": rows,
        }

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p, d = scenario.role.params, scenario.deployment
        if p.attacker >= d.clients:
            raise ScenarioError(
                source, "role.attacker", f"must be below deployment.clients ({d.clients})"
            )
        if d.clients < 2:
            raise ScenarioError(
                source, "deployment.clients", "at least 2: the curious owner and another"
            )
        if p.task == "binary" and (
            len(set(p.positive)) != len(p.positive) or not all(0 <= c <= 9 for c in p.positive)
        ):
            raise ScenarioError(source, "role.positive", "1-9 distinct digits 0-9 (class 1)")
        if p.task == "multiclass" and p.positive != [0]:
            raise ScenarioError(source, "role.positive", "only used with task: binary")
        for i, spec in enumerate(scenario.defences):
            if spec.name == "marvell" and p.task != "binary":
                raise ScenarioError(
                    source, f"defences.{i}.name", "marvell protects a binary task only"
                )
        if p.adaptive and not any(spec.name == "gradient_noise" for spec in scenario.defences):
            raise ScenarioError(
                source, "role.adaptive",
                "the adaptive owner projects out gradient_noise; without that defence it is the "
                "plain owner (set adaptive: false)",
            )  # fmt: skip
        clients = d.clients
        check_faults(scenario, source, ("train", "infer"), "split training", clients,
                     f"must be below deployment.clients ({clients})")  # fmt: skip
        if d.users > MNIST_TEST:
            raise ScenarioError(
                source, "deployment.users", f"at most {MNIST_TEST} (the MNIST test images)"
            )

    # -- 1. deploy: split training over Flower, one curious owner ------------------------

    def deploy(self) -> LabelReceived:
        t = self.scenario.training
        outcome = SplitOutcome()
        with self.run.phase("split training", t.epochs) as advance:

            def on_round(row: dict[str, float]) -> None:
                advance()
                self.run.console.log(
                    f"round {int(row['round'])}/{t.epochs}: server-side train accuracy "
                    f"{100 * row['train_accuracy']:.2f} %, loss {row['train_loss']:.4f}"
                )

            server = server_app(self.scenario, self.wire, outcome, set(), lambda: None, on_round)
            self.flower(server, outcome)
        seen = outcome.observed
        if "grad" not in seen:
            raise RuntimeError("the Flower ServerApp ended before the curious owner reported")
        return LabelReceived(
            partition=self.params.attacker,
            grad=seen["grad"],
            ids=seen["ids"],
            rounds=seen["round"],
            steps=seen["step"],
            known_ids=seen["known_ids"],
            known_y=seen["known_y"],
            answers=seen["answers"],
            protection=published(outcome.protection),
            round_trips=outcome.round_trips,
        )

    # -- 2. attack: norm and direction scores --------------------------------------------

    def attack(self, received: LabelReceived) -> LabelOutput:
        noise = [
            d
            for d in build_defences(self.scenario.defences)
            if d.name == "gradient_noise" and self.params.adaptive
        ]
        ratio = noise[0].params.ratio if noise else None
        with self.run.phase("label inference", 1):
            scores = infer(
                received.grad,
                received.rounds,
                received.steps,
                received.ids,
                received.known_ids,
                received.known_y,
                split_setting(self.scenario).classes,
                known_noise_ratio=ratio,
            )
        return LabelOutput(scores=scores, defences_known=["gradient_noise"] if noise else [])

    # -- 3. truth: the task labels, known to the server and the harness ------------------

    def truth(self, received: LabelReceived) -> LabelTruth:
        dataset = self._dataset()
        _, digits = dataset.classifier_train()
        _, test_digits = dataset.images(train=False)
        d = self.scenario.deployment
        test_ids = test_partition(len(test_digits), d.users, d.clients, received.partition,
                                  self.scenario.seed)  # fmt: skip
        chosen = split_setting(self.scenario)
        return LabelTruth(
            y=task_labels(chosen, digits[received.ids]),
            y_test=task_labels(chosen, test_digits[test_ids]),
        )

    # -- 4. evaluate ---------------------------------------------------------------------

    def evaluate(
        self, received: LabelReceived, truth: LabelTruth, output: LabelOutput
    ) -> Evaluation:
        binary = self.params.task == "binary"
        unknown = ~np.isin(received.ids, received.known_ids)
        s = output.scores

        def measured(mask: np.ndarray) -> dict[str, Any]:
            y = truth.y[mask]
            row: dict[str, Any] = {"examples": int(mask.sum())}
            if binary:
                both = len(np.unique(y)) == 2
                row["direction"] = roc_auc(y, s.direction[mask]) if both else float("nan")
                row["norm"] = roc_auc(y, s.norm[mask]) if both else float("nan")
                row["direction_name"] = "direction attack AUC"
                row["chance"] = 0.5
                row["positive_share"] = float(y.mean())
            else:
                row["direction"] = accuracy(s.predicted[mask], y)
                row["direction_name"] = "direction attack accuracy"
                row["chance"] = majority_rate(y)
            return row

        per_epoch = []
        for r in np.unique(received.rounds):
            row = measured(unknown & (received.rounds == r))
            per_epoch.append({"round": int(r), **row,
                              "kept_directions": s.kept_directions.get(int(r))})  # fmt: skip
        metrics = {
            "utility": {
                "accuracy": accuracy(received.answers, truth.y_test),
                "chance": majority_rate(truth.y_test),
                "test_images": len(truth.y_test),
            },
            "leakage": {"all_epochs": measured(unknown), "per_epoch": per_epoch},
            "attack": {
                "task": self.params.task,
                "positive": self.params.positive if binary else None,
                "attacker": received.partition,
                "watched_examples": len(received.ids),
                "known_examples": len(received.known_ids),
                "adaptive": self.params.adaptive,
                "defences_known": output.defences_known,
            },
            "protection": received.protection,
            "training": {
                "schedule": self.params.schedule,
                "data_owners": self.scenario.deployment.clients,
                "round_trips": received.round_trips,
            },
            "wire": received.wire,
        }
        plots = {
            "norm": s.norm[unknown],
            "direction": s.direction[unknown],
            "y": truth.y[unknown],
            "rounds": received.rounds[unknown],
        }
        return Evaluation(metrics, plots)

    def _dataset(self) -> MNIST:
        return DATASETS.get(self.scenario.dataset.name)(
            self.scenario.dataset.params, self.scenario.seed, None
        )


__all__ = ["CuriousDataOwner", "LabelReceived"]
