"""The label-change oracle of papers/004 as a Flower exchange.

The adversary's ServerApp runs the signature search (attack.py); each
search step is one message per data owner carrying that owner's open queries as three arrays
(``input``: the owner's local input number, ``direction``, ``eps``), and the ClientApp replies
with one ``bits`` array: 1 the top-1 class changed, 0 it did not, 2 refused. Neither the class,
nor the scores, nor X leave the data owner (``wire.jsonl`` shows it).

Phases, per session:

- ``hello``: the owner says how many secret inputs it holds (a count, nothing about them);
- ``install``: the model owner ships the served model's weights and its directions;
- ``probe``: one search step.

A session is one probing pass: a direction kind, and the defences the data owners run for it.
The run compares several (the report's table), so each message carries its ``session`` number,
a harness control field with no data in it, from which the ClientApp takes its defences for that
pass (``sessions`` below: the same list on both sides, from the resolved scenario). Data owners
apply, in scenario order, their ``budget`` (per input, per session), ``input`` (fresh noise per
query) and ``answer`` defences.
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
from splitsim.data.partitions import test_partition
from splitsim.engine import identity
from splitsim.engine.codec import arrays_to_record, record_to_arrays, record_to_state
from splitsim.engine.failures import Policy
from splitsim.engine.faults import maybe_fail
from splitsim.engine.grid import wait_for_nodes
from splitsim.engine.wire import WireLog
from splitsim.registry import DATASETS, MODELS
from splitsim.roles.base import ServerError, surfaced
from splitsim.roles.perturbation_probe.attack import (
    REFUSED,
    Plan,
    Signatures,
    search,
    search_copy,
)
from splitsim.scenario import Engine, Plugin, Scenario


def defence_settings(configured: list[Plugin], compare: bool) -> list[tuple[str, list[Plugin]]]:
    """The owners' defences per pass: as configured first (the headline), then, to compare,
    none and each defence alone."""

    def label(specs: list[Plugin]) -> str:
        return (
            " + ".join(
                f"{s.name}({', '.join(f'{k}={v}' for k, v in s.params.model_dump().items())})"
                for s in specs
            )
            or "none"
        )

    settings = [(label(configured), list(configured))]
    if compare and configured:
        settings.append(("none", []))
        if len(configured) > 1:
            settings += [(label([s]), [s]) for s in configured]
    return settings


@dataclass(frozen=True)
class Session:
    """One probing pass: the adversary's direction kind, the data owners' defences."""

    kind: str
    defences: list  # scenario defence entries (Plugin) the owners run in this pass
    label: str


def sessions(scenario: Scenario) -> list[Session]:
    """The passes a scenario compares, the same list on the adversary's and the owners' side:
    every direction kind with the configured defences and without; each defence alone only for
    the headline kind (the table stays readable and the run short)."""
    p = scenario.role.params
    settings = defence_settings(scenario.defences, p.compare_defences)
    return [
        Session(kind, setting, label)
        for i, kind in enumerate(p.directions)
        for j, (label, setting) in enumerate(settings)
        if i == 0 or j < 2
    ]


@dataclass
class ProbeOutcome(ServerError):
    """What the adversary ended with, per session, and the order of the owners' inputs."""

    signatures: dict[int, Signatures] = field(default_factory=dict)
    partitions: list[int] = field(default_factory=list)  # partition of each owner, in order
    sizes: list[int] = field(default_factory=list)
    failures: list[dict[str, object]] = field(default_factory=list)  # every failed try


def served_network(scenario: Scenario) -> torch.nn.Module:
    spec = scenario.models.served
    return MODELS.get(spec.name).build(spec.params, (1, 28, 28), 10)


def secret_inputs(scenario: Scenario, pid: int) -> np.ndarray:
    """Owner ``pid``'s private images (MNIST test images), which never leave it."""
    x, _ = DATASETS.get("mnist")(scenario.dataset.params, scenario.seed, None).images(train=False)
    users, clients = scenario.deployment.users, scenario.deployment.clients
    return x[test_partition(len(x), users, clients, pid, scenario.seed)]


def client_app(scenario: Scenario, storage: str) -> ClientApp:
    app = ClientApp()
    # A module-level handler with its settings bound: Flower pickles the app for every
    # message, and a closure would go by value (see model_inversion/protocol.client_app).
    app.query()(functools.partial(_handle, scenario, storage))
    return app


def _handle(scenario: Scenario, storage: str, msg: Message, context: Context) -> Message:
    """One message to a data owner: hello, install a session's model and directions, or
    answer one search step's queries with label-change bits."""
    seed = scenario.seed
    pid = int(context.node_config["partition-id"])
    config = msg.content["config"]
    phase = config["phase"]
    x = secret_inputs(scenario, pid)
    if phase == "hello":
        reply = RecordDict({"meta": ConfigRecord({"partition": pid, "inputs": len(x)})})
        return Message(reply, reply_to=msg)
    session = int(config["session"])
    if phase == "install":
        context.state["model"] = msg.content["model"]
        context.state[f"directions{session}"] = msg.content["directions"]
        context.state[f"spent{session}"] = arrays_to_record({"spent": np.zeros(len(x), np.int64)})
        return Message(RecordDict(), reply_to=msg)
    if phase != "probe":
        raise ValueError(f"unknown phase {phase!r}")
    step = int(config["step"])
    if scenario.engine.faults:  # failures on purpose; a probe's round is its search step
        maybe_fail(scenario.engine, pid, step, "probe", Path(storage))
    chosen = defence_lib.build(sessions(scenario)[session].defences)
    q = record_to_arrays(msg.content["queries"])
    inputs, dirs, eps = q["input"], q["direction"], q["eps"]
    spent = record_to_arrays(context.state[f"spent{session}"])["spent"]
    answered = np.ones(len(inputs), dtype=bool)
    for budget in (d for d in chosen if d.stage == "budget"):
        answered &= budget.allowed(spent, inputs)
    context.state[f"spent{session}"] = arrays_to_record({"spent": spent})
    model = served_network(scenario)
    model.load_state_dict(record_to_state(context.state["model"]))
    model = search_copy(model)  # the adversary's search runs the same layout (attack.py)
    directions = record_to_arrays(context.state[f"directions{session}"])["d"]
    reference = _top1(model, x)
    bits = np.full(len(inputs), REFUSED, dtype=np.uint8)
    rng = seeds.rng(seed, "probe.client_input_noise", pid, session, step)
    idx = np.flatnonzero(answered)
    for s in range(0, len(idx), 256):  # small batches are faster (see search_copy)
        part = idx[s : s + 256]
        probe = x[inputs[part]] + eps[part].reshape(-1, 1, 1, 1) * directions[dirs[part]]
        probe = defence_lib.apply_stage(chosen, "input", probe, rng)
        bits[part] = _top1(model, probe) != reference[inputs[part]]
    answer_rng = seeds.rng(seed, "probe.client_answer_noise", pid, session, step)
    bits[idx] = defence_lib.apply_stage(chosen, "answer", bits[idx], answer_rng)
    return Message(RecordDict({"bits": arrays_to_record({"bits": bits})}), reply_to=msg)


@torch.no_grad()
def _top1(model: torch.nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate(
        [
            model(torch.from_numpy(np.ascontiguousarray(x[s : s + batch]))).argmax(1).numpy()
            for s in range(0, len(x), batch)
        ]
    )


def server_app(
    passes: list[Session],
    plans: list[Plan],
    directions: dict[str, np.ndarray],
    model_state: dict[str, np.ndarray],
    clients: int,
    search_args: dict,
    wire: WireLog,
    outcome: ProbeOutcome,
    on_step: Callable[[int, int, int], None],
    engine: Engine,
) -> ServerApp:
    """The adversary: one search per session over every data owner's inputs at once, each
    by its plan (votes per query, directions: the first ones of the kind). A
    failed exchange is retried under ``engine.on_client_failure: retry``; the search cannot
    go on without an owner's bits, so an owner given up on ends the run."""
    app = ServerApp()
    policy = Policy(engine, wire, failures=outcome.failures, can_skip=False)

    def send(grid: Grid, contents: dict[int, RecordDict], phase: str, rnd: int) -> dict:
        replies: dict[int, Message] = {}

        def keep(reply: Message) -> None:
            replies[reply.metadata.src_node_id] = reply

        policy.send(grid, contents, phase, rnd, keep)
        return replies

    def config(phase: str, session: int = -1, step: int = 0) -> ConfigRecord:
        return ConfigRecord({"phase": phase, "session": session, "step": step})

    def make_oracle(
        grid: Grid, order: list[int], offsets: np.ndarray, session: int, rnd: int
    ) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        owner_of = np.repeat(np.arange(len(order)), np.diff(offsets))
        step = 0

        def oracle(idx: np.ndarray, dirs: np.ndarray, eps: np.ndarray) -> np.ndarray:
            nonlocal step
            step += 1
            owner = owner_of[idx]
            contents = {}
            for j, node in enumerate(order):
                mine = owner == j
                if not mine.any():
                    continue
                queries = {
                    "input": (idx[mine] - offsets[j]).astype(np.int64),
                    "direction": dirs[mine].astype(np.int64),
                    "eps": eps[mine].astype(np.float32),
                }
                contents[node] = RecordDict(
                    {
                        "config": config("probe", session, step),
                        "queries": arrays_to_record(queries),
                    }
                )
            replies = send(grid, contents, "probe", rnd + step)
            bits = np.empty(len(idx), dtype=np.uint8)
            for j, node in enumerate(order):
                mine = owner == j
                if mine.any():
                    bits[mine] = record_to_arrays(replies[node].content["bits"])["bits"]
            return bits

        return oracle

    @app.main()
    @surfaced(outcome)
    def main(grid: Grid, context: Context) -> None:
        ids = wait_for_nodes(grid, clients)
        hello = send(grid, {n: RecordDict({"config": config("hello")}) for n in ids}, "hello", 0)
        owner = {n: identity.owner(hello[n], hello[n].content["meta"]["partition"]) for n in ids}
        order = sorted(ids, key=owner.__getitem__)
        sizes = [int(hello[n].content["meta"]["inputs"]) for n in order]
        outcome.partitions = [owner[n] for n in order]
        outcome.sizes = sizes
        offsets = np.cumsum([0, *sizes])
        for k, (session, chosen) in enumerate(zip(passes, plans, strict=True)):
            rnd = 1000 * (k + 1)
            used = directions[session.kind][: chosen.directions]
            send(
                grid,
                {
                    n: RecordDict(
                        {
                            "config": config("install", k),
                            "model": arrays_to_record(model_state),
                            "directions": arrays_to_record({"d": used}),
                        }
                    )
                    for n in order
                },
                "install",
                rnd,
            )
            outcome.signatures[k] = search(
                make_oracle(grid, order, offsets, k, rnd),
                int(offsets[-1]),
                len(used),
                votes=chosen.votes,
                on_step=lambda s, left, k=k: on_step(k, s, left),
                **search_args,
            )

    return app
