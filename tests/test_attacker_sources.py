"""The attacker's own images: the paper's MNIST splits, a class-disjoint part, and EMNIST letters
read with torchvision's reader from files a user provides (generated here, same format)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from splitsim.data.mnist import ATTACKER_TRAIN, aux_images, emnist_available


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
    )


def test_emnist_letters_are_read_and_turned_upright(tmp_path):
    images = np.zeros((30, 28, 28), np.uint8)
    images[:, 0, 5] = 255  # EMNIST stores images transposed: this pixel belongs at (5, 0)
    write_idx(tmp_path / "EMNIST" / "raw", "emnist-letters-train", images, np.arange(30) % 26 + 1)
    assert emnist_available(str(tmp_path))
    aux = aux_images("emnist", str(tmp_path), 20, 5, None, seed=0)
    assert aux.x.shape == (20, 1, 28, 28) and aux.x_val.shape == (5, 1, 28, 28)
    assert np.all(aux.x[:, 0, 5, 0] == 1.0) and np.all(aux.x[:, 0, 0, 5] == 0.0)
    assert aux.names[0] == "a" and len(aux.names) == 26


def test_paper_split_and_class_disjoint_attacker():
    same = aux_images("same", "data", 250, 100, None, seed=0)
    assert same.x.shape == (250, 1, 28, 28) and same.x_val.shape == (100, 1, 28, 28)
    assert ATTACKER_TRAIN == (40_000, 45_000)
    disjoint = aux_images("disjoint_classes", "data", 1250, 100, [0, 1, 2], seed=0)
    assert len(disjoint.x) == 1250
    assert set(np.unique(disjoint.y)) == {0, 1, 2}
    foreign = aux_images("fashion_mnist", "data", 300, 50, None, seed=0)
    assert foreign.x.shape == (300, 1, 28, 28) and foreign.names[0] == "T-shirt/top"
