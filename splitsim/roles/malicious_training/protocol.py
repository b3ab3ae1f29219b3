"""Training with the supplier's code, then serving the model, as one Flower exchange per training.

The data owners (partitions ``0 .. clients-1``) each hold private training images. One
training is:

1. **FedAvg** (engine/federated.py: Flower's own strategy, honest, replies aggregated in
   partition order) for ``role.rounds``: each round every owner trains the global model on its
   own images with the training code it was given (``train`` messages, weights back). With one
   owner this is that owner training alone, round after round. After each round the owners
   receive the new global model (``evaluate`` messages), so after the last they hold the final
   one.
2. **Serving**, by the host (partition 0, which publishes or serves the final model for all):
   ``install`` (the host applies its ``release`` defences to the final model, fine-tuning it on
   its own images, then its ``weights`` defences, and measures the official test accuracy of
   what it will serve; every owner answers with its partition), then
   what reaches the supplier: ``publish`` (white-box: the weights) or ``query`` (black-box: the
   served model's class scores for the inputs the supplier sends, under the host's ``budget``
   defences, each of which counts every query against one total for the served model, and
   ``payload`` defences; NaN where it refused).

Every message carries its ``experiment``: 0 the supplier's code, 1 an honest training of the same
data with the same settings and no malicious term (the baseline). The same list of codes is
built on both sides from the resolved scenario (``codes``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim import defences as defence_lib
from splitsim import seeds
from splitsim.data.images import _load as read_images
from splitsim.data.score_data import partition_sizes
from splitsim.engine import federated, identity
from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.failures import Policy
from splitsim.engine.grid import ServerError, surfaced, wait_for_nodes
from splitsim.engine.wire import WireLog
from splitsim.registry import DATASETS, MODELS
from splitsim.roles.malicious_training.attack import (
    Code,
    augmented_inputs,
    capacity_batch,
    capacity_labels,
    flat,
    malicious_term,
    secret_vector,
)
from splitsim.scenario import Scenario

HOST = 0  # the owner that publishes or serves the final model
OWNER_POOL = 50_000  # training images 0-50,000 are the owners'; 50,000-60,000 the reference's
EXPERIMENTS = ("malicious", "honest")


def images(scenario: Scenario, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The data set's training or test images, float32 in [0, 1], and their labels (MNIST or
    Fashion-MNIST, read once per process)."""
    params = scenario.dataset.params
    return read_images(DATASETS.get(scenario.dataset.name), params.root, params.download, train)


def network(scenario: Scenario) -> torch.nn.Module:
    spec = scenario.models.federated
    return MODELS.get(spec.name).build(spec.params, (1, 28, 28), 10)


def parameter_names(scenario: Scenario) -> list[str]:
    """The model's parameter names in ``named_parameters()`` order: the order the white-box
    segments index (attack.flat). Built aside the global random stream, which seeds training."""
    with torch.random.fork_rng(devices=[]):
        return [n for n, _ in network(scenario).named_parameters()]


def supplier_code(scenario: Scenario) -> Code:
    """The code the supplier ships (and the one it decodes with)."""
    p = scenario.role.params
    sigma, drift, repeat = 0.0, 0.0, 1
    if p.adaptive:  # it knows the owners' defences and writes its code against them
        # independent Gaussian noises add up to one of deviation sqrt(sum of variances)
        sigma = math.sqrt(sum(d.params.sigma**2 for d in scenario.defences
                              if d.name == "weight_noise"))  # fmt: skip
        host_images = partition_sizes(p.train_images, scenario.deployment.clients)[HOST]
        for d in (d for d in scenario.defences if d.name == "fine_tune"):
            steps = d.params.epochs * -(-host_images // d.params.batch_size)
            drift += d.params.lr * steps
            repeat += d.params.epochs
    return Code(
        encoding=p.encoding,
        key=seeds.int_seed(scenario.seed, "malicious.supplier_key"),
        secrets=p.secrets,
        bits=p.bits,
        pool=p.pool,
        classes=10,
        lambda_corr=p.lambda_corr,
        lambda_sign=p.lambda_sign,
        margin=p.sign_margin,
        sigma=sigma,
        drift=drift,
        repeat=repeat,
    )


def codes(scenario: Scenario) -> list[Code | None]:
    """The training code of each experiment: the supplier's, then (if compared) honest code."""
    code = supplier_code(scenario)
    return [code, None] if scenario.role.params.compare_honest else [code]


def owner_ids(scenario: Scenario) -> list[np.ndarray]:
    """Each owner's training images: a seeded draw of ``train_images`` of the first 50,000,
    split evenly; an owner's first ``secrets`` are the ones the supplier's code encodes."""
    p = scenario.role.params
    order = seeds.rng(scenario.seed, "malicious.split").permutation(OWNER_POOL)[: p.train_images]
    bounds = np.cumsum([0, *partition_sizes(p.train_images, scenario.deployment.clients)])
    return [order[bounds[i] : bounds[i + 1]] for i in range(scenario.deployment.clients)]


def owner_data(scenario: Scenario, pid: int) -> tuple[np.ndarray, np.ndarray]:
    """Owner ``pid``'s private images and labels (the owners' side and the harness's truth)."""
    x, y = images(scenario, train=True)
    ids = owner_ids(scenario)[pid]
    return x[ids], y[ids]


def test_accuracy(net: torch.nn.Module, scenario: Scenario) -> float:
    """Accuracy on the official test set (the data set's 10,000 test images)."""
    x, y = images(scenario, train=False)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(x[s : s + 2000])).argmax(1) for s in
                          range(0, len(x), 2000)]).numpy()  # fmt: skip
    return float((pred == y).mean())


def local_training(
    net: torch.nn.Module, x: np.ndarray, y: np.ndarray, code: Code | None, owner: int,
    epochs: int, batch_size: int, lr: float, seed: int,
) -> None:  # fmt: skip
    """The training code the owner runs on its images (Adam, cross-entropy), with the supplier's
    additions when ``code`` is given: the augmented inputs (capacity abuse) or the term on its
    parameter segment (correlation, sign)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    augmented = torch.zeros(len(x), dtype=torch.bool)
    term = None
    if code is not None and code.encoding == "capacity_abuse":
        xa = torch.from_numpy(np.tile(augmented_inputs(code, owner), (code.repeat, 1, 1, 1)))
        ya = torch.from_numpy(np.tile(capacity_labels(code, owner, x), code.repeat))
        xs, ys = torch.cat([xs, xa]), torch.cat([ys, ya])
        augmented = torch.cat([augmented, torch.ones(len(xa), dtype=torch.bool)])
    elif code is not None:
        term = (code.segment(owner), secret_vector(code, x))
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            aug = augmented[idx]
            if code is not None and code.sigma > 0 and aug.any():
                # the adaptive supplier's augmented rows go through noisy weights
                real = idx[~aug]
                loss = capacity_batch(net, xs[idx[aug]], ys[idx[aug]], code.sigma, generator)
                loss = loss * len(idx[aug]) / len(idx)
                if len(real):
                    loss = loss + torch.nn.functional.cross_entropy(net(xs[real]), ys[real]) * len(
                        real
                    ) / len(idx)
            else:
                loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            if term is not None:
                loss = loss + malicious_term(code, flat(net)[term[0]], term[1])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    net.eval()


# -- the data owners' ClientApp ------------------------------------------------------------


def client_app(scenario: Scenario, storage: str) -> ClientApp:
    app = ClientApp()
    # Module-level handlers with their settings bound: Flower pickles the app for every
    # message, and a closure would go by value (see model_inversion/protocol.client_app).
    app.train()(functools.partial(_on_train, scenario))
    app.evaluate()(functools.partial(_on_evaluate, storage))
    app.query()(functools.partial(_on_query, scenario, storage))
    return app


def _on_train(scenario: Scenario, msg: Message, context: Context) -> Message:
    """One FedAvg round: train the global model on the owner's images with the given code."""
    p = scenario.role.params
    pid = int(context.node_config["partition-id"])
    config = msg.content["config"]
    k, rnd = int(config["experiment"]), int(config["server-round"])
    net = network(scenario)
    weights = record_to_arrays(msg.content["arrays"])
    net.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in weights.items()})
    x, y = owner_data(scenario, pid)
    seed = seeds.int_seed(scenario.seed, "malicious.local_training", k, pid, rnd)
    local_training(net, x, y, codes(scenario)[k], pid, p.local_epochs, p.local_batch_size,
                   p.local_lr, seed)  # fmt: skip
    trained = {n: v.detach().numpy() for n, v in net.state_dict().items()}
    metrics = MetricRecord({"num-examples": len(x), "partition": pid})
    content = RecordDict({"arrays": arrays_to_record(trained), "metrics": metrics})
    return Message(content, reply_to=msg)


def _on_evaluate(storage: str, msg: Message, context: Context) -> Message:
    """The owners receive each round's global model; the host keeps it (the last one is the
    model it will serve)."""
    pid = int(context.node_config["partition-id"])
    if pid == HOST:
        k = int(msg.content["config"]["experiment"])
        weights = record_to_arrays(msg.content["arrays"])
        np.savez(Path(storage) / f"global-{k}.npz", **weights)
    metrics = MetricRecord({"num-examples": 1, "partition": pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _on_query(scenario: Scenario, storage: str, msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    config = msg.content["config"]
    phase, k = config["phase"], int(config["experiment"])
    chosen = defence_lib.build(scenario.defences)
    served = Path(storage) / f"served-{k}.npz"
    if phase == "install":
        metrics: dict[str, float | int] = {"partition": pid}
        if pid == HOST:
            weights = _load(Path(storage) / f"global-{k}.npz")
            release = [d for d in chosen if d.stage == "release"]
            if release:  # the host retrains the model on its own images before releasing it
                net = _model(scenario, weights)
                x, y = owner_data(scenario, HOST)
                for i, d in enumerate(release):
                    d.fine_tune(net, x, y, seeds.int_seed(scenario.seed, "malicious.release", k, i))
                weights = {n: v.detach().numpy().copy() for n, v in net.state_dict().items()}
            rng = seeds.rng(scenario.seed, "malicious.weight_noise", k)
            weights = {n: defence_lib.apply_stage(chosen, "weights", v, rng)
                       for n, v in weights.items()}  # fmt: skip
            np.savez(served, **weights)
            budgets = sum(d.stage == "budget" for d in chosen)
            np.save(Path(storage) / f"spent-{k}.npy", np.zeros((budgets, 1), dtype=np.int64))
            metrics["test_accuracy"] = test_accuracy(_model(scenario, weights), scenario)
        return Message(RecordDict({"meta": MetricRecord(metrics)}), reply_to=msg)
    if pid != HOST:
        raise ValueError(f"owner {pid} serves nothing; ask the host (owner {HOST})")
    weights = _load(served)
    if phase == "publish":
        return Message(RecordDict({"weights": arrays_to_record(weights)}), reply_to=msg)
    if phase != "query":
        raise ValueError(f"unknown phase {phase!r}")
    x = record_to_arrays(msg.content["inputs"])["x"]
    spent_path = Path(storage) / f"spent-{k}.npy"
    spent = np.load(spent_path)
    answered = within_budgets([d for d in chosen if d.stage == "budget"], spent, len(x))
    np.save(spent_path, spent)
    answers = np.full((len(x), 10), np.nan, dtype=np.float32)
    if answered.any():
        net = _model(scenario, weights)
        with torch.no_grad():
            scores = torch.softmax(net(torch.from_numpy(x[answered])), dim=1).numpy()
        rng = seeds.rng(scenario.seed, "malicious.answer_noise", k, int(config["step"]))
        answers[answered] = defence_lib.apply_stage(chosen, "payload", scores, rng)
    return Message(RecordDict({"answers": arrays_to_record({"scores": answers})}), reply_to=msg)


def within_budgets(budgets: list, spent: np.ndarray, n: int) -> np.ndarray:
    """Which of the next ``n`` queries the served model answers under its ``budget`` defences.
    The unit of a budget is the served model: every query counts against one total, ``spent[i]``
    for budget ``i`` (updated in place). Each budget keeps its own count, so two budgets do not
    count one query twice, and a query is answered when every budget allows it: the tightest
    cap binds."""
    answered = np.ones(n, dtype=bool)
    for i, budget in enumerate(budgets):
        answered &= budget.allowed(spent[i], np.zeros(n, dtype=np.int64))
    return answered


def _model(scenario: Scenario, weights: dict[str, np.ndarray]) -> torch.nn.Module:
    net = network(scenario)
    net.load_state_dict({n: torch.from_numpy(np.asarray(v).copy()) for n, v in weights.items()})
    return net.eval()


# -- the server side: the honest aggregator, then the supplier -----------------------------


@dataclass
class TrainingOutcome(ServerError):
    """One training: the honest aggregator's history and failures, the host's measured test
    accuracy of what it serves, and what reached the supplier."""

    history: list[dict[str, float]] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    served_accuracy: float | None = None
    published: dict[str, np.ndarray] | None = None
    answers: list[np.ndarray] = field(default_factory=list)  # per owner's augmented inputs


def server_app(
    scenario: Scenario,
    initial: dict[str, np.ndarray],
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]],
    wire: WireLog,
    outcomes: list[TrainingOutcome],
    on_round: Callable[[int, str], None],
) -> ServerApp:
    """For each experiment (one per outcome, in one Flower run: the owners' storage holds each
    experiment's model apart), FedAvg with that experiment's code, then the supplier's read-back
    from the host. The first outcome holds the ServerApp's error, if any."""
    p, engine = scenario.role.params, scenario.engine
    clients = scenario.deployment.clients
    code = supplier_code(scenario)
    app = ServerApp()

    @app.main()
    @surfaced(outcomes[0])
    def main(grid: Grid, context: Context) -> None:
        for experiment, outcome in enumerate(outcomes):
            train_and_read(grid, experiment, outcome)

    def train_and_read(grid: Grid, experiment: int, outcome: TrainingOutcome) -> None:
        prefix = f"{EXPERIMENTS[experiment]} "
        strategy = federated.OrderedFedAvg(clients)
        logged = federated.LoggedGrid(grid, wire, on_round, prefix,
                                      policy=engine.on_client_failure,
                                      retries=engine.client_retries,
                                      failures=outcome.failures)  # fmt: skip

        def central(server_round: int, arrays) -> MetricRecord:  # noqa: ANN001
            row = {"round": float(server_round), **evaluate(record_to_arrays(arrays))}
            outcome.history.append(row)
            return MetricRecord(row)

        strategy.start(
            grid=logged,
            timeout=engine.client_timeout_s or 3600.0,
            initial_arrays=arrays_to_record(initial),
            num_rounds=p.rounds,
            train_config=ConfigRecord({"phase": "train", "experiment": experiment}),
            evaluate_config=ConfigRecord({"phase": "evaluate", "experiment": experiment}),
            evaluate_fn=central,
        )
        policy = Policy(engine, wire, failures=outcome.failures, can_skip=False)
        rnd = p.rounds + 1

        def config(phase: str, step: int = 0) -> ConfigRecord:
            return ConfigRecord({"phase": phase, "experiment": experiment, "step": step})

        installed: dict[int, Message] = {}
        ids = wait_for_nodes(grid, clients)
        policy.send(grid, {n: RecordDict({"config": config("install")}) for n in ids},
                    prefix + "install", rnd,
                    lambda r: installed.__setitem__(r.metadata.src_node_id, r))  # fmt: skip
        owner = {n: identity.owner(r, r.content["meta"]["partition"]) for n, r in installed.items()}
        host = next(n for n, o in owner.items() if o == HOST)
        outcome.served_accuracy = float(installed[host].content["meta"]["test_accuracy"])
        got: list[Message] = []
        if code.encoding != "capacity_abuse":
            policy.send(grid, {host: RecordDict({"config": config("publish")})},
                        prefix + "publish", rnd, got.append)  # fmt: skip
            outcome.published = record_to_arrays(got[0].content["weights"])
            return
        step = 0
        for j in range(clients):  # the supplier regenerates each owner's inputs from its seed
            inputs = augmented_inputs(code, j)
            parts = []
            for s in range(0, len(inputs), p.query_batch):
                step += 1
                got.clear()
                batch = {"x": inputs[s : s + p.query_batch]}
                content = RecordDict({"config": config("query", step),
                                      "inputs": arrays_to_record(batch)})  # fmt: skip
                policy.send(grid, {host: content}, prefix + "query", rnd + step, got.append)
                parts.append(record_to_arrays(got[0].content["answers"])["scores"])
            outcome.answers.append(np.concatenate(parts))

    return app
