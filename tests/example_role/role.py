"""Threat model: a curious server reads each data owner's own average from the census-style
aggregates the owners send it.

Phases: deploy (one Flower exchange: every owner sends its users' mean record, defended by its
payload defences); attack (the server's estimate of each owner's mean, shrunk towards the mean
of all it received by ``shrinkage``); truth (the owners' true means); evaluate (the estimate's
error against the truth, beside a blind guess).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from splitsim.roles.base import AttackOutput, Evaluation, Received, Role, Truth, register
from splitsim.scenario import Scenario

from . import report
from .protocol import Averages, client_app, owner_records, server_app


@dataclass(kw_only=True)
class AveragesReceived(Received):
    partitions: list[int]
    means: np.ndarray  # (owners, features), in ``partitions`` order


@dataclass(kw_only=True)
class Estimate(AttackOutput):
    means: np.ndarray


@dataclass(kw_only=True)
class TrueMeans(Truth):
    means: np.ndarray


@register("owner_averages")
class OwnerAverages(Role):
    """Curious server that reads each owner's own mean record from its aggregate."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        shrinkage: float = Field(0.0, ge=0, le=1, description="pull towards the common mean")

    stages = ("payload",)
    models: dict[str, str] = {}
    report = report
    received_type = AveragesReceived
    attack_params = frozenset({"shrinkage"})

    @staticmethod
    def summary(metrics: dict) -> dict:
        leak = metrics["leakage"]
        return {
            "utility": {"name": "owners", "value": metrics["owners"], "chance": None},
            "leakage": [{"name": "-RMSE", "value": -leak["rmse"], "chance": -leak["chance"]}],
        }

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str):  # noqa: ANN206
        return client_app(scenario)

    def deploy(self) -> AveragesReceived:
        got = Averages()
        with self.run.phase("averages over Flower", 1):
            self.flower(server_app(self.scenario.deployment.clients, self.wire, got), got)
        order = sorted(got.means)
        return AveragesReceived(partitions=order, means=np.stack([got.means[p] for p in order]))

    def attack(self, received: AveragesReceived) -> Estimate:
        common = received.means.mean(axis=0, keepdims=True)
        s = self.params.shrinkage
        return Estimate(means=(1 - s) * received.means + s * common)

    def truth(self, received: AveragesReceived) -> TrueMeans:
        means = [owner_records(self.scenario, p).mean(axis=0) for p in received.partitions]
        return TrueMeans(means=np.stack(means))

    def evaluate(
        self, received: AveragesReceived, truth: TrueMeans, output: Estimate
    ) -> Evaluation:
        rmse = float(np.sqrt(((output.means - truth.means) ** 2).mean()))
        blind = float(np.sqrt(((truth.means - truth.means.mean(axis=0)) ** 2).mean()))
        metrics = {
            "owners": len(received.partitions),
            "leakage": {"rmse": rmse, "chance": blind},
            "wire": received.wire,
        }
        return Evaluation(metrics, {})
