"""Tracking: ``tracking: {tensorboard: dir}`` writes a finished run's numbers to TensorBoard,
read back here with TensorBoard's own event reader and checked against results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import splitsim
from splitsim.api import _track_cells
from splitsim.matrix.spec import cell_id, expand, load_matrix
from splitsim.tracking import metric_scalars

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT / "scenarios" / "hidden_covid_app.yaml"
SMALL = {"dataset.train_records": 600, "dataset.test_records": 200, "training.epochs": 3,
         "deployment.clients": 2, "deployment.users": 40}  # fmt: skip


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def test_series_are_stepped_and_everything_else_is_final():
    metrics = {
        "history": [{"round": 1, "loss": 2.0, "note": "x"}, {"round": 2, "loss": 1.5}],
        "curve": [0.1, 0.2],
        "rows": [{"name": "a", "auc": 0.7}],
        "chance": 0.5,
        "skipped": [True, float("nan")],
        "flag": True,
        "eps": float("inf"),
    }
    assert sorted(metric_scalars(metrics)) == sorted([
        ("history/loss", 1, 2.0), ("history/loss", 2, 1.5), ("curve", 0, 0.1), ("curve", 1, 0.2),
        ("final/rows/a/auc", 0, 0.7), ("final/chance", 0, 0.5),
    ])  # fmt: skip


@pytest.mark.slow
def test_a_run_logs_its_curves_wire_and_figures_to_tensorboard(tmp_path):
    logdir = tmp_path / "tb"
    result = splitsim.run(
        COVID, set={**SMALL, "tracking.tensorboard": str(logdir)}, out=tmp_path / "runs",
        quiet=True,
    )  # fmt: skip
    (run,) = (logdir / "hidden_covid_app").iterdir()
    assert run.name == result.folder.name
    scalars = read_scalars(run)
    m = result.metrics
    # the supplier's per-epoch validation accuracy, per regime, at epochs 1..3
    curve = scalars["regimes/history/to_and_ts/official"]
    assert [s for s, _ in curve] == [1, 2, 3]
    expected = [row["official"] for row in m["regimes"]["history"]["to_and_ts"]]
    assert [v for _, v in curve] == pytest.approx(expected, rel=1e-6)
    final = scalars["final/regimes/secrets/insurer/to_and_ts"]
    assert final == [(0, pytest.approx(m["regimes"]["secrets"]["insurer"]["to_and_ts"]))]
    # bytes per round, summed over the rounds, are the run's wire totals
    for way in ("to_clients", "from_clients"):
        per_round = scalars[f"wire/bytes_{way}"]
        assert sum(v for _, v in per_round) == m["wire"][f"bytes_{way}"] > 0
    assert "timing_s/total" in scalars
    # tracking does not change what the run computes
    plain = json.loads((result.folder / "results.json").read_text())["metrics"]["regimes"]
    again = splitsim.run(COVID, set=SMALL, out=tmp_path / "plain", quiet=True)
    assert again.metrics["regimes"] == plain
    # a comparison logs a cell it reads back from before tracking was on, and only once
    record = {"status": "ok", "run_folder": str(again.folder.relative_to(tmp_path))}
    _track_cells(str(logdir), tmp_path, {"cell": record, "gone": {"status": "failed"}})
    logged = logdir / "hidden_covid_app" / again.folder.name
    assert read_scalars(logged)["final/regimes/secrets/insurer/to_and_ts"] == final
    stamp = [p.stat().st_mtime_ns for p in logged.iterdir()]
    _track_cells(str(logdir), tmp_path, {"cell": record})
    assert [p.stat().st_mtime_ns for p in logged.iterdir()] == stamp


def test_tracking_bad_input_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for expr, expected in [
        (f"tracking.tensorboard={blocker}/tb", "tracking.tensorboard: "),
        ("tracking.tensorbord=tb", "tracking.tensorbord: unknown field; allowed: tensorboard"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "splitsim", "run", str(COVID), "--out", str(tmp_path / "o"),
             "--set", expr],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
        assert not (tmp_path / "o").exists()


def test_a_matrix_tracks_every_cell_without_changing_what_a_cell_is(tmp_path):
    spec = {"roles": [{"scenario": str(COVID)}], "seeds": [0],
            "defences": [{"label": "none", "use": []}]}  # fmt: skip
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(spec))
    plain = expand(load_matrix(path), path)
    tracked = expand(load_matrix(path, ["tracking.tensorboard=tb"]), path)
    assert [c.id for c in plain] == [c.id for c in tracked]
    assert all(c.scenario["tracking"]["tensorboard"] == str(Path("tb").absolute())
               for c in tracked)  # fmt: skip
    assert cell_id(tracked[0].scenario) == cell_id(plain[0].scenario)
