"""Threat model: a hidden-learning model supplier reads secrets out of an app's scores.

Phases, in the order they run (papers/001, sections 1-2):

1. supplier training: the supplier trains the official network N_o jointly with a secret
   network N_s per secret (To-and-Ts), and the paper's baselines To-then-Ts and Ts-only;
2. held-out regimes: Table 1 of the paper for this experiment, on the supplier's test records;
3. deployment to clients: Flower ships N_o to every data owner (install), each runs it on its
   users' private records and sends back only scores and region (collect);
4. secret decoding: the supplier's server runs N_s on what it received;
5. evaluation: the harness, which alone knows every user's truth, scores the decoding.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from splitsim.defences import build as build_defences
from splitsim.engine.resources import resolve_device
from splitsim.engine.simulation import simulate
from splitsim.engine.wire import WireLog
from splitsim.engine.wire import client_records as wire_records
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, majority_rate
from splitsim.registry import DATASETS, MODELS, ROLES
from splitsim.roles.hidden_learning import report
from splitsim.roles.hidden_learning.attack import (
    adapt_to_defences,
    official_quality,
    predict_scores,
    regime_metrics,
    train_supplier,
    weight_noise_robustness,
)
from splitsim.roles.hidden_learning.protocol import (
    Received,
    client_app,
    official_network,
    save_received,
    server_app,
)
from splitsim.runs import Run
from splitsim.scenario import Scenario, dataset_spec


class Robustness(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigmas: list[NonNegativeFloat] = Field([], description="weight-noise std devs (Table 2)")
    injections: int = Field(10, ge=1, description="noise draws per sigma")


@ROLES.register("hidden_learning")
class HiddenLearningSupplier:
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

    stages = ("payload", "weights")
    gpu_clients = True  # engine.client_device: N_o's forward pass on the actor's GPU share

    @staticmethod
    def flower_nodes(scenario: Scenario) -> int:
        """Flower nodes the role's phases need (SuperNodes under the deployment engine)."""
        return scenario.deployment.clients

    models = {"official": "health_mlp", "secret": "secret_mlp"}
    report = report
    adaptive_override = "role.adaptive=true"

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
        for i, spec in enumerate(scenario.defences):
            if getattr(spec.params, "during_training", False):
                raise ScenarioError(
                    source,
                    f"defences.{i}.during_training",
                    "the supplier trains alone, data owners never train here; allowed: false",
                )

    @staticmethod
    def run(scenario: Scenario, run: Run) -> dict:
        torch.use_deterministic_algorithms(True, warn_only=True)
        dataset_cls = DATASETS.get(scenario.dataset.name)
        dataset = dataset_cls(scenario.dataset.params, scenario.seed, scenario.tasks)
        spec = dataset.spec
        secrets = scenario.role.params.secrets or list(spec.secret_classes)
        train, test = dataset.supplier_train(), dataset.supplier_test()
        input_shape = tuple(int(d) for d in train.x.shape[1:])
        secret_spec = scenario.models.secret
        t = scenario.training
        device = resolve_device(scenario.engine)

        # 1. supplier training
        with run.phase("supplier training", t.epochs * (2 + 2 * len(secrets))) as advance:
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
                device=device,
            )
        # 2. held-out regimes (the paper's Table 1 cells)
        with run.phase("held-out regimes", 1):
            regimes = regime_metrics(models, test, secrets)
        robustness = {}
        noise = scenario.role.params.robustness
        if noise.sigmas:
            with run.phase("weight-noise robustness", len(secrets)) as advance:
                for name in secrets:
                    robustness[name] = weight_noise_robustness(
                        models, test, name, noise.sigmas, noise.injections, scenario.seed
                    )
                    advance()
        adaptation: list[dict[str, float]] = []
        chosen = build_defences(scenario.defences)
        if scenario.role.params.adaptive and chosen:
            epochs = scenario.role.params.adaptive_epochs
            with run.phase("adaptive supplier", epochs) as advance:
                adaptation = adapt_to_defences(
                    models,
                    train,
                    chosen,
                    epochs=epochs,
                    batch_size=t.batch_size,
                    lr=t.lr,
                    validation_fraction=t.validation_fraction,
                    seed=scenario.seed,
                    on_epoch=advance,
                )
        torch.save(
            {
                "official_hidden": models.hidden.official.state_dict(),
                "official_honest": models.honest.official.state_dict(),
                "secret": {k: v.state_dict() for k, v in models.hidden.secrets.items()},
            },
            run.folder / "models.pt",
        )

        # 3. deployment to clients over Flower (install, then collect)
        clients = scenario.deployment.clients
        wire = WireLog(run.folder / "wire.jsonl")
        received = Received()
        started = time.perf_counter()
        with (
            run.phase("deployment to clients", clients, timed=False) as install,
            run.phase("score collection", clients, timed=False) as collect,
        ):
            ticks = {"install": install, "collect": collect}
            server = server_app(
                scenario,
                {k: v.cpu() for k, v in models.hidden.official.state_dict().items()},
                wire,
                received,
                lambda phase: ticks[phase](),
            )
            try:
                simulate(server, client_app(scenario, input_shape), clients, scenario.engine)
            finally:
                wire.close()
            run.timings["flower simulation"] = round(time.perf_counter() - started, 3)
            if received.error is not None:
                raise RuntimeError(
                    f"the Flower ServerApp failed: {received.error}"
                ) from received.error
        if received.failures:
            first = received.failures[0]
            raise RuntimeError(
                f"{len(received.failures)} client(s) failed, first: node {first['node']} "
                f"in {first['phase']}: {str(first['error']).splitlines()[-1]}"
            )
        seen = save_received(received, run.folder / "received.npz")

        # 4. secret decoding: the server's view only (scores and side fields)
        with run.phase("secret decoding", len(secrets)) as advance:
            side_raw = {name: seen[name] for name in spec.side_fields}
            side = dataset_cls.side_features(side_raw, len(seen["scores"]))
            decoded = {}
            for name in secrets:
                decoded[name] = models.decode(name, seen["scores"], side)
                advance()

        # 5. evaluation against the truth only the harness knows
        with run.phase("evaluation", 1):
            truth = [
                dataset.partition(p, clients, scenario.deployment.users)
                for p in received.partitions
            ]
            official_truth = np.concatenate([u.official for u in truth])
            deployed = {
                "clients": clients,
                "users": int(len(seen["scores"])),
                "official": official_quality(seen["scores"], official_truth, spec.official),
                "official_chance": _official_chance(official_truth),
                "secrets": {},
                "failures": received.failures,
            }
            for name in secrets:
                y = np.concatenate([u.secrets[name] for u in truth])
                deployed["secrets"][name] = {
                    "accuracy": accuracy(decoded[name], y),
                    "chance": majority_rate(y),
                }
        client_records = wire_records(run.folder / "wire.jsonl")
        honest_scores = predict_scores(models.honest.official, test.x)
        hidden_scores = predict_scores(models.hidden.official, test.x)
        return {
            "metrics": {
                "regimes": regimes,
                "robustness": robustness,
                "adaptation": adaptation,
                "deployment": deployed,
                "wire": {
                    "messages": wire.messages,
                    "bytes_to_clients": wire.bytes["to_clients"],
                    "bytes_from_clients": wire.bytes["from_clients"],
                    "client_records": client_records,
                },
            },
            "plots": {
                "test_scores": {"honest": honest_scores, "hidden": hidden_scores},
                "test_secrets": {name: test.secrets[name] for name in secrets},
                "secret_names": {name: list(spec.secret_classes[name]) for name in secrets},
                "official_names": list(spec.official.names),
            },
        }


def _official_chance(y: np.ndarray) -> float:
    """Accuracy of always answering the most frequent value (per label for multilabel)."""
    if y.ndim == 1:
        return majority_rate(y)
    return float(np.mean([majority_rate(y[:, j]) for j in range(y.shape[1])]))
