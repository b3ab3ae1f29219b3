"""The owners' side and the server's side of one Flower exchange: ``average`` asks each owner
for its users' mean record; the owner applies its payload defences and replies with it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim import defences, seeds
from splitsim.engine import identity
from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.grid import send_and_receive, wait_for_nodes
from splitsim.engine.wire import WireLog
from splitsim.registry import DATASETS
from splitsim.roles.base import ServerError, surfaced
from splitsim.scenario import Scenario


def owner_records(scenario: Scenario, pid: int) -> np.ndarray:
    """Owner ``pid``'s users' records, as its phones' networks would read them."""
    dataset = DATASETS.get(scenario.dataset.name)(scenario.dataset.params, scenario.seed, None)
    users, clients = scenario.deployment.users, scenario.deployment.clients
    return dataset.partition(pid, clients, users).x


def client_app(scenario: Scenario) -> ClientApp:
    app = ClientApp()
    app.query()(functools.partial(_handle, scenario))
    return app


def _handle(scenario: Scenario, msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    mean = owner_records(scenario, pid).mean(axis=0).astype(np.float32)
    rng = seeds.rng(scenario.seed, "records.deploy", 1000 + pid)
    mean = defences.apply_stage(defences.build(scenario.defences), "payload", mean, rng)
    content = RecordDict(
        {"payload": arrays_to_record({"mean": mean}), "meta": ConfigRecord({"partition": pid})}
    )
    return Message(content, reply_to=msg)


@dataclass
class Averages(ServerError):
    means: dict[int, np.ndarray] = field(default_factory=dict)


def server_app(nodes: int, wire: WireLog, got: Averages) -> ServerApp:
    app = ServerApp()

    @app.main()
    @surfaced(got)
    def main(grid: Grid, context: Context) -> None:
        messages = []
        for node in wait_for_nodes(grid, nodes):
            content = RecordDict({"config": ConfigRecord({"phase": "average"})})
            wire.to_node(1, "average", node, content)
            messages.append(Message(content, dst_node_id=node, message_type="query"))
        for reply in send_and_receive(grid, messages):
            wire.from_node(1, "average", reply)  # error replies too
            if reply.has_error():
                raise RuntimeError(f"an owner failed: {reply.error.reason}")
            pid = identity.owner(reply, reply.content["meta"]["partition"])
            got.means[pid] = record_to_arrays(reply.content["payload"])["mean"]

    return app
