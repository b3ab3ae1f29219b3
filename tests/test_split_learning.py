"""Split learning on real MNIST through the real Flower simulation, small enough for CI.

Three runs share one module: the plain run, Laplace b = 1 with NoPeek, and the sequential
schedule with a server that attacks alone using a Fashion-MNIST prior and the labels held by the
data owners (sent with each batch). The owners that fail or intercept are in
tests/test_split_owners.py, a file of its own so that the two test workers share the plain run.
Determinism: tests/test_split_owners.py's retried run trains and receives bit for bit what the
plain run did, and tests/test_flower_speed.py runs a smaller split scenario twice with the same
seed and compares every metric.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_scenario

from splitsim.cli import main
from splitsim.engine.node_state import NodeState
from splitsim.engine.split_training import fedavg, train_partition
from splitsim.engine.wire import read
from splitsim.metrics import distance_correlation, distance_correlation_batches

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "mnist_inversion.yaml"
SMALL = [
    "dataset.train_limit=1600",
    "training.epochs=1",
    "deployment.clients=2",
    "deployment.users=400",
    "role.aux_size=1500",
    "role.val_size=300",
    "role.decoder_epochs=4",
    "role.training_targets=200",
    "role.dcor_samples=320",
]


def run(tmp: Path, *extra: str) -> Path:
    return run_scenario(SCENARIO, tmp / "runs", *SMALL, *extra)


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_run):
    tmp = tmp_path_factory.mktemp("split")
    return {
        # first, so that tests/test_split_owners.py, which reads it as its uninterrupted run,
        # seldom waits for it on the other test worker
        "plain": shared_run(SCENARIO, *SMALL),
        "defended": run(tmp, "defences=[{name: laplace, scale: 1.0}, {name: nopeek, alpha: 2.0}]"),
        "sequential": run(
            tmp,
            "role.schedule=sequential",
            "deployment.clients=3",
            "role.access=stolen",
            "role.aux_data=fashion_mnist",
            "deployment.labels=owner",  # vanilla SplitNN: the owners send their labels
            "role.decoder_epochs=1",  # its leakage is only checked to be a number
        ),
    }


@pytest.mark.slow
def test_run_folder_has_report_pictures_and_wire(runs):
    folder = runs["plain"]
    for name in (
        "results.json",
        "metrics.csv",
        "report.md",
        "report.html",
        "reconstructions.png",
        "training.png",
        "wire.jsonl",
        "received.npz",
        "scenario.yaml",
    ):
        assert (folder / name).exists(), name
    page = (folder / "report.html").read_text()  # self-contained: pictures inlined
    assert page.count('src="data:image/png;base64,') >= 2 and "http" not in page
    received = np.load(folder / "received.npz")
    assert received["inference_z"].shape == (400, 500)
    # The server kept what it saw of the chosen images in the last training epoch.
    assert 0 < len(received["training_ids"]) <= 200


def owner_entries(folder: Path) -> set[tuple[str, str]]:
    """``(record, entry)`` of everything the data owners sent, from the wire log."""
    return {
        (rec["name"], key)
        for line in read(folder / "wire.jsonl")
        if line["sender"] != "server"
        for rec in line["records"]
        for key in rec["entries"]
    }


@pytest.mark.slow
def test_only_declared_records_leave_the_owners(runs):
    sent = {f"{name}.{key.split('.')[0]}" for name, key in owner_entries(runs["plain"])}
    # intermediate tensors and the ids the server's labels are keyed by; weights for FedAvg;
    # what the colluding owner hands over; no labels, no raw images otherwise.
    assert sent == {
        "intermediate.z",
        "intermediate.ids",
        "segment.1",
        "segment.3",
        "segment.7",
        "meta.partition",
        "meta.train_samples",
        "aux.x",
        "aux.x_val",
    }
    alone = owner_entries(runs["sequential"])
    assert "aux" not in {name for name, _ in alone}  # the server alone got no images from anyone
    assert ("intermediate", "y") in alone  # deployment.labels: owner, and only then


@pytest.mark.slow
def test_training_learns_and_the_undefended_owner_leaks(runs):
    m = results(runs["plain"])["metrics"]
    assert m["utility"]["accuracy"] > 0.80  # 1,600 images, one epoch
    # The paper: about 0.80-0.85 without NoPeek (squared-distance dcor, batches of 32).
    assert 0.70 < m["distance_correlation"]["mean"] < 0.95
    leak = m["leakage"]["inference"]
    assert leak["reference_accuracy"] > 0.6
    assert leak["reference_accuracy_on_originals"] > 0.9
    # Last-epoch tensors of a one-epoch run come from a segment still changing (App. A).
    assert m["leakage"]["training"]["reference_accuracy"] > 0.3
    assert m["training"]["round_trips"] >= 25  # one per batch: 800 images / 32 per owner


@pytest.mark.slow
def test_laplace_and_nopeek_cut_the_leak(runs):
    plain = results(runs["plain"])["metrics"]
    defended = results(runs["defended"])["metrics"]
    drop = (
        plain["leakage"]["inference"]["reference_accuracy"]
        - defended["leakage"]["inference"]["reference_accuracy"]
    )
    assert drop > 0.25, drop
    assert defended["leakage"]["inference"]["mse"] > plain["leakage"]["inference"]["mse"]
    assert defended["distance_correlation"]["mean"] < plain["distance_correlation"]["mean"] - 0.05
    # the paper's noise has no clipping bound: no finite epsilon, and the run says why
    (budget,) = defended["privacy"]
    assert budget["defence"] == "laplace" and budget["record"] == "test image"
    assert budget["finite"] is False and budget["epsilon"] is None  # JSON: null
    assert "no clip" in budget["unbounded"]
    assert plain["privacy"] == []
    report = (runs["defended"] / "report.md").read_text()
    assert "laplace on each test image: epsilon infinite" in report


@pytest.mark.slow
def test_sequential_schedule_with_a_foreign_prior_runs(runs):
    m = results(runs["sequential"])["metrics"]
    assert m["training"]["schedule"] == "sequential"
    assert m["training"]["data_owners"] == 3
    assert m["attack"]["aux_data"] == "fashion_mnist"
    assert m["utility"]["accuracy"] > 0.75
    assert 0.0 <= m["leakage"]["inference"]["reference_accuracy"] <= 1.0


def test_nopeek_distance_correlation_matches_dcor():
    # Not imported with numba's JIT turned off to save its compile (25-29 s once per
    # environment, 6.3 s for the test once numba has cached it): dcor's guvectorize kernels
    # compile whatever that setting says, and then fail on the plain-Python functions they
    # call, unless numba's on-disk cache already holds them (failed in a fresh environment)
    import dcor

    rng = np.random.default_rng(0)
    x = rng.random((32, 784))
    z = np.tanh(x[:, :500] * 3 + rng.normal(size=(32, 500)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for exponent in (1.0, 2.0):
            ours = distance_correlation(torch.from_numpy(x), torch.from_numpy(z), exponent)
            theirs = dcor.distance_correlation(x, z, exponent=exponent)
            assert float(ours) == pytest.approx(theirs, rel=1e-6)
        # the reported metric: per batch of 32, as papers/003 computes it
        x3, z3 = rng.random((96, 1, 28, 28)), rng.random((96, 8, 7, 7))
        per_batch = [
            dcor.distance_correlation(
                x3[i : i + 32].reshape(32, -1), z3[i : i + 32].reshape(32, -1), exponent=2.0
            )
            for i in (0, 32, 64)
        ]
        stats = distance_correlation_batches(x3.astype(np.float32), z3.astype(np.float32))
        assert stats["batches"] == 3
        assert stats["mean"] == pytest.approx(np.mean(per_batch), rel=1e-5)
    zt = torch.from_numpy(z).requires_grad_(True)
    distance_correlation(torch.from_numpy(x), zt).backward()
    assert torch.isfinite(zt.grad).all() and zt.grad.abs().sum() > 0


def test_node_state_is_adam_in_place_across_processes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    reference = copy.deepcopy(model)
    opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    folder = Path(tempfile.mkdtemp())
    NodeState(folder / "n.bin", copy.deepcopy(model), 1e-2).load_weights(
        {k: v.numpy() for k, v in model.state_dict().items()}
    )
    for _ in range(4):
        x = torch.randn(8, 10)
        opt.zero_grad()
        reference(x).pow(2).sum().backward()
        opt.step()
        # A fresh mapping each step, as when another Ray actor serves the node's next message.
        state = NodeState(folder / "n.bin", copy.deepcopy(model), 1e-2)
        state.optimizer.zero_grad()
        state.model(x).pow(2).sum().backward()
        state.step()
    for a, b in zip(
        reference.state_dict().values(), state.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_partitions_and_fedavg():
    parts = [train_partition(1000, 3, pid, seed=0) for pid in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    avg = fedavg({0: {"w": np.zeros(2, "f4")}, 1: {"w": np.ones(2, "f4")}}, {0: 1, 1: 3})
    assert np.allclose(avg["w"], 0.75)


BAD = {
    "colluding_foreign_prior": (
        {"role.aux_data": "fashion_mnist"},
        "role.aux_data: a colluding data owner hands over its own MNIST images",
    ),
    "disjoint_without_classes": (
        {"role.access": "stolen", "role.aux_data": "disjoint_classes"},
        "role.aux_classes: disjoint_classes needs",
    ),
    "emnist_missing": (
        {"role.access": "stolen", "role.aux_data": "emnist"},
        "role.aux_data: EMNIST letters not found",
    ),
    "weights_defence": (
        {"defences": [{"name": "weight_noise", "sigma": 0.1}]},
        "defences.0.name: 'weight_noise' acts on weights, which role model_inversion does not",
    ),
    "unused_model": (
        {"models.official": {"name": "lenet"}},
        "models.official: not used by role model_inversion; allowed: split",
    ),
    "wrong_dataset": ({"dataset.name": "fashion_mnist"}, "dataset.name: role model_inversion"),
    "too_many_users": ({"deployment.users": 20000}, "deployment.users: at most 10000"),
    "aux_too_big": ({"role.aux_size": 6000}, "role.aux_size: at most 5000"),
    "bad_schedule": ({"role.schedule": "ring"}, "role.schedule: Input should be 'parallel'"),
    "victim_is_the_interceptor": (
        {"role.access": "intercepting", "role.victim": 0, "role.training_targets": 0},
        "role.victim: must be another data owner than role.colluder (0)",
    ),
    "intercepted_training_tensors": (
        {"role.access": "intercepting"},
        "role.training_targets: the interceptor copies the victim's inference tensors only",
    ),
    "negative_alpha": (
        {"defences": [{"name": "nopeek", "alpha": -1}]},
        "defences.0.alpha: Input should be greater than or equal to 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_split_scenario_gets_one_line_and_exit_2(case, tmp_path, capsys):
    changes, expected = BAD[case]
    data = yaml.safe_load(SCENARIO.read_text())
    for dotted, value in changes.items():
        node = data
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: "), err
    assert expected in err[0], err[0]
    assert not out.exists() or not any(out.rglob("results.json"))


@pytest.mark.slow
def test_attack_reruns_the_inversion_from_the_recorded_traffic(runs, capsys):
    # The server's attack consumes only what it received: re-attacking the recorded run
    # reproduces its numbers exactly, and another decoder gives other ones. On the sequential
    # run, the server alone with a stolen segment and a Fashion-MNIST prior: its decoder trains
    # one epoch, and the deep one too (only their numbers' differing is checked).
    recorded = runs["sequential"]
    assert main(["attack", str(recorded)]) == 0
    deep_sets = ["--set", "role.decoder=deep"]
    assert main(["attack", str(recorded), *deep_sets]) == 0
    same, deep = sorted((recorded / "attacks").glob("2*"))
    assert results(same)["metrics"] == results(recorded)["metrics"]
    assert results(same)["attack_of"] == str(recorded.resolve())
    stronger = results(deep)["metrics"]
    assert stronger["attack"]["decoder"] == "deep"
    assert stronger["leakage"] != results(recorded)["metrics"]["leakage"]
    assert stronger["utility"] == results(recorded)["metrics"]["utility"]
    assert (deep / "reconstructions.png").stat().st_size > 0
    capsys.readouterr()
    # a colluder's hand-over was sent during training: its size cannot change afterwards
    plain = runs["plain"]  # (refused before anything is written into the shared run)
    assert main(["attack", str(plain), "--set", "role.aux_size=100"]) == 2
    assert "role.aux_size" in capsys.readouterr().err
    assert not (plain / "attacks").exists()
