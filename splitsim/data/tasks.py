"""The hidden-learning paper's task family on 10-class images (papers/001, section 4.1).

    C10  the original 10 classes
    C2   first five classes vs last five
    C5   pairs (0, 5), (1, 6), (2, 7), (3, 8), (4, 9): no pair lies inside one C2 class
    Fn   the first n classes, plus one class for all the others   (n = 1..9)
    Ln   the last n classes, plus one class for all the others    (n = 1..9)

Fn and Ln are unbalanced: the extra class holds 10 - n tenths of the data. The paper: "we divide
the loss by 10-n whenever the input belongs to, respectively, the first n or last n original
classes". ``loss_weights`` implements that sentence as written (``reweight: named``); the
sentence before it speaks of under-weighting the extra class, so ``reweight: extra`` divides the
extra class's loss by 10 - n instead, and ``none`` turns it off.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

TASK_PATTERN = re.compile(r"^(C2|C5|C10|[FL][1-9])$")
ALLOWED = "C2, C5, C10, F1..F9, L1..L9"
Reweight = Literal["named", "extra", "none"]


def check(name: str) -> str:
    if not TASK_PATTERN.match(name):
        raise ValueError(f"{name!r} is not a task; allowed: {ALLOWED}")
    return name


def num_classes(name: str) -> int:
    check(name)
    if name in ("C2", "C5", "C10"):
        return int(name[1:])
    return int(name[1:]) + 1


def relabel(name: str, labels: np.ndarray) -> np.ndarray:
    """Original class index 0..9 -> class index of task ``name``."""
    check(name)
    labels = np.asarray(labels, dtype=np.int64)
    if name == "C10":
        return labels
    if name == "C2":
        return (labels >= 5).astype(np.int64)
    if name == "C5":
        return labels % 5
    n = int(name[1:])
    if name[0] == "F":
        return np.where(labels < n, labels, n)
    first = 10 - n
    return np.where(labels >= first, labels - first, n)


def named_mask(name: str, labels: np.ndarray) -> np.ndarray | None:
    """For Fn / Ln: which inputs belong to the n named original classes; None otherwise."""
    if name[0] not in "FL":
        return None
    n = int(name[1:])
    return labels < n if name[0] == "F" else labels >= 10 - n


def loss_weights(name: str, labels: np.ndarray, reweight: Reweight = "named") -> np.ndarray:
    """Per-input loss weight for task ``name`` (1 everywhere but for Fn / Ln, see above)."""
    weights = np.ones(len(labels), dtype=np.float32)
    mask = named_mask(name, np.asarray(labels))
    if mask is None or reweight == "none":
        return weights
    n = int(name[1:])
    chosen = mask if reweight == "named" else ~mask
    weights[chosen] = 1.0 / (10 - n)
    return weights


def class_names(name: str, original: tuple[str, ...]) -> tuple[str, ...]:
    """Readable class names of task ``name`` given the ten original names."""
    check(name)
    if name == "C10":
        return original
    if name == "C2":
        return (" or ".join(original[:5]), " or ".join(original[5:]))
    if name == "C5":
        return tuple(f"{original[i]} or {original[i + 5]}" for i in range(5))
    n = int(name[1:])
    named = original[:n] if name[0] == "F" else original[10 - n :]
    return (*named, "other")
