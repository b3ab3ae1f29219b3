"""FedAvg over Flower's Message API, with one adversarial participant among honest ones.

The ServerApp is honest: Flower's own ``FedAvg`` strategy (``flwr.serverapp.strategy``), all
nodes in every round, weighted by ``num-examples``. Two changes, both for repeatable runs:
replies are aggregated in partition order (Flower aggregates in arrival order, and float sums
depend on the order), and the server evaluates the global model on the public test set after
every round (``evaluate_fn``). Every message crosses a wire-logged grid, which also applies the
scenario's client-failure policy (``engine.on_client_failure``: skip or retry a participant that
raises or does not answer in time) and records every failure; ``engine.faults`` makes chosen
participants fail on purpose.

Each round, a participant's ``train`` handler receives the global weights (``arrays``), trains
on the records it holds this round and replies with its weights and ``num-examples``. Honest
participants may defend what they upload (``update`` defences) and how they train
(``training``: DP-SGD). Which participant does what is the role's business
(roles/property_inference/protocol.py); after the last round the harness may ask one
participant for a ``report`` (a query message, wire-logged like the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from splitsim.engine import identity
from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.faults import maybe_fail
from splitsim.engine.grid import ServerError, send_and_receive, surfaced
from splitsim.engine.wire import WireLog
from splitsim.scenario import Engine


class LoggedGrid:
    """A Grid that writes every message it sends and receives to the wire log and applies the
    scenario's client-failure policy: a call that returns an error, or no reply before the
    timeout, is retried (``retry``, up to ``retries`` times) or left out (``skip``); either way
    the strategy aggregates the replies it has, and every failure is recorded."""

    def __init__(
        self,
        grid: Grid,
        wire: WireLog,
        on_round: Callable[[int, str], None],
        prefix: str = "",
        policy: str = "skip",
        retries: int = 0,
        failures: list[dict] | None = None,
        observe: Observer | None = None,
    ) -> None:
        self._grid = grid
        self._observe = observe
        self._prefix = prefix
        self._wire = wire
        self._on_round = on_round
        self._policy = policy
        self._retries = retries
        self.failures = failures if failures is not None else []
        self._partition: dict[int, int] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def _exchange(
        self, messages: list[Message], rnd: int, phase: str, timeout: float | None
    ) -> dict[int, Message]:
        for msg in messages:
            self._wire.to_node(rnd, phase, msg.metadata.dst_node_id, msg.content)
        got: dict[int, Message] = {}
        for reply in send_and_receive(self._grid, messages, timeout=timeout):
            got[reply.metadata.src_node_id] = reply
            self._wire.from_node(rnd, phase, reply)  # an error reply too: the log misses nothing
            if not reply.has_error():
                self._partition[reply.metadata.src_node_id] = identity.owner(
                    reply, reply.content["metrics"]["partition"]
                )
        return got

    def report(self, partition: int, experiment: int, rnd: int) -> dict[str, np.ndarray]:
        """Ask one participant, by partition, for its report; its arrays."""
        node = next((n for n, p in self._partition.items() if p == partition), None)
        if node is None:
            raise RuntimeError(f"participant {partition} never answered: no report to ask for")
        config = ConfigRecord({"phase": "report", "experiment": experiment, "server-round": rnd})
        msg = Message(RecordDict({"config": config}), dst_node_id=node, message_type="query")
        phase = self._prefix + "report"
        self._wire.to_node(rnd, phase, node, msg.content)
        replies = send_and_receive(self._grid, [msg])
        if replies:
            self._wire.from_node(rnd, phase, replies[0])
        if not replies or replies[0].has_error():
            reason = replies[0].error.reason if replies else "no reply"
            raise RuntimeError(f"participant {partition} did not report: {reason}")
        return record_to_arrays(replies[0].content["report"])

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        phase = self._prefix + messages[0].metadata.message_type
        rnd = int(messages[0].content["config"].get("server-round", 0))
        pending = {m.metadata.dst_node_id: m for m in messages}
        done: dict[int, Message] = {}
        sent = dict(pending)
        attempt = 0
        while pending:
            got = self._exchange(list(pending.values()), rnd, phase, timeout)
            failed = {}
            for node, msg in pending.items():
                reply = got.get(node)
                if reply is not None and not reply.has_error():
                    done[node] = reply
                    continue
                reason = reply.error.reason if reply is not None else "no reply before timeout"
                if self._policy == "fail":
                    raise RuntimeError(f"node {node} failed in {phase}, round {rnd}: {reason}")
                last = self._policy == "skip" or attempt >= self._retries
                self.failures.append(
                    {
                        "round": rnd,
                        "phase": phase,
                        "node": node,
                        "partition": self._partition.get(node),
                        "attempt": attempt + 1,
                        "reason": (reason.strip().splitlines() or [""])[-1].rstrip("'>")[:300],
                        "action": "skipped" if last else "retried",
                    }
                )
                if not last:
                    failed[node] = Message(
                        msg.content, dst_node_id=node, message_type=msg.metadata.message_type
                    )
            pending = failed
            attempt += 1
        if self._observe is not None:
            for node, reply in done.items():
                self._observe(rnd, phase, sent[node], reply)
        self._on_round(rnd, phase)
        return [done[m.metadata.dst_node_id] for m in messages if m.metadata.dst_node_id in done]


#: ``observe(round, phase, sent, reply)``: what a curious server does with each exchange it
#: completed, besides aggregating it (roles/gradient_inversion)
Observer = Callable[[int, str, Message, Message], None]


class OrderedFedAvg(FedAvg):
    """Flower's FedAvg, aggregating replies in partition order."""

    def __init__(self, nodes: int, **kwargs: object) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=nodes,
            min_evaluate_nodes=nodes,
            min_available_nodes=nodes,
            **kwargs,
        )

    @staticmethod
    def _ordered(replies: Iterable[Message]) -> list[Message]:
        return sorted(
            replies,
            key=lambda m: -1 if m.has_error() else int(m.content["metrics"]["partition"]),
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, self._ordered(replies))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round, self._ordered(replies))


@dataclass
class FederatedOutcome(ServerError):
    """What the honest server ended with (the harness reads it after the simulation), and the
    report the harness asked one participant for after the last round."""

    weights: dict[str, np.ndarray] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    report: dict[str, np.ndarray] = field(default_factory=dict)


def server_app(
    initial: dict[str, np.ndarray],
    rounds: int,
    nodes: int,
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]],
    wire: WireLog,
    outcome: FederatedOutcome,
    on_round: Callable[[int, str], None],
    engine: Engine,
    phase_prefix: str = "",
    experiment: int = 0,
    report_from: int | None = None,
    train_config: dict[str, int | float] | None = None,
    observe: Observer | None = None,
) -> ServerApp:
    """FedAvg for ``rounds``; every message's config carries ``experiment``, and a training
    message's also ``train_config`` (the server's instructions: learning rate, local steps).
    With ``report_from`` (a partition), the harness then asks that participant for its
    ``report`` (a ``query`` message, wire-logged as phase ``<prefix>report``). ``observe``
    sees every completed exchange, the message sent and the reply, as the server got them."""
    app = ServerApp()

    @app.main()
    @surfaced(outcome)
    def main(grid: Grid, context: Context) -> None:
        strategy = OrderedFedAvg(nodes)
        logged = LoggedGrid(
            grid,
            wire,
            on_round,
            phase_prefix,
            policy=engine.on_client_failure,
            retries=engine.client_retries,
            failures=outcome.failures,
            observe=observe,
        )

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            row = {"round": float(server_round), **evaluate(record_to_arrays(arrays))}
            outcome.history.append(row)
            return MetricRecord(row)

        result = strategy.start(
            grid=logged,
            timeout=engine.client_timeout_s or 3600.0,
            initial_arrays=arrays_to_record(initial),
            num_rounds=rounds,
            train_config=ConfigRecord(
                {"phase": "train", "experiment": experiment, **(train_config or {})}
            ),
            evaluate_config=ConfigRecord({"phase": "evaluate", "experiment": experiment}),
            evaluate_fn=central,
        )
        outcome.weights = record_to_arrays(result.arrays)
        if report_from is not None:
            outcome.report = logged.report(report_from, experiment, rounds + 1)

    return app


Handler = Callable[[int, int, dict[str, np.ndarray], dict], tuple[dict[str, np.ndarray], dict]]
Reporter = Callable[[dict], dict[str, np.ndarray]]


def client_app(
    train: Handler,
    evaluate: Handler,
    engine: Engine | None = None,
    storage: str | None = None,
    report: Reporter | None = None,
) -> ClientApp:
    """``train(partition, round, global_weights, config) -> (weights, metrics)`` and the same
    for ``evaluate`` (weights ignored); ``metrics`` must hold ``num-examples``. ``report(config)
    -> arrays`` answers the harness's ``report`` query. ``engine.faults`` make chosen
    participants fail on chosen rounds, their tries counted in the
    participants' ``storage``."""
    app = ClientApp()

    def reply(msg: Message, handler: Handler, with_arrays: bool, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        config = dict(msg.content["config"])
        rnd = int(config["server-round"])
        if engine is not None and engine.faults:
            maybe_fail(engine, pid, rnd, msg.metadata.message_type, Path(storage or "."))
        weights, metrics = handler(pid, rnd, record_to_arrays(msg.content["arrays"]), config)
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

    @app.query()
    def on_query(msg: Message, context: Context) -> Message:
        config = dict(msg.content["config"])
        if config.get("phase") != "report" or report is None:
            raise ValueError(f"unknown query {config.get('phase')!r}")
        content = RecordDict({"report": arrays_to_record(report(config))})
        return Message(content, reply_to=msg)

    return app
