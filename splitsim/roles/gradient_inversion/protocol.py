"""The participants of federated training, and what the curious server keeps of them.

FedAvg itself is Flower's, honest, in engine/federated.py. Each training message carries the
server's instructions in its config: ``lr``, ``local-steps`` and ``batch-size``. Every round a
participant takes the next ``batch-size`` images of its share (each image is trained on in one
round only), takes ``local-steps`` full-batch SGD steps on them from the global weights (DP-SGD
through Opacus if it is so defended), passes the update through its ``update`` defences and
uploads the weights with ``num-examples``.

The server is honest in what it computes and curious in what it keeps: :class:`Observed`
records, for one participant and one round, the global weights it sent and the weights the
participant sent back, as they crossed the grid (``federated.server_app``'s ``observe``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Message

from splitsim import seeds
from splitsim.data.mnist import MNIST
from splitsim.defences import apply_stage
from splitsim.defences import build as build_defences
from splitsim.engine import federated, identity
from splitsim.engine.codec import record_to_arrays
from splitsim.engine.local_training import flat_parameters, load_flat, train_locally
from splitsim.engine.resources import client_device
from splitsim.registry import MODELS
from splitsim.scenario import Scenario

SHAPE = (1, 28, 28)


def build_network(scenario: Scenario) -> torch.nn.Module:
    spec = scenario.models.federated
    return MODELS.get(spec.name).build(spec.params, SHAPE, 10)


def train_config(scenario: Scenario, batch: int) -> dict[str, int | float]:
    """What the server tells participants in every training message."""
    p = scenario.role.params
    return {"lr": p.local_lr, "local-steps": p.local_steps, "batch-size": batch}


class Shares:
    """The participants' images: MNIST's split-classifier images (the first 40,000, or
    ``train_limit``), dealt out in a seeded order. The data owners' side and the harness's
    truth; never the server's."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.dataset = MNIST(scenario.dataset.params, scenario.seed, None)
        x, y = self.dataset.classifier_train()
        self.x, self.y = x, y
        order = seeds.rng(scenario.seed, "gradient.shares").permutation(len(x))
        self.parts = np.array_split(order, scenario.deployment.clients)

    def batch(self, pid: int, rnd: int, size: int) -> np.ndarray:
        """The ids participant ``pid`` trains on in round ``rnd`` (1-based), batch ``size``."""
        return self.parts[pid][(rnd - 1) * size : rnd * size]


@functools.lru_cache(maxsize=4)
def _shares(text: str) -> Shares:
    from splitsim.scenario import validate

    return Shares(validate(json.loads(text), "the run's scenario"))


def shares(scenario: Scenario) -> Shares:
    """Built once per process and scenario (a Ray actor serves many nodes)."""
    return _shares(json.dumps(scenario.resolved()))


def client_app(scenario: Scenario, storage: str) -> federated.ClientApp:
    return federated.client_app(
        functools.partial(_train, scenario),
        functools.partial(_evaluate, scenario),
        scenario.engine,
        storage,
    )


def _train(
    scenario: Scenario, pid: int, rnd: int, weights: dict[str, np.ndarray], config: dict
) -> tuple[dict[str, np.ndarray], dict]:
    batch, steps, lr = int(config["batch-size"]), int(config["local-steps"]), float(config["lr"])
    data = shares(scenario)
    ids = data.batch(pid, rnd, batch)
    k = int(config["experiment"])
    out = local_update(
        scenario, weights, data.x[ids], data.y[ids], steps=steps, lr=lr,
        seed=seeds.int_seed(scenario.seed, "gradient.local_training", k, pid, rnd),
        noise=seeds.rng(scenario.seed, "gradient.update_noise", k, pid, rnd),
    )  # fmt: skip
    return out, {"num-examples": len(ids)}


def local_update(
    scenario: Scenario,
    weights: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float,
    seed: int,
    noise: np.random.Generator,
) -> dict[str, np.ndarray]:
    """A participant's round: ``steps`` full-batch SGD steps on ``(x, y)`` from ``weights``
    (DP-SGD under a ``training`` defence), the update through the ``update`` defences; the
    weights it uploads. The adaptive server runs the same on images of its own."""
    net = build_network(scenario)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    before = flat_parameters(net)
    defences = build_defences(scenario.defences)
    dp = next((d for d in defences if d.stage == "training"), None)
    train_locally(net, x, y, epochs=steps, batch_size=len(x), lr=lr, seed=seed, dp=dp,
                  device=client_device(scenario.engine))  # fmt: skip
    update = flat_parameters(net) - before
    load_flat(net, before + apply_stage(defences, "update", update, noise))
    return {n: v.detach().numpy().copy() for n, v in net.state_dict().items()}


def _evaluate(
    scenario: Scenario, pid: int, rnd: int, weights: dict[str, np.ndarray], config: dict
) -> tuple[dict, dict]:
    return {}, {"num-examples": 1}  # the server evaluates centrally, on the public test set


@dataclass
class Observed:
    """One participant's exchange in one round, as the server saw it."""

    partition: int
    round: int
    sent: dict[str, np.ndarray] = field(default_factory=dict)
    returned: dict[str, np.ndarray] = field(default_factory=dict)
    examples: int = 0
    config: dict[str, float] = field(default_factory=dict)

    def __call__(self, rnd: int, phase: str, sent: Message, reply: Message) -> None:
        if sent.metadata.message_type != "train" or rnd != self.round:
            return
        metrics = reply.content["metrics"]
        if identity.owner(reply, metrics["partition"]) != self.partition:
            return
        self.sent = record_to_arrays(sent.content["arrays"])
        self.returned = record_to_arrays(reply.content["arrays"])
        self.examples = int(metrics["num-examples"])
        self.config = {k: v for k, v in dict(sent.content["config"]).items()
                       if isinstance(v, int | float)}  # fmt: skip
