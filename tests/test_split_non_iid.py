"""Split training through Flower with non-IID owners: label shards, each owner's histogram in
the report, the server's sample counts as the owners announced them."""

from __future__ import annotations

import json

import pytest
from test_split_learning import SCENARIO, SMALL  # the same small split scenario

from splitsim.cli import main


@pytest.mark.slow
def test_shards_give_each_owner_few_digits_and_training_still_learns(tmp_path):
    out = tmp_path / "runs"
    args = ["run", str(SCENARIO), "--out", str(out)]
    # one decoder epoch: nothing here reads the attack's numbers (12 s less than SMALL's four)
    for expr in [*SMALL, "deployment.clients=4", "role.decoder_epochs=1",
                 "deployment.partitioner={name: shards, shards_per_owner: 2}"]:  # fmt: skip
        args += ["--set", expr]
    assert main(args) == 0
    (folder,) = (out / "mnist_inversion").glob("2*")
    m = json.loads((folder / "results.json").read_text())["metrics"]
    counts = m["training"]["owner_class_counts"]
    assert len(counts) == 4 and sum(map(sum, counts.values())) == 1600
    for row in counts.values():
        assert sum(n >= 0.05 * sum(row) for n in row) <= 4  # two label-sorted shards
    # what the owners announced in hello is what their shards hold
    assert {k: sum(v) for k, v in counts.items()} == m["training"]["train_samples"]
    assert m["utility"]["accuracy"] > m["utility"]["chance"] + 0.2
    report = (folder / "report.md").read_text()
    assert "training images per digit (shards: shards_per_owner 2)" in report
