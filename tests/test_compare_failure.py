"""``python -m splitsim compare`` with a cell that fails: it is recorded with its error and the
other cells finish. Its own file, beside tests/test_compare.py's module of runs, so that
pytest-xdist (``--dist loadfile``: a file stays on one worker) can run the two at once."""

from __future__ import annotations

import pytest
from test_compare import DEFENCES, HIDDEN, read_csv, write_matrix

from splitsim.cli import main


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_rest_finish(tmp_path):
    # A network no machine can hold: 10^7 x 10^7 weights are 400 TB, past any address space, so
    # the allocation fails at once whatever the memory overcommit policy. The scenario is valid.
    too_big = "models.official.hidden=[1, 10000000, 10000000]"
    broken = {**HIDDEN, "set": [*HIDDEN["set"], "training.epochs=2", too_big],
              "label": "hidden_learning (too big)"}  # fmt: skip
    fine = {**HIDDEN, "set": [*HIDDEN["set"], "training.epochs=2"]}
    path = write_matrix(tmp_path / "matrix.yaml", [fine, broken], DEFENCES[:1])
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out)]) == 1
    rows = read_csv(out / "matrix.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert rows[2]["note"].startswith("exit 1: RuntimeError") and "allocate" in rows[2]["note"]
