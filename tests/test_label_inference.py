"""The curious data owner of split learning (Li et al., ICLR 2022) on real MNIST through Flower.

Unit tests of the attack and of the two gradient defences run on synthetic gradients; the
module's Flower runs (slow tier) train the split CNN on 1,200 MNIST images: undefended twice
(determinism), and under isotropic noise (attacked again by the adaptive owner with
``splitsim attack``). Owner-held labels run through model inversion (test_split_learning.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.defences.gradient_noise import GradientNoise
from splitsim.defences.marvell import Marvell, solve, sum_kl
from splitsim.engine.wire import read
from splitsim.metrics import roc_auc
from splitsim.roles.label_inference.attack import infer

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "split_label_inference.yaml"
SMALL = ["dataset.train_limit=1200", "training.epochs=2", "deployment.users=400",
         "role.observed_batches=8"]  # fmt: skip


def two_class_gradients(n: int = 64, d: int = 50, seed: int = 0):
    """Per-example gradients of a binary task: class 1 (rare) long and along one direction,
    class 0 short and along another, plus a little spread."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    a, b = np.eye(d)[0], np.eye(d)[1]
    g = np.where(y[:, None] == 1, 1.0 * a, -0.2 * b) + rng.normal(0, 0.02, (n, d))
    return g.astype(np.float32), y


def test_marvell_solution_spends_its_power_and_beats_isotropic_noise():
    u, v, d, g, p = 0.01, 0.02, 50, 1.04, 0.2
    power = 4.0 * g
    lam, kl = solve(u, v, d, g, p, power)
    spent = p * (lam[2] + (d - 1) * lam[3]) + (1 - p) * (lam[0] + (d - 1) * lam[1])
    assert spent <= power * (1 + 1e-5)
    iso = np.full(4, power / d)  # the same power, spread evenly over every direction
    assert kl < sum_kl(iso, u, v, d, g) / 4
    assert kl < sum_kl(np.zeros(4), u, v, d, g) / 100


def test_marvell_and_isotropic_noise_hide_the_label_in_synthetic_gradients():
    g, y = two_class_gradients(n=2000)
    norms = np.linalg.norm(g, axis=1)
    assert roc_auc(y, norms) > 0.99  # undefended, the norm gives the label away
    marvell = Marvell(Marvell.Params(scale=4.0))
    batches = [(g[i : i + 64], y[i : i + 64]) for i in range(0, len(g), 64)]
    rng = np.random.default_rng(1)
    noisy = np.concatenate([marvell.protect(gb, yb, rng) for gb, yb in batches])
    assert abs(roc_auc(y, np.linalg.norm(noisy, axis=1)) - 0.5) < 0.15
    summary = marvell.summary()
    assert summary["batches"] == len(batches) and 0.0 < summary["error_lower_bound"] < 0.5
    iso = GradientNoise(GradientNoise.Params(ratio=4.0))
    noisy_iso = iso.protect(g, y, np.random.default_rng(2))
    added = np.linalg.norm(noisy_iso - g, axis=1).mean()
    assert added == pytest.approx(4.0 * norms.max(), rel=0.1)  # noise norm = ratio x max norm


def test_direction_attack_needs_only_a_few_known_labels():
    g, y = two_class_gradients(n=400)
    ids = np.arange(len(g))
    known = np.array([int(np.flatnonzero(y == 0)[0]), int(np.flatnonzero(y == 1)[0])])
    rounds, steps = np.ones(len(g), np.int64), ids // 32
    s = infer(g, rounds, steps, ids, known, y[known], classes=2)
    rest = ~np.isin(ids, known)
    assert roc_auc(y[rest], s.direction[rest]) > 0.99
    assert roc_auc(y[rest], s.norm[rest]) > 0.99
    # Flipped labels for the known examples: the norm is still oriented by them, and says so.
    flipped = infer(g, rounds, steps, ids, known, 1 - y[known], classes=2)
    assert roc_auc(y[rest], flipped.norm[rest]) < 0.01


def test_the_adaptive_owner_projects_isotropic_noise_out():
    g, y = two_class_gradients(n=600, d=400)
    iso = GradientNoise(GradientNoise.Params(ratio=4.0))
    rng = np.random.default_rng(3)
    noisy = np.concatenate([iso.protect(g[i : i + 32], y[i : i + 32], rng)
                            for i in range(0, len(g), 32)])  # fmt: skip
    ids, rounds, steps = np.arange(len(g)), np.ones(len(g), np.int64), np.arange(len(g)) // 32
    known = np.concatenate([np.flatnonzero(y == 0)[:5], np.flatnonzero(y == 1)[:5]])
    rest = ~np.isin(ids, known)
    plain = infer(noisy, rounds, steps, ids, known, y[known], classes=2)
    adaptive = infer(noisy, rounds, steps, ids, known, y[known], classes=2, known_noise_ratio=4.0)
    plain_auc = roc_auc(y[rest], plain.norm[rest])
    adaptive_auc = roc_auc(y[rest], adaptive.norm[rest])
    assert plain_auc < 0.8 and adaptive_auc > 0.95
    assert adaptive.kept_directions[1] < 400


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["deployment.labels=owner"], "deployment.labels"),
        (["role.task=multiclass", "defences=[{name: marvell, scale: 4.0}]"], "defences.0.name"),
        (["role.adaptive=true"], "role.adaptive"),
        (["role.attacker=2"], "role.attacker"),
        (["role.positive=[0, 0]"], "role.positive"),
    ],
)
def test_impossible_label_settings_get_one_line_and_exit_2(tmp_path, capsys, sets, field):
    out = tmp_path / "runs"
    args = ["run", str(SCENARIO), "--out", str(out)]
    for expr in sets:
        args += ["--set", expr]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f": {field}: " in lines[0], lines
    assert not out.exists() or not any(out.rglob("*")), "nothing trained or written"


def run(out: Path, scenario: Path, *extra: str) -> dict:
    before = set(out.rglob("results.json")) if out.exists() else set()
    args = ["run", str(scenario), "--out", str(out)]
    for expr in extra:
        args += ["--set", expr]
    assert main(args) == 0
    (new,) = set(out.rglob("results.json")) - before
    return {"folder": new.parent, **json.loads(new.read_text())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("labels")
    noise = "defences=[{name: gradient_noise, ratio: 4.0}]"
    return {
        "plain": run(out, SCENARIO, *SMALL),
        "again": run(out, SCENARIO, *SMALL),
        "noise": run(out, SCENARIO, *SMALL, noise),
    }


@pytest.mark.slow
def test_undefended_gradients_give_the_labels_away(runs):
    m = runs["plain"]["metrics"]
    leak = m["leakage"]["all_epochs"]
    assert leak["direction"] > 0.95 and leak["norm"] > 0.7, leak
    assert m["utility"]["accuracy"] > max(0.95, m["utility"]["chance"] + 0.03)
    assert all(row["direction"] > 0.9 for row in m["leakage"]["per_epoch"])
    # Every gradient the owner used came to it from the server, and is in the wire log.
    folder = runs["plain"]["folder"]
    lines = read(folder / "wire.jsonl")
    to_owner = [rec["name"] for line in lines if line["sender"] == "server"
                for rec in line["records"]]  # fmt: skip
    assert "grad" in to_owner and "answers" in to_owner
    assert (folder / "scores.png").is_file() and (folder / "epochs.png").is_file()


@pytest.mark.slow
def test_the_same_seed_gives_the_same_numbers(runs):
    assert runs["plain"]["metrics"]["leakage"] == runs["again"]["metrics"]["leakage"]
    assert runs["plain"]["metrics"]["utility"] == runs["again"]["metrics"]["utility"]


@pytest.mark.slow
def test_gradient_noise_lowers_the_plain_attack_and_the_adaptive_owner_recovers(runs):
    plain = runs["plain"]["metrics"]["leakage"]["all_epochs"]
    noisy = runs["noise"]["metrics"]["leakage"]["all_epochs"]
    assert noisy["direction"] < plain["direction"] - 0.15, (plain, noisy)
    assert runs["noise"]["metrics"]["protection"]["gradient_noise.mean_sigma"] > 0
    # The adaptive owner attacks the same recorded gradients again, knowing the noise ratio.
    folder = runs["noise"]["folder"]
    assert main(["attack", str(folder), "--set", "role.adaptive=true"]) == 0
    (again,) = (folder / "attacks").glob("*/results.json")
    adaptive = json.loads(again.read_text())["metrics"]["leakage"]["all_epochs"]
    assert adaptive["direction"] > noisy["direction"] + 0.15, (noisy, adaptive)
    assert adaptive["norm"] > noisy["norm"] + 0.15, (noisy, adaptive)
