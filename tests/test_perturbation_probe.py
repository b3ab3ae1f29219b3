"""The perturbation-probing adversary on real MNIST through the real Flower simulation, small
enough for CI: the search against a known boundary, the defences' contracts, then one run with
every defence that checks what crossed the wire and what the table reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.defences.query_budget import QueryBudget
from splitsim.defences.randomised_response import RandomisedResponse
from splitsim.engine.wire import read
from splitsim.roles.perturbation_probe.attack import (
    CHANGED,
    REFUSED,
    SAME,
    Plan,
    directions,
    majority,
    plan,
    search,
)
from splitsim.roles.perturbation_probe.protocol import served_network

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "role.directions=[random, centroid]",
    "role.num_directions=40",
    "role.aux_size=600",
    "role.decoder_epochs=8",
    "role.max_steps=20",
    "deployment.clients=2",
    "deployment.users=60",
    "defences=[{name: query_budget, queries: 200}, {name: randomised_response, p: 0.1}]",
]


def test_search_finds_each_directions_threshold():
    # A toy oracle whose class changes once eps passes a known threshold per direction.
    thresholds = np.array([[0.7, 3.0, 100.0], [12.5, 1.0, 5.0]])

    def oracle(idx, dirs, eps):
        return np.where(eps >= thresholds[idx, dirs], CHANGED, SAME).astype(np.uint8)

    sig = search(oracle, 2, 3, eps_start=2.0, eps_max=64.0, tolerance=0.01, max_steps=50)
    assert sig.flipped.tolist() == [[True, True, False], [True, True, True]]
    found = np.where(sig.flipped, sig.eps, np.nan)
    expected = np.where(thresholds < 64, thresholds, np.nan)
    np.testing.assert_allclose(found, expected, rtol=0.011)
    assert sig.eps[0, 2] == 64.0  # never flips: recorded at eps_max
    assert sig.steps < 20 and sig.queries.sum() < 2 * 3 * 20

    def refusing(idx, dirs, eps):
        return np.full(len(idx), REFUSED, dtype=np.uint8)

    cut = search(refusing, 2, 3, eps_start=2.0, eps_max=64.0, tolerance=0.01, max_steps=50)
    assert cut.refused.all() and cut.steps == 1


def test_directions_are_unit_norm_and_kinds_differ():
    rng = np.random.default_rng(0)
    x = rng.random((200, 1, 28, 28)).astype(np.float32)
    y = np.repeat(np.arange(10), 20)
    r = directions("random", 30, (1, 28, 28), 0)
    c = directions("centroid", 30, (1, 28, 28), 0, None, x, y)
    np.testing.assert_allclose(np.linalg.norm(r.reshape(30, -1), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(c.reshape(30, -1), axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(r, c)


def test_budget_and_randomised_response():
    budget = QueryBudget(QueryBudget.Params(queries=2))
    spent = np.array([0, 1, 0])
    ok = budget.allowed(spent, np.array([0, 1, 0, 2, 0, 1, 2]))
    assert ok.tolist() == [True, True, True, True, False, False, True]
    assert spent.tolist() == [2, 2, 2]
    bits = np.zeros(100_000, dtype=np.uint8)
    flipped = RandomisedResponse(RandomisedResponse.Params(p=0.1)).apply(
        bits, np.random.default_rng(0)
    )
    assert abs(flipped.mean() - 0.1) < 0.005


def noisy_threshold_oracle(thresholds, p, budget=None, seed=0):
    """The toy oracle of the first test behind the owners' real randomised response (and
    query budget): what the adaptive prober faces, without a model."""
    rr = RandomisedResponse(RandomisedResponse.Params(p=p))
    cap = QueryBudget(QueryBudget.Params(queries=budget)) if budget else None
    spent = np.zeros(len(thresholds), dtype=np.int64)
    rng = np.random.default_rng(seed)

    def oracle(idx, dirs, eps):
        bits = np.full(len(idx), REFUSED, dtype=np.uint8)
        ok = cap.allowed(spent, idx) if cap else np.ones(len(idx), dtype=bool)
        truth = np.where(eps[ok] >= thresholds[idx[ok], dirs[ok]], CHANGED, SAME)
        bits[ok] = rr.apply(truth.astype(np.uint8), rng)
        return bits

    return oracle, spent


def test_votes_undo_randomised_response_and_every_copy_is_a_query():
    rng = np.random.default_rng(1)
    thresholds = rng.uniform(3.0, 30.0, size=(100, 20))
    args = {"eps_start": 2.0, "eps_max": 64.0, "tolerance": 0.05, "max_steps": 60}

    def within(sig):  # share of directions whose eps is within the search's tolerance
        return float((np.abs(sig.eps - thresholds) <= 0.06 * thresholds).mean())

    oracle, _ = noisy_threshold_oracle(thresholds, 0.1)
    once = search(oracle, 100, 20, **args)
    oracle, _ = noisy_threshold_oracle(thresholds, 0.1)
    voted = search(oracle, 100, 20, votes=5, **args)
    clean = search(noisy_threshold_oracle(thresholds, 0.0)[0], 100, 20, **args)
    # one query in ten flipped: about 9 bits a direction, most directions end up off
    assert within(clean) == 1.0 and within(once) < 0.6
    # five votes: a bit is wrong 0.86 % of the time, about 8 % of the directions
    assert within(voted) > 0.85
    np.testing.assert_array_equal(voted.queries, 5 * (voted.queries // 5))
    assert abs(voted.queries.mean() / clean.queries.mean() - 5) < 0.5
    # the copies count against the owners' budget, and a vote cut by it is a refusal
    oracle, spent = noisy_threshold_oracle(thresholds, 0.1, budget=301)
    cut = search(oracle, 100, 20, votes=5, **args)
    assert spent.max() == 301 and cut.refused.any()
    assert majority(np.array([[1, 1, 0], [0, 1, 0], [1, 1, REFUSED]])).tolist() == [
        CHANGED, SAME, REFUSED
    ]  # fmt: skip


def test_adaptive_plan_follows_the_defences():
    def rr(p):
        return RandomisedResponse(RandomisedResponse.Params(p=p))

    def budget(q):
        return QueryBudget(QueryBudget.Params(queries=q))

    assert plan([], 100, 9.0) == Plan(1, 100)
    assert plan([rr(0.1)], 100, 9.0) == Plan(5, 100)  # majority wrong 0.86 % <= 1 %
    assert plan([rr(0.05)], 100, 9.0) == Plan(3, 100)
    assert plan([budget(500)], 100, 9.0) == Plan(1, 100)  # no flips: cut, never voted
    # the shipped scenario's budget: room for three votes on every direction, not five
    assert plan([budget(3000), rr(0.05)], 100, 9.0) == Plan(3, 100)
    assert plan([budget(3000), rr(0.1)], 100, 9.0) == Plan(5, 66)
    # a tight one: the votes stay, the directions go (on MNIST 5 x 10: 82.0 %, 1 x 54: 36.0 %)
    assert plan([budget(500), rr(0.1)], 100, 9.0) == Plan(5, 11)
    assert plan([budget(60), rr(0.1)], 100, 9.0) == Plan(3, 2)  # not even 2 at five votes
    assert plan([budget(500), rr(0.1)], 100, 9.0, votes=7) == Plan(7, 7)


def test_the_served_model_does_not_depend_on_what_ran_before_it(tmp_path):
    # Its cache keeps whichever process trained it first, so two processes must train the
    # same network whatever they did before and whatever their torch threads.
    import torch

    from splitsim.roles.perturbation_probe.role import served_model
    from splitsim.scenario import load_scenario

    scenario = load_scenario(ROOT / "scenarios" / "mnist_probe.yaml")
    rng = np.random.default_rng(0)
    x = rng.random((256, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    trained = []
    threads = torch.get_num_threads()
    try:
        for k, n in enumerate([1, 2]):
            torch.manual_seed(k)  # another history of the global generator
            torch.set_num_threads(n)
            model = served_model(lambda: served_network(scenario), x, y, str(tmp_path / str(k)),
                                 seed=0, epochs=1, advance=lambda n=1: None)  # fmt: skip
            trained.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])


def probe(out: Path, *extra: str) -> Path:
    before = set(out.rglob("results.json")) if out.exists() else set()
    args = ["run", str(ROOT / "scenarios" / "mnist_probe.yaml"), "--out", str(out)]
    for expr in [*SMALL, *extra]:
        args += ["--set", expr]
    assert main(args) == 0
    (results,) = set(out.rglob("results.json")) - before
    return results.parent


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("probe") / "runs")


@pytest.mark.slow
def test_same_seed_same_signatures_and_numbers(probe_run, tmp_path):
    # Only the random kind this time: its sessions must come out exactly the same, though
    # owner 1 fails its second search step once and the query is sent again
    # (engine.on_client_failure: retry).
    fault = "engine.faults=[{partition: 1, rounds: [2], phase: probe}]"
    again = probe(tmp_path / "runs", "role.directions=[random]", fault,
                  "engine.on_client_failure=retry")  # fmt: skip
    first = json.loads((probe_run / "results.json").read_text())["metrics"]
    second = json.loads((again / "results.json").read_text())["metrics"]
    assert second["sessions"] == [r for r in first["sessions"] if r["directions"] == "random"]
    (failure,) = second["failures"]
    assert (failure["phase"], failure["action"]) == ("probe", "retried")
    assert "participant 1 failed in round 2" in failure["error"] and first["failures"] == []


@pytest.mark.slow
def test_only_bits_leave_the_data_owners(probe_run):
    lines = read(probe_run / "wire.jsonl")
    sent = {
        (rec["name"], key, entry.get("dtype"))
        for line in lines
        if line["sender"] != "server"
        for rec in line["records"]
        for key, entry in rec["entries"].items()
    }
    assert sent <= {
        ("bits", "bits", "uint8"),
        ("meta", "partition", None),
        ("meta", "inputs", None),
    }
    probes = [line for line in lines if line["phase"] == "probe" and line["sender"] == "server"]
    # a signature costs a handful of round trips, not one per query
    steps_per_session = len(probes) / (2 * 6)  # 2 owners; random x 4 settings, centroid x 2
    assert steps_per_session <= 20


@pytest.mark.slow
def test_report_table_and_numbers(probe_run):
    m = json.loads((probe_run / "results.json").read_text())["metrics"]
    table = {(r["directions"], r["defences"]): r for r in m["sessions"]}
    assert len(table) == 4 + 2  # random: configured, none, each alone; centroid: two
    clean = table[("random", "none")]
    assert clean["reference_accuracy"] > m["chance"] + 0.2  # small attacker, still informative
    assert clean["refused"] == 0.0 and clean["served_accuracy"] > 0.9
    budgeted = table[("random", "query_budget(queries=200)")]
    assert budgeted["queries_max"] <= 200 * 1.0 + 40 and budgeted["refused"] > 0
    both = table[("random", "query_budget(queries=200) + randomised_response(p=0.1)")]
    assert both["ssim"] < clean["ssim"]
    # randomised response's budget: ln((1 - p) / p) per answer, over the most-probed input's
    (rr,) = both["privacy"]  # the query budget makes no differential-privacy claim
    assert rr["epsilon_per_release"] == pytest.approx(np.log(0.9 / 0.1))
    assert rr["releases"] == both["queries_max"]
    assert rr["epsilon"] == pytest.approx(both["queries_max"] * np.log(9.0))
    assert clean["privacy"] == []
    assert "randomised_response on each input" in (probe_run / "report.md").read_text()
    assert m["served_model_test_accuracy"] > 0.95
    for name in ("reconstructions.png", "styles.png", "report.md"):
        assert (probe_run / name).stat().st_size > 1000


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("adaptive") / "runs", "role.directions=[random]",
                 "role.compare_defences=false", "role.adaptive=true",
                 "defences=[{name: randomised_response, p: 0.1}]")  # fmt: skip


@pytest.mark.slow
def test_voting_prober_beats_randomised_response(probe_run, adaptive_run):
    plain_m = json.loads((probe_run / "results.json").read_text())["metrics"]
    plain = {(r["directions"], r["defences"]): r for r in plain_m["sessions"]}
    plain = plain[("random", "randomised_response(p=0.1)")]
    m = json.loads((adaptive_run / "results.json").read_text())["metrics"]
    (voted,) = m["sessions"]
    assert m["adversary"]["adaptive"] and (voted["votes"], voted["directions_used"]) == (5, 40)
    # p = 0.1 stops the prober that asks once (measured 20.0 %, chance 15 %) ...
    assert plain["votes"] == 1 and plain["reference_accuracy"] < plain_m["chance"] + 0.15
    # ... not the one that asks five times (measured 70 %; 86.7 % without the defence)
    assert voted["reference_accuracy"] > plain["reference_accuracy"] + 0.25
    assert voted["reference_accuracy"] > m["chance"] + 0.3
    # every copy crossed the boundary in a message: the queries the owners were sent are
    # the queries reported, five times what the plain search sends
    sent = sum(
        rec["entries"]["input"]["shape"][0]
        for line in read(adaptive_run / "wire.jsonl")
        if line["phase"] == "probe" and line["sender"] == "server"
        for rec in line["records"]
        if rec["name"] == "queries"
    )
    assert sent == round(voted["queries_per_input"] * m["targets"])
    assert 4.5 < voted["queries_per_input"] / plain["queries_per_input"] < 5.5
    report = (adaptive_run / "report.md").read_text()
    assert "The prober is adaptive" in report and "| 5 x 40 |" in report


BAD = {
    "payload_defence": (
        {"defences": [{"name": "laplace", "scale": 0.1}]},
        "defences.0.name: 'laplace' acts on payload, which role perturbation_probe does not",
    ),
    "unknown_kind": ({"role.directions": ["random", "fgsm"]}, "role.directions.1: Input should"),
    "twice": ({"role.directions": ["random", "random"]}, "role.directions: each kind at most"),
    "aux_too_big": ({"role.aux_size": 20000}, "role.aux_size: at most 10000"),
    "wrong_dataset": ({"dataset.name": "fashion_mnist"}, "dataset.name: role perturbation_probe"),
    "flip_too_likely": (
        {"defences": [{"name": "randomised_response", "p": 0.7}]},
        "defences.0.p: Input should be less than or equal to 0.5",
    ),
    "zero_budget": (
        {"defences": [{"name": "query_budget", "queries": 0}]},
        "defences.0.queries: Input should be greater than or equal to 1",
    ),
    "start_above_cap": ({"role.eps_start": 100.0}, "role.eps_start: must not exceed eps_max"),
    "even_votes": ({"role.adaptive": True, "role.votes": 4}, "role.votes: must be odd"),
    "votes_not_adaptive": ({"role.votes": 3}, "role.votes: only the adaptive prober votes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_probe_scenario_gets_one_line_and_exit_2(case, tmp_path, capsys):
    import yaml

    changes, expected = BAD[case]
    data = yaml.safe_load((ROOT / "scenarios" / "mnist_probe.yaml").read_text())
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
    assert not out.exists()
