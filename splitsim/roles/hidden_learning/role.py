"""Threat model: a hidden-learning model supplier reads secrets out of an app's scores.

Phases, in the order they run (papers/001, sections 1-2):

1. deploy: the supplier trains the official network N_o jointly with a secret network N_s per
   secret (To-and-Ts) and the paper's baselines To-then-Ts and Ts-only, scores them on its own
   held-out records (Table 1) and, if asked, under weight noise (Table 2) or against the owners'
   defences (adaptive). Flower then ships N_o to every data owner (install); each runs it on
   its users' private records and sends back only scores and region (collect). An owner may
   sanitise what it received first (weight noise; distillation into a fresh network of its
   own) and what it sends (label-only, quantisation, Laplace, rounding). What the
   supplier holds then (its networks, what the owners sent) is ``HiddenReceived``;
2. attack: the supplier's server runs N_s on what it received;
3. truth: every user's official and secret labels, which only the harness knows;
4. evaluate: the decoding against that truth.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from splitsim.data.score_data import partition_size
from splitsim.defences import ScoreDefence
from splitsim.defences import build as build_defences
from splitsim.engine.resources import resolve_device
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, majority_rate
from splitsim.registry import DATASETS, MODELS
from splitsim.roles.base import (
    AttackOutput,
    Evaluation,
    Received,
    Role,
    Truth,
    check_faults,
    register,
)
from splitsim.roles.hidden_learning import report
from splitsim.roles.hidden_learning.attack import (
    adapt_to_defences,
    regime_metrics,
    train_supplier,
    weight_noise_robustness,
)
from splitsim.roles.hidden_learning.protocol import (
    Collected,
    client_app,
    official_network,
    server_app,
)
from splitsim.roles.hidden_learning.scores import official_quality, predict_scores, predict_secret
from splitsim.runs import write_atomic
from splitsim.scenario import Scenario, dataset_spec


@dataclass(kw_only=True)
class HiddenReceived(Received):
    """What the supplier holds after deployment: its own networks and Table 1/2 numbers on its
    own records, and what the owners sent (scores and declared side fields, per user)."""

    partitions: list[int]  # owners in the order their users are stacked
    scores: np.ndarray
    side: dict[str, np.ndarray]  # the dataset's declared side fields, as sent
    partition: np.ndarray  # which owner sent each row
    failures: list[dict[str, Any]]
    networks: dict[str, np.ndarray]  # official_hidden/..., official_honest/..., secret/<s>/...
    supplier: dict[str, Any]  # regimes, robustness, adaptation (the supplier's own records)


@dataclass(kw_only=True)
class HiddenOutput(AttackOutput):
    decoded: dict[str, np.ndarray]  # secret -> decoded class per received row


@dataclass(kw_only=True)
class HiddenTruth(Truth):
    official: np.ndarray
    secrets: dict[str, np.ndarray]


class Robustness(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigmas: list[NonNegativeFloat] = Field([], description="weight-noise std devs (Table 2)")
    injections: int = Field(10, ge=1, description="noise draws per sigma")


@register("hidden_learning")
class HiddenLearningSupplier(Role):
    """Malicious model supplier: ships N_o trained with a secret N_s that reads the scores."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        secrets: list[str] | None = Field(None, min_length=1, description="default: all")
        robustness: Robustness = Robustness()
        adaptive: bool = Field(
            False,
            description="the supplier knows the owners' defences and fine-tunes N_s on "
            "equally defended scores of its own records before deployment",
        )
        adaptive_epochs: int = Field(10, ge=1, description="fine-tuning epochs when adaptive")
        secret_weight: NonNegativeFloat = Field(
            1.0,
            description="lambda: the shipped N_o minimises L_o + lambda * L_s (the paper: 1); "
            "below 1 a stealthier supplier, at 0 an honest-trained N_o that N_s reads as it can",
        )
        closeness: NonNegativeFloat = Field(
            0.0,
            description="mu: + mu * KL(honest N_o's predictions || the shipped N_o's), keeping "
            "the released scores close to an honest network's (trained first; 0: off)",
        )

    stages = ("payload", "weights", "model", "scores")
    gpu_clients = True  # engine.client_device: N_o's forward pass on the actor's GPU share
    fault_tolerant = True  # engine.faults / on_client_failure: owners who fail are left out
    models = {"official": "health_mlp", "secret": "secret_mlp"}
    report = report
    uses_tasks = True
    received_type = HiddenReceived
    adaptive_override = "role.adaptive=true"
    attack_params = frozenset()  # N_s is trained before deployment: nothing to re-decide

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str):  # noqa: ANN206
        return client_app(scenario, _input_shape(scenario), storage)

    @staticmethod
    def summary(metrics: dict) -> dict:
        """The comparison matrix's numbers: the deployed official accuracy; leakage as the
        server's secret-decoding accuracy on the clients' scores, averaged over secrets
        (headline), then per secret, each beside the majority-class rate it would get blind."""
        deployed = metrics["deployment"]
        secrets = deployed["secrets"]
        per_secret = [
            {"name": f"{name} accuracy", "value": s["accuracy"], "chance": s["chance"]}
            for name, s in sorted(secrets.items())
        ]
        mean = {
            "name": "secret accuracy",
            "value": float(np.mean([s["accuracy"] for s in secrets.values()])),
            "chance": float(np.mean([s["chance"] for s in secrets.values()])),
        }
        return {
            "utility": {
                "name": "official accuracy",
                "value": deployed["official"]["accuracy"],
                "chance": deployed.get("official_chance"),
            },
            "leakage": [mean, *per_secret] if len(per_secret) > 1 else per_secret,
        }

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        try:
            known = dataset_spec(scenario).secret_classes
        except ValueError as err:
            field, message = err.args
            raise ScenarioError(source, field, message) from None
        for i, secret in enumerate(scenario.role.params.secrets or []):
            if secret not in known:
                raise ScenarioError(
                    source,
                    f"role.secrets.{i}",
                    f"unknown secret {secret!r} of {scenario.dataset.name}; "
                    f"allowed: {', '.join(known)}",
                )
        clients = scenario.deployment.clients
        check_faults(scenario, source, ("install", "collect"), "a supplier's deployment",
                     clients, f"must be below deployment.clients ({clients})")  # fmt: skip
        task = dataset_spec(scenario).official
        for i, defence in enumerate(build_defences(scenario.defences)):
            why = defence.refuses(task) if isinstance(defence, ScoreDefence) else None
            if why:
                raise ScenarioError(source, f"defences.{i}.name", f"{defence.name!r} {why}")
        for i, spec in enumerate(scenario.defences):
            if getattr(spec.params, "during_training", False):
                raise ScenarioError(
                    source,
                    f"defences.{i}.during_training",
                    "the supplier trains alone, data owners never train here; allowed: false",
                )

    # -- 1. deploy: the supplier trains, then ships N_o and collects scores -------------

    def deploy(self) -> HiddenReceived:
        scenario, p, t = self.scenario, self.params, self.scenario.training
        dataset = self._dataset()
        spec = dataset.spec
        secrets = self._secrets()
        train, test = dataset.supplier_train(), dataset.supplier_test()
        input_shape = tuple(int(d) for d in train.x.shape[1:])
        secret_spec = scenario.models.secret
        with self.run.phase("supplier training", t.epochs * (2 + 2 * len(secrets))) as advance:
            models = train_supplier(
                train,
                spec.official,
                secrets,
                {name: len(spec.secret_classes[name]) for name in secrets},
                lambda: official_network(scenario, input_shape).body,
                lambda n_in, n_out: MODELS.get(secret_spec.name).build(
                    secret_spec.params, (n_in,), n_out
                ),
                epochs=t.epochs,
                batch_size=t.batch_size,
                lr=t.lr,
                validation_fraction=t.validation_fraction,
                seed=scenario.seed,
                on_epoch=advance,
                device=resolve_device(scenario.engine),
                secret_weight=p.secret_weight,
                closeness=p.closeness,
            )
        # The paper's Table 1 cells, on the supplier's own held-out records.
        with self.run.phase("held-out regimes", 1):
            regimes = regime_metrics(models, test, secrets)
        robustness = {}
        if p.robustness.sigmas:
            with self.run.phase("weight-noise robustness", len(secrets)) as advance:
                for name in secrets:
                    robustness[name] = weight_noise_robustness(
                        models, test, name, p.robustness.sigmas, p.robustness.injections,
                        scenario.seed,
                    )  # fmt: skip
                    advance()
        adaptation: list[dict[str, float]] = []
        chosen = build_defences(scenario.defences)
        if p.adaptive and chosen:
            # a distilling owner's records: the most one owner holds
            owner_size = partition_size(scenario.deployment.users, scenario.deployment.clients, 0)
            with self.run.phase("adaptive supplier", p.adaptive_epochs) as advance:
                adaptation = adapt_to_defences(
                    models, train, chosen, epochs=p.adaptive_epochs, batch_size=t.batch_size,
                    lr=t.lr, validation_fraction=t.validation_fraction, seed=scenario.seed,
                    on_epoch=advance,
                    owner_size=owner_size,
                    build_official=lambda: official_network(scenario, input_shape),
                )  # fmt: skip
        networks = {
            "official_hidden": models.hidden.official.state_dict(),
            "official_honest": models.honest.official.state_dict(),
            **{f"secret/{k}": v.state_dict() for k, v in models.hidden.secrets.items()},
        }
        torch.save(
            {
                "official_hidden": networks["official_hidden"],
                "official_honest": networks["official_honest"],
                "secret": {k: v.state_dict() for k, v in models.hidden.secrets.items()},
            },
            self.run.folder / "models.pt",
        )
        # What the owners install, as `python -m splitsim audit` reads it (state dicts of the
        # official architecture; docs/audit.md), and the honest network for comparison.
        for file, net in (("shipped_model.pt", models.hidden.official),
                          ("honest_model.pt", models.honest.official)):  # fmt: skip
            buffer = io.BytesIO()
            torch.save({k: v.cpu() for k, v in net.body.state_dict().items()}, buffer)
            write_atomic(self.run.folder / file, buffer.getvalue())

        # Deployment to clients over Flower: install, then collect.
        clients = scenario.deployment.clients
        collected = Collected()
        with (
            self.run.phase("deployment to clients", clients, timed=False) as install,
            self.run.phase("score collection", clients, timed=False) as collect,
        ):
            ticks = {"install": install, "collect": collect}
            server = server_app(
                scenario,
                {k: v.cpu() for k, v in models.hidden.official.state_dict().items()},
                self.wire,
                collected,
                lambda phase: ticks[phase](),
            )
            self.flower(server, collected)
        if not collected.payload:
            first = collected.failures[0] if collected.failures else {"error": "none answered"}
            raise RuntimeError(f"no data owner sent scores; first failure: {first['error']}")
        seen = collected.stacked()
        return HiddenReceived(
            partitions=collected.partitions,
            scores=seen["scores"],
            side={name: seen[name] for name in spec.side_fields},
            partition=seen["partition"],
            failures=collected.failures,
            networks={
                f"{net}/{k}": v.detach().cpu().numpy()
                for net, state in networks.items()
                for k, v in state.items()
            },
            supplier={"regimes": regimes, "robustness": robustness, "adaptation": adaptation},
        )

    # -- 2. attack: the server decodes the secrets from what it received ---------------

    def attack(self, received: HiddenReceived) -> HiddenOutput:
        dataset_cls = DATASETS.get(self.scenario.dataset.name)
        side = dataset_cls.side_features(received.side, len(received.scores))
        decoded = {}
        with self.run.phase("secret decoding", len(self._secrets())) as advance:
            for name in self._secrets():
                net = self._secret_network(name, received.scores.shape[1] + side.shape[1])
                net.load_state_dict(_state(received.networks, f"secret/{name}"))
                decoded[name] = predict_secret(net, received.scores, side)
                advance()
        return HiddenOutput(decoded=decoded)

    # -- 3. truth: every user's labels, known to the harness alone ---------------------

    def truth(self, received: HiddenReceived) -> HiddenTruth:
        dataset = self._dataset()
        clients, users = self.scenario.deployment.clients, self.scenario.deployment.users
        parts = [dataset.partition(p, clients, users) for p in received.partitions]
        return HiddenTruth(
            official=np.concatenate([u.official for u in parts]),
            secrets={
                name: np.concatenate([u.secrets[name] for u in parts]) for name in self._secrets()
            },
        )

    # -- 4. evaluate -------------------------------------------------------------------

    def evaluate(
        self, received: HiddenReceived, truth: HiddenTruth, output: HiddenOutput
    ) -> Evaluation:
        dataset = self._dataset()
        spec = dataset.spec
        with self.run.phase("evaluation", 1):
            deployed = {
                "clients": self.scenario.deployment.clients,
                "users": int(len(received.scores)),
                "official": official_quality(received.scores, truth.official, spec.official),
                "official_chance": _official_chance(truth.official),
                "secrets": {
                    name: {
                        "accuracy": accuracy(output.decoded[name], y),
                        "chance": majority_rate(y),
                    }
                    for name, y in truth.secrets.items()
                },
                "failures": received.failures,
            }
        test = dataset.supplier_test()
        input_shape = _input_shape(self.scenario)
        scores = {}
        for which in ("honest", "hidden"):
            net = official_network(self.scenario, input_shape)
            net.load_state_dict(_state(received.networks, f"official_{which}"))
            scores[which] = predict_scores(net, test.x)
        # each phone sends its scores once; its side fields go as they are (no DP claim)
        privacy = self.privacy("payload", {"phone's scores": 1})
        metrics = {**received.supplier, "deployment": deployed, "privacy": privacy,
                   "wire": received.wire}  # fmt: skip
        plots = {
            "test_scores": scores,
            "test_secrets": {name: test.secrets[name] for name in self._secrets()},
            "secret_names": {name: list(spec.secret_classes[name]) for name in self._secrets()},
            "official_names": list(spec.official.names),
        }
        return Evaluation(metrics, plots)

    def _dataset(self) -> Any:
        cls = DATASETS.get(self.scenario.dataset.name)
        return cls(self.scenario.dataset.params, self.scenario.seed, self.scenario.tasks)

    def _secrets(self) -> list[str]:
        return self.params.secrets or list(dataset_spec(self.scenario).secret_classes)

    def _secret_network(self, name: str, n_in: int) -> torch.nn.Module:
        spec = self.scenario.models.secret
        n_out = len(dataset_spec(self.scenario).secret_classes[name])
        return MODELS.get(spec.name).build(spec.params, (n_in,), n_out)


def _state(networks: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix(f"{prefix}/"): torch.from_numpy(v)
        for k, v in networks.items()
        if k.startswith(f"{prefix}/")
    }


def _input_shape(scenario: Scenario) -> tuple[int, ...]:
    """The official network's input shape, from the dataset's own description."""
    return tuple(DATASETS.get(scenario.dataset.name).input_shape(scenario.dataset.params))


def _official_chance(y: np.ndarray) -> float:
    """Accuracy of always answering the most frequent value (per label for multilabel)."""
    if y.ndim == 1:
        return majority_rate(y)
    return float(np.mean([majority_rate(y[:, j]) for j in range(y.shape[1])]))
