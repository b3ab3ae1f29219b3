"""The data owner's sanitisers against a hidden-learning supplier (issue 27): label-only release,
quantisation to k levels, distillation; the adaptive supplier's copy of them; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import splitsim.roles  # noqa: F401  (registers the built-in roles)
from splitsim import seeds
from splitsim.cli import main
from splitsim.data.score_data import OfficialTask
from splitsim.defences import apply_scores, apply_stage, build
from splitsim.defences.distillation import Distillation, top1
from splitsim.defences.label_only import LabelOnly
from splitsim.defences.quantise import Quantise
from splitsim.metrics import majority_rate
from splitsim.registry import DATASETS, DEFENCES, MODELS
from splitsim.roles.hidden_learning.attack import defended_scores, owner_scores
from splitsim.roles.hidden_learning.scores import (
    ScoreNet,
    official_loss,
    official_predictions,
    predict_scores,
)
from splitsim.scenario import Plugin

ROOT = Path(__file__).resolve().parents[1]
MULTILABEL = OfficialTask(kind="multilabel", names=("severe", "infected"))
MULTICLASS = OfficialTask(kind="multiclass", names=("a", "b", "c"))
LOGITS = OfficialTask(kind="multilabel", names=("a", "b"), released="logits")


def defences(*specs: dict) -> list:
    chosen = []
    for spec in specs:
        plugin = Plugin(**spec)
        plugin._params = DEFENCES.get(spec["name"]).Params(
            **{k: v for k, v in spec.items() if k != "name"}
        )
        chosen.append(plugin)
    return build(chosen)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- label-only and quantisation: the transforms ------------------------------------------


def test_label_only_releases_the_official_answer_and_nothing_else():
    scores = rng().random((500, 3)).astype(np.float32)
    out = LabelOnly(LabelOnly.Params()).release(scores, MULTICLASS, rng())
    assert out.shape == scores.shape and out.dtype == np.float32
    assert set(np.unique(out)) == {0.0, 1.0} and np.all(out.sum(axis=1) == 1)
    assert np.array_equal(out.argmax(axis=1), scores.argmax(axis=1))

    two = rng(1).random((500, 2)).astype(np.float32)
    two[0] = [0.5, 0.4999]  # the task's own threshold: 0.5 is a positive answer
    bits = LabelOnly(LabelOnly.Params()).release(two, MULTILABEL, rng())
    assert bits.shape == two.shape and set(np.unique(bits)) == {0.0, 1.0}
    assert np.array_equal(bits, official_predictions(two, MULTILABEL).astype(np.float32))
    assert bits[0].tolist() == [1.0, 0.0]
    # no randomness: any generator gives the same release
    again = LabelOnly(LabelOnly.Params()).release(two, MULTILABEL, rng(99))
    assert np.array_equal(bits, again)


@pytest.mark.parametrize("levels", [2, 3, 5, 11])
def test_quantise_keeps_k_levels_and_the_nearest_one(levels):
    scores = np.concatenate([rng(levels).random(2000), [0.0, 1.0, -0.2, 1.3]]).astype(np.float32)
    scores = scores.reshape(-1, 2)
    out = Quantise(Quantise.Params(levels=levels)).release(scores, MULTILABEL, rng())
    grid = np.arange(levels) / (levels - 1)
    assert out.shape == scores.shape and out.dtype == np.float32
    assert np.allclose(np.sort(np.unique(out)), grid, atol=1e-7), "every level used, no other"
    clipped = np.clip(scores, 0, 1)
    assert np.all(np.abs(out - clipped) <= 0.5 / (levels - 1) + 1e-6), "the nearest level"
    again = Quantise(Quantise.Params(levels=levels)).release(scores, MULTILABEL, rng(7))
    assert np.array_equal(out, again), "no randomness"


def test_two_levels_decide_like_the_task_and_three_add_unsure():
    scores = np.array([[0.2, 0.5], [0.26, 0.74], [0.76, 0.49]], dtype=np.float32)
    two = Quantise(Quantise.Params(levels=2)).release(scores, MULTILABEL, rng())
    assert np.array_equal(two, LabelOnly(LabelOnly.Params()).release(scores, MULTILABEL, rng()))
    three = Quantise(Quantise.Params(levels=3)).release(scores, MULTILABEL, rng())
    assert three.tolist() == [[0.0, 0.5], [0.5, 0.5], [1.0, 0.5]]


def test_score_defences_need_the_task_and_stay_out_of_other_stages():
    chosen = defences({"name": "label_only"}, {"name": "rounding", "decimals": 1})
    with pytest.raises(TypeError, match="needs the official task"):
        chosen[0].apply(np.zeros((2, 2), np.float32), rng())
    scores = np.array([[0.71, 0.2]], dtype=np.float32)
    # the payload stage leaves label-only alone, the scores stage leaves rounding alone
    assert np.allclose(apply_stage(chosen, "payload", scores, rng()), [[0.7, 0.2]])
    assert apply_scores(chosen, scores, MULTILABEL, rng()).tolist() == [[1.0, 0.0]]
    assert chosen[0].refuses(MULTILABEL) is None and chosen[0].refuses(LOGITS)
    assert Quantise(Quantise.Params(levels=4)).refuses(LOGITS)


# -- distillation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def covid():
    """A trained official network on the Covid records, the dataset and a network builder."""
    cls = DATASETS.get("covid_health_records")
    data = cls(cls.Params(train_records=3000, test_records=2000), 0, None)
    task = cls.fixed.official
    model = MODELS.get("health_mlp")
    train = data.supplier_train()

    def build_net() -> ScoreNet:
        return ScoreNet(model.build(model.Params(hidden=[32, 32]), train.x.shape[1:], 2), task)

    torch.manual_seed(0)
    teacher = build_net()
    optimiser = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    x, y = torch.as_tensor(train.x), torch.as_tensor(train.official)
    for _ in range(10):
        for start in range(0, len(x), 128):
            loss = official_loss(teacher(x[start : start + 128]), y[start : start + 128],
                                 "multilabel", torch.ones(1))  # fmt: skip
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    teacher.eval()
    return data, teacher, build_net


def test_distilled_network_agrees_with_the_teacher_on_records_it_never_saw(covid):
    data, teacher, build_net = covid
    owner = data.partition(0, 10, 2000).x  # one owner's 200 records, without their labels
    held_out = data.supplier_test().x
    distil = Distillation(Distillation.Params(epochs=60))
    student = distil.distil(teacher, build_net, owner, "multilabel", seed=3)
    assert student is not teacher and isinstance(student, ScoreNet)
    with torch.no_grad():
        want = top1(teacher(torch.as_tensor(held_out)), "multilabel").numpy()
        got = top1(student(torch.as_tensor(held_out)), "multilabel").numpy()
    agreement = float(np.mean(got == want))
    # chance: always answering each label's most common teacher answer
    blind = float(np.mean([majority_rate(want[:, j].astype(int)) for j in range(2)]))
    assert agreement >= 0.85 and agreement > blind + 0.05, (agreement, blind)
    # its scores are its own, not the teacher's: the hidden channel lived in those
    gap = np.abs(predict_scores(student, held_out) - predict_scores(teacher, held_out))
    assert gap.mean() > 0.02
    same = distil.distil(teacher, build_net, owner, "multilabel", seed=3)
    other = distil.distil(teacher, build_net, owner, "multilabel", seed=4)
    assert np.array_equal(predict_scores(same, held_out), predict_scores(student, held_out))
    assert not np.array_equal(predict_scores(other, held_out), predict_scores(student, held_out))


def test_distillation_is_a_model_stage_that_refuses_to_act_on_arrays():
    (d,) = defences({"name": "distillation", "epochs": 5})
    assert d.stage == "model"
    with pytest.raises(TypeError, match="distil"):
        d.apply(np.zeros(3), rng())
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Distillation.Params(epochs=0)


def test_adaptive_supplier_distils_in_blocks_the_size_of_an_owner(covid):
    data, teacher, build_net = covid
    x = data.supplier_test().x[:300]
    chosen = defences({"name": "distillation", "epochs": 30}, {"name": "label_only"})
    with pytest.raises(ValueError, match="owner_size"):
        owner_scores(teacher, x, chosen, rng())
    common = dict(build_official=build_net, seed=0)
    blocks = owner_scores(teacher, x, chosen, rng(), owner_size=100, **common)
    whole = owner_scores(teacher, x, chosen, rng(), owner_size=300, **common)
    assert blocks.shape == whole.shape == (300, 2)
    assert not np.array_equal(blocks, whole), "three owners are not one"
    want = official_predictions(predict_scores(teacher, x), MULTILABEL)
    assert np.mean(official_predictions(blocks, MULTILABEL) == want) > 0.9
    sent = defended_scores(teacher, x, chosen, rng(), owner_size=100, **common)
    assert np.array_equal(sent, (blocks >= 0.5).astype(np.float32)), "then label-only, as sent"


# -- bad input: one line, exit 2 ----------------------------------------------------------


def _refused(tmp_path: Path, capsys, scenario: str, *sets: str) -> str:
    args = ["run", str(ROOT / "scenarios" / scenario)]
    for s in sets:
        args += ["--set", s]
    out = tmp_path / "runs"
    assert main([*args, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert not out.exists() or not any(out.rglob("*"))
    return lines[0]


def test_bad_sanitiser_input_is_one_line(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "hidden_covid_app.yaml",
                    "defences=[{name: quantise, levels: 1}]")  # fmt: skip
    assert "defences.0.levels: Input should be greater than or equal to 2" in line
    line = _refused(
        tmp_path, capsys, "hidden_covid_app.yaml", "defences=[{name: label_only, k: 1}]"
    )
    assert "defences.0.k: unknown field" in line
    line = _refused(tmp_path, capsys, "hidden_covid_app.yaml",
                    "defences=[{name: distillation, epochs: 10, temperature: 2}]")  # fmt: skip
    assert "defences.0.temperature: unknown field; allowed: epochs, lr, batch_size" in line
    for name, stage in (("label_only", "scores"), ("distillation", "model")):
        line = _refused(tmp_path, capsys, "mnist_inversion.yaml", f"defences=[{{name: {name}}}]")
        allowed = [n for n, d in DEFENCES.items() if d.stage in ("payload", "loss")]
        assert (
            f"defences.0.name: {name!r} acts on {stage}, which role model_inversion does not "
            f"have; allowed here: {', '.join(allowed)}"
        ) in line
    # a task released as logits has no [0, 1] scale to quantise
    line = _refused(
        tmp_path, capsys, "hidden_fmnist.yaml", "defences=[{name: quantise, levels: 4}]"
    )
    assert "defences.0.name: 'quantise' quantises probabilities on [0, 1]" in line


# -- the real thing: Flower, owners, the wire -----------------------------------------------


SMALL = ["dataset.train_records=2000", "dataset.test_records=500", "training.epochs=3",
         "deployment.users=200", "deployment.clients=2"]  # fmt: skip


def _run(tmp_path: Path, defence: str) -> Path:
    args = ["run", str(ROOT / "scenarios" / "hidden_covid_app.yaml")]
    for s in [*SMALL, f"defences=[{defence}]"]:
        args += ["--set", s]
    out = tmp_path / "runs"
    assert main([*args, "--out", str(out)]) == 0
    (results,) = out.rglob("results.json")
    return results.parent


def _deployed(folder: Path) -> tuple[dict, ScoreNet, list]:
    """What the owners received (the shipped N_o) and held (their users), from the run."""
    scenario = yaml.safe_load((folder / "scenario.yaml").read_text())
    cls = DATASETS.get("covid_health_records")
    data = cls(cls.Params(train_records=2000, test_records=500), scenario["seed"], None)
    model = MODELS.get("health_mlp")
    net = ScoreNet(model.build(model.Params(hidden=[32, 32]), (19,), 2), cls.fixed.official)
    net.load_state_dict(torch.load(folder / "models.pt")["official_hidden"])
    users = [data.partition(p, 2, 200) for p in range(2)]
    return np.load(folder / "received.npz"), net, users


@pytest.mark.slow
def test_distilling_label_only_owners_send_their_own_networks_answers_as_0_or_1(tmp_path):
    """One Flower run with both stages: each owner distils a fresh network from the shipped
    N_o on its users' records (``model``), runs it, and sends its answers only (``scores``)."""
    folder = _run(tmp_path, "{name: distillation, epochs: 40}, {name: label_only}")
    received, net, users = _deployed(folder)
    sent = received["scores"]
    assert set(np.unique(sent)) == {0.0, 1.0}, "0 or 1 on the wire, nothing finer"
    scenario = yaml.safe_load((folder / "scenario.yaml").read_text())
    model = MODELS.get("health_mlp")
    distil, _ = defences({"name": "distillation", "epochs": 40}, {"name": "label_only"})
    fresh, supplied = [], []
    for pid, owner in enumerate(users):  # each owner's own network, from its own seed
        seed = seeds.int_seed(scenario["seed"], "hidden.owner_distillation", pid, 0)
        student = distil.distil(
            net, lambda: ScoreNet(model.build(model.Params(hidden=[32, 32]), (19,), 2), net.task),
            owner.x, "multilabel", seed,
        )  # fmt: skip
        fresh.append(predict_scores(student, owner.x))
        supplied.append(predict_scores(net, owner.x))
    fresh, supplied = np.concatenate(fresh), np.concatenate(supplied)
    assert np.array_equal(sent, official_predictions(fresh, MULTILABEL).astype(np.float32))
    assert np.abs(fresh - supplied).mean() > 0.02, "the owners ran their own networks, not N_o"
    agree = sent == official_predictions(supplied, MULTILABEL)
    assert agree.mean() > 0.9, agree.mean()
    official = np.concatenate([u.official for u in users])
    metrics = json.loads((folder / "results.json").read_text())["metrics"]
    assert metrics["deployment"]["official"]["accuracy"] == pytest.approx(
        float(np.mean(sent == official))
    )
