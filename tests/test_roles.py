"""The Role contract: a new role is one folder, the attacker receives only what crossed the
boundary, and a recorded run can be attacked again.

- ``tests/example_role/`` is a role written by docs/adding_a_role.md: it registers, runs through
  a real Flower simulation, and ``python -m splitsim attack`` re-attacks its recorded traffic.
- By import analysis: no role's attack module imports what only the harness or the data owners
  may hold (the owners' partitions, the role's phases or its Flower protocol, the engine).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.registry import ROLES
from splitsim.roles.base import Received, Role, register

ROOT = Path(__file__).resolve().parents[1]
ROLES_DIR = ROOT / "splitsim" / "roles"
# What an attack module may not import: the owners' data, the harness's phases, the transport.
FORBIDDEN = (
    "splitsim.data.partitions",
    "splitsim.engine",
    "flwr",
    "splitsim.execute",
)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_role_is_one_folder_with_its_phases():
    folders = sorted(p for p in ROLES_DIR.iterdir() if (p / "role.py").exists())
    assert {p.name for p in folders} >= {
        "hidden_learning", "label_inference", "model_inversion", "perturbation_probe",
        "property_inference", "split_hijacking"
    }  # fmt: skip
    for folder in folders:
        assert (folder / "protocol.py").exists() and (folder / "report.py").exists(), folder
        cls = ROLES.get(folder.name)
        assert issubclass(cls, Role) and cls.__module__ == f"splitsim.roles.{folder.name}.role"
        text = (folder / "role.py").read_text()
        order = [text.index(f"    def {phase}(") for phase in ("deploy", "attack", "truth")]
        assert order == sorted(order), f"{folder.name}: phases read top to bottom"


@pytest.mark.parametrize("role", ["hidden_learning", "label_inference", "model_inversion",
                                  "perturbation_probe", "property_inference",
                                  "split_hijacking"])  # fmt: skip
def test_attack_modules_import_nothing_the_attacker_must_not_hold(role):
    path = ROLES_DIR / role / "attack.py"
    names = imported(path)
    bad = sorted(n for n in names if n.startswith(FORBIDDEN) or ".role" in n.removeprefix(
        "splitsim.roles.") or n.endswith(".protocol") or ".protocol." in n)  # fmt: skip
    assert not bad, f"{path} imports {bad}"
    # nor does it read a dataset's per-owner partition (the owners' private records)
    assert ".partition(" not in path.read_text()


def test_the_import_check_would_catch_a_leak(tmp_path):
    leaky = tmp_path / "attack.py"
    leaky.write_text("from splitsim.data.partitions import test_partition\n")
    assert any(n.startswith(FORBIDDEN) for n in imported(leaky))


def test_registration_refuses_a_role_that_misses_part_of_the_contract():
    class Half(Role):
        def deploy(self):  # noqa: ANN202
            return Received()

    with pytest.raises(TypeError, match="does not implement attack"):
        register("half")(Half)
    with pytest.raises(TypeError, match="does not subclass"):
        register("not_a_role")(object)  # type: ignore[arg-type]
    assert "half" not in ROLES


def test_received_round_trips_without_pickle(tmp_path):
    @dataclass(kw_only=True)
    class Sample(Received):
        z: np.ndarray
        by_name: dict[str, np.ndarray]
        by_owner: dict[int, np.ndarray]
        steps: list[np.ndarray]
        maybe: np.ndarray | None
        history: list[dict[str, float]]

    before = Sample(
        z=np.arange(6, dtype="f4").reshape(2, 3), by_name={"a/b": np.ones(2)},
        by_owner={3: np.zeros(1)}, steps=[np.ones(1), np.zeros(2)], maybe=None,
        history=[{"loss": 0.5}], wire={"messages": 2},
    )  # fmt: skip
    before.save(tmp_path)
    after = Sample.load(tmp_path)
    np.testing.assert_array_equal(after.z, before.z)
    assert list(after.by_owner) == [3] and list(after.by_name) == ["a/b"]
    assert [len(s) for s in after.steps] == [1, 2] and after.maybe is None
    assert after.history == before.history and after.wire == {"messages": 2}
    with np.load(tmp_path / "received.npz", allow_pickle=False) as f:
        assert "z" in f.files


@pytest.fixture()
def example_role(monkeypatch):
    """Register the example role here and let Ray's actors import it, as a plugin would be."""
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(tests)
    from example_role.role import OwnerAverages  # the one registration line: @register

    if "owner_averages" not in ROLES:  # imported by an earlier test, then unregistered
        ROLES.register("owner_averages")(OwnerAverages)
    yield "owner_averages"
    ROLES.unregister("owner_averages")  # the rest of this process sees the built-in roles


def plugin_distribution(site: Path) -> dict[str, str]:
    """The example role as another package would publish it: its modules and a dist-info
    whose entry point names them under ``splitsim.plugins``, in a folder that is then on the
    path (what ``pip install`` of such a package leaves in site-packages). The environment a
    process needs to see it."""
    shutil.copytree(Path(__file__).resolve().parent / "example_role", site / "example_role")
    info = site / "splitsim_example_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: splitsim-example-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[splitsim.plugins]\nexample = example_role.role\n")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.slow
def test_a_role_written_from_the_guide_runs_through_flower_and_is_attacked_again(
    example_role, tmp_path, capsys
):
    scenario = tmp_path / "averages.yaml"
    scenario.write_text(
        "name: averages\ndataset: {name: covid_health_records, train_records: 100, "
        "test_records: 100}\nrole: {name: owner_averages}\n"
        "deployment: {clients: 3, users: 300}\n"
    )
    out = tmp_path / "runs"
    # installed as a plugin distribution, in a fresh process: list names it and where it is
    # from, and a scenario runs it through Flower (its actors find it the same way)
    env = plugin_distribution(tmp_path / "site")
    listed = subprocess.run([sys.executable, "-m", "splitsim", "list"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    (line,) = [row for row in listed.splitlines() if "owner_averages" in row]
    assert "[splitsim-example-plugin 0.1]" in line and "Curious" in line
    assert "[" not in next(row for row in listed.splitlines() if "model_inversion" in row)
    command = [sys.executable, "-m", "splitsim", "run", str(scenario), "--out", str(out)]
    ran = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert main(["run", str(scenario), "--out", str(out / "noisy"),
                 "--set", "defences=[{name: laplace, scale: 2.0}]"]) == 0  # fmt: skip
    (plain,) = (out / "averages").glob("2*")
    (noisy,) = (out / "noisy" / "averages").glob("2*")
    metrics = json.loads((plain / "results.json").read_text())["metrics"]
    noised = json.loads((noisy / "results.json").read_text())["metrics"]
    # undefended, the aggregate is the owner's mean (float32); the noise hides it
    assert metrics["leakage"]["rmse"] < 1e-6 < metrics["leakage"]["chance"]
    assert noised["leakage"]["rmse"] > 0.5
    assert metrics["wire"]["messages"] == 6 and metrics["owners"] == 3
    # re-attack of the recorded noisy traffic: the same numbers, then a stronger attacker
    capsys.readouterr()
    assert main(["attack", str(noisy)]) == 0
    assert main(["attack", str(noisy), "--set", "role.shrinkage=0.9"]) == 0
    same, shrunk = sorted((noisy / "attacks").glob("2*"))
    again = json.loads((same / "results.json").read_text())["metrics"]
    assert again == noised
    better = json.loads((shrunk / "results.json").read_text())["metrics"]
    assert better["leakage"]["rmse"] < noised["leakage"]["rmse"]
    # what the attack may not change: the recorded traffic
    assert main(["attack", str(noisy), "--set", "deployment.clients=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deployment.clients" in err[0] and "role.shrinkage" in err[0]
    # a role that does not declare fault_tolerant is refused simulated failures
    faults = ["--set", "engine.faults=[{partition: 0, rounds: [1]}]"]
    assert main(["run", str(scenario), "--out", str(out / "faults"), *faults]) == 2
    err = capsys.readouterr().err
    assert "engine.faults: role owner_averages does not handle client failures" in err


def test_attack_refuses_what_is_not_a_finished_run(tmp_path, capsys):
    assert main(["attack", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "half").mkdir()
    assert main(["attack", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such run folder" in err[0] and "not a finished run" in err[1]


def test_a_run_turns_on_deterministic_algorithms_without_loading_the_compiler():
    code = (
        "import sys, torch\n"
        "from splitsim.roles.base import deterministic\n"
        "deterministic()\n"
        "print(torch.are_deterministic_algorithms_enabled(),\n"
        "      torch.is_deterministic_algorithms_warn_only_enabled(),\n"
        "      'torch._inductor' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"], out.stdout
