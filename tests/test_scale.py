"""Running on an existing Ray cluster: a head started with ``ray start --head`` on loopback, a
small federated scenario attached to it through ``engine.ray_address``, then the head stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_FL = [
    "deployment.clients=2",
    "role.rounds=4",
    "role.burn_in=1",
    "role.synthetic=2",
    "role.records_per_round=64",
    "role.aux_size=1000",
    "role.compare_alphas=[]",
    "role.projection=pca",
    "role.projection_points=100",
]


def ray_jobs(address: str) -> list[dict]:
    """Jobs the cluster's control store knows, read from a separate process."""
    code = (
        "import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(json.dumps([{'id': j['JobID'], 'dead': j['IsDead']} for j in ray.state.jobs()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, address],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,  # ray.init waits for ever on an address nobody listens on
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_scenario_runs_on_an_existing_ray_cluster(ray_head, tmp_path, monkeypatch):
    monkeypatch.delenv("SPLITSIM_KEEP_ACTORS", raising=False)  # as a user runs: the default
    before = ray_jobs(ray_head)
    out = tmp_path / "runs"
    args = ["run", str(ROOT / "scenarios" / "fl_property_inference.yaml"), "--out", str(out)]
    for expr in [*TINY_FL, f"engine.ray_address={ray_head}"]:
        args += ["--set", expr]
    assert main(args) == 0
    (results,) = out.rglob("results.json")
    assert json.loads(results.read_text())["metrics"]["attackers"][0]["scored_rounds"] == 3
    # the run's driver joined the cluster (one more job, finished) and left it running
    after = ray_jobs(ray_head)
    assert len(after) >= len(before) + 1
    assert any(j["dead"] for j in after if j["id"] not in {b["id"] for b in before})


def test_ray_address_and_ray_cpus_exclude_each_other(tmp_path, capsys):
    args = ["run", str(ROOT / "scenarios" / "fl_property_inference.yaml"), "--out",
            str(tmp_path / "runs"), "--set", "engine.ray_address=auto",
            "--set", "engine.ray_cpus=2"]  # fmt: skip
    assert main(args) == 2
    assert "engine.ray_cpus: sizes a local Ray" in capsys.readouterr().err


@pytest.mark.slow
def test_failing_participants_are_retried_or_skipped_and_recorded(tmp_path):
    out = tmp_path / "runs"
    args = ["run", str(ROOT / "scenarios" / "fl_property_inference.yaml"), "--out", str(out)]
    faults = (
        "engine.faults=[{partition: 1, rounds: [2]}, "  # fails once: the retry succeeds
        "{partition: 0, rounds: [3], attempts: 5}]"  # keeps failing: skipped after 2 retries
    )
    for expr in [*TINY_FL, "engine.on_client_failure=retry", faults]:
        args += ["--set", expr]
    assert main(args) == 0
    (results,) = out.rglob("results.json")
    m = json.loads(results.read_text())["metrics"]
    seen = [(f["round"], f["partition"], f["attempt"], f["action"]) for f in m["failures"]]
    assert seen == [(2, 1, 1, "retried"), (3, 0, 1, "retried"), (3, 0, 2, "retried"),
                    (3, 0, 3, "skipped")]  # fmt: skip
    assert all("participant" in f["reason"] and "failed in round" in f["reason"]
               for f in m["failures"])  # fmt: skip
    # FedAvg went on with whoever answered: round 3 aggregated two uploads of three
    lines = [json.loads(x) for x in (results.parent / "wire.jsonl").read_text().splitlines()]
    uploads, errors = {}, []
    for line in lines:
        if line["sender"] != "server" and line["phase"].endswith("train"):
            if "error" in line:
                errors.append(line["round"])
            else:
                uploads[line["round"]] = uploads.get(line["round"], 0) + 1
    assert uploads == {1: 3, 2: 3, 3: 2, 4: 3}
    # every failed try is in the wire log too, with its reason and nothing else
    assert errors == [2, 3, 3, 3]
    assert all("failed in round" in line["error"] and line["records"] == []
               for line in lines if "error" in line)  # fmt: skip
    assert m["attackers"][0]["scored_rounds"] == 3


def test_fault_settings_a_role_cannot_take(tmp_path, capsys):
    """Every role names the phases a simulated failure may hit, and the owners there are."""
    cases = {
        "mnist_probe.yaml": ("{partition: 0, rounds: [1]}",
                             "engine.faults.0.phase: probing: probe"),
        "mnist_inversion.yaml": ("{partition: 0, rounds: [1], phase: collect}",
                                 "engine.faults.0.phase: split training: train, infer"),
        "hidden_covid_app.yaml": ("{partition: 10, rounds: [1], phase: install}",
                                  "engine.faults.0.partition: must be below deployment.clients"),
    }  # fmt: skip
    for name, (fault, refusal) in cases.items():
        args = ["run", str(ROOT / "scenarios" / name), "--out", str(tmp_path / "r"),
                "--set", f"engine.faults=[{fault}]"]  # fmt: skip
        assert main(args) == 2
        assert refusal in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_client_device_settings_that_cannot_work(tmp_path, capsys):
    base = ["--out", str(tmp_path / "r"), "--set"]
    probe = ["run", str(ROOT / "scenarios" / "mnist_probe.yaml"), *base,
             "engine.client_device=auto"]  # fmt: skip
    assert main(probe) == 2
    assert "engine.client_device: role perturbation_probe keeps its clients on the CPU" in (
        capsys.readouterr().err
    )
    fl = ["run", str(ROOT / "scenarios" / "fl_property_inference.yaml"), *base,
          "engine.client_device=cuda"]  # fmt: skip
    assert main(fl) == 2
    assert "engine.client_device: 'cuda' needs engine.num_gpus > 0" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CI has none)")
def test_federated_clients_train_on_their_gpu_share(tmp_path):
    """GPU machines only: two participants per GPU, local training on CUDA; the attack still
    works as on the CPU (CUDA kernels are not bit-identical, so no equality)."""
    out = tmp_path / "runs"
    args = ["run", str(ROOT / "scenarios" / "fl_property_inference.yaml"), "--out", str(out)]
    for expr in [*TINY_FL, "engine.num_gpus=0.5", "engine.client_device=cuda"]:
        args += ["--set", expr]
    assert main(args) == 0
    (results,) = out.rglob("results.json")
    m = json.loads(results.read_text())["metrics"]
    assert m["attackers"][0]["scored_rounds"] == 3


def test_ray_address_in_the_environment_is_joined_unless_the_scenario_says_otherwise(
    monkeypatch,
):
    from splitsim.engine.simulation import backend_config
    from splitsim.scenario import Engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert backend_config(Engine())["init_args"]["address"] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")
    assert backend_config(Engine())["init_args"]["address"] == "127.0.0.1:6380"
    named = Engine(ray_address="10.0.0.1:6379")
    assert backend_config(named)["init_args"]["address"] == "10.0.0.1:6379"
    local = backend_config(Engine(ray_cpus=1))["init_args"]  # sized here: a local Ray
    assert local["address"] == "local" and local["num_cpus"] == 1
