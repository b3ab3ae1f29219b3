"""Label inference's split training: the shared exchange (engine/split_training.py) with the
task's labels on the server, and one curious data owner that keeps what it receives.

The curious owner (partition ``role.attacker``) runs the protocol like every other owner; on
its own device it also keeps, per epoch, the gradients the server returned for some of its
batches (``role.observed_batches``, chosen by its own seeded draw, and every batch holding one
of the examples whose label it knows). After inference the harness asks it, in one ``report``
message (in ``wire.jsonl``), for what it kept: the gradients, the example ids and steps they
belong to, and its known labels. It never sees another owner's messages. The ``report``
request carries what the server gives every owner anyway: its answers for the owner's test
images (the service split inference provides) and the published accounting of its gradient
defence (noise power, Marvell's sumKL bound), as a DP mechanism's epsilon is public.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim import seeds
from splitsim.data.partitions import train_partition
from splitsim.engine import split_training
from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.failures import ClientFailed
from splitsim.engine.split_training import SplitOutcome, SplitSetting, task_labels
from splitsim.registry import DATASETS
from splitsim.scenario import Scenario

KEPT = "curious-{pid}"


def label_map(scenario: Scenario) -> tuple[int, ...] | None:
    """The binary task's label of each digit (``role.positive`` -> 1), or None for ten classes."""
    p = scenario.role.params
    if p.task == "multiclass":
        return None
    return tuple(int(d in p.positive) for d in range(10))


def setting(scenario: Scenario) -> SplitSetting:
    p = scenario.role.params
    return SplitSetting(
        schedule=p.schedule,
        classes=2 if p.task == "binary" else 10,
        label_map=label_map(scenario),
        labels=scenario.deployment.labels,
        observer=p.attacker,
        keep=_keep,
        phase=_report,
        finish=_ask_for_report,
    )


def client_app(scenario: Scenario, storage: str, keep: str | None = None) -> ClientApp:
    return split_training.client_app(scenario, setting(scenario), storage, keep)


def server_app(scenario: Scenario, *args: Any, **kwargs: Any) -> ServerApp:
    """engine/split_training.server_app under this role's setting."""
    return split_training.server_app(scenario, setting(scenario), *args, **kwargs)


# -- the curious owner's device -----------------------------------------------------------


_KNOWN: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def known(scenario: Scenario, pid: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, task labels)`` of the examples the curious owner labelled itself: its own
    labelling of ``role.known_labels`` of its images per class, its declared knowledge; kept
    per process."""
    key = (scenario.model_dump_json(), pid)
    if key in _KNOWN:
        return _KNOWN[key]
    dataset = DATASETS.get(scenario.dataset.name)(scenario.dataset.params, scenario.seed, None)
    _, digits = dataset.classifier_train()
    d = scenario.deployment
    mine = train_partition(len(digits), d.clients, pid, scenario.seed, digits, d.partitioner)
    labels = task_labels(setting(scenario), digits[mine])
    rng = seeds.rng(scenario.seed, "labels.anchors", pid)
    labelled = []
    for c in np.unique(labels):
        ids = mine[labels == c]
        labelled.append(rng.choice(ids, size=min(len(ids), scenario.role.params.known_labels),
                                replace=False))  # fmt: skip
    ids = np.sort(np.concatenate(labelled))
    _KNOWN[key] = ids, task_labels(setting(scenario), digits[ids])
    return _KNOWN[key]


def published(protection: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The server's gradient-defence summaries, flat: ``{"<defence>.<key>": value}``."""
    return {
        f"{name}.{key}": float(value)
        for name, summary in protection.items()
        for key, value in summary.items()
    }


def _keep(
    scenario: Scenario, state_dir: str, pid: int, rnd: int, step: int, steps: int,
    ids: np.ndarray, grad: np.ndarray,
) -> None:  # fmt: skip
    """Keep this batch's gradient if it is one of the batches the owner chose to watch this
    epoch or holds an example whose label it knows."""
    watched = seeds.rng(scenario.seed, "labels.observed", pid, rnd).permutation(steps)
    chosen = step in set(watched[: scenario.role.params.observed_batches].tolist())
    anchors, _ = known(scenario, pid)
    if not (chosen or np.isin(ids, anchors).any()):
        return
    folder = Path(state_dir) / KEPT.format(pid=pid)
    folder.mkdir(exist_ok=True)
    np.savez(folder / f"r{rnd:04d}-s{step:06d}.npz", ids=ids, grad=grad.astype(np.float32))


def _report(
    scenario: Scenario, setting: SplitSetting, state_dir: str, pid: int, msg: Message
) -> Message:
    """The curious owner hands the harness what it kept, in step order."""
    if str(msg.content["config"]["phase"]) != "report" or pid != setting.observer:
        raise ValueError(f"data owner {pid} has no phase {msg.content['config']['phase']!r}")
    files = sorted((Path(state_dir) / KEPT.format(pid=pid)).glob("r*-s*.npz"))
    grads, ids, rounds, steps = [], [], [], []
    for path in files:
        rnd, step = (int(part[1:]) for part in path.stem.split("-"))
        with np.load(path, allow_pickle=False) as kept:
            grads.append(kept["grad"].reshape(len(kept["ids"]), -1))
            ids.append(kept["ids"])
        rounds.append(np.full(len(ids[-1]), rnd, np.int64))
        steps.append(np.full(len(ids[-1]), step, np.int64))
    known_ids, known_y = known(scenario, pid)
    arrays = {
        "grad": np.concatenate(grads), "ids": np.concatenate(ids).astype(np.int64),
        "round": np.concatenate(rounds), "step": np.concatenate(steps),
        "known_ids": known_ids.astype(np.int64), "known_y": known_y.astype(np.int64),
    }  # fmt: skip
    return Message(RecordDict({"kept": arrays_to_record(arrays)}), reply_to=msg)


# -- the harness, after inference ----------------------------------------------------------


def _ask_for_report(
    setting: SplitSetting, grid: Grid, send: Any, node_of: dict[int, int],
    outcome: SplitOutcome, rnd: int,
) -> None:  # fmt: skip
    """Send the curious owner the server's answers for its test images and its published
    defence accounting, and ask for what it kept; all of it goes to ``outcome.observed``."""
    import torch

    outcome.server.eval()
    with torch.no_grad():
        z = torch.from_numpy(outcome.inference[setting.observer])
        answers = outcome.server(z).argmax(1).numpy().astype(np.int64)
    content = RecordDict(
        {
            "config": ConfigRecord({"phase": "report"}),
            "answers": arrays_to_record({"y": answers}),
            "protection": ConfigRecord(published(outcome.protection)),
        }
    )
    replies = send(grid, {setting.observer: content}, node_of, "report", rnd)
    if setting.observer not in replies:
        raise ClientFailed(f"the curious data owner {setting.observer} did not report")
    outcome.observed = record_to_arrays(replies[setting.observer].content["kept"])
    outcome.observed["answers"] = answers
