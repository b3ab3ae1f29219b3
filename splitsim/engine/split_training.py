"""Split training over Flower: data owners hold the first segment f1, the server the rest f2.

The exchange every split-learning role runs (papers/003's protocol); a role states what differs
in a :class:`SplitSetting` (its schedule and loss, the task's classes, who holds the labels, a
colluding owner, a curious owner that keeps the gradients it receives, its own extra phases).

Every exchange is a Flower message (``message_type="query"``, a ConfigRecord ``config`` naming
the phase); the wire log records each one:

- ``hello``: a node replies with its partition number and how many training images it holds.
  Under ``labels: server`` the server holds their labels, keyed by image id, as in papers/003;
  under ``labels: owner`` (vanilla SplitNN) each owner sends its batch's labels (``y``) with
  the intermediate tensor.
- ``train`` (round r, step t): optionally the weights to start from (``segment``: the FedAvg
  average in the parallel schedule, the previous owner's weights in the sequential one) and the
  gradient for the node's batch t-1 (``grad``). The node back-propagates that gradient (plus its
  own NoPeek term) through f1, updates, and replies with the intermediate tensor of batch t
  (``intermediate``: ``z`` and the sample ``ids`` the server's labels are keyed by) - one round
  trip per batch. After its last batch it replies with its weights instead. The gradient is
  the server's: its ``gradient`` defences (noise on what it returns, Li et al. 2022) act on it
  before it is sent.
- ``infer``: the final weights; the node replies with the (defended) intermediate tensors of
  its test images. ``collude``: the colluding node hands over its segment and images.
- A role's server may answer batches its own way (``SplitSetting.adversary``: a hijacking
  server returns another gradient than the task's). An owner running a ``detector`` defence
  (SplitGuard) sends some batches with changed labels, keeps the gradients it gets back, and
  when the detector fires replies ``stopped`` and answers nothing more; the server drops it.

Schedules: ``parallel`` (SplitFed: every node in every step, f2 updated on each node's batch in
node order, f1 copies averaged by FedAvg, weighted by data size, after each round) and
``sequential`` (nodes take turns, each passing its weights on).

Resuming a killed run: after each finished round the server checkpoints its own side (its
segment, optimiser, random state, the averaged client weights, the history, where the wire log
stood), and each owner, as it hands in its weights for a round, snapshots its own state
(weights, Adam's moments) on its persistent storage, keeping the last two rounds. A resumed run
says hello again (node ids are new) and starts round r+1 with ``restore=r``: each owner puts
its own round-r snapshot back. Neither side reads the other's files.
"""

from __future__ import annotations

import copy
import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch import nn

from splitsim import defences as defence_lib
from splitsim import seeds
from splitsim.data.partitions import test_partition, train_partition
from splitsim.engine import identity
from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.failures import ClientFailed, Policy
from splitsim.engine.faults import maybe_fail
from splitsim.engine.grid import ServerError, surfaced, wait_for_nodes
from splitsim.engine.node_state import open_state
from splitsim.engine.resources import resolve_device
from splitsim.engine.wire import WireLog
from splitsim.registry import DATASETS, MODELS
from splitsim.runs import write_atomic
from splitsim.scenario import Scenario


@dataclass(frozen=True)
class SplitSetting:
    """What a split-learning role makes of the shared exchange. Hooks are module-level
    functions, so the ClientApp still goes to Ray actors by reference."""

    schedule: str = "parallel"  # parallel (SplitFed) | sequential
    task_loss: str = "cross_entropy"  # | softmax_outputs (papers/003's published code)
    classes: int = 10
    label_map: tuple[int, ...] | None = None  # the task's label of each digit (None: the digit)
    labels: str = "server"  # who holds the labels: server (keyed by id) | owner (sent per batch)
    colluder: int | None = None  # the owner that hands its segment and images to the server
    handover: tuple[int, int] = (0, 0)  # the colluder's images: training, validation
    # the curious owner: its partition, and what it does with each gradient it receives,
    # ``keep(scenario, state_dir, pid, rnd, step, steps, ids, grad)``, on its own device
    observer: int | None = None
    keep: Callable[..., None] | None = None
    target: int | None = None  # the owner whose exchange the observer intercepts
    # a server that answers batches its own way: ``adversary(scenario, device)`` builds, on
    # the server, an object whose ``answer(z, y, out, grad, pid, rnd, step, ids)`` returns
    # the gradient to send instead of the task gradient ``grad`` (f2 still trains on the task)
    adversary: Callable[..., Any] | None = None
    # the role's own phases: ``phase(scenario, setting, state_dir, pid, msg) -> Message`` on
    # the client; ``finish(setting, grid, send, node_of, outcome, rnd)`` on the server after
    # inference (``send(grid, {pid: content}, node_of, phase, rnd)`` -> replies by owner)
    phase: Callable[..., Message] | None = None
    finish: Callable[..., None] | None = None


def task_labels(setting: SplitSetting, digits: np.ndarray) -> np.ndarray:
    """The task's labels of images with these digit labels."""
    if setting.label_map is None:
        return digits
    return np.asarray(setting.label_map, dtype=np.int64)[digits]


def split_parts(scenario: Scenario, classes: int = 10) -> tuple[nn.Module, nn.Module]:
    spec = scenario.models.split
    parts = MODELS.get(spec.name).build(spec.params, (1, 28, 28), classes)
    return parts.client, parts.server


def batch_order(ids: np.ndarray, seed: int, pid: int, rnd: int) -> np.ndarray:
    return ids[seeds.rng(seed, "split.batch_order", pid, rnd).permutation(len(ids))]


def _config(phase: str, **values: int | str) -> ConfigRecord:
    return ConfigRecord({"phase": phase, **values})


# Forward passes kept by this actor for the backward pass of the next message: when the same
# actor serves a node's next message (about half the time with two actors) the batch is not
# run twice. Keyed by the state object itself, so a re-opened state never back-propagates into
# stale parameters. One per owner an actor serves is needed: at 100 owners a cap of 16 left
# 4 % of lookups hitting (each actor serves ~50 owners between two steps of one), against
# 50 % with room for all. An entry holds the batch's activations, ~10 MB for papers/003's
# CNN at batch 32, so the cap follows the owners up to _MAX_FORWARDS_CAP (1.3 GB an actor).
_FORWARDS: dict[tuple[int, int], tuple[object, int, int, torch.Tensor]] = {}
_MIN_FORWARDS = 16
_MAX_FORWARDS_CAP = 128


def _keep_forward(
    state: object, pid: int, rnd: int, step: int, z: torch.Tensor, owners: int
) -> None:
    """Keep batch ``step``'s forward pass for the owner's next message. Every owner answers
    step ``step - 1`` before any is sent step ``step`` (or, taking turns, one owner at a
    time), so a pass from before ``step - 1`` will never be asked for: dropped first."""
    for key, (_, r, s, _) in list(_FORWARDS.items()):
        if (r, s) < (rnd, step - 1):
            del _FORWARDS[key]
    _FORWARDS[(id(state), pid)] = (state, rnd, step, z)
    cap = min(_MAX_FORWARDS_CAP, max(_MIN_FORWARDS, owners))
    while len(_FORWARDS) > cap:
        _FORWARDS.pop(next(iter(_FORWARDS)))


def _cached_forward(state: object, pid: int, rnd: int, step: int) -> torch.Tensor | None:
    entry = _FORWARDS.pop((id(state), pid), None)
    if entry is None or entry[0] is not state or entry[1:3] != (rnd, step):
        return None
    return entry[3]


def client_app(
    scenario: Scenario, setting: SplitSetting, state_dir: str, keep: str | None = None
) -> ClientApp:
    app = ClientApp()
    # Flower pickles the app again for every message it hands an actor. A closure goes by value
    # (3 ms here, most of it Ray's pickler scanning sys.modules for each module its globals name:
    # 23 % of py-spy's samples of the server process at 100 owners); a module-level function
    # with the run's settings bound goes by reference (0.1 ms).
    app.query()(functools.partial(_handle, scenario, setting, state_dir, keep))
    return app


# One built client segment per model spec, per actor process: what new node handles copy.
_SEGMENTS: dict[str, nn.Module] = {}


def _segment(scenario: Scenario) -> nn.Module:
    """A new handle's model. NodeState points every weight at the node's file, so what it is
    built with never counts: copy one segment kept per actor process (4 ms) rather than
    initialise 4.6 M weights (36 ms) for each node an actor meets."""
    key = scenario.models.split.model_dump_json()
    if key not in _SEGMENTS:
        _SEGMENTS[key] = split_parts(scenario)[0]
    return copy.deepcopy(_SEGMENTS[key])


def owner_weights(scenario: Scenario, state_dir: str, pid: int) -> dict[str, np.ndarray]:
    """The segment weights data owner ``pid`` holds now, on its own device."""
    return open_state(state_dir, pid, lambda: _segment(scenario), scenario.training.lr).weights()


def _snapshot(keep: str, pid: int, rnd: int) -> Path:
    return Path(keep) / f"node-{pid}.round-{rnd}.bin"


def _save_snapshot(state: object, keep: str, pid: int, rnd: int) -> None:
    """The owner's own state at the end of round ``rnd``, on its persistent storage; the
    round before stays too, in case the server's checkpoint of this round never lands."""
    Path(keep).mkdir(parents=True, exist_ok=True)
    write_atomic(_snapshot(keep, pid, rnd), state.flat.numpy().tobytes())
    _snapshot(keep, pid, rnd - 2).unlink(missing_ok=True)


def _restore_snapshot(state: object, keep: str | None, pid: int, rnd: int) -> None:
    path = None if keep is None else _snapshot(keep, pid, rnd)
    if path is None or not path.is_file():
        raise RuntimeError(f"data owner {pid} has no snapshot of round {rnd} to resume from")
    saved = np.fromfile(path, dtype=np.float32)
    if saved.size != state.flat.numel():
        raise RuntimeError(f"data owner {pid}: the snapshot of round {rnd} is the wrong size")
    with torch.no_grad():
        state.flat.copy_(torch.from_numpy(saved))


def _last_applied(path: Path) -> tuple[int, int] | None:
    try:
        rnd, step = path.read_text().split()
    except (FileNotFoundError, ValueError):
        return None
    return int(rnd), int(step)


def _mine(scenario: Scenario, dataset: Any, pid: int) -> np.ndarray:
    """This owner's training image ids, by the scenario's partitioner (its own labels decide
    a non-IID share; they never leave it)."""
    x_train, y_train = dataset.classifier_train()
    return train_partition(len(x_train), scenario.deployment.clients, pid, scenario.seed,
                           y_train, scenario.deployment.partitioner)  # fmt: skip


def _handle(
    scenario: Scenario,
    setting: SplitSetting,
    state_dir: str,
    keep: str | None,
    msg: Message,
    context: Context,
) -> Message:
    """One message to data owner ``context``'s node: hello, a training step, inference,
    handing over to a colluding server, or one of the role's own phases."""
    batch = scenario.training.batch_size
    clients = scenario.deployment.clients
    torch.set_num_threads(max(1, int(scenario.engine.num_cpus)))
    pid = int(context.node_config["partition-id"])
    dataset = DATASETS.get(scenario.dataset.name)(scenario.dataset.params, scenario.seed, None)
    cfg = msg.content["config"]
    phase = str(cfg["phase"])
    chosen = defence_lib.build(scenario.defences)
    if phase == "hello":
        mine = _mine(scenario, dataset, pid)
        meta = ConfigRecord({"partition": pid, "train_samples": len(mine)})
        return Message(RecordDict({"meta": meta}), reply_to=msg)
    if phase not in ("train", "infer", "collude"):
        if setting.phase is None:
            raise ValueError(f"unknown phase {phase!r}")
        return setting.phase(scenario, setting, state_dir, pid, msg)
    if scenario.engine.faults and phase in ("train", "infer"):  # failures on purpose
        rnd = int(cfg["round"]) if phase == "train" else scenario.training.epochs + 1
        maybe_fail(scenario.engine, pid, rnd, phase, Path(state_dir))
    guard = next((d for d in chosen if d.stage == "detector"), None)
    stopped = Path(state_dir) / f"node-{pid}.stopped"
    if stopped.is_file():  # its detector fired: it trains and answers no more
        rnd, step = (int(v) for v in stopped.read_text().split())
        return _stopped(msg, rnd, step)
    state = open_state(state_dir, pid, lambda: _segment(scenario), scenario.training.lr)
    if "restore" in cfg:  # a resumed run: this owner's own state as its last round left it
        _restore_snapshot(state, keep, pid, int(cfg["restore"]))
    if "segment" in msg.content:  # copied straight from the message's bytes into the file
        state.load_weights(record_to_arrays(msg.content["segment"], copy=False))
    if phase == "train":
        x_train, y_train = dataset.classifier_train()
        rnd, step = int(cfg["round"]), int(cfg["step"])
        order = batch_order(_mine(scenario, dataset, pid), scenario.seed, pid, rnd)
        steps = math.ceil(len(order) / batch)
        applied = Path(state_dir) / f"node-{pid}.applied"
        # A retried message whose gradient this owner already applied is not applied twice.
        if "grad" in msg.content and _last_applied(applied) != (rnd, step):
            idx = order[(step - 1) * batch : step * batch]
            x = torch.from_numpy(x_train[idx])
            z = _cached_forward(state, pid, rnd, step - 1)
            if z is None:  # another actor ran the forward pass: run it again here
                z = state.model(x)
            received = record_to_arrays(msg.content["grad"])["g"]
            if pid == setting.observer and setting.keep is not None:  # a curious owner
                setting.keep(scenario, state_dir, pid, rnd, step - 1, steps, idx, received)
            grad = torch.from_numpy(received)
            # The server's gradient carries the task loss; NoPeek adds the owner's own term.
            served = (z * grad).sum()
            local = [d.loss(x, z) for d in chosen if d.stage == "loss"]
            fake = guard is not None and _fake(scenario, guard, pid, rnd, step - 1, steps)
            watched = guard is not None and _sent_before(rnd, step - 1, steps) >= guard.params.start
            first_weights = next(state.model.parameters())
            server_part = None
            if watched and local:  # SplitGuard judges what the server sent, not its own terms
                server_part = torch.autograd.grad(served, first_weights, retain_graph=True)[0]
            state.optimizer.zero_grad()
            sum([served, *local]).backward()
            if watched:
                # SplitGuard keeps the first layer's gradient: fakes apart, regulars in R1/R2
                half = seeds.rng(scenario.seed, "splitguard.half", pid, rnd, step).random()
                kind = "fake" if fake else ("r1" if half < 0.5 else "r2")
                first = (first_weights.grad if server_part is None else server_part).numpy()
                guard.record(Path(state_dir), pid, first, kind, (rnd, step - 1))
                if fake and guard.verdict(Path(state_dir), pid):
                    stopped.write_text(f"{rnd} {step - 1}")
                    return _stopped(msg, rnd, step - 1)
            if not fake:  # a fake batch's update would teach the wrong labels
                state.step()
            if scenario.engine.on_client_failure == "retry":
                applied.write_text(f"{rnd} {step}")
        if step >= steps:
            if keep is not None:
                _save_snapshot(state, keep, pid, rnd)
            content = RecordDict({"segment": arrays_to_record(state.views())})
            return Message(content, reply_to=msg)
        idx = order[step * batch : (step + 1) * batch]
        z_graph = state.model(torch.from_numpy(x_train[idx]))
        _keep_forward(state, pid, rnd, step, z_graph, clients)
        z = z_graph.detach().numpy().copy()
        training_noise = [
            d for d in chosen if d.stage == "payload" and getattr(d.params, "during_training", 0)
        ]
        rng = seeds.rng(scenario.seed, "split.training_noise", pid, rnd, step)
        z = defence_lib.apply_stage(training_noise, "payload", z, rng)
        sent = {"z": z, "ids": idx}
        if setting.labels == "owner":  # vanilla SplitNN: the labels go with the batch
            sent["y"] = task_labels(setting, y_train[idx])
            if guard is not None and _fake(scenario, guard, pid, rnd, step, steps):
                rng = seeds.rng(scenario.seed, "splitguard.labels", pid, rnd, step)
                sent["y"] = guard.fake_labels(sent["y"], setting.classes, rng)
        content = RecordDict({"intermediate": arrays_to_record(sent)})
        return Message(content, reply_to=msg)
    if phase == "infer":
        x_test, _ = dataset.images(train=False)
        idx = test_partition(len(x_test), scenario.deployment.users, clients, pid, scenario.seed)
        with torch.no_grad():
            z = state.model(torch.from_numpy(x_test[idx])).numpy()
        rng = seeds.rng(scenario.seed, "split.inference_noise", pid)
        z = defence_lib.apply_stage(chosen, "payload", z, rng)
        content = RecordDict(
            {
                "intermediate": arrays_to_record({"z": z}),
                "meta": ConfigRecord({"partition": pid}),
            }
        )
        return Message(content, reply_to=msg)
    if phase == "collude":
        from splitsim.data.mnist import aux_images

        aux = aux_images(
            "same",
            scenario.dataset.params.root,
            *setting.handover,
            None,
            scenario.seed,
            scenario.dataset.params.download,
        )
        content = RecordDict(
            {
                "segment": arrays_to_record(state.weights()),
                "aux": arrays_to_record({"x": aux.x, "x_val": aux.x_val}),
            }
        )
        return Message(content, reply_to=msg)
    raise AssertionError(phase)


def _sent_before(rnd: int, step: int, steps: int) -> int:
    """Batches an owner sent before batch ``step`` of round ``rnd``."""
    return (rnd - 1) * steps + step


def _fake(scenario: Scenario, guard: Any, pid: int, rnd: int, step: int, steps: int) -> bool:
    """Whether the owner's SplitGuard sends batch ``step`` of round ``rnd`` fake: a draw of its
    own, the same when the batch goes out and when its gradient comes back."""
    rng = seeds.rng(scenario.seed, "splitguard.fake", pid, rnd, step)
    return guard.is_fake(rng, _sent_before(rnd, step, steps))


def _stopped(msg: Message, rnd: int, step: int) -> Message:
    """An owner whose detector fired says so, and stops."""
    meta = ConfigRecord({"round": rnd, "step": step})
    return Message(RecordDict({"stopped": meta}), reply_to=msg)


@dataclass
class SplitOutcome(ServerError):
    """What the server ends up with, and how training went."""

    client_weights: dict[str, np.ndarray] | None = None
    server: nn.Module | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    train_samples: dict[int, int] = field(default_factory=dict)
    inference: dict[int, np.ndarray] = field(default_factory=dict)
    training_z: list[np.ndarray] = field(default_factory=list)
    training_ids: list[np.ndarray] = field(default_factory=list)
    colluder: dict[str, np.ndarray] = field(default_factory=dict)
    round_trips: int = 0
    failures: list[dict[str, object]] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)  # owner -> where it was left out
    resumed_after: list[int] = field(default_factory=list)  # rounds a resumed run started from
    protection: dict[str, dict[str, Any]] = field(default_factory=dict)  # gradient defences
    observed: dict[str, np.ndarray] = field(default_factory=dict)  # a role's finish() puts here
    stopped: dict[int, dict[str, int]] = field(default_factory=dict)  # owners whose detector fired
    answered: int = 0  # owner batches the server answered, all rounds
    adversary: Any = None  # the server's adversary, as training left it


CHECKPOINT = "split-server.pt"


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The server's own last checkpoint in ``folder``, or None. Tensors and plain data only
    (``weights_only``): nothing in it is executed."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def fedavg(weights: dict[int, dict[str, np.ndarray]], sizes: dict[int, int]) -> dict:
    """The data-size weighted average, summed in float64 in owner order. In place, in two
    buffers per weight: the same operations, so the same bits, as summing a new float64 copy
    per owner, without allocating (and faulting in) two 37 MB arrays per owner."""
    total = sum(sizes[p] for p in weights)
    names = next(iter(weights.values())).keys()
    out = {}
    for name in names:
        acc: np.ndarray | None = None
        term: np.ndarray | None = None
        for p in sorted(weights):
            term = np.multiply(weights[p][name], sizes[p] / total, dtype=np.float64, out=term)
            if acc is None:
                acc, term = term, None
            else:
                acc += term
        assert acc is not None
        out[name] = acc.astype(np.float32)
    return out


def server_app(
    scenario: Scenario,
    setting: SplitSetting,
    wire: WireLog,
    outcome: SplitOutcome,
    keep_training_ids: set[int],
    on_step: Callable[[], None],
    on_round: Callable[[dict[str, float]], None],
    checkpoints: Path | None = None,
    resume: dict[str, Any] | None = None,
) -> ServerApp:
    """The server's side of split training; with ``checkpoints``, a checkpoint after each
    round, and with ``resume`` (one of them), training goes on after its round."""
    app = ServerApp()
    t = scenario.training
    clients = scenario.deployment.clients

    policy = Policy(scenario.engine, wire, failures=outcome.failures)

    def send(
        grid: Grid, contents: dict[int, RecordDict], node_of: dict[int, int], phase: str, rnd: int
    ) -> dict[int, Message]:
        """One exchange under ``engine.on_client_failure``: the replies by owner. An owner
        given up on is missing from them, and the caller drops it."""
        pid_of = {node: pid for pid, node in node_of.items()}
        replies: dict[int, Message] = {}

        def keep(reply: Message) -> None:
            replies[pid_of[reply.metadata.src_node_id]] = reply

        policy.send(grid, {node_of[pid]: c for pid, c in contents.items()}, phase, rnd, keep)
        outcome.round_trips += 1
        return replies

    @app.main()
    @surfaced(outcome)
    def main(grid: Grid, context: Context) -> None:
        ids = wait_for_nodes(grid, clients)
        hello = send(
            grid,
            {node: RecordDict({"config": _config("hello")}) for node in ids},
            {node: node for node in ids},
            "hello",
            0,
        )
        node_of = {}
        for node, reply in hello.items():
            meta = reply.content["meta"]
            pid = identity.owner(reply, meta["partition"])
            node_of[pid] = node
            outcome.train_samples[pid] = int(meta["train_samples"])
        # The server's segment trains where engine.device says (CUDA when present under
        # auto); the owners' segments stay on their CPUs, like the phones and hospital
        # machines they stand for.
        device = torch.device(resolve_device(scenario.engine))
        labels_t = None
        if setting.labels == "server":
            # It holds the labels of the owners' training images, keyed by image id
            # (papers/003); it never loads the images themselves. Under labels: owner it
            # holds none: each batch brings its own.
            dataset = DATASETS.get(scenario.dataset.name)(
                scenario.dataset.params, scenario.seed, None
            )
            labels = task_labels(setting, dataset.classifier_labels())
            labels_t = torch.from_numpy(labels).to(device)

        torch.manual_seed(seeds.int_seed(scenario.seed, "split.server_init"))
        client_init, server = split_parts(scenario, setting.classes)
        server.to(device)
        protect = [d for d in defence_lib.build(scenario.defences) if d.stage == "gradient"]
        weights = {k: v.detach().numpy().copy() for k, v in client_init.state_dict().items()}
        optimizer = torch.optim.Adam(server.parameters(), lr=t.lr)
        loss_fn = nn.CrossEntropyLoss()
        adversary = None if setting.adversary is None else setting.adversary(scenario, device)
        outcome.adversary = adversary
        pids = sorted(node_of)
        first, restoring, restore_round = 1, set(), 0
        if resume is not None:
            server.load_state_dict(resume["server"])
            optimizer.load_state_dict(resume["optimizer"])
            torch.set_rng_state(resume["rng"])
            weights = {k: v.numpy() for k, v in resume["weights"].items()}
            outcome.history = list(resume["history"])
            outcome.round_trips += int(resume["round_trips"])
            outcome.resumed_after = [*resume["resumed_after"], int(resume["round"])]
            outcome.failures[:0] = resume["failures"]
            outcome.dropped = {int(k): v for k, v in resume["dropped"].items()}
            first = int(resume["round"]) + 1
            restoring, restore_round = set(pids), int(resume["round"])

        def active() -> list[int]:
            left = [pid for pid in pids if pid not in outcome.dropped]
            if not left:
                raise ClientFailed(f"every data owner was left out: {outcome.dropped}")
            return left

        def drop(asked: dict[int, RecordDict], replies: dict[int, Message], where: str) -> None:
            for pid in sorted(set(asked) - set(replies)):  # given up on: out of training
                outcome.dropped[pid] = where

        def halted() -> bool:
            """Every owner left, the last of them stopped by its detector: training ends."""
            return bool(outcome.stopped) and set(outcome.dropped) >= set(pids)

        for rnd in range(first, t.epochs + 1):
            if halted():
                break
            seen, correct, loss_sum = 0, 0, 0.0
            owners = active()
            turns = [owners] if setting.schedule == "parallel" else [[p] for p in owners]
            for group in turns:
                pending = {}
                # Every owner of the group starts from the same weights: one record for all
                # of their messages, encoded once (100 owners: 100 encodings of 18 MB before)
                segment = arrays_to_record(weights)
                for pid in group:
                    # an owner's first message after a resume: put its own snapshot back
                    restore = {"restore": restore_round} if pid in restoring else {}
                    restoring.discard(pid)
                    pending[pid] = RecordDict(
                        {
                            "config": _config("train", round=rnd, step=0, **restore),
                            "segment": segment,
                        }
                    )
                step_of = dict.fromkeys(group, 0)
                collected: dict[int, dict[str, np.ndarray]] = {}
                while pending:
                    replies = send(grid, pending, node_of, "train", rnd)
                    drop(pending, replies, f"train round {rnd}")
                    pending = {}
                    for pid in sorted(replies):
                        content = replies[pid].content
                        if "stopped" in content:  # its detector fired: out of the protocol
                            at = {k: int(v) for k, v in content["stopped"].items()}
                            at["answered"] = outcome.answered
                            outcome.stopped[pid] = at
                            outcome.dropped[pid] = (
                                f"stopped by its detector at round {at['round']} step {at['step']}"
                            )
                            continue
                        if "segment" in content:  # FedAvg only reads them
                            collected[pid] = record_to_arrays(content["segment"], copy=False)
                            continue
                        sent = record_to_arrays(content["intermediate"])
                        z = torch.from_numpy(sent["z"]).to(device).requires_grad_(True)
                        if labels_t is None:
                            y = torch.from_numpy(sent["y"]).to(device)
                        else:
                            y = labels_t[torch.from_numpy(sent["ids"]).to(device)]
                        out = server(z)
                        # The published code of papers/003 ends f2 with a softmax and then
                        # applies cross-entropy (a second softmax): weaker task gradients, so
                        # NoPeek weighs more. Its Table 1 comes from that; we offer both.
                        scores = out.softmax(1) if setting.task_loss == "softmax_outputs" else out
                        loss = loss_fn(scores, y)
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
                        seen += len(y)
                        correct += int((out.argmax(1) == y).sum())
                        loss_sum += float(loss.detach()) * len(y)
                        if rnd == t.epochs and keep_training_ids:
                            keep = np.isin(sent["ids"], list(keep_training_ids))
                            if keep.any():
                                outcome.training_z.append(sent["z"][keep])
                                outcome.training_ids.append(sent["ids"][keep])
                        step_of[pid] += 1
                        outcome.answered += 1
                        grad = z.grad.cpu().numpy()
                        if adversary is not None:  # the server answers its own way
                            grad = adversary.answer(z.detach(), y, out.detach(), grad, pid, rnd,
                                                    step_of[pid], sent["ids"])  # fmt: skip
                        if protect:  # the label holder's noise on what it returns
                            rng = seeds.rng(scenario.seed, "split.gradient_noise", pid, rnd,
                                            step_of[pid])  # fmt: skip
                            for defence in protect:
                                grad = defence.protect(grad, y.cpu().numpy(), rng)
                        pending[pid] = RecordDict(
                            {
                                "config": _config("train", round=rnd, step=step_of[pid]),
                                "grad": arrays_to_record({"g": grad}),
                            }
                        )
                        on_step()
                if setting.schedule == "parallel":
                    if collected:
                        weights = fedavg(collected, outcome.train_samples)
                    elif not halted():
                        raise ClientFailed(f"every data owner was left out in round {rnd}")
                elif group[0] in collected:  # a dropped owner's turn passes nothing on
                    weights = collected[group[0]]
            seen = max(seen, 1)  # every owner may have stopped at its first step
            row = {"round": rnd, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
            outcome.history.append(row)
            on_round(row)
            if checkpoints is not None and rnd < t.epochs:
                save_checkpoint(checkpoints, rnd, server, optimizer, weights, outcome, wire)

        outcome.client_weights = weights
        outcome.server = server.cpu()
        segment = arrays_to_record(weights)
        contents = {
            pid: RecordDict({"config": _config("infer"), "segment": segment})
            for pid in ([] if halted() else active())
        }
        replies = send(grid, contents, node_of, "infer", t.epochs + 1) if contents else {}
        drop(contents, replies, "infer")
        for pid, reply in replies.items():
            outcome.inference[pid] = record_to_arrays(reply.content["intermediate"])["z"]
        if setting.colluder is not None:
            colluder = pids[setting.colluder % len(pids)]
            content = RecordDict({"config": _config("collude")})
            handed = send(grid, {colluder: content}, node_of, "collude", t.epochs + 2)
            if colluder not in handed:  # the attack needs what it hands over
                raise ClientFailed(f"the colluding data owner {colluder} did not hand over")
            reply = handed[colluder]
            outcome.colluder = {
                **{
                    f"segment.{k}": v for k, v in record_to_arrays(reply.content["segment"]).items()
                },
                **record_to_arrays(reply.content["aux"]),
            }
        outcome.protection = {d.name: d.summary() for d in protect}
        if setting.finish is not None:
            setting.finish(setting, grid, send, node_of, outcome, t.epochs + 3)

    return app


def save_checkpoint(
    folder: Path,
    rnd: int,
    server: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, np.ndarray],
    outcome: SplitOutcome,
    wire: WireLog,
) -> None:
    """The server's side after round ``rnd``, written atomically; the owners keep theirs."""
    state = {
        "round": rnd,
        "server": {k: v.detach().cpu() for k, v in server.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "weights": {k: torch.from_numpy(v.copy()) for k, v in weights.items()},
        "history": outcome.history,
        "round_trips": outcome.round_trips,
        "resumed_after": outcome.resumed_after,
        "failures": outcome.failures,
        "dropped": {str(k): v for k, v in outcome.dropped.items()},
        "wire": wire.state(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(folder / CHECKPOINT, buffer.getvalue())
