"""Deploying a supplier's model to data owners over Flower and collecting their scores.

Two phases, each one message per node and one reply:

- ``install``: the ServerApp ships the official weights (ArrayRecord ``official_model``); each
  ClientApp applies its ``weights``-stage defences once, then its ``model``-stage ones (a
  distilling owner trains a fresh network on the model's answers for its users' records and
  keeps that instead), and keeps the network it will run in ``context.state`` (a node's
  messages may be served by different Ray actors, so no module-level cache).
- ``collect``: each ClientApp runs that network on its users' private inputs, applies its
  ``scores``-stage defences (which know the official task: label-only, quantisation), then its
  ``payload``-stage ones, and replies with the scores and the declared side
  fields only, plus its partition number (the same information as its Flower node id, which
  the server has anyway; the harness needs it to line up each user's ground truth).

The ServerApp refuses any other record, logs every message to ``wire.jsonl`` and writes what it
received to ``received.npz``: all the malicious server will ever see.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim import defences as defence_lib
from splitsim import seeds
from splitsim.engine import identity
from splitsim.engine.codec import (
    arrays_to_record,
    record_to_arrays,
    record_to_state,
    state_to_record,
)
from splitsim.engine.failures import Policy
from splitsim.engine.faults import maybe_fail
from splitsim.engine.grid import wait_for_nodes
from splitsim.engine.resources import client_device, release_cuda
from splitsim.engine.wire import WireLog
from splitsim.registry import DATASETS, MODELS
from splitsim.roles.base import ServerError, surfaced
from splitsim.roles.hidden_learning.scores import ScoreNet
from splitsim.scenario import Scenario, dataset_spec


@dataclass
class Collected(ServerError):
    """What reached the server, in partition order, plus what happened to each node."""

    partitions: list[int] = field(default_factory=list)
    payload: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    failures: list[dict[str, object]] = field(default_factory=list)

    def stacked(self) -> dict[str, np.ndarray]:
        order = sorted(self.payload)
        names = list(self.payload[order[0]]) if order else []
        out = {name: np.concatenate([self.payload[p][name] for p in order]) for name in names}
        out["partition"] = np.concatenate(
            [np.full(len(self.payload[p]["scores"]), p) for p in order]
        ).astype(np.int64)
        return out


def official_network(scenario: Scenario, input_shape: tuple[int, ...]) -> ScoreNet:
    task = dataset_spec(scenario).official
    model = scenario.models.official
    body = MODELS.get(model.name).build(model.params, input_shape, task.outputs)
    return ScoreNet(body, task)


_scratch: dict[tuple[object, ...], ScoreNet] = {}


def _scratch_network(scenario: Scenario, input_shape: tuple[int, ...]) -> ScoreNet:
    """An official network for this actor to load a node's weights into. Building one costs
    more than the node's whole forward pass (1.7 ms: layers and their initialisation, at 10,000
    owners a node each); the weights are the node's own, all loaded for every message, so
    nothing of one node is left for the next."""
    key = (scenario.models.official.model_dump_json(), dataset_spec(scenario).official,
           input_shape)  # fmt: skip
    if key not in _scratch:
        _scratch.clear()  # one scenario per actor at a time
        _scratch[key] = official_network(scenario, input_shape)
    return _scratch[key]


def client_app(scenario: Scenario, input_shape: tuple[int, ...], storage: str) -> ClientApp:
    app = ClientApp()
    # A module-level handler with its settings bound: Flower pickles the app for every message,
    # and a closure would go by value (2.4 ms each; see model_inversion/protocol.client_app).
    app.query()(functools.partial(_handle, scenario, input_shape, storage))
    return app


def _handle(
    scenario: Scenario, input_shape: tuple[int, ...], storage: str, msg: Message, context: Context
) -> Message:
    """One message to a data owner's node: install the official model, or collect scores."""
    pid = int(context.node_config["partition-id"])
    chosen = defence_lib.build(scenario.defences)
    phase = str(msg.content["config"]["phase"])
    if scenario.engine.faults:  # failures on purpose: install is round 1, collect round 2
        maybe_fail(scenario.engine, pid, 1 if phase == "install" else 2, phase,
                   Path(storage))  # fmt: skip
    if phase == "install":
        rng = seeds.rng(scenario.seed, "hidden.client_weight_noise", pid)
        weights = record_to_arrays(msg.content["official_model"])
        weights = {
            k: defence_lib.apply_stage(chosen, "weights", w, rng) for k, w in weights.items()
        }
        if any(d.stage == "model" for d in chosen):
            weights = _owner_model(scenario, input_shape, pid, chosen, weights)
        context.state["official_model"] = arrays_to_record(weights)
        return Message(RecordDict(), reply_to=msg)  # an empty reply says "installed"
    if phase != "collect":
        raise ValueError(f"unknown phase {phase!r}")
    users = _users(scenario, pid)
    net = _scratch_network(scenario, input_shape)
    net.load_state_dict(record_to_state(context.state["official_model"]))  # every weight
    device = client_device(scenario.engine)
    net.eval()
    if device != "cpu":
        net.to(device)
    with torch.no_grad():
        scores = net.scores(torch.as_tensor(users.x).to(device)).cpu().numpy()
    if device != "cpu":  # an idle actor keeps no CUDA memory (docs/benchmarks.md)
        net.to("cpu")
        release_cuda(device)
    rng = seeds.rng(scenario.seed, "hidden.client_payload_noise", pid)
    scores = defence_lib.apply_scores(chosen, scores, net.task, rng)
    scores = defence_lib.apply_stage(chosen, "payload", scores, rng)
    side_fields = dataset_spec(scenario).side_fields
    payload = {"scores": scores, **{name: users.side_raw[name] for name in side_fields}}
    content = RecordDict(
        {"payload": arrays_to_record(payload), "meta": ConfigRecord({"partition": pid})}
    )
    return Message(content, reply_to=msg)


def _users(scenario: Scenario, pid: int):  # noqa: ANN202  (the dataset's own partition type)
    dataset = DATASETS.get(scenario.dataset.name)(
        scenario.dataset.params, scenario.seed, scenario.tasks
    )
    return dataset.partition(pid, scenario.deployment.clients, scenario.deployment.users)


def _owner_model(
    scenario: Scenario,
    input_shape: tuple[int, ...],
    pid: int,
    chosen: list,
    weights: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The ``model`` stage: the owner's network built from the received weights and its users'
    records (their inputs only: it holds no labels), e.g. a distilled fresh network."""
    received = official_network(scenario, input_shape)
    received.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    x = _users(scenario, pid).x
    net = received
    for j, defence in enumerate(chosen):
        if defence.stage == "model":
            own_seed = seeds.int_seed(scenario.seed, "hidden.owner_distillation", pid, j)
            net = defence.distil(net, lambda: official_network(scenario, input_shape), x,
                                 received.task.kind, own_seed)  # fmt: skip
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def server_app(
    scenario: Scenario,
    official_state: dict[str, torch.Tensor],
    wire: WireLog,
    received: Collected,
    on_reply: Callable[[str], None],
) -> ServerApp:
    app = ServerApp()
    allowed = {"scores", *dataset_spec(scenario).side_fields}
    batch = scenario.engine.messages_per_batch

    policy = Policy(scenario.engine, wire, batch, received.failures)
    model = state_to_record(official_state)

    def send(
        grid: Grid, ids: list[int], phase: str, rnd: int, handle: Callable[[Message], None]
    ) -> list[int]:
        """One phase to ``ids`` under ``engine.on_client_failure``; the nodes that answered."""
        contents = {}
        for node in ids:
            contents[node] = RecordDict({"config": ConfigRecord({"phase": phase})})
            if phase == "install":  # the same weights to every node: encoded once
                contents[node]["official_model"] = model

        def handled(reply: Message) -> None:
            handle(reply)
            on_reply(phase)

        return policy.send(grid, contents, phase, rnd, handled, lambda node: on_reply(phase))

    def collect(reply: Message) -> None:
        extra = set(reply.content.keys()) - {"payload", "meta"}
        arrays = record_to_arrays(reply.content["payload"])
        if extra or set(arrays) - allowed:
            raise RuntimeError(
                f"a client sent more than its declared payload: {sorted(extra | set(arrays))}"
            )
        received.payload[identity.owner(reply, reply.content["meta"]["partition"])] = arrays

    @app.main()
    @surfaced(received)
    def main(grid: Grid, context: Context) -> None:
        ids = wait_for_nodes(grid, scenario.deployment.clients)
        installed = send(grid, ids, "install", 1, lambda reply: None)
        send(grid, installed, "collect", 2, collect)  # a node without the model has no scores
        received.partitions = sorted(received.payload)

    return app
