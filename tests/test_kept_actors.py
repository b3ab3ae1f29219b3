"""Ray actors kept from one run to the next (engine/kept_actors.py), on the test worker's shared
loopback head (conftest.py): a run served by an actor that served another role before gives the
numbers of a run with a fresh actor; a run on a Ray of its own, a run that ends with a busy
actor, and a comparison in the same process end the kept actors first."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import ray
import yaml
from conftest import run_scenario

from splitsim.cli import main
from splitsim.engine import kept_actors
from splitsim.engine.simulation import backend_config
from splitsim.scenario import Engine

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT / "scenarios" / "hidden_covid_app.yaml"
SMALL_COVID = ["dataset.train_records=500", "dataset.test_records=200", "training.epochs=1",
               "deployment.clients=2", "deployment.users=40"]  # fmt: skip
TINY_FL = ["deployment.clients=2", "role.rounds=4", "role.burn_in=1", "role.synthetic=2",
           "role.records_per_round=64", "role.aux_size=1000", "role.compare_alphas=[]",
           "role.projection=pca", "role.projection_points=100"]  # fmt: skip


def metrics(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["metrics"]


def kept_ids() -> list[str]:
    held = kept_actors._kept
    return [] if held is None else [a._actor_id.hex() for a in held.pool.pool]


def test_kept_only_on_a_cluster_when_asked(monkeypatch):
    monkeypatch.setenv("SPLITSIM_KEEP_ACTORS", "1")
    assert kept_actors.wanted(True, "1.42.0")
    assert not kept_actors.wanted(False, "1.42.0")  # a run's own Ray ends with the run
    assert not kept_actors.wanted(True, "1.43.0")  # a Flower version nobody checked
    monkeypatch.setenv("SPLITSIM_KEEP_ACTORS", "0")
    assert not kept_actors.wanted(True, "1.42.0")
    monkeypatch.delenv("SPLITSIM_KEEP_ACTORS")
    assert not kept_actors.wanted(True, "1.42.0")  # off unless asked


@pytest.mark.slow
def test_a_kept_actor_gives_the_numbers_of_a_fresh_one(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    monkeypatch.setenv("SPLITSIM_KEEP_ACTORS", "0")
    fresh = metrics(run_scenario(COVID, out, *SMALL_COVID))
    assert kept_actors.kept() == 0 and not ray.is_initialized()  # Flower's own ending

    monkeypatch.setenv("SPLITSIM_KEEP_ACTORS", "1")
    other_role = metrics(run_scenario(ROOT / "scenarios" / "fl_property_inference.yaml", out,
                                      *TINY_FL))  # fmt: skip
    assert other_role["attackers"][0]["scored_rounds"] == 3
    actors = kept_ids()
    assert len(actors) == 1 and ray.is_initialized()  # the shared head's one CPU
    kept = metrics(run_scenario(COVID, out, *SMALL_COVID))
    assert kept_ids() == actors  # the same actor served the Covid app after the other role
    assert kept == fresh

    # a Ray of its own: the kept actor and its connection end before the run starts its head
    own = metrics(run_scenario(COVID, out, *SMALL_COVID, "engine.ray_cpus=1"))
    assert own == fresh
    assert kept_actors.kept() == 0 and not ray.is_initialized()


@pytest.mark.slow
def test_a_busy_actor_is_not_handed_on():
    config = backend_config(Engine())
    backend = kept_actors.KeepingRayBackend(json.loads(json.dumps(config)))
    backend.build(lambda: None)
    assert backend.pool is not None and backend.pool.num_actors == 1
    backend.pool.pool.pop()  # as a message the server stopped waiting for holds it
    backend.terminate()
    assert kept_actors.kept() == 0 and not ray.is_initialized()


@pytest.mark.slow
def test_a_comparison_ends_the_kept_actors_first(tmp_path):
    """The comparison's cells ask the shared head for its one CPU, which a kept actor holds:
    without the release the comparison would wait for ever. Its one cell fails at once (a
    network no machine can hold, as in tests/test_compare_failure.py): what is checked is that
    it got the CPU to run on."""
    run_scenario(COVID, tmp_path / "runs", *SMALL_COVID)
    assert kept_actors.kept() == 1
    too_big = "models.official.hidden=[1, 10000000, 10000000]"
    spec = {
        "roles": [{"scenario": str(COVID), "set": [*SMALL_COVID, too_big]}],
        "defences": [{"label": "none", "use": []}],
        "attackers": ["non_adaptive"],
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(spec))
    codes: list[int] = []
    compare = threading.Thread(
        target=lambda: codes.append(main(["compare", str(path), "--out", str(tmp_path / "m")])),
        daemon=True,
    )
    compare.start()
    compare.join(timeout=300)
    assert not compare.is_alive(), "the comparison waited for the kept actor's CPU"
    assert codes == [1] and kept_actors.kept() == 0  # 1: a cell failed, and was recorded
    (record,) = (tmp_path / "m" / "cells").glob("*.failed.json")
    assert "allocate" in json.loads(record.read_text())["error"]
