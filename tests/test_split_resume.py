"""A split training killed with SIGKILL between rounds carries on from its last round.

Its own file so that pytest-xdist (``--dist loadfile``) runs it beside the split-learning
module's shared runs rather than after them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from splitsim.cli import main
from splitsim.engine.wire import read

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "mnist_inversion.yaml"


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


RESUME = [
    "dataset.train_limit=480",
    "training.epochs=2",
    "deployment.clients=2",
    "deployment.users=200",
    "role.aux_size=600",
    "role.val_size=200",
    "role.decoder_epochs=1",
    "role.training_targets=100",
    "role.dcor_samples=160",
]


@pytest.mark.slow
def test_a_killed_split_training_resumes_from_its_last_round(tmp_path, kill_run_when):
    """kill -9 of ``run`` after round 1 of 2, the same command again: it carries on in the
    same folder from round 2 (each owner restoring its own snapshot) and gives the metrics of
    an uninterrupted run; only the resumed run's second hello shows on the wire."""
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "splitsim", "run", str(SCENARIO), "--out", str(out)]
    for expr in RESUME:
        args += ["--set", expr]
    kill_run_when(args, out, "mnist_inversion/.*.partial/.resume/split-server.pt",
                  "its checkpoint of round 1", timeout_s=400, poll_s=0.2)  # fmt: skip
    (partial,) = out.glob("mnist_inversion/.*.partial")
    owners = sorted(p.name for p in (partial / ".resume" / "owners").iterdir())
    assert owners == ["node-0.round-1.bin", "node-1.round-1.bin"]
    assert main(args[3:]) == 0
    (resumed,) = out.glob("mnist_inversion/2*")
    assert resumed.name == partial.name.removeprefix(".").removesuffix(".partial")
    assert not (resumed / ".resume").exists() and not list(out.glob("mnist_inversion/.*"))
    again = tmp_path / "again"
    assert main([*args[3:5], "--out", str(again), *args[7:]]) == 0
    (plain,) = again.glob("mnist_inversion/2*")
    got, want = results(resumed)["metrics"], results(plain)["metrics"]
    assert got["training"].pop("resumed_after_rounds") == [1]
    assert want["training"].pop("resumed_after_rounds") == []
    # the resumed run said hello once more (node ids are new): one more round trip, and a
    # hello and its reply per owner on the wire
    assert got["training"].pop("round_trips") == want["training"].pop("round_trips") + 1
    assert got["wire"].pop("messages") == want["wire"].pop("messages") + 2 * 2
    assert got["wire"].pop("bytes_from_clients") > want["wire"].pop("bytes_from_clients")
    assert got["wire"].pop("bytes_to_clients") > want["wire"].pop("bytes_to_clients")
    assert got == want
    phases = [line["phase"] for line in read(resumed / "wire.jsonl")]
    assert phases.count("hello") == 2 * 2 * 2 and phases[-1] != "hello"
