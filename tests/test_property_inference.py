"""The property-inference participant of federated training on real Fashion-MNIST through the
real Flower simulation (Flower's own FedAvg strategy), small enough for CI: the attack's parts
against known answers, then runs that check what crossed the wire, the numbers, the defences
and determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_scenario
from flwr.app import RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from splitsim.cli import main
from splitsim.defences.update_noise import UpdateNoise
from splitsim.engine.codec import arrays_to_record
from splitsim.engine.local_training import flat_parameters, train_locally
from splitsim.engine.wire import read
from splitsim.errors import ScenarioError
from splitsim.models.feature_mlp import FeatureNet
from splitsim.roles.property_inference.attack import (
    AdversaryStore,
    PropertyTask,
    feature_separation,
    infer,
    layer_slice,
    others_update,
)
from splitsim.roles.property_inference.protocol import Participants
from splitsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "fl_property_inference.yaml"
SMALL = [
    "deployment.clients=2",
    "role.rounds=16",
    "role.burn_in=4",
    "role.synthetic=6",
    "role.records_per_round=128",
    "role.target_fraction=0.5",
    "role.alpha=0.3",
    "role.aux_size=4000",
    "role.projection=pca",
    "role.projection_points=300",
]


def run(out: Path, *extra: str) -> Path:
    return run_scenario(SCENARIO, out, *SMALL, *extra)


def metrics(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return run(tmp_path_factory.mktemp("fl") / "runs")


def test_task_and_property_are_independent_class_groups():
    task = PropertyTask(((0, 6), (2, 4)), (6, 4))
    labels = np.array([0, 6, 2, 4, 6])
    assert task.task(labels).tolist() == [0, 0, 1, 1, 0]
    assert task.prop(labels).tolist() == [0, 1, 0, 1, 1]
    assert task.classes == (0, 2, 4, 6)


def test_others_update_is_exact_under_flowers_fedavg():
    rng = np.random.default_rng(0)
    before = rng.normal(size=50).astype(np.float32)
    uploads = [before + rng.normal(size=50).astype(np.float32) for _ in range(4)]
    replies = [
        RecordDict({"arrays": arrays_to_record({"w": u}), "metrics": _metrics(128)})
        for u in uploads
    ]
    after = aggregate_arrayrecords(replies, "num-examples")["w"].numpy()
    own = uploads[3] - before
    expected = np.mean([u - before for u in uploads[:3]], axis=0)
    np.testing.assert_allclose(others_update(before, after, own, 4), expected, atol=1e-5)


def _metrics(n: int):
    from flwr.app import MetricRecord

    return MetricRecord({"num-examples": n})


def test_multitask_loss_trains_the_property_head_on_the_last_layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 1, 4, 4)).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0).astype(np.int64)
    p = (x[:, 0, 1, 1] > 0).astype(np.int64)  # independent of y
    torch.manual_seed(0)
    net = FeatureNet(16, [32], 2)
    head = torch.nn.Linear(32, 2)
    for epoch in range(30):
        train_locally(net, x, y, epochs=1, batch_size=32, lr=0.1, seed=epoch, head=head, p=p,
                      alpha=0.5)  # fmt: skip
    with torch.no_grad():
        f = net.features(torch.from_numpy(x))
        assert (net.classifier(f).argmax(1).numpy() == y).mean() > 0.9
        assert (head(f).argmax(1).numpy() == p).mean() > 0.9
    with pytest.raises(ValueError, match="property head"):
        train_locally(net, x, y, epochs=1, batch_size=32, lr=0.1, seed=0, alpha=0.5)


def test_update_noise_clips_then_noises():
    rng = np.random.default_rng(0)
    u = np.full(10_000, 0.1, dtype=np.float32)  # norm 10
    clipped = UpdateNoise(UpdateNoise.Params(scale=0.0, clip=1.0)).apply(u, rng)
    assert np.linalg.norm(clipped) == pytest.approx(1.0, rel=1e-5)
    for mechanism, std in (("gaussian", 0.5), ("laplace", 0.5 * np.sqrt(2))):
        noisy = UpdateNoise(UpdateNoise.Params(mechanism=mechanism, scale=0.5)).apply(u, rng)
        assert noisy.dtype == np.float32
        assert np.std(noisy - u) == pytest.approx(std, rel=0.05)


def test_layer_slice_and_feature_separation():
    net = FeatureNet(16, [32, 8], 3)
    flat = flat_parameters(net)
    cut = layer_slice(net, "classifier")
    np.testing.assert_array_equal(flat[cut][-3:], net.classifier.bias.detach().numpy())
    assert cut.stop - cut.start == 8 * 3 + 3
    rng = np.random.default_rng(1)
    prop = rng.integers(0, 2, 2000)
    separated = feature_separation(rng.normal(size=(2000, 5)) + 2.0 * prop[:, None], prop, 0)
    random = feature_separation(rng.normal(size=(2000, 5)), prop, 0)
    assert separated["probe_auc"] > 0.95 and abs(random["probe_auc"] - 0.5) < 0.05


def test_inference_separates_synthetic_rounds(tmp_path):
    # Updates of property rounds shifted along one direction: the classifier must find it.
    rng = np.random.default_rng(2)
    store = AdversaryStore(tmp_path)
    truth = rng.integers(0, 2, 30)
    for r in range(1, 31):
        p = np.repeat([0, 1], 10)
        store.save_synthetic(r, rng.normal(size=(20, 12)) + 1.5 * p[:, None], p)
        store.save_observed(r, rng.normal(size=12) + 1.5 * truth[r - 1])
    report = store.report()
    result = infer(report["rounds"], report["synthetic_x"], report["synthetic_p"],
                   report["observed"], burn_in=5, c=1.0)  # fmt: skip
    assert result.rounds == list(range(6, 31))
    assert (result.scores[truth[5:] == 1].mean() - result.scores[truth[5:] == 0].mean()) > 1


@pytest.mark.slow
def test_run_reports_both_attackers_and_pictures(plain):
    for name in ("report.md", "features.png", "inference.png", "accuracy.png", "metrics.csv"):
        assert (plain / name).stat().st_size > 0
    m = metrics(plain)
    active, passive = m["attackers"]
    assert (active["alpha"], passive["alpha"]) == (0.3, 1.0)
    for row in (active, passive):
        assert row["scored_rounds"] == 12
        assert len(row["accuracy_history"]) == 17  # before round 1, then after each round
        # the global model learns the 5-class task well above chance (0.2) in 16 rounds
        assert row["accuracy"] > 0.65
    # the target's rounds leak: even the passive participant scores them above chance
    assert passive["auc"] >= 0.7
    # the cost of the attack to the task stays small
    assert abs(active["accuracy"] - passive["accuracy"]) < 0.03
    gap = m["active_minus_passive"]
    assert gap["auc"] == pytest.approx(active["auc"] - passive["auc"])
    assert m["failures"] == [] and m["defences"]["epsilon"] is None
    report = (plain / "report.md").read_text()
    assert "| active (alpha 0.3) |" in report and "| passive (alpha 1) |" in report


@pytest.mark.slow
def test_only_model_weights_and_counts_leave_the_participants(plain):
    lines = read(plain / "wire.jsonl")
    sent = {
        (rec["name"], key)
        for line in lines
        if line["sender"] != "server" and not line["phase"].endswith("report")
        for rec in line["records"]
        for key in rec["entries"]
    }
    weights = {f"features.{i}.{k}" for i in (1, 3) for k in ("weight", "bias")}
    weights |= {"classifier.weight", "classifier.bias"}
    assert sent == {("arrays", w) for w in weights} | {
        ("metrics", "num-examples"),
        ("metrics", "partition"),
    }
    # every participant, the adversary included, in every round of both trainings
    uploads = [line for line in lines if line["sender"] != "server" and "train" in line["phase"]]
    assert len(uploads) == 2 * 16 * 3
    # after each training the harness asks the adversary, and only it, for its observations
    reports = [line for line in lines if line["phase"].endswith("report")]
    assert [line["sender"] == "server" for line in reports] == [True, False] * 2
    assert all(
        a["receiver"] == b["sender"] for a, b in zip(reports[::2], reports[1::2], strict=True)
    )
    assert {rec["name"] for line in reports[1::2] for rec in line["records"]} == {"report"}


@pytest.mark.slow
def test_same_seed_same_numbers(plain, tmp_path):
    again = run(tmp_path / "runs", "role.compare_alphas=[]")
    first, second = metrics(plain)["attackers"][0], metrics(again)["attackers"][0]
    assert second == first


@pytest.mark.slow
def test_defended_adaptive_run_with_dp_sgd_and_update_noise(tmp_path):
    folder = run(
        tmp_path / "runs",
        "role.rounds=6",
        "role.burn_in=2",
        "role.compare_alphas=[]",
        "role.adaptive=true",
        "defences=[{name: dp_sgd, noise_multiplier: 1.0, max_grad_norm: 1.0}, "
        "{name: update_noise, mechanism: gaussian, scale: 0.001, clip: 5.0}]",
    )
    m = metrics(folder)
    (row,) = m["attackers"]
    assert 0 < m["defences"]["epsilon"] < 100 and m["defences"]["adaptive"] is True
    assert row["scored_rounds"] == 4 and 0 <= row["auc"] <= 1
    assert "epsilon over the run" in (folder / "report.md").read_text()
    update, dp = m["privacy"]
    assert (update["defence"], update["releases"]) == ("update_noise", 6)
    assert update["mechanism"] == "Gaussian" and update["noise_multiplier"] == pytest.approx(2e-4)
    assert dp["defence"] == "dp_sgd" and dp["epsilon"] == m["defences"]["epsilon"]
    assert "## Privacy budget" in (folder / "report.md").read_text()


HEAD = "dataset: {name: fashion_mnist}\nrole: {name: property_inference"
BAD = {
    "mnist": (
        "dataset: {name: mnist}\nrole: {name: property_inference}",
        "dataset.name: role property_inference runs on fashion_mnist",
    ),
    "training": (
        HEAD + "}\ntraining: {epochs: 3}",
        "training: not used by role property_inference",
    ),
    "target": (
        HEAD + ", target: 5}\ndeployment: {clients: 2}",
        "role.target: must be below deployment.clients (2)",
    ),
    "property": (
        HEAD + ", property_classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}",
        "property_classes: some task classes must lack the property",
    ),
    "alpha": (HEAD + ", alpha: 1.5}", "role.alpha: Input should be less than or equal to 1"),
    "defence": (
        HEAD + "}\ndefences: [{name: laplace, scale: 1.0}]",
        "'laplace' acts on payload, which role property_inference does not have; "
        "allowed here: dp_sgd, update_noise",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_property_scenario_gets_one_line_and_exit_2(case, tmp_path, capsys):
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    out = tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_resolved_scenario_loads_again_as_a_matrix_cell_does():
    from splitsim.scenario import load_scenario, validate

    scenario = load_scenario(SCENARIO, SMALL)
    again = validate(scenario.resolved(), "cell.yaml")
    assert again.resolved() == scenario.resolved()


# Two garment pairs among ten participants: about 700 records without the property per share.
NARROW = ["role.task_groups=[[0, 6], [2, 4]]", "role.property_classes=[6, 4]",
          "deployment.clients=10"]  # fmt: skip


def _draw_every_round(scenario, records_per_round: int) -> None:
    """Every draw a training makes without replacement: each participant's, every round, and
    the adversary's synthetic pair from its own records."""
    scenario.role.params.records_per_round = records_per_round
    people = Participants(scenario)
    for rnd in range(1, scenario.role.params.rounds + 1):
        for pid in range(scenario.deployment.clients):
            people.round_records(pid, rnd)
    rng = np.random.default_rng(0)
    for with_property in (False, True):
        people.draw(people.aux, rng, with_property)


def test_records_per_round_that_the_shares_cannot_hold_is_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["run", str(SCENARIO), "--out", str(out), "--set", f"dataset.root={ROOT / 'data'}"]
    for expr in [*NARROW, "role.records_per_round=1000"]:
        args += ["--set", expr]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    found = re.search(r": role\.records_per_round: at most (\d+) for these task_groups", line)
    assert found, line
    assert not out.exists()
    # The bound is exact: at it every round's draws succeed, one record more and one fails.
    most = int(found.group(1))
    scenario = load_scenario(SCENARIO, [*NARROW, f"role.records_per_round={most}"])
    _draw_every_round(scenario, most)
    with pytest.raises(ValueError, match="larger sample than population"):
        _draw_every_round(scenario, most + 1)
    with pytest.raises(ScenarioError, match=f"at most {most} "):
        load_scenario(SCENARIO, [*NARROW, f"role.records_per_round={most + 1}"])


DIRICHLET = ["deployment.partitioner={name: dirichlet, alpha: 0.3, min_size: 200}"]


def test_non_iid_shares_split_the_rest_by_class_and_the_bound_stays_exact():
    from splitsim.data import fetch
    from splitsim.roles.property_inference.protocol import most_records_per_round

    scenario = load_scenario(SCENARIO, [*SMALL, "deployment.clients=4", *DIRICHLET])
    people = Participants(scenario)
    iid = Participants(load_scenario(SCENARIO, [*SMALL, "deployment.clients=4"]))
    parts = people.partitions
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == len(np.concatenate(iid.partitions))
    assert not np.isin(joined, people.aux).any()  # the adversary's records stay its own

    # Dirichlet(0.3): each share is dominated by few classes; the IID shares are not
    def top_share(p: Participants) -> float:
        return max(np.bincount(p.classes[part]).max() / len(part) for part in p.partitions)

    assert top_share(people) > 0.4 > 0.15 > top_share(iid)
    assert all(
        (a == b).all() for a, b in zip(parts, Participants(scenario).partitions, strict=True)
    )
    labels = fetch.read_labels(scenario.dataset.params.root, "fashion_mnist")
    most = most_records_per_round(labels, scenario)
    assert 0 < most <= most_records_per_round(labels, iid.scenario)
    _draw_every_round(scenario, most)
    with pytest.raises(ValueError, match="larger sample than population"):
        _draw_every_round(scenario, most + 1)


@pytest.mark.slow
def test_a_dirichlet_run_reports_each_participants_classes(tmp_path):
    folder = run(tmp_path / "runs", *DIRICHLET, "role.records_per_round=64")
    m = metrics(folder)["participants"]
    assert m["partitioner"]["name"] == "dirichlet" and m["partitioner"]["alpha"] == 0.3
    assert len(m["classes"]) == 10 and set(m["class_counts"]) == {"0", "1"}
    people = Participants(
        load_scenario(SCENARIO, [*SMALL, *DIRICHLET, "role.records_per_round=64"])
    )
    assert [sum(row) for row in m["class_counts"].values()] == [len(p) for p in people.partitions]
    text = (folder / "report.md").read_text()
    assert "## The honest participants' training records per class (dirichlet: alpha 0.3" in text
