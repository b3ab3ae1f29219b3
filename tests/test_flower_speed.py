"""engine/flower_speed.py: Flower's simulation loop without the 0.1 s tick hands out the same
messages in the same order as Flower's own, and a run gives the same metrics with either; and
split training's FedAvg and forward-pass cache, changed for 100 owners, compute what they did.

The quick tests drive a real in-memory link state, as Flower's simulation builds it; the slow
ones run a split-learning and a Covid scenario through the real Ray simulation twice."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import flwr
import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from splitsim.cli import main
from splitsim.engine import flower_speed, split_training
from splitsim.engine.flower_speed import Inbox
from splitsim.engine.split_training import fedavg

ROOT = Path(__file__).resolve().parents[1]


class Link:
    """A link state with registered nodes and a run, and the grid a ServerApp would use."""

    def __init__(self, nodes: int) -> None:
        factory = LinkStateFactory(
            FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
        )
        self.state: InMemoryLinkState = factory.state()  # type: ignore[assignment]
        run = Run.create_empty(run_id=7)
        run.primary_task_id = 8
        run.federation_id = NOOP_FEDERATION_ID
        # What run_simulation sets for its ServerApp: a Message records its run from it.
        TaskIdentity.task_id, TaskIdentity.run_id = 1, run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.state.run_ids[run.run_id] = RunRecord(run=run)
        self.state.task_store[8] = Task(task_id=8, run_id=run.run_id)
        self.mapping = vce_api._register_nodes(nodes, factory)
        self.nodes = list(self.mapping)
        self.grid = InMemoryGrid(factory)
        self.grid.set_run(run)

    def push(self, *pairs: tuple[int, str]) -> list[str]:
        """Push one message per (node index, tag) pair."""
        return list(
            self.grid.push_messages(
                Message(RecordDict({"c": ConfigRecord({"tag": tag})}), self.nodes[i], "query")
                for i, tag in pairs
            )
        )

    def flowers_sweeps(self) -> list[list[tuple[int, str]]]:
        """What Flower's own loop hands out, sweep by sweep, until nothing is left."""
        sweeps = []
        while True:
            got = [m for node in self.mapping for m in self.state.get_message_ins(node, limit=1)]
            if not got:
                return sweeps
            sweeps.append(described(got))


def described(messages: list[Message]) -> list[tuple[int, str]]:
    return [(m.metadata.dst_node_id, str(m.content["c"]["tag"])) for m in messages]


def inbox_sweeps(inbox: Inbox) -> list[list[tuple[int, str]]]:
    sweeps = []
    while got := inbox.sweep():
        sweeps.append(described(got))
    return sweeps


PUSHED = [(3, "a"), (0, "b"), (3, "c"), (1, "d"), (3, "e"), (0, "f")]


def test_the_inbox_hands_out_what_flowers_loop_does_in_its_order():
    flowers, ours = Link(5), Link(5)
    flowers.push(*PUSHED)
    ours.push(*PUSHED[:3])  # stored before the loop starts, as while Ray starts
    inbox = Inbox(ours.state, ours.mapping)
    ours.push(*PUSHED[3:])  # stored through the index
    expected = flowers.flowers_sweeps()
    assert [[tag for _, tag in sweep] for sweep in expected] == [["b", "d", "a"], ["f", "c"], ["e"]]
    got = inbox_sweeps(inbox)
    index = {node: i for i, node in enumerate(ours.nodes)}
    assert [[(index[n], t) for n, t in s] for s in got] == [
        [(flowers.nodes.index(n), t) for n, t in s] for s in expected
    ]
    assert all(m.metadata.delivered_at for m in ours.state.message_ins_store.values())
    inbox.close()
    assert "store_message_ins" not in vars(ours.state)  # the class's own method again


def test_a_deleted_or_delivered_message_is_not_handed_out():
    link = Link(3)
    inbox = Inbox(link.state, link.mapping)
    gone, _, _ = link.push((0, "gone"), (1, "kept"), (2, "taken"))
    link.state.delete_messages({gone})
    taken = link.state.get_message_ins(link.nodes[2], limit=1)  # by Flower's own call
    assert described(taken) == [(link.nodes[2], "taken")]
    assert inbox_sweeps(inbox) == [[(link.nodes[1], "kept")]]
    inbox.close()


def test_the_loop_wakes_up_when_a_message_is_stored():
    link = Link(2)
    inbox = Inbox(link.state, link.mapping)
    woke: list[float] = []

    def waiter() -> None:
        inbox.wait(5.0)
        woke.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # the waiter is asleep
    pushed = time.monotonic()
    link.push((1, "now"))
    thread.join(5.0)
    assert woke and woke[0] - pushed < 0.05, woke
    assert inbox_sweeps(inbox) == [[(link.nodes[1], "now")]]
    inbox.close()


def test_a_stored_reply_is_told_once_and_wakes_the_server():
    link = Link(2)
    inbox = Inbox(link.state, link.mapping)
    first, second = link.push((0, "x"), (1, "y"))
    assert flower_speed.replied(link.state, {first, second}, 0.0) == set()
    assert flower_speed.replied(Link(1).state, {first}, 0.0) is None  # a state not watched
    (delivered,) = inbox.sweep()[:1]
    reply = Message(RecordDict(), reply_to=delivered)
    reply.metadata.__dict__["_message_id"] = "reply-1"  # as Flower's worker sets it
    threading.Timer(0.2, link.state.store_message_res, [reply]).start()
    started = time.monotonic()
    assert flower_speed.replied(link.state, {first, second}, 5.0) == {first}
    assert time.monotonic() - started < 1.0
    assert flower_speed.replied(link.state, {first, second}, 0.0) == set()
    assert [m.metadata.reply_to_message_id for m in link.grid.pull_messages({first})] == [first]
    inbox.close()
    assert flower_speed.replied(link.state, {second}, 0.0) is None


def test_other_flower_versions_run_flowers_own_loop(caplog):
    try:
        with caplog.at_level(logging.WARNING, logger=flower_speed.__name__):
            assert flower_speed.use(True, "0.0.1") is False
            assert flower_speed.use(True, "0.0.1") is False
        assert vce_api.add_messages_to_queue is flower_speed.FLOWERS_LOOP
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "flwr 0.0.1" in said[0] and "1.42.0" in said[0], said
        assert flower_speed.use(False) is False
        assert vce_api.add_messages_to_queue is flower_speed.FLOWERS_LOOP
        if flwr.__version__ in flower_speed.CHECKED:
            assert flower_speed.use(True) is True
            assert vce_api.add_messages_to_queue is flower_speed.add_messages_to_queue
    finally:
        flower_speed.use(True)


def metrics_with_each_loop(tmp: Path, scenario: str, overrides: list[str]) -> list[dict]:
    out = []
    for loop in ("stock", "indexed"):
        runs = tmp / loop
        args = ["run", str(ROOT / "scenarios" / scenario), "--out", str(runs)]
        for expr in [*overrides, f"engine.flower_loop={loop}"]:
            args += ["--set", expr]
        assert main(args) == 0
        (found,) = runs.rglob("results.json")
        out.append(json.loads(found.read_text())["metrics"])
        used = vce_api.add_messages_to_queue is flower_speed.add_messages_to_queue
        assert used == (loop == "indexed" and flwr.__version__ in flower_speed.CHECKED)
    return out


@pytest.mark.slow
def test_split_learning_metrics_are_the_same_with_either_loop(tmp_path):
    stock, indexed = metrics_with_each_loop(
        tmp_path,
        "mnist_inversion.yaml",
        [
            "dataset.train_limit=640",
            "training.epochs=1",
            "deployment.clients=2",
            "deployment.users=200",
            "role.aux_size=300",
            "role.val_size=100",
            "role.decoder_epochs=1",
            "role.training_targets=64",
            "role.dcor_samples=64",
        ],
    )
    assert stock["training"]["round_trips"] > 5
    assert stock == indexed


@pytest.mark.slow
def test_covid_metrics_are_the_same_with_either_loop(tmp_path):
    stock, indexed = metrics_with_each_loop(
        tmp_path,
        "hidden_covid_app.yaml",
        [
            "dataset.train_records=3000",
            "dataset.test_records=1000",
            "training.epochs=2",
            "deployment.clients=5",
            "deployment.users=500",
        ],
    )
    assert stock == indexed


# The 100-owner transport (engine/split_training.py): what was changed for speed must compute
# the same bits as before.


def fedavg_as_summed_before(weights: dict, sizes: dict) -> dict:
    """The FedAvg of commit 86c59e5: a new float64 copy per owner, summed with ``sum``."""
    total = sum(sizes[p] for p in weights)
    names = next(iter(weights.values())).keys()
    return {
        name: sum(
            weights[p][name].astype(np.float64) * (sizes[p] / total) for p in sorted(weights)
        ).astype(np.float32)
        for name in names
    }


@pytest.mark.parametrize("owners", [1, 2, 7])
def test_fedavg_in_place_gives_the_same_bits(owners):
    rng = np.random.default_rng(owners)
    pids = rng.permutation(20)[:owners].tolist()  # not in order: the sum goes in owner order
    weights = {
        p: {"w": rng.standard_normal((30, 17)).astype(np.float32),
            "b": (rng.standard_normal(17) * 1e6).astype(np.float32)}
        for p in pids
    }  # fmt: skip
    sizes = {p: int(rng.integers(1, 500)) for p in pids}
    ours, before = fedavg(weights, sizes), fedavg_as_summed_before(weights, sizes)
    assert list(ours) == list(before)
    for name in before:
        assert ours[name].dtype == before[name].dtype == np.float32
        assert ours[name].tobytes() == before[name].tobytes(), name


def test_an_actor_keeps_a_forward_pass_per_owner_and_drops_the_stale_ones():
    split_training._FORWARDS.clear()
    states = [object() for _ in range(100)]
    try:
        z = torch.zeros(1)
        for pid, state in enumerate(states):  # step 1 of round 1 for 100 owners
            split_training._keep_forward(state, pid, 1, 1, z, owners=100)
        assert len(split_training._FORWARDS) == 100  # a cap of 16 kept the last 16 only
        assert split_training._cached_forward(states[0], 0, 1, 1) is z
        assert split_training._cached_forward(states[1], 1, 1, 2) is None  # another step
        split_training._keep_forward(states[0], 0, 1, 3, z, owners=100)
        assert list(split_training._FORWARDS) == [(id(states[0]), 0)]  # step 1 is stale now
        for pid, state in enumerate(states):
            split_training._keep_forward(state, pid, 2, pid, z, owners=1000)
        assert len(split_training._FORWARDS) <= split_training._MAX_FORWARDS_CAP
    finally:
        split_training._FORWARDS.clear()
