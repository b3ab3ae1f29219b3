"""Fashion-MNIST and CIFAR-10 for hidden learning on images (papers/001, section 4).

Both are read from ``dataset.root`` (default ``data``), the IDX files by ``fetch.read_unpacked``
and CIFAR-10 by torchvision's dataset class:
``<root>/FashionMNIST/raw`` (``python -m splitsim fetch fashion_mnist`` fills it offline) and
``<root>/cifar-10-batches-py`` (the "python version" archive from the CIFAR-10 site, unpacked;
not available offline here; each file's MD5 is checked against torchvision's list before it
is unpickled). ``download: true`` lets torchvision fetch either where there is internet. The
supplier trains on the training set (10 % held out for model selection, as in the paper); data
owners hold test images, split across Flower nodes.

torchvision is imported where a file is read, not with this module: importing it pulls in
``torch._dynamo`` (about 1.5 s), and every Flower client actor of a scenario that never reads
images (the Covid app's records) imports this module through the dataset registry.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from splitsim import seeds
from splitsim.data import fetch, tasks
from splitsim.data.score_data import DatasetSpec, OfficialTask, ScoreData, partition_sizes
from splitsim.registry import DATASETS

FASHION_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


CIFAR_FOLDER = "cifar-10-batches-py"
CHECKSUMS = "cifar10_md5.json"


def _cifar10_files() -> list[tuple[str, str]]:
    """CIFAR-10's files and MD5s as torchvision lists them: the one copy of the official sums."""
    from torchvision import datasets

    c = datasets.CIFAR10
    return [*map(tuple, c.train_list + c.test_list), (c.meta["filename"], c.meta["md5"])]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_checksums(path: Path) -> dict[str, Any]:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: every file is hashed again
        return {}
    return known if isinstance(known, dict) else {}


def cifar10_problem(root: str, record: bool) -> str | None:
    """Why ``<root>/cifar-10-batches-py`` is not CIFAR-10's python version, or None.

    The batch files are pickles, so each one's MD5 is compared with torchvision's before
    anything unpickles it: a pickle runs code as it loads. Hashing 170 MB on every validation
    (the driver's and each client actor's) is avoided by remembering a file's verified MD5
    under its (path, size, mtime) in ``<root>/splitsim-cache``; ``record`` writes that memory,
    which only the run's reader does: validation leaves the dataset root as it found it.
    """
    folder = Path(root) / CIFAR_FOLDER
    try:
        found = folder.is_dir()
    except (OSError, ValueError) as err:  # a name too long for the file system, a NUL in it
        return f"cannot read {root} ({getattr(err, 'strerror', None) or err})"
    if not found:
        return (
            f"CIFAR-10 not found in {folder}; unpack the python version of CIFAR-10 there "
            "or set dataset.download: true"
        )
    cache = Path(root) / "splitsim-cache" / CHECKSUMS
    known = _read_checksums(cache)
    verified: dict[str, Any] = {}
    for name, md5 in _cifar10_files():
        path = folder / name
        try:
            stat = path.stat()
            key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
            seen = known.get(key)
            if isinstance(seen, dict) and seen.get("stamp") == stamp and seen.get("md5") == md5:
                continue
            digest = _md5(path)
        except FileNotFoundError:
            return f"{name} is missing in {folder}; unpack the python version of CIFAR-10 there"
        except OSError as err:
            return f"cannot read {path} ({err.strerror})"
        if digest != md5:
            return (
                f"{path} is not CIFAR-10's {name} (MD5 {digest}, expected {md5}); "
                "unpack the python version of CIFAR-10 there again"
            )
        verified[key] = {"stamp": stamp, "md5": digest}
    if record and verified:
        from splitsim.runs import write_atomic

        # An optimisation only: a read-only root is verified again next time.
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, json.dumps({**known, **verified}, indent=1, sort_keys=True))
    return None


@functools.cache
def _cifar10_folder() -> type:
    """torchvision's CIFAR-10 reader, checking the files' MD5s through the cache above rather
    than hashing them in every process that reads them."""
    from torchvision import datasets

    class CIFAR10Folder(datasets.CIFAR10):
        def _check_integrity(self) -> bool:
            problem = cifar10_problem(str(self.root), record=True)
            if problem is not None:
                raise RuntimeError(f"dataset.root: {problem}")
            return True

    return CIFAR10Folder


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field("data", description="folder holding torchvision's dataset folders")
    download: bool = Field(False, description="let torchvision download (needs internet)")
    train_limit: int | None = Field(
        None, ge=100, description="use only this many training images (quick runs, tests)"
    )


class ImageDataset:
    """Shared by the image datasets: task relabelling, splits and deployment partitions."""

    Params = ImageParams
    classes: ClassVar[tuple[str, ...]]
    key: ClassVar[str]
    shape: ClassVar[tuple[int, ...]] = (1, 28, 28)

    @classmethod
    def input_shape(cls, params: ImageParams) -> tuple[int, ...]:
        return cls.shape

    @classmethod
    def describe(cls, params: ImageParams, task_cfg: Any) -> DatasetSpec:
        if task_cfg is None:
            raise ValueError(
                "tasks",
                f"{cls.key} needs tasks: {{official: ..., secret: ...}}; allowed: {tasks.ALLOWED}",
            )
        return DatasetSpec(
            official=OfficialTask(
                kind="multiclass",
                names=tasks.class_names(task_cfg.official, cls.classes),
                released=task_cfg.released,
            ),
            secret_classes={task_cfg.secret: tasks.class_names(task_cfg.secret, cls.classes)},
        )

    @classmethod
    def check_available(cls, params: ImageParams) -> tuple[str, str] | None:
        raise NotImplementedError

    @staticmethod
    def read(root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (n, C, H, W) and original labels, through torchvision's reader."""
        raise NotImplementedError

    @staticmethod
    def side_features(side_raw: dict[str, np.ndarray], n: int) -> np.ndarray:
        return np.zeros((n, 0), dtype=np.float32)

    def __init__(self, params: ImageParams, seed: int, task_cfg: Any) -> None:
        self.params = params
        self.seed = seed
        self.tasks = task_cfg
        self.spec = self.describe(params, task_cfg) if task_cfg is not None else None

    def _arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        return _load(type(self), self.params.root, self.params.download, train)

    def _score_data(self, x: np.ndarray, labels: np.ndarray) -> ScoreData:
        t = self.tasks
        return ScoreData(
            x=x,
            side=self.side_features({}, len(x)),
            side_raw={},
            official=tasks.relabel(t.official, labels),
            secrets={t.secret: tasks.relabel(t.secret, labels)},
            weights={
                "official": tasks.loss_weights(t.official, labels, t.reweight),
                t.secret: tasks.loss_weights(t.secret, labels, t.reweight),
            },
        )

    def supplier_train(self) -> ScoreData:
        x, y = self._arrays(train=True)
        if self.params.train_limit is not None and self.params.train_limit < len(x):
            keep = np.sort(
                seeds.rng(self.seed, "images.train_subset").permutation(len(x))[
                    : self.params.train_limit
                ]
            )
            x, y = x[keep], y[keep]
        return self._score_data(x, y)

    def supplier_test(self) -> ScoreData:
        return self._score_data(*self._arrays(train=False))

    def partition(self, pid: int, clients: int, users: int) -> ScoreData:
        """Node ``pid``'s share of the first ``users`` test images in a seeded order."""
        x, y = self._arrays(train=False)
        order = seeds.rng(self.seed, "images.deploy_order").permutation(len(x))[:users]
        sizes = partition_sizes(users, clients)
        start = sum(sizes[:pid])
        index = order[start : start + sizes[pid]]
        return self._score_data(x[index], y[index])


@functools.lru_cache(maxsize=4)
def _load(cls: type, root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (n, C, H, W) in [0, 1] and original labels; cached per process, since
    a Ray actor serves many nodes and the files are public (no data owner's state lives here)."""
    x, y = cls.read(root, download, train)
    return (x.astype(np.float32) / 255.0), y.astype(np.int64)


@DATASETS.register("fashion_mnist")
class FashionMNIST(ImageDataset):
    """Fashion-MNIST (60k/10k, 28x28 grey) with the paper's task splits; real files, offline."""

    classes = FASHION_CLASSES
    key = "fashion_mnist"

    @classmethod
    def check_available(cls, params: ImageParams) -> tuple[str, str] | None:
        if params.download:
            return None
        problem = fetch.problem(params.root, "fashion_mnist")
        return None if problem is None else ("dataset.root", problem)

    @staticmethod
    def read(root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
        if not download:
            fetch.from_local_sources(root, "fashion_mnist")
            return fetch.read_unpacked(root, "fashion_mnist", train)
        from torchvision import datasets

        ds = datasets.FashionMNIST(root, train=train, download=True)
        return ds.data.numpy()[:, None, :, :], ds.targets.numpy()


@DATASETS.register("cifar10")
class CIFAR10(ImageDataset):
    """CIFAR-10 (50k/10k, 32x32 colour) with the paper's task splits, from a folder you provide."""

    classes = CIFAR_CLASSES
    key = "cifar10"
    shape = (3, 32, 32)

    @classmethod
    def check_available(cls, params: ImageParams) -> tuple[str, str] | None:
        if params.download:  # torchvision checks the MD5s of what it downloads
            return None
        problem = cifar10_problem(params.root, record=False)
        return None if problem is None else ("dataset.root", problem)

    @staticmethod
    def read(root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
        from torchvision import datasets

        reader = datasets.CIFAR10 if download else _cifar10_folder()
        ds = reader(root, train=train, download=download)
        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets)
