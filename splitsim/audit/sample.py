"""``python -m splitsim sample``: an auditor's records from a built-in dataset, in the files the
audit reads (data.py), so that an audit can be tried without records of one's own.

- ``covid_health_records``: a CSV. Feature columns ``in_*`` are the phone network's input (the
  standardised record and the one-hot region, ``health_records.HealthRecords.features``), then
  ``region`` (sent in clear), the official labels ``severe, infected`` and the secrets
  ``cv_risk, insurer``. Users are drawn from the population with the ``--seed`` given, a stream
  no splitsim supplier trains on (``records.audit``).
- ``fashion_mnist`` / ``mnist``: a folder of PNGs from the test split and ``labels.csv`` with the
  original class and one column per task of papers/001 asked for (``--tasks C2,C10``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from splitsim import seeds
from splitsim.data import tasks as task_lib
from splitsim.errors import ScenarioError
from splitsim.runs import write_atomic

SAMPLES = ("covid_health_records", "fashion_mnist", "mnist")


def _csv(header: list[str], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def covid_records(n: int, seed: int, out: Path) -> Path:
    from splitsim.data.health_records import FEATURES, REGIONS, generate

    records = generate(n, seeds.stream(seed, "records.audit"))
    x = records.features()
    header = [f"in_{f}" for f in FEATURES] + [f"in_region_{r}" for r in range(REGIONS)]
    header += ["region", "severe", "infected", "cv_risk", "insurer"]
    rows = [
        [
            *(f"{v:.8g}" for v in x[i]),
            int(records.region[i]),
            *map(int, records.official[i]),
            int(records.secrets["cv_risk"][i]),
            int(records.secrets["insurer"][i]),
        ]
        for i in range(n)
    ]
    write_atomic(out, _csv(header, rows))
    return out


def image_folder(name: str, n: int, seed: int, tasks: list[str], root: str, out: Path) -> Path:
    from PIL import Image

    from splitsim.registry import DATASETS

    for t in tasks:
        try:
            task_lib.check(t)
        except ValueError as err:
            raise ScenarioError("command line", "--tasks", str(err)) from None
    cls = DATASETS.get(name)
    problem = cls.check_available(cls.Params(root=root)) if hasattr(cls, "Params") else None
    if problem:
        raise ScenarioError("command line", "--root", problem[1])
    x, y = cls.read(root, False, False)
    pick = np.sort(seeds.rng(seed, "images.audit").permutation(len(x))[:n])
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in pick:
        file = f"{i:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(x[i][0].astype(np.uint8)).save(buffer, format="png")
        write_atomic(out / file, buffer.getvalue())
        rows.append([file, int(y[i]), *(int(task_lib.relabel(t, y[i : i + 1])[0]) for t in tasks)])
    write_atomic(out / "labels.csv", _csv(["file", "class", *tasks], rows))
    return out
