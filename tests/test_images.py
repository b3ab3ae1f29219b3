"""Image datasets: CIFAR-10's real loader on generated files; Fashion-MNIST end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.data import fetch
from splitsim.data.images import CIFAR10
from splitsim.engine.wire import read
from splitsim.scenario import Tasks

ROOT = Path(__file__).resolve().parents[1]


def write_fake_cifar(root: Path, per_batch: int = 20) -> None:
    """Files in the layout and pickle format of CIFAR-10's python version, random pixels
    (the real files are Python 2 pickles whose keys read back as str under latin1)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, per_batch)),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]}  # fmt: skip
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_cifar10_reads_torchvision_files(tmp_path):
    write_fake_cifar(tmp_path)
    params = CIFAR10.Params(root=str(tmp_path))
    assert CIFAR10.check_available(params) is None
    ds = CIFAR10(params, seed=0, task_cfg=Tasks(official="F2", secret="L8"))
    train, test = ds.supplier_train(), ds.supplier_test()
    assert train.x.shape == (100, 3, 32, 32) and test.x.shape == (20, 3, 32, 32)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert set(np.unique(train.official)) <= {0, 1, 2}
    assert ds.spec.official.names == ("airplane", "automobile", "other")
    part = ds.partition(1, 2, 10)
    assert len(part) == 5


HAVE_FMNIST = fetch.from_local_sources(ROOT / "data", "fashion_mnist")


@pytest.mark.skipif(not HAVE_FMNIST, reason="run `python -m splitsim fetch fashion_mnist` first")
def test_fashion_mnist_through_flower(tmp_path):
    out = tmp_path / "runs"
    code = main(
        [
            "run", str(ROOT / "scenarios" / "hidden_fmnist.yaml"),
            "--set", f"dataset.root={ROOT / 'data'}",
            "--set", "dataset.train_limit=3000",
            "--set", "training.epochs=3",
            "--set", "deployment.clients=2",
            "--set", "deployment.users=100",
            "--set", "role.robustness.sigmas=[0, 0.3]",
            "--set", "role.robustness.injections=3",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    (results_path,) = out.rglob("results.json")
    m = json.loads(results_path.read_text())["metrics"]
    # C2 official task: the LeNet-like net learns it even on 3,000 images in 3 epochs
    assert m["regimes"]["official"]["honest"]["accuracy"] > 0.8
    assert m["regimes"]["secrets"]["C10"]["chance"] == pytest.approx(0.1, abs=0.01)
    assert m["deployment"]["users"] == 100
    # Table 2's trend: strong weight noise lowers the official and the secret accuracy together
    rows = m["robustness"]["C10"]
    assert rows[1]["official_mean"] < rows[0]["official_mean"]
    assert rows[1]["secret_mean"] < rows[0]["secret_mean"]
    assert rows[0]["official_std"] == 0.0  # sigma 0: every injection is the same network
    lines = read(results_path.parent / "wire.jsonl")
    collect = [x for x in lines if x["phase"] == "collect" and x["sender"] != "server"]
    for line in collect:
        payload = {r["name"]: r for r in line["records"]}
        assert set(payload["payload"]["entries"]) == {"scores"}
        assert payload["payload"]["entries"]["scores"]["shape"] == [50, 2]
    assert (results_path.parent / "robustness.png").stat().st_size > 0
