"""The Python API: ``splitsim.run``, ``attack`` and ``compare`` are the commands' code paths
(the CLI calls them), with the same checks; bad input raises the one-line ScenarioError."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import splitsim
from splitsim.api import overrides

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT / "scenarios" / "hidden_covid_app.yaml"


def test_importing_splitsim_stays_light():
    # every Flower client actor imports the package: the API's names load on first use
    heavy = "('torch', 'flwr', 'ray', 'pydantic')"
    code = f"import sys, splitsim; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert {"run", "attack", "compare", "Scenario", "ScenarioError", "ROLES"} <= set(dir(splitsim))


def test_set_takes_plain_data_and_writes_it_as_the_loader_reads_it():
    exprs = overrides(
        {"defences": [{"name": "laplace", "scale": 0.5}], "name": "1e5", "seed": np.int64(3),
         "training.lr": np.float32(0.5), "role.secrets": ["cv_risk"], "tasks": None},
        "s",
    )  # fmt: skip
    assert exprs == [
        "defences=[{name: laplace, scale: 0.5}]", "name='1e5'", "seed=3", "training.lr=0.5",
        "role.secrets=[cv_risk]", "tasks=null",
    ]  # fmt: skip
    assert overrides(["seed=1"], "s") == ["seed=1"] and overrides(None, "s") == []
    s = splitsim.Scenario.from_yaml(COVID)
    checked, source = splitsim.api.load(s, {"training.epochs": 3, "name": "1e5"})
    assert checked.training.epochs == 3 and checked.name == "1e5"
    assert source == "<Scenario hidden_covid_app>" and s.training.epochs == 60  # not changed


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda o: splitsim.run(COVID, set={"training.epochz": 2}, out=o),
         "hidden_covid_app.yaml: training.epochz: unknown field; allowed: epochs"),
        (lambda o: splitsim.run(COVID, set={"training.epochs": float("inf")}, out=o),
         "training.epochs: must be a finite number (got inf)"),
        (lambda o: splitsim.run(COVID, set={"seed": object()}, out=o),
         "seed: a value is plain data (number, string, list, mapping), not object"),
        (lambda o: splitsim.run(COVID, set="seed=1", out=o), "set: a mapping {field: value}"),
        (lambda o: splitsim.run(COVID, set={"defences": [{"name": "lapalce"}]}, out=o),
         "defences.0.name: unknown defence 'lapalce'"),
        (lambda o: splitsim.run(42, out=o), "a YAML file's path or a splitsim.Scenario"),
        (lambda o: splitsim.run(o / "none.yaml", out=o), "none.yaml: no such scenario file"),
        (lambda o: splitsim.run(splitsim.Scenario.from_yaml(COVID),
                                set={"deployment.clients": 0}, out=o),
         "<Scenario hidden_covid_app>: deployment.clients:"),
        (lambda o: splitsim.Scenario.from_dict({"dataset": {"name": "covid_health_records"}}),
         "<dict>: role: required"),
        (lambda o: splitsim.compare(o / "none.yaml", out=o), "none.yaml: no such matrix file"),
        (lambda o: splitsim.attack(o / "nowhere"), "nowhere: no such run folder"),
    ],
)  # fmt: skip
def test_bad_input_raises_one_line_before_anything_is_written(call, expected, tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(splitsim.ScenarioError) as err:
        call(out)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


@pytest.mark.slow
def test_the_example_script_runs_and_the_defence_costs_utility(tmp_path, capsys):
    path = ROOT / "examples" / "python_api.py"
    spec = importlib.util.spec_from_file_location("python_api", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(epochs=2, out=str(tmp_path / "api"))
    printed = capsys.readouterr().out
    assert "undefended: official accuracy" in printed and "blind guess" in printed
    plain, noisy = (results[k].summary for k in ("undefended", "laplace 0.5 on the scores"))
    # two epochs already teach the secret network more than a blind guess; noise costs accuracy
    assert plain["leakage"][0]["value"] > plain["leakage"][0]["chance"] + 0.05
    assert noisy["utility"]["value"] < plain["utility"]["value"]
    # the run folder is the command's: results.json read back gives the same metrics
    from_api = results["undefended"]
    assert from_api.folder.parent.parent == tmp_path / "api" and from_api.folder.is_dir()
    again = splitsim.api.RunResult.read(from_api.folder)
    assert again.metrics == from_api.metrics and again.results["role"] == "hidden_learning"
    assert (from_api.folder / "report.html").is_file()
