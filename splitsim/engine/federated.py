"""FedAvg over Flower's Message API, with one adversarial participant among honest ones.

The ServerApp is honest: Flower's own ``FedAvg`` strategy (``flwr.serverapp.strategy``), all
nodes in every round, weighted by ``num-examples``. Two changes, both for repeatable runs:
replies are aggregated in partition order (Flower aggregates in arrival order, and float sums
depend on the order), and the server evaluates the global model on the public test set after
every round (``evaluate_fn``). Every message crosses a wire-logged grid.

Each round, a participant's ``train`` handler receives the global weights (``arrays``), trains
on the records it holds this round and replies with its weights and ``num-examples``. Honest
participants may defend what they upload (``update`` defences) and how they train
(``training``: DP-SGD). The adversarial participant (the last partition) is the one described
in attacks/property_inference.py: it trains with the multi-task loss and keeps, in its own
storage, what it needs to infer a target's property from the next global model, which reaches it
in the ``evaluate`` message of the same round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.simulation import fast_polling
from splitsim.engine.wire import WireLog


class LoggedGrid:
    """A Grid that writes every message it sends and receives to the wire log."""

    def __init__(
        self, grid: Grid, wire: WireLog, on_round: Callable[[int, str], None], prefix: str = ""
    ) -> None:
        self._grid = grid
        self._prefix = prefix
        self._wire = wire
        self._on_round = on_round

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        phase, rnd = "", 0
        for msg in messages:
            phase = self._prefix + msg.metadata.message_type
            rnd = int(msg.content["config"].get("server-round", 0))
            self._wire.to_node(rnd, phase, msg.metadata.dst_node_id, msg.content)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                self._wire.from_node(rnd, phase, reply)
        self._on_round(rnd, phase)
        return replies


class OrderedFedAvg(FedAvg):
    """Flower's FedAvg, aggregating replies in partition order; failures are recorded."""

    def __init__(self, nodes: int, failures: list[dict], **kwargs: object) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=nodes,
            min_evaluate_nodes=nodes,
            min_available_nodes=nodes,
            **kwargs,
        )
        self.failures = failures

    def _ordered(self, server_round: int, phase: str, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                self.failures.append(
                    {
                        "round": server_round,
                        "phase": phase,
                        "node": reply.metadata.src_node_id,
                        "reason": reply.error.reason,
                    }
                )
        return sorted(
            replies,
            key=lambda m: -1 if m.has_error() else int(m.content["metrics"]["partition"]),
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, self._ordered(server_round, "train", replies))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        ordered = self._ordered(server_round, "evaluate", replies)
        return super().aggregate_evaluate(server_round, ordered)


@dataclass
class FederatedOutcome:
    """What the honest server ended with (the harness reads it after the simulation)."""

    weights: dict[str, np.ndarray] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    error: BaseException | None = None


def server_app(
    initial: dict[str, np.ndarray],
    rounds: int,
    nodes: int,
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]],
    wire: WireLog,
    outcome: FederatedOutcome,
    on_round: Callable[[int, str], None],
    phase_prefix: str = "",
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            fast_polling(grid)
            strategy = OrderedFedAvg(nodes, outcome.failures)

            def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
                row = {"round": float(server_round), **evaluate(record_to_arrays(arrays))}
                outcome.history.append(row)
                return MetricRecord(row)

            result = strategy.start(
                grid=LoggedGrid(grid, wire, on_round, phase_prefix),
                initial_arrays=arrays_to_record(initial),
                num_rounds=rounds,
                train_config=ConfigRecord({"phase": "train"}),
                evaluate_config=ConfigRecord({"phase": "evaluate"}),
                evaluate_fn=central,
            )
            outcome.weights = record_to_arrays(result.arrays)
        except BaseException as err:  # surfaced by the caller: Flower would only log it
            outcome.error = err
            raise

    return app


Handler = Callable[[int, int, dict[str, np.ndarray]], tuple[dict[str, np.ndarray], dict]]


def client_app(train: Handler, evaluate: Handler) -> ClientApp:
    """``train(partition, round, global_weights) -> (weights, metrics)`` and the same for
    ``evaluate`` (weights ignored); ``metrics`` must hold ``num-examples``."""
    app = ClientApp()

    def reply(msg: Message, handler: Handler, with_arrays: bool, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        weights, metrics = handler(pid, rnd, record_to_arrays(msg.content["arrays"]))
        content = RecordDict({"metrics": MetricRecord({**metrics, "partition": pid})})
        if with_arrays:
            content["arrays"] = arrays_to_record(weights)
        return Message(content, reply_to=msg)

    @app.train()
    def on_train(msg: Message, context: Context) -> Message:
        return reply(msg, train, True, context)

    @app.evaluate()
    def on_evaluate(msg: Message, context: Context) -> Message:
        return reply(msg, evaluate, False, context)

    return app
