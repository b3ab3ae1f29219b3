"""Experiment tracking: a finished run's scalars in TensorBoard (``tracking: {tensorboard: dir}``).

What is logged comes from what the run wrote, so a tracker shows exactly the numbers of
``results.json`` and ``wire.jsonl``, nothing computed a second time:

- every per-epoch or per-round series in the metrics (a list of rows with an ``epoch``,
  ``round`` or ``step``: split training's loss and accuracy, the supplier's validation accuracy
  per regime, a decoder's validation MSE, the federated task accuracy) as scalars at that step;
- every other number in the metrics (the attack's and the task's final figures, chance, epsilon)
  under ``final/`` at step 0, and the phase timings under ``timing_s/``;
- the bytes and messages on the wire per round and direction, from the wire log.

The scalars are written once the run has finished (a resumed run logs them once), into
``<dir>/<scenario name>/<run folder name>``, so TensorBoard's run selector lists runs by
scenario and time. TensorBoard is an optional extra (``pip install -e '.[tracking]'``): the
writer is torch's ``SummaryWriter``, which needs the ``tensorboard`` package.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STEP_KEYS = ("epoch", "round", "step")
EXTRA = "pip install -e '.[tracking]'"

Scalar = tuple[str, int, float]


def tensorboard_missing() -> str | None:
    """Why TensorBoard logging cannot run here, or None."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return f"TensorBoard is not installed; it is an optional extra: {EXTRA}"
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _series_step(row: Any) -> int | None:
    if not isinstance(row, dict):
        return None
    for key in STEP_KEYS:
        if _number(row.get(key)) is not None:
            return int(row[key])
    return None


def metric_scalars(metrics: Any, path: str = "") -> Iterator[Scalar]:
    """``(tag, step, value)`` for every number in ``metrics``: rows of a series at their step,
    a list of plain numbers at its index, anything else under ``final/`` at step 0."""
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            yield from metric_scalars(value, f"{path}/{key}" if path else str(key))
    elif isinstance(metrics, list):
        if metrics and all(_series_step(row) is not None for row in metrics):
            for row in metrics:
                step = _series_step(row)
                for key, value in row.items():
                    number = _number(value)
                    if key not in STEP_KEYS and number is not None:
                        yield f"{path}/{key}", step, number
        elif metrics and all(_number(v) is not None for v in metrics):
            for i, value in enumerate(metrics):
                yield path, i, float(value)
        else:
            for i, item in enumerate(metrics):
                name = item.get("name", item.get("label", i)) if isinstance(item, dict) else i
                yield from metric_scalars(item, f"{path}/{name}")
    else:
        number = _number(metrics)
        if number is not None:
            yield f"final/{path}", 0, number


def wire_scalars(wire_log: Path) -> Iterator[Scalar]:
    """Bytes and messages per round and direction, summed from ``wire.jsonl``."""
    if not wire_log.is_file():
        return
    sums: dict[tuple[str, int], float] = defaultdict(float)
    with wire_log.open() as lines:
        for text in lines:
            line = json.loads(text)
            way = "to_clients" if line["sender"] == "server" else "from_clients"
            sums[(f"wire/bytes_{way}", int(line["round"]))] += line["bytes"]
            sums[(f"wire/messages_{way}", int(line["round"]))] += 1
    for (tag, step), value in sorted(sums.items()):
        yield tag, step, value


def run_scalars(folder: Path, results: dict[str, Any]) -> list[Scalar]:
    """Everything a finished run folder's results and wire log give to a tracker."""
    scalars = list(metric_scalars(results.get("metrics", {})))
    scalars += [
        (f"timing_s/{name}", 0, float(s))
        for name, s in results.get("timing_s", {}).items()
        if _number(s) is not None
    ]
    return scalars + list(wire_scalars(folder / "wire.jsonl"))


def tensorboard_folder(logdir: str | Path, run_folder: Path, name: str = "") -> Path:
    """Where a run folder's TensorBoard run goes: ``<logdir>/<scenario>/<run name>``."""
    return Path(logdir) / run_folder.parent.name / (name or run_folder.name)


def log_run(run_folder: Path, logdir: str | Path, name: str = "") -> tuple[Path, int]:
    """Write a finished run folder's scalars as one TensorBoard run, with the scenario, role,
    seed and defences as its text; returns the TensorBoard folder and the scalar count."""
    from torch.utils.tensorboard import SummaryWriter

    results = json.loads((run_folder / "results.json").read_text())
    scalars = run_scalars(run_folder, results)
    defences = ", ".join(d["name"] for d in results.get("defences", [])) or "none"
    meta = {key: results.get(key) for key in ("scenario", "role", "seed")}
    meta |= {"defences": defences, "run folder": str(run_folder)}
    folder = tensorboard_folder(logdir, run_folder, name)
    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.add_text("run", "\n".join(f"- {k}: {v}" for k, v in meta.items()), 0)
        for tag, step, value in scalars:
            writer.add_scalar(tag, value, step)
    return folder, len(scalars)
