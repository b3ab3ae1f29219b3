"""Image datasets: CIFAR-10's real loader on generated files, its MD5 check against files that are
not CIFAR-10's; Fashion-MNIST end to end."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets

from splitsim.cli import main
from splitsim.data import fetch
from splitsim.data.images import CHECKSUMS, CIFAR10
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


def official(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make the generated files the official ones: the loader checks every file against
    torchvision's own MD5 lists, so those lists are what a generated folder must change."""
    folder = root / "cifar-10-batches-py"

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    for attr in ("train_list", "test_list"):
        names = [name for name, _ in getattr(datasets.CIFAR10, attr)]
        monkeypatch.setattr(datasets.CIFAR10, attr, [[n, md5(n)] for n in names])
    meta = {**datasets.CIFAR10.meta, "md5": md5("batches.meta")}
    monkeypatch.setattr(datasets.CIFAR10, "meta", meta)


def test_cifar10_reads_torchvision_files(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)
    official(monkeypatch, tmp_path)
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


class Planted:
    """Unpickling this creates ``path``: a batch file that runs code as it loads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def plant(root: Path, name: str = "data_batch_1") -> Path:
    """Replace one batch of a CIFAR-10 folder by a pickle with a side effect; its marker."""
    marker = root / "unpickled"
    (root / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(Planted(marker)))
    return marker


def test_cifar10_files_that_are_not_cifar10s_are_refused_unread(tmp_path, capsys):
    write_fake_cifar(tmp_path)  # torchvision's official MD5s: every generated file is wrong
    marker = plant(tmp_path)
    out = tmp_path / "r"
    code = main(["run", str(ROOT / "scenarios" / "hidden_fmnist.yaml"), "--out", str(out),
                 "--set", "dataset.name=cifar10", "--set", f"dataset.root={tmp_path}"])  # fmt: skip
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    folder = tmp_path / "cifar-10-batches-py"
    assert f"dataset.root: {folder / 'data_batch_1'} is not CIFAR-10's data_batch_1 (MD5 " in line
    assert "expected c99cafc152244af753f735de768cd75f" in line  # torchvision's
    assert not marker.exists() and not out.exists()
    assert not (tmp_path / "splitsim-cache").exists()
    # the reader a run uses refuses it too, before unpickling
    with pytest.raises(RuntimeError, match="is not CIFAR-10's data_batch_1"):
        CIFAR10.read(str(tmp_path), False, True)
    assert not marker.exists()


def test_cifar10_checksums_are_remembered_until_a_file_changes(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)
    official(monkeypatch, tmp_path)
    params = CIFAR10.Params(root=str(tmp_path))
    assert CIFAR10.check_available(params) is None
    cache = tmp_path / "splitsim-cache" / CHECKSUMS
    assert not cache.exists()  # validation writes nothing
    x, _ = CIFAR10.read(str(tmp_path), False, False)  # the run's reader verifies and records
    assert len(x) == 20
    remembered = json.loads(cache.read_text())
    assert len(remembered) == 7  # five training batches, the test batch, the class names
    # Same path, new content: the (size, mtime) key no longer matches and the file is hashed.
    marker = plant(tmp_path)
    problem = CIFAR10.check_available(params)
    assert problem is not None and "is not CIFAR-10's data_batch_1" in problem[1]
    with pytest.raises(RuntimeError, match="is not CIFAR-10's data_batch_1"):
        CIFAR10.read(str(tmp_path), False, True)
    assert not marker.exists()


HAVE_FMNIST = fetch.from_local_sources(ROOT / "data", "fashion_mnist")


@pytest.mark.slow
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


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_read_as_torchvision_reads_them(name, tmp_path):
    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    for train in (True, False):
        x, y = fetch.read_unpacked(ROOT / "data", name, train)
        theirs = cls(str(ROOT / "data"), train=train, download=False)
        assert np.array_equal(x[:, 0], theirs.data.numpy())
        assert np.array_equal(y, theirs.targets.numpy())
    # a truncated image file is refused, not read as fewer or shifted images
    raw = fetch.raw_folder(tmp_path, name)
    raw.mkdir(parents=True)
    for f in fetch.IDX_FILES:
        (raw / f).write_bytes((fetch.raw_folder(ROOT / "data", name) / f).read_bytes())
    (raw / fetch.IDX_FILES[2]).write_bytes((raw / fetch.IDX_FILES[2]).read_bytes()[:-1])
    with pytest.raises(ValueError, match="not an IDX image file"):
        fetch.read_unpacked(tmp_path, name, train=False)
