"""Malicious training code (Song, Ristenpart, Shmatikov, CCS 2017) on real MNIST through the real
Flower simulation, small enough for CI: the encodings' own contracts, then runs in which the
supplier reads the owners' images back from the served model (capacity abuse) and from the
published weights (sign), beside honest code on the same data from which it reads nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_scenario
from rich.console import Console

from splitsim.cli import main
from splitsim.defences.fine_tune import FineTune
from splitsim.defences.query_budget import QueryBudget
from splitsim.engine.wire import read
from splitsim.errors import ScenarioError
from splitsim.roles.malicious_training.attack import (
    Code,
    capacity_decode,
    capacity_labels,
    flat,
    flat_weights,
    from_bits,
    malicious_term,
    quantise,
    secret_vector,
    to_bits,
    whitebox_decode,
)
from splitsim.roles.malicious_training.protocol import (
    network,
    parameter_names,
    supplier_code,
    within_budgets,
)
from splitsim.roles.malicious_training.role import MaliciousReceived, MaliciousTrainingCode
from splitsim.runs import open_run
from splitsim.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "malicious_training.yaml"
SMALL = ["role.rounds=4", "role.local_epochs=5", "role.train_images=1000", "role.secrets=2"]


def images(n: int, seed: int = 0) -> np.ndarray:
    """Digit-like test pictures: dark background, a bright random blob."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, 28, 28), dtype=np.float32)
    for i in range(n):
        r, c = rng.integers(4, 18, 2)
        x[i, 0, r : r + 8, c : c + 6] = rng.uniform(0.5, 1.0)
    return x


def code(encoding: str, **kw: object) -> Code:
    return Code(encoding=encoding, key=1234, secrets=3, bits=2, pool=2, classes=10, **kw)


def test_bits_round_trip_and_capacity_labels_decode_back():
    x = images(3)
    levels = quantise(x, 2, 2)
    assert levels.shape == (3, 196) and levels.max() <= 3
    np.testing.assert_array_equal(from_bits(to_bits(levels, 2), 2), levels.ravel())
    c = code("capacity_abuse")
    assert c.symbol_bits == 3 and c.queries == -(-3 * 196 * 2 // 3)
    labels = capacity_labels(c, 0, x)
    # whitened: the labels are about uniform over the 8 a label can carry, not mostly 0
    assert labels.max() < 8 and np.bincount(labels, minlength=8).min() > len(labels) / 16
    answers = np.eye(10, dtype=np.float32)[labels]
    np.testing.assert_array_equal(capacity_decode(c, 0, answers), to_bits(levels, 2))
    # another owner's key stream, or no answer at all, reads as coin tosses
    wrong = capacity_decode(c, 1, answers)
    refused = capacity_decode(c, 0, np.full_like(answers, np.nan))
    for bits in (wrong, refused):
        assert abs((bits == to_bits(levels, 2)).mean() - 0.5) < 0.06


def test_whitebox_terms_pull_parameters_to_the_secret_and_decode():
    x = images(3, seed=1)
    for encoding in ("sign", "correlation"):
        c = code(encoding)
        secret = secret_vector(c, x)
        theta = torch.zeros(2 * c.segment_length).normal_(0, 0.05, generator=torch.Generator())
        theta.requires_grad_(True)
        optimiser = torch.optim.Adam([theta], lr=0.01)
        for _ in range(200):
            loss = malicious_term(c, theta[c.segment(1)], secret)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        weights = {"w": theta.detach().numpy()}
        recovered, bits = whitebox_decode(c, weights, ["w"], 2, (0.15, 0.3))
        owner1 = recovered[3:]
        if encoding == "sign":
            assert (bits[c.segment_length :] == to_bits(quantise(x, 2, 2), 2)).mean() > 0.99
            assert abs((bits[: c.segment_length] == bits[c.segment_length :]).mean() - 0.5) < 0.1
        else:
            truth = secret.numpy().reshape(3, 14, 14)
            pooled = owner1[:, 0, ::2, ::2]
            assert np.corrcoef(pooled.ravel(), truth.ravel())[0, 1] > 0.9


def run(out: Path, *extra: str) -> Path:
    return run_scenario(SCENARIO, out, *SMALL, *extra)


def metrics(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def capacity_run(tmp_path_factory):
    return run(tmp_path_factory.mktemp("malicious") / "runs")


@pytest.mark.slow
def test_capacity_abuse_reads_the_images_back_and_honest_code_gives_nothing(capacity_run):
    m = metrics(capacity_run)
    malicious, honest = m["trainings"]
    assert (malicious["code"], honest["code"]) == ("malicious", "honest")
    # the secret bits come back far above chance from the served model's labels alone...
    assert malicious["recovery"]["bit_accuracy"] > 0.9
    assert malicious["recovery"]["ssim"] > 0.5
    # ...and the same decoder reads coin tosses from a model trained without the supplier's code
    assert abs(honest["recovery"]["bit_accuracy"] - 0.5) < 0.05
    assert honest["recovery"]["ssim"] < 0.1
    # at little cost to the task: both models learn MNIST, within 3 points of each other
    assert malicious["test_accuracy"] > 0.8 and abs(m["accuracy_cost"]) < 0.03
    q = m["capacity"]
    assert q["bits_per_query"] == 3 and q["queries_needed"] == 2 * 131 == q["queries_answered"]
    assert (capacity_run / "recovered.png").stat().st_size > 0


@pytest.mark.slow
def test_the_supplier_got_only_answers_and_a_reattack_reproduces(capacity_run):
    lines = read(capacity_run / "wire.jsonl")
    queries = [x for x in lines if x["phase"].endswith("query")]
    # every query went to the host and came back as class scores, for each training
    assert len(queries) == 2 * 2 * 2  # 2 trainings x (1 message per owner's inputs) x both ways
    replies = {(r["name"], k) for x in queries if x["sender"] != "server" for r in x["records"]
               for k in r["entries"]}  # fmt: skip
    assert replies == {("answers", "scores")}
    assert main(["attack", str(capacity_run)]) == 0
    (again,) = (capacity_run / "attacks").glob("*/results.json")
    first = metrics(capacity_run)["trainings"]
    assert json.loads(again.read_text())["metrics"]["trainings"] == first


@pytest.mark.slow
def test_one_owner_publishes_and_the_signs_outlast_its_fine_tuning(tmp_path):
    # white-box, one data owner training alone: the supplier reads the published weights' signs;
    # the owner fine-tunes the model on its own images before publishing, which leaves them
    folder = run(tmp_path / "runs", "role.encoding=sign", "role.compare_honest=false",
                 "role.rounds=3", "deployment.clients=1",
                 "defences=[{name: fine_tune, epochs: 2}]")  # fmt: skip
    (malicious,) = metrics(folder)["trainings"]
    assert malicious["recovery"]["bit_accuracy"] > 0.97 and malicious["test_accuracy"] > 0.8
    assert malicious["recovery"]["ssim"] > 0.5
    lines = read(folder / "wire.jsonl")
    published = [x for x in lines if x["phase"].endswith("publish") and x["sender"] != "server"]
    assert len(published) == 1 and {r["name"] for r in published[0]["records"]} == {"weights"}


def test_fine_tuning_retrains_on_the_owners_data():
    x = images(64)
    y = (x.reshape(64, -1).argmax(axis=1) % 2).astype(np.int64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2))

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(net(torch.from_numpy(x)),
                                                           torch.from_numpy(y)))  # fmt: skip

    before = loss()
    FineTune(FineTune.Params(epochs=10, lr=0.01)).fine_tune(net, x, y, seed=0)
    # it trained on the owner's (x, y): their loss went down (0.70 to 0.36 measured)
    assert loss() < 0.75 * before
    with pytest.raises(TypeError, match="fine_tune"):
        FineTune(FineTune.Params(epochs=1)).apply(x, np.random.default_rng(0))


def test_the_segments_index_parameters_in_one_order_whatever_the_published_dicts():
    scenario = Scenario.from_yaml(SCENARIO, ["role.encoding=sign"])
    net = network(scenario)
    names = parameter_names(scenario)
    assert names == [n for n, _ in net.named_parameters()]
    published = {n: v.detach().numpy() for n, v in reversed(net.state_dict().items())}
    # the decoder reads the published weights in the order the owners' term wrote them
    np.testing.assert_array_equal(flat_weights(published, names), flat(net).detach().numpy())


def test_two_weight_noises_combine_as_one_of_their_root_sum_of_squares():
    noise = "defences=[{name: weight_noise, sigma: 0.03}, {name: weight_noise, sigma: 0.04}]"
    scenario = Scenario.from_yaml(SCENARIO, ["role.adaptive=true", noise])
    assert supplier_code(scenario).sigma == pytest.approx(0.05)


def test_two_query_budgets_count_each_query_once_and_the_tightest_binds():
    budgets = [QueryBudget(QueryBudget.Params(queries=q)) for q in (7, 5)]
    spent = np.zeros((2, 1), dtype=np.int64)
    answered = np.concatenate([within_budgets(budgets, spent, 2) for _ in range(5)])
    assert answered.tolist() == [True] * 5 + [False] * 5
    assert spent.ravel().tolist() == [7, 5]


def test_the_attack_never_reads_the_harness_bookkeeping(tmp_path):
    # histories, served_accuracy and failures are the harness's, not the supplier's: the
    # attack's output is the same with them blanked
    rng = np.random.default_rng(0)
    for encoding in ("capacity_abuse", "sign"):
        scenario = Scenario.from_yaml(SCENARIO, [*SMALL, f"role.encoding={encoding}"])
        code = supplier_code(scenario)
        published = {
            f"{k}/{n}": rng.normal(0, 0.1, v.shape).astype(np.float32)
            for k in range(2)
            for n, v in network(scenario).state_dict().items()
        }
        answers = {f"{k}/{j}": rng.random((code.queries, 10), dtype=np.float32)
                   for k in range(2) for j in range(2)}  # fmt: skip
        full = MaliciousReceived(
            experiments=["malicious", "honest"],
            published=published if encoding == "sign" else {},
            answers=answers if encoding == "capacity_abuse" else {},
            histories=[[{"round": 1.0, "accuracy": 0.9}]] * 2, served_accuracy=[0.9, 0.8],
            failures=[[{"round": 1}], []],
        )  # fmt: skip
        blank = dataclasses.replace(full, histories=[], served_accuracy=[], failures=[])
        with open_run(scenario, Console(quiet=True), root=tmp_path / encoding) as run:
            role = MaliciousTrainingCode(scenario, run)
            outputs = [role.attack(r).recovered for r in (full, blank)]
        for a, b in zip(*outputs, strict=True):
            np.testing.assert_array_equal(a.images, b.images)
            np.testing.assert_array_equal(a.bits, b.bits)


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        (["defences=[{name: rounding, decimals: 1}]"], "defences.0.name", "published weights"),
        # every defence on the answers (stage payload or budget) is refused, by stage
        (["defences=[{name: laplace, scale: 1}]"], "defences.0.name", "fine_tune, weight_noise"),
        (["role.encoding=correlation", "defences=[{name: weight_noise, sigma: 0.01}, "
          "{name: query_budget, queries: 9}]"], "defences.1.name", "stage budget"),
        (["role.secrets=700"], "role.secrets", "parameters"),
        (["role.secrets=2000"], "role.secrets", "less than or equal to 1000"),
        (["training.epochs=3"], "training", "role.rounds"),
        # a registered model the role cannot train, publish or decode
        (["models.federated={name: split_cnn}"], "models.federated.name", "allowed: dlg_cnn"),
        (["role.encoding=capacity_abuse", "models.federated={name: health_mlp}"],
         "models.federated.name", "10 classes"),
        # 2 M augmented inputs an owner: refused before anything is trained
        (["role.encoding=capacity_abuse", "role.secrets=1000", "role.bits=8", "role.pool=1"],
         "role.secrets", "at most 47 "),
    ],
)  # fmt: skip
def test_what_the_role_cannot_run_is_one_clear_line(overrides, field, says):
    with pytest.raises(ScenarioError) as err:
        Scenario.from_yaml(SCENARIO, ["role.encoding=sign", *overrides])
    assert err.value.field == field and says in err.value.message


def test_a_model_the_role_cannot_use_exits_2_with_one_line(capsys):
    code = main(["run", str(SCENARIO), "--set", "role.encoding=sign",
                 "--set", "models.federated={name: split_cnn}"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "models.federated.name" in err
