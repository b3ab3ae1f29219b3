"""Flower's deployment engine on loopback: a SuperLink and two SuperNodes as separate processes.

- ``engine.mode: deployment`` runs the Covid scenario and gives the simulation's numbers
  exactly (same seed, CPU): every SuperNode, in a working directory and temp folder of its
  own, builds the role's ClientApp from the package code and the resolved scenario in the run
  config (no job folder, no pickle), and gets the threads a Ray actor would.
- The repository is a Flower App: ``flwr run <repo> <connection>`` runs a scenario from its
  packaged ``scenarios/`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.engine import deployment

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "dataset.train_records=3000",
    "dataset.test_records=1000",
    "training.epochs=3",
    "deployment.clients=2",
    "deployment.users=200",
]


def run(out: Path, *extra: str) -> Path:
    args = ["run", str(ROOT / "scenarios" / "hidden_covid_app.yaml"), "--out", str(out)]
    for expr in [*SMALL, *extra]:
        args += ["--set", expr]
    assert main(args) == 0
    (results,) = out.rglob("results.json")
    return results.parent


def test_deployment_engine_matches_the_simulation(tmp_path):
    deployed = run(tmp_path / "deployed", "engine.mode=deployment")
    simulated = run(tmp_path / "simulated")
    left = json.loads((deployed / "results.json").read_text())
    right = json.loads((simulated / "results.json").read_text())
    assert left["metrics"] == right["metrics"]
    got, want = np.load(deployed / "received.npz"), np.load(simulated / "received.npz")
    assert sorted(got) == sorted(want)
    assert {"partition", "side/region", "scores"} <= set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    # both nodes answered both phases through the SuperLink, and only scores and region left
    wire = [json.loads(x) for x in (deployed / "wire.jsonl").read_text().splitlines()]
    replies = [w for w in wire if w["sender"] != "server"]
    assert len(replies) == 4 and len({w["sender"] for w in replies}) == 2
    assert (deployed / "scenario.yaml").read_text().count("mode: deployment") == 1


def test_the_repository_is_a_flower_app(tmp_path):
    work = tmp_path / "flower"
    work.mkdir()
    result = work / "result.json"
    with deployment.loopback(2, work, threads=1) as env:
        deployment.flwr_run(
            ROOT,
            {
                "scenario": "scenarios/hidden_covid_app.yaml",
                "set": ";".join(SMALL),
                "out": str(tmp_path / "runs"),
                "result-file": str(result),
            },
            env,
            work,
        )
        assert deployment.wait_for_file(result)
    folder = Path(json.loads(result.read_text())["folder"])
    assert folder.parent == tmp_path / "runs" / "hidden_covid_app"
    metrics = json.loads((folder / "results.json").read_text())["metrics"]
    assert metrics["deployment"]["secrets"]["cv_risk"]["accuracy"] > 0


@pytest.mark.parametrize("key", ["ray_address=auto", "ray_cpus=2"])
def test_deployment_refuses_ray_settings(tmp_path, capsys, key):
    args = ["run", str(ROOT / "scenarios" / "hidden_covid_app.yaml"), "--out", str(tmp_path / "r"),
            "--set", "engine.mode=deployment", "--set", f"engine.{key}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"engine.{key.split('=')[0]}: applies to the Ray simulation engine" in err
    assert not (tmp_path / "r").exists()
