"""The Covid scenario through the real Flower simulation, small enough for CI.

Three runs share one module: two with the same seed (determinism) and one with defences on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.engine.wire import read

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--set",
    "dataset.train_records=6000",
    "--set",
    "dataset.test_records=2000",
    "--set",
    "training.epochs=10",
    "--set",
    "deployment.clients=4",
    "--set",
    "deployment.users=800",
]


def run(tmp: Path, *extra: str) -> Path:
    out = tmp / "runs"
    before = set(out.rglob("results.json")) if out.exists() else set()
    code = main(
        [
            "run",
            str(ROOT / "scenarios" / "hidden_covid_app.yaml"),
            *SMALL,
            *extra,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    (new,) = set(out.rglob("results.json")) - before
    return new.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("covid")
    first = run(tmp)
    second = run(tmp)
    defended = run(
        tmp, "--set", "defences=[{name: laplace, scale: 0.3}, {name: rounding, decimals: 1}]"
    )
    return first, second, defended


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_run_folder_has_every_artefact(runs):
    folder = runs[0]
    for name in (
        "scenario.yaml",
        "results.json",
        "metrics.csv",
        "report.md",
        "wire.jsonl",
        "secret_accuracy.png",
        "score_distribution.png",
        "received.npz",
    ):
        assert (folder / name).stat().st_size > 0, name
    assert not folder.name.endswith((".partial", ".failed"))
    assert "versions" in (folder / "scenario.yaml").read_text()


@pytest.mark.slow
def test_hidden_learning_leaks_through_flower(runs):
    m = results(runs[0])["metrics"]
    dep = m["deployment"]
    assert dep["users"] == 800 and dep["clients"] == 4 and dep["failures"] == []
    cv = m["regimes"]["secrets"]["cv_risk"]
    assert cv["to_and_ts"] >= cv["to_then_ts"] + 0.15
    # What the server decodes from real Flower replies matches the held-out estimate.
    assert dep["secrets"]["cv_risk"]["accuracy"] == pytest.approx(cv["to_and_ts"], abs=0.05)
    assert dep["secrets"]["cv_risk"]["accuracy"] > dep["secrets"]["cv_risk"]["chance"] + 0.3
    # Undefended scores are the network's own: official quality as on held-out users.
    assert dep["official"]["accuracy"] == pytest.approx(
        m["regimes"]["official"]["hidden"]["accuracy"], abs=0.04
    )


@pytest.mark.slow
def test_wire_log_shows_only_scores_and_region_leave_clients(runs):
    lines = read(runs[0] / "wire.jsonl")
    assert len(lines) == 4 * 4  # install + collect, there and back, per node
    from_clients = [line for line in lines if line["sender"] != "server"]
    assert {line["receiver"] for line in from_clients} == {"server"}
    collect = [line for line in from_clients if line["phase"] == "collect"]
    for line in collect:
        payload = {r["name"]: r for r in line["records"]}
        assert set(payload) == {"payload", "meta"}
        assert set(payload["payload"]["entries"]) == {"scores", "region"}
        assert payload["payload"]["entries"]["scores"]["shape"] == [200, 2]
        assert set(payload["meta"]["entries"]) == {"partition"}
    m = results(runs[0])["metrics"]["wire"]
    assert m["client_records"] == ["meta.partition", "payload.region", "payload.scores"]
    # the install reply is empty: a node acknowledges, it says nothing
    install = [line for line in from_clients if line["phase"] == "install"]
    assert len(install) == 4 and all(line["records"] == [] for line in install)
    assert m["bytes_from_clients"] == sum(line["bytes"] for line in from_clients)
    # what the server holds: the owners' scores and region, and its own networks, nothing else
    received = np.load(runs[0] / "received.npz", allow_pickle=False)
    from_owners = sorted(f for f in received.files if not f.startswith("networks/"))
    assert from_owners == ["partition", "scores", "side/region"]
    assert received["scores"].shape == (800, 2)


@pytest.mark.slow
def test_same_seed_same_metrics(runs):
    assert results(runs[0])["metrics"] == results(runs[1])["metrics"]


@pytest.mark.slow
def test_defences_cut_the_leak_and_cost_utility(runs):
    plain = results(runs[0])["metrics"]["deployment"]
    defended = results(runs[2])["metrics"]["deployment"]
    assert results(runs[2])["defences"][0] == {
        "name": "laplace",
        "scale": 0.3,
        "during_training": False,
        "clip": None,
    }
    cv_plain = plain["secrets"]["cv_risk"]["accuracy"]
    cv_def = defended["secrets"]["cv_risk"]["accuracy"]
    assert cv_def < cv_plain - 0.2
    assert defended["official"]["accuracy"] < plain["official"]["accuracy"]
    # rounding to one decimal: every score the server saw is on the 0.1 grid
    scores = np.load(runs[2] / "received.npz")["scores"]
    assert np.allclose(scores * 10, np.round(scores * 10), atol=1e-4)


@pytest.mark.slow
def test_audit_tells_the_shipped_hidden_model_from_the_honest_one(runs, tmp_path):
    """`python -m splitsim audit` on the run's own files (issue 27): the shipped N_o releases
    more about cv_risk than honest networks the auditor trains; the supplier's honest N_o does
    not. The auditor's records are a population sample no supplier trained on."""
    records = tmp_path / "records.csv"
    assert main(["sample", "covid_health_records", "--n", "1600", "--out", str(records)]) == 0
    verdicts = {}
    for which in ("shipped", "honest"):
        out = tmp_path / which
        code = main(["audit", str(runs[0] / f"{which}_model.pt"), "--arch", "health_mlp",
                     "--data", str(records), "--official", "severe,infected",
                     "--sensitive", "cv_risk", "--side", "region", "--features", "in_*",
                     "--references", "3",
                     "--reference-epochs", "15", "--out", str(out)])  # fmt: skip
        assert code == 0
        verdicts[which] = json.loads((out / "audit.json").read_text())
        assert (out / "report.md").read_text().count("cv_risk") >= 2
    shipped, honest = (verdicts[w]["sensitive"]["cv_risk"] for w in ("shipped", "honest"))
    assert shipped["verdict"] == "more" and shipped["interval"][0] > 0.1
    assert honest["verdict"] != "more"
    assert honest["interval"][0] < shipped["interval"][0] - 0.1
    # The hidden network's decoder reads the secret about as well as the supplier's own N_s.
    cv = results(runs[0])["metrics"]["regimes"]["secrets"]["cv_risk"]
    assert shipped["supplied"] == pytest.approx(cv["to_and_ts"], abs=0.08)
