"""``python -m splitsim compare`` on a small matrix through the real engine: both roles, a
defence that applies to both, one that applies to neither (n/a cells with reasons, nothing run),
both attackers; then a comparison with a defence that applies to one role (weight noise) killed
with SIGKILL half-way and resumed, which must read finished cells back and end with the same
rows as an uninterrupted comparison. A failing cell: tests/test_compare_failure.py."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from splitsim.cli import main
from splitsim.matrix.score import defence_score, pareto_front, vflair_dcs

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = {
    "scenario": str(ROOT / "scenarios" / "hidden_covid_app.yaml"),
    "set": [
        "dataset.train_records=3000",
        "dataset.test_records=500",
        "training.epochs=6",
        "deployment.clients=2",
        "deployment.users=400",
        "role.adaptive_epochs=2",
    ],
}
INVERSION = {
    "scenario": str(ROOT / "scenarios" / "mnist_inversion.yaml"),
    "set": [
        "dataset.train_limit=1200",
        "training.epochs=1",
        "deployment.clients=2",
        "deployment.users=300",
        "role.aux_size=1000",
        "role.val_size=200",
        "role.decoder_epochs=4",
        "role.training_targets=64",
        "role.dcor_samples=96",
        "role.noise_sweep=[0.0]",
    ],
}
DEFENCES = [
    {"label": "none", "use": []},
    {"label": "laplace 1.0", "use": [{"name": "laplace", "scale": 1.0}]},
    # federated training only: n/a for both roles here, so it costs no run
    {"label": "dp-sgd", "use": [{"name": "dp_sgd", "noise_multiplier": 1.0}]},
]
WEIGHT_NOISE = {"label": "weight noise", "use": [{"name": "weight_noise", "sigma": 0.3}]}


def write_matrix(path: Path, roles: list[dict], defences: list[dict] = DEFENCES, **extra) -> Path:
    spec = {
        "description": "test matrix",
        "roles": roles,
        "defences": defences,
        "attackers": ["non_adaptive", "adaptive"],
        "seeds": [0],
    }
    path.write_text(yaml.safe_dump(spec | extra))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def without_wall_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    tracking = {"tensorboard": str(tmp / "tb")}
    path = write_matrix(tmp / "matrix.yaml", [HIDDEN, INVERSION], tracking=tracking)
    out = tmp / "out"
    assert main(["compare", str(path), "--out", str(out)]) == 0
    return out


def orphan_heads() -> list[str]:
    """Ray heads whose run has ended: a cell's own head is named after the cell's process
    (engine/local_ray.py), and ends with it (engine/head_guard.py)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or ())
        run = re.search(r"/tmp/splitsim-ray-(\d+)-", line)
        if run and not psutil.pid_exists(int(run.group(1))):
            found.append(line[:120])
    return found


def cell(rows: list[dict], role: str, defence: str, attacker: str) -> dict:
    (row,) = [
        r for r in rows if (r["role"], r["defence"], r["attacker"]) == (role, defence, attacker)
    ]
    return row


@pytest.mark.slow
def test_matrix_has_every_cell_with_n_a_reasons(matrix):
    rows = read_csv(matrix / "matrix.csv")
    assert len(rows) == 2 * 3 * 2
    na = [r for r in rows if r["status"] == "n/a"]
    assert {(r["role"], r["defence"]) for r in na} == {
        ("hidden_learning", "dp-sgd"),
        ("model_inversion", "dp-sgd"),
    }
    assert all("acts on training" in r["note"] and r["utility"] == "" for r in na)
    assert all(r["status"] == "ok" for r in rows if r["status"] != "n/a")
    # an adaptive attacker facing no defence is the plain attacker: one computation
    none = [r for r in rows if r["defence"] == "none"]
    assert len({r["cell"] for r in none}) == 2


@pytest.mark.slow
def test_defence_scores_and_leakage(matrix):
    rows = read_csv(matrix / "matrix.csv")
    for r in rows:
        if r["status"] == "ok":
            assert 0.0 <= float(r["defence_score"]) <= 1.0
    baseline = cell(rows, "model_inversion", "none", "non_adaptive")
    assert float(baseline["defence_score"]) == pytest.approx(1 - 0.5**0.5, abs=1e-6)
    ap = float(baseline["leakage"])  # VFLAIR's score of doing nothing: only the attack counts
    assert float(baseline["vflair_dcs"]) == pytest.approx(1 / (1 + (0.5 * ap**2) ** 0.5), rel=1e-3)
    assert float(baseline["leakage"]) > 0.6  # reconstructions are recognisable undefended
    noisy = cell(rows, "model_inversion", "laplace 1.0", "non_adaptive")
    assert float(noisy["leakage"]) < float(baseline["leakage"]) - 0.2
    assert float(noisy["leakage_removed"]) > 0.25  # 0.293 measured
    adaptive = cell(rows, "model_inversion", "laplace 1.0", "adaptive")
    assert float(adaptive["leakage"]) > float(noisy["leakage"])  # knowing the noise helps
    assert adaptive["utility"] == noisy["utility"]  # the owners' side is the same
    hidden = cell(rows, "hidden_learning", "none", "non_adaptive")
    assert float(hidden["leakage"]) > float(hidden["leakage_chance"]) + 0.1
    hidden_noisy = cell(rows, "hidden_learning", "laplace 1.0", "non_adaptive")
    assert float(hidden_noisy["leakage"]) < float(hidden["leakage"])
    # the paper's Laplace noise has no clipping bound, so no finite epsilon; none has none
    assert noisy["epsilon"] == hidden_noisy["epsilon"] == "inf" and baseline["epsilon"] == ""


@pytest.mark.slow
def test_every_computed_cell_is_a_tensorboard_run(matrix):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracked = {p.parent.name: p for p in (matrix.parent / "tb").glob("*/*")}
    computed = {r["cell"] for r in read_csv(matrix / "matrix.csv") if r["status"] == "ok"}
    assert len(computed) >= 4
    for ident in computed:
        record = json.loads((matrix / "cells" / f"{ident}.json").read_text())
        run = matrix / record["run_folder"]
        events = EventAccumulator(str(tracked.pop(run.parent.name)))
        events.Reload()
        total = json.loads((run / "results.json").read_text())["timing_s"]["total"]
        assert events.Scalars("timing_s/total")[0].value == pytest.approx(total)
    assert not tracked  # one TensorBoard run per computed cell, none of other cells


@pytest.mark.slow
def test_reports_are_self_contained(matrix):
    page = (matrix / "report.html").read_text()
    # heat map; per role, privacy-utility and leakage against epsilon (laplace: unbounded)
    assert page.count("data:image/png;base64,") == 5
    assert "n/a" in page and "http" not in page.replace("http-equiv", "")
    text = (matrix / "report.md").read_text()
    assert "## model_inversion" in text and "### adaptive attacker" in text
    for name in ("heatmap.png", "privacy_utility_hidden_learning.png",
                 "leakage_epsilon_model_inversion.png"):  # fmt: skip
        assert (matrix / name).stat().st_size > 10_000


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_matrix(matrix, tmp_path):
    # One cell at a time: the kill lands as the first (weight noise) finishes and the second
    # (no defence, in the reference matrix) has barely begun, so the resumed run redoes little.
    path = write_matrix(
        tmp_path / "matrix.yaml",
        [HIDDEN],
        [WEIGHT_NOISE, DEFENCES[0]],
        attackers=["non_adaptive"],
        workers=1,
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "splitsim", "compare", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((out / "cells").glob("*[0-9a-f].json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Ray notices its driver is gone, its workers exit, their cells die with them: give a
    # loaded machine half a minute for that chain.
    deadline = time.monotonic() + 30
    while True:
        orphans = subprocess.run(["pgrep", "-f", str(out / "cells")], capture_output=True)
        if not orphans.stdout.strip() and not orphan_heads():
            break
        assert time.monotonic() < deadline, "a cell or its Ray head outlived the comparison"
        time.sleep(1)
    finished = {p.stem for p in (out / "cells").glob("*[0-9a-f].json")}
    assert len(finished) == 1

    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    read_back = [line for line in resumed.stdout.splitlines() if line.startswith("read back")]
    assert len(read_back) == len(finished)
    for cell_id in finished:  # read back, not run again: still one run folder
        name = yaml.safe_load((out / "cells" / f"{cell_id}.yaml").read_text())["name"]
        assert len(list((out / "runs" / name).glob("2*"))) == 1
    plain_key = ("hidden_learning", "none", "non_adaptive")
    noisy, plain = without_wall_time(read_csv(out / "matrix.csv"))
    assert noisy["defence"] == "weight noise" and noisy["status"] == "ok"
    assert noisy["cell"] in finished  # the read-back cell
    assert 0.0 <= float(noisy["defence_score"]) <= 1.0
    # The cell the kill cut short, run again, is the uninterrupted comparison's cell.
    reference = cell(without_wall_time(read_csv(matrix / "matrix.csv")), *plain_key)
    assert plain == reference


def test_bad_matrix_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_matrix(tmp_path / "m.yaml", [HIDDEN], [{"label": "x", "use": []}])
    data = yaml.safe_load(path.read_text())
    cases = {
        "rolez": ({**data, "rolez": []}, "rolez: unknown field"),
        "no baseline": (
            {**data, "defences": [{"label": "l", "use": [{"name": "laplace", "scale": 1}]}]},
            "use: [] (no defence)",
        ),
        "bad defence": (
            {**data, "defences": [{"label": "x", "use": [{"name": "lapalce", "scale": 1}]}]},
            "defences.0.use.0.name: unknown defence 'lapalce'",
        ),
        "bad scale": (
            {
                **data,
                "defences": [
                    *data["defences"],
                    {"label": "l", "use": [{"name": "laplace", "scale": -1}]},
                ],
            },
            "defences.1.use.0.scale",
        ),  # fmt: skip
        "bad role file": ({**data, "roles": [{"scenario": "nope.yaml"}]}, "roles.0.scenario"),
        "bad role override": (
            {**data, "roles": [{**HIDDEN, "set": ["training.epochz=3"]}]},
            "training.epochz: unknown field",
        ),
        "one role twice, unnamed": (
            {**data, "roles": [HIDDEN, HIDDEN]},
            "roles.1.label: 'hidden_learning' names another entry too",
        ),
    }
    for name, (content, expected) in cases.items():
        path.write_text(yaml.safe_dump(content))
        assert main(["compare", str(path), "--out", str(tmp_path / "o")]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (name, err)
    assert not (tmp_path / "o").exists()


def test_defence_score_and_pareto_front():
    # removes half the advantage over chance, keeps all the utility
    s = defence_score(0.9, 0.9, 0.1, 0.55, 1.0, 0.1, beta=0.5)
    assert s["removed"] == pytest.approx(0.5) and s["kept"] == pytest.approx(1.0)
    assert s["score"] == pytest.approx(1 - (0.5 * 0.25) ** 0.5)
    assert defence_score(0.1, 0.9, 0.1, 0.1, 1.0, 0.1)["score"] == pytest.approx(1 - 0.5**0.5)
    assert defence_score(0.9, 0.9, 0.1, 0.1, 0.1, 0.1)["score"] is None  # nothing to remove
    # VFLAIR's cal_dcs by hand: AP 0.6, MP 0.8 against 0.9 undefended, beta 0.5
    assert vflair_dcs(0.6, 0.8, 0.9) == pytest.approx(1 / (1 + (0.5 * 0.36 + 0.5 * 0.01) ** 0.5))
    assert vflair_dcs(0.0, 0.95, 0.9) == 1.0  # nothing leaks, nothing lost
    points = [(0.9, 0.98), (0.5, 0.97), (0.6, 0.96), (0.1, 0.5), (0.1, 0.4)]
    assert pareto_front(points) == [3, 1, 0]


def test_shipped_matrix_covers_every_registered_role_and_defence():
    from splitsim.matrix.spec import expand, load_matrix
    from splitsim.registry import DEFENCES, ROLES

    help_text = subprocess.run(
        [sys.executable, "-m", "splitsim", "--help"], capture_output=True, text=True
    ).stdout
    assert "compare" in help_text
    path = ROOT / "scenarios" / "defence_matrix.yaml"
    matrix = load_matrix(path)
    cells = expand(matrix, path)
    assert {c.role for c in cells} == set(ROLES.names())
    used = {p.name for entry in matrix.defences for p in entry.use}
    assert used == set(DEFENCES.names())
    for name, role in ROLES.items():  # what a role needs to join the matrix
        assert callable(role.summary) and hasattr(role, "adaptive_override"), name
    assert all(c.reason for c in cells if c.scenario is None)


def test_a_cell_starts_a_ray_of_its_own_with_the_users_settings(monkeypatch):
    from splitsim.matrix.runner import _child_env

    monkeypatch.delenv("SPLITSIM_WARM_RAY", raising=False)
    env = _child_env(2, {"RAY_ADDRESS": "127.0.0.1:1", "RAY_DEDUP_LOGS": "0"})
    # its own warm head (engine/local_ray.py), as any run: not the comparison's cluster
    assert "SPLITSIM_WARM_RAY" not in env and env["OMP_NUM_THREADS"] == "2"
    assert "RAY_ADDRESS" not in env and env["RAY_DEDUP_LOGS"] == "0"
    monkeypatch.setenv("SPLITSIM_WARM_RAY", "0")
    assert _child_env(2, {})["SPLITSIM_WARM_RAY"] == "0"
