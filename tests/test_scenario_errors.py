"""Broken scenario files: one line naming file and field, exit code 2, no run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import splitsim.roles  # noqa: F401  (registers the built-in roles)
from splitsim.cli import main
from splitsim.registry import DEFENCES, ROLES

ROOT = Path(__file__).resolve().parents[1]
GOOD = yaml.safe_load((ROOT / "scenarios" / "hidden_covid_app.yaml").read_text())


def write(tmp_path: Path, data: object, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def variant(**changes: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return data


CASES = {
    "typo_key": (variant(deploymnet={"clients": 3}), "deploymnet: unknown field; allowed: name"),
    "typo_nested_key": (
        variant(deployment={"client": 3}),
        "deployment.client: unknown field; allowed: clients, users, partitioner",
    ),
    "non_iid_for_a_role_without_it": (
        variant(deployment={"partitioner": {"name": "shards", "shards_per_owner": 2}}),
        "deployment.partitioner.name: role hidden_learning splits its owners' data iid only",
    ),
    "dirichlet_without_alpha": (
        variant(deployment={"partitioner": {"name": "dirichlet"}}),
        "deployment.partitioner: alpha: dirichlet needs a concentration alpha",
    ),
    "wrong_type": (variant(seed="abc"), "seed: Input should be a valid integer"),
    "unknown_role": (
        variant(role={"name": "model_thief"}),
        "role.name: unknown role 'model_thief'; allowed: " + ", ".join(sorted(ROLES.names())),
    ),
    "unknown_defence": (
        variant(defences=[{"name": "lapalce", "scale": 0.1}]),
        "defences.0.name: unknown defence 'lapalce'; allowed: "
        + ", ".join(sorted(DEFENCES.names())),
    ),
    "negative_scale": (
        variant(defences=[{"name": "laplace", "scale": -1}]),
        "defences.0.scale: Input should be greater than or equal to 0",
    ),
    "defence_typo_field": (
        variant(defences=[{"name": "laplace", "scael": 0.1}]),
        "defences.0.scael: unknown field; allowed: scale",
    ),
    "zero_clients": (
        variant(deployment__clients=0),
        "deployment.clients: Input should be greater than or equal to 1",
    ),
    "fewer_users_than_clients": (
        variant(deployment={"clients": 10, "users": 5}),
        "deployment.users: must be at least deployment.clients (10)",
    ),
    "unknown_dataset": (
        variant(dataset={"name": "mnits"}),
        "dataset.name: unknown dataset 'mnits'; "
        "allowed: cifar10, covid_health_records, fashion_mnist",
    ),
    "unknown_secret": (
        variant(role={"name": "hidden_learning", "secrets": ["salary"]}),
        "role.secrets.0: unknown secret 'salary' of covid_health_records; "
        "allowed: cv_risk, insurer",
    ),
    "model_hidden_not_positive": (
        variant(models={"official": {"name": "health_mlp", "hidden": [0]}}),
        "models.official.hidden.0: Input should be greater than 0",
    ),
    "not_a_mapping": ("- just\n- a list\n", "a scenario must be a YAML mapping of fields"),
    "cuda_without_gpu": (
        variant(engine={"device": "cuda"}),
        "engine.device: 'cuda', but torch sees no GPU here; allowed here: auto, cpu",
    ),
    "gpu_actors_without_gpu": (
        variant(engine={"num_gpus": 0.5}),
        "engine.num_gpus: 0.5 per client, but this machine has no GPU for the local Ray",
    ),
    "bad_yaml": ("seed: [1, 2\nname: x\n", "invalid YAML"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_scenario_gets_one_line_and_exit_2(case, tmp_path, capsys):
    if "gpu" in case and torch.cuda.is_available():
        pytest.skip("a GPU is present: asking for one is not an error here")
    data, expected = CASES[case]
    path = write(tmp_path, data)
    out = tmp_path / "runs"
    code = main(["run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ")
    assert expected in lines[0]
    assert not out.exists() or not any(out.rglob("*")), "no run folder may be left behind"


def test_missing_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yaml'}: no such scenario file"
    )


def test_set_override_errors_name_the_field(tmp_path, capsys):
    path = write(tmp_path, GOOD, "good.yaml")
    assert (
        main(["run", str(path), "--set", "deployment.clients=-3", "--out", str(tmp_path / "r")])
        == 2
    )
    assert (
        "deployment.clients: Input should be greater than or equal to 1 (got -3)"
        in capsys.readouterr().err
    )
    assert main(["run", str(path), "--set", "defences.0.scale=0.5"]) == 2
    assert "defences.0: no item 0; the list has 0" in capsys.readouterr().err
    assert main(["run", str(path), "--set", "seed"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_exit_code_from_the_real_command(tmp_path):
    path = write(tmp_path, variant(deployment={"clients": 0}))
    proc = subprocess.run(
        [sys.executable, "-m", "splitsim", "run", str(path), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: deployment.clients: Input should be greater than or equal to 1 (got 0)"
    ]
    assert not (tmp_path / "r").exists()
