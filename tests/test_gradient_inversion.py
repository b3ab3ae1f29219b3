"""The curious FedAvg server's gradient inversion on real MNIST through the real Flower
simulation: the attack's parts against known answers (no Flower), then runs that check the
reconstruction, what crossed the wire, DP-SGD, re-attacking and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_scenario
from torch.nn import functional as F

from splitsim.cli import main
from splitsim.data.images import _load
from splitsim.data.mnist import MNIST
from splitsim.engine.wire import read
from splitsim.metrics import image_quality
from splitsim.models.dlg_cnn import DLGConvNet
from splitsim.roles.gradient_inversion import attack
from splitsim.roles.gradient_inversion.protocol import local_update
from splitsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "fl_gradient_inversion.yaml"
SMALL = ["deployment.clients=2", "role.batch_sizes=[1]", "role.rounds=2", "role.iterations=600"]
DP = "defences=[{name: dp_sgd, noise_multiplier: 1.0, max_grad_norm: 1.0}]"


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = _load(MNIST, "data", False, True)
    ids = np.random.default_rng(seed).choice(40_000, n, replace=False)
    return x[ids], y[ids]


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return DLGConvNet.build(DLGConvNet.Params(), (1, 28, 28), 10)


def sgd_update(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, lr: float) -> np.ndarray:
    """One full-batch SGD step's flat update, as a participant computes it."""
    loss = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return np.concatenate([(-lr * g).numpy().ravel() for g in grads])


def weights(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {n: v.detach().numpy().copy() for n, v in net.named_parameters()}


def test_labels_come_back_from_the_last_bias_alone():
    net = network()
    probs = attack.mean_probabilities(net, (1, 28, 28), seed=0)
    for n, seed in ((1, 0), (1, 1), (8, 2), (32, 3)):
        x, y = images(n, seed)
        bias = sgd_update(net, x, y, lr=0.1)[-10:]
        found = attack.recover_labels(bias, lr=0.1, steps=1, batch=n, mean_probs=probs)
        assert len(found) == n
        overlap = np.minimum(np.bincount(found, minlength=10), np.bincount(y, minlength=10))
        assert overlap.sum() >= n - n // 8, (sorted(found), sorted(y))


def test_one_image_is_reconstructed_from_one_sgd_step():
    net = network()
    x, y = images(1, seed=4)
    update = sgd_update(net, x, y, lr=0.1)
    settings = attack.Settings(lr=0.1, steps=1, iterations=300, tv_weight=0.01, seed=0)
    recon, losses = attack.invert(net, weights(net), update, y, (1, 28, 28), settings)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    psnr = image_quality(x, recon)["psnr"]
    assert psnr > 20, psnr
    assert losses[-1] < losses[0]
    # an update of another image does not give this one back
    other, _ = images(1, seed=5)
    wrong, _ = attack.invert(net, weights(net), sgd_update(net, other, y, 0.1), y, (1, 28, 28),
                             settings)  # fmt: skip
    assert image_quality(x, wrong)["psnr"] < psnr - 8


def test_pairing_undoes_the_updates_lost_order():
    x, _ = images(6, seed=6)
    perm = np.array([3, 0, 5, 1, 4, 2])
    rec_idx, orig_idx = attack.pair(x[perm] + 0.01, x)
    assert orig_idx.tolist() == list(range(6))
    assert np.array_equal(perm[rec_idx], np.arange(6))


def test_a_participants_round_is_repeatable_and_dp_sgd_changes_it(tmp_path):
    scenario = load_scenario(SCENARIO)
    net = network()
    x, y = images(4, seed=7)
    start = {n: v.detach().numpy().copy() for n, v in net.state_dict().items()}

    def once(sc):
        return local_update(sc, start, x, y, steps=2, lr=0.1, seed=1,
                            noise=np.random.default_rng(0))  # fmt: skip

    a, b = once(scenario), once(scenario)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    private = scenario.model_copy(update={"defences": load_scenario(
        SCENARIO, [DP]).defences})  # fmt: skip
    c = once(private)
    assert any(not np.allclose(a[k], c[k]) for k in a)


def test_the_adaptive_servers_model_of_dp_sgd_is_opacus_own(tmp_path):
    """The server's unrolled, per-example-clipped steps give the participant's Opacus update
    exactly when there is no noise, and the noise it assumes has the spread Opacus adds."""
    net = network()
    x, y = images(4, seed=8)
    start = {n: v.detach().numpy().copy() for n, v in net.state_dict().items()}
    names = [n for n, _ in net.named_parameters()]

    def participant(sigma: float, steps: int) -> np.ndarray:
        spec = f"defences=[{{name: dp_sgd, noise_multiplier: {sigma}, max_grad_norm: 0.5}}]"
        after = local_update(load_scenario(SCENARIO, [spec]), start, x, y, steps=steps, lr=0.1,
                             seed=3, noise=np.random.default_rng(0))  # fmt: skip
        return np.concatenate([(after[n] - start[n]).ravel() for n in names])

    knows = attack.Knowledge(example_clip=0.5, noise="gaussian", noise_multiplier=1.0)
    settings = attack.Settings(lr=0.1, steps=2, iterations=1, tv_weight=0, seed=0, knowledge=knows)
    tensors = {n: torch.from_numpy(start[n]) for n in names}
    simulated = attack._unrolled(net, tensors, settings)(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(simulated.detach().numpy(), participant(0.0, 2), atol=1e-6)
    noise = participant(1.0, 1) - participant(0.0, 1)
    expected = attack.dp_noise_std(0.1, 1, 4, 1.0, 0.5)
    assert abs(noise.std() / expected - 1) < 0.05, (noise.std(), expected)


def run(out: Path, *extra: str) -> Path:
    return run_scenario(SCENARIO, out, *SMALL, *extra)


def metrics(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return run(tmp_path_factory.mktemp("gi") / "runs")


@pytest.mark.slow
def test_the_server_reads_the_participants_image_from_its_update(plain):
    (row,) = metrics(plain)["batches"]
    assert row["label_accuracy"] == 1.0
    assert row["reference_accuracy"] == 1.0
    assert row["psnr"] > 25 and row["ssim"] > 0.8, row
    assert row["psnr"] > row["chance"]["psnr"] + 10
    assert (plain / "reconstructions.png").stat().st_size > 5_000


@pytest.mark.slow
def test_only_weights_and_counts_leave_the_participants(plain):
    lines = read(plain / "wire.jsonl")
    sent = {
        (rec["name"], key)
        for line in lines
        if line["sender"] != "server"
        for rec in line["records"]
        for key in rec["entries"]
    }
    net = network()
    assert sent == {("arrays", n) for n, _ in net.named_parameters()} | {
        ("metrics", "num-examples"),
        ("metrics", "partition"),
    }
    uploads = [line for line in lines if line["sender"] != "server" and "train" in line["phase"]]
    assert len(uploads) == 2 * 2  # two participants, two rounds


@pytest.mark.slow
def test_re_attacking_the_recorded_run_gives_the_same_numbers(plain):
    assert main(["attack", str(plain)]) == 0
    (again,) = (plain / "attacks").glob("*/results.json")
    first = metrics(plain)["batches"][0]
    second = json.loads(again.read_text())["metrics"]["batches"][0]
    for key in ("psnr", "ssim", "reference_accuracy", "label_accuracy", "accuracy"):
        assert first[key] == second[key], key


@pytest.mark.slow
def test_dp_sgd_at_sigma_1_destroys_the_reconstruction(plain, tmp_path):
    folder = run(tmp_path / "runs", DP)
    m = metrics(folder)
    (row,) = m["batches"]
    (clear,) = metrics(plain)["batches"]
    assert row["psnr"] < 12 and row["ssim"] < 0.2, row
    assert row["psnr"] < clear["psnr"] - 15
    (budget,) = [b for b in m["privacy"] if "DP-SGD" in b["mechanism"]]
    assert 0 < budget["epsilon"] < float("inf")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("role.rounds=2000", "role.rounds"),
        ("role.target=4", "role.target"),
        ("training.epochs=3", "training"),
        ("role.batch_sizes=[0]", "role.batch_sizes"),
        ("role.attack_round=20", "role.attack_round"),
        ("models.federated.name=split_cnn", "models.federated.name"),
        ("engine.faults=[{partition: 0, rounds: [1]}]", "engine.faults.0"),
    ],
)
def test_impossible_settings_are_refused_before_anything_runs(override, field, tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["run", str(SCENARIO), "--out", str(out), "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert field in err[0], err[0]
    assert not out.exists() or not any(out.rglob("*"))
