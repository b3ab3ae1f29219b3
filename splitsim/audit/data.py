"""The auditor's labelled records: a CSV of records or a folder of labelled images.

A CSV row is one record. Its columns are the model's input features (every numeric column not
named below, in file order), the official labels the model was supplied for (``official``),
the sensitive attributes the auditor fears it releases (``sensitive``) and the fields that
leave the device in clear next to the scores (``side``, e.g. the Covid app's region).

An image folder holds image files and ``labels.csv``: a ``file`` column with each image's
name relative to the folder, and the label columns. Images are read as the splitsim image
datasets read them, float32 in [0, 1], shape (channels, height, width).

Official labels are what the model's outputs index: one column of class indices 0..k-1 (a
multiclass model), or several 0/1 columns (a multilabel model, one sigmoid per column).
Sensitive and side columns may hold any values; they are coded by their sorted distinct values.

    >>> data = AuditData.from_csv("records.csv", ["severe", "infected"], ["insurer"], ["region"])
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from splitsim.data.score_data import OfficialTask, ScoreData
from splitsim.errors import ScenarioError

LABELS_FILE = "labels.csv"
MAX_SIDE_CATEGORIES = 64  # a side column with more distinct values is read as a number
MIN_RECORDS = 200  # two halves, five folds: fewer leaves a decoder a few dozen records


@dataclass(frozen=True)
class AuditData:
    """What the auditor holds: inputs and every label of its own records."""

    x: np.ndarray  # (n, ...) float32, the model's input
    official: np.ndarray  # (n,) int class index, or (n, k) int 0/1
    kind: Literal["multilabel", "multiclass"]
    official_names: tuple[str, ...]
    sensitive: dict[str, np.ndarray]  # name -> (n,) int code
    classes: dict[str, tuple[str, ...]]  # name -> the value each code stands for
    side: np.ndarray  # (n, d) float32: side fields as a decoder reads them
    side_names: tuple[str, ...] = ()
    source: str = "<memory>"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def images(self) -> bool:
        return self.x.ndim == 4

    def subset(self, index: np.ndarray) -> AuditData:
        return AuditData(
            x=self.x[index],
            official=self.official[index],
            kind=self.kind,
            official_names=self.official_names,
            sensitive={k: v[index] for k, v in self.sensitive.items()},
            classes=self.classes,
            side=self.side[index],
            side_names=self.side_names,
            source=self.source,
        )

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def from_score_data(
        cls,
        data: ScoreData,
        task: OfficialTask,
        secrets: Sequence[str],
        classes: dict[str, Sequence[str]],
        source: str = "<memory>",
    ) -> AuditData:
        """Records of a splitsim dataset (``supplier_test()`` and the like) as audit data."""
        return cls(
            x=np.asarray(data.x, dtype=np.float32),
            official=np.asarray(data.official, dtype=np.int64),
            kind=task.kind,
            official_names=tuple(task.names),
            sensitive={s: np.asarray(data.secrets[s], dtype=np.int64) for s in secrets},
            classes={s: tuple(classes[s]) for s in secrets},
            side=np.asarray(data.side, dtype=np.float32),
            side_names=tuple(data.side_raw),
            source=source,
        )

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        official: Sequence[str],
        sensitive: Sequence[str],
        side: Sequence[str] = (),
        features: str | None = None,
    ) -> AuditData:
        """``features``: comma-separated columns, or ``prefix*``; default every column that is
        not official, sensitive or side."""
        source = str(path)
        header, rows = _read_table(Path(path), "--data")
        _check_columns(source, header, official, sensitive, side)
        named = set(official) | set(sensitive) | set(side)
        if features is None:
            chosen = [c for c in header if c not in named]
        elif features.endswith("*"):
            chosen = [c for c in header if c.startswith(features[:-1])]
        else:
            chosen = [c.strip() for c in features.split(",") if c.strip()]
            for c in chosen:
                if c not in header:
                    raise ScenarioError(source, f"--features {c}", "no such column")
        clash = [c for c in chosen if c in named]
        if clash:
            raise ScenarioError(source, f"--features {clash[0]}", "is also a label or side column")
        if not chosen:
            raise ScenarioError(source, "--features", "no feature columns for the model's input")
        features_ = chosen
        x = np.stack([_numbers(source, c, rows[c]) for c in features_], axis=1).astype(np.float32)
        return cls._build(source, x, rows, official, sensitive, side)

    @classmethod
    def from_image_folder(
        cls,
        folder: str | Path,
        official: Sequence[str],
        sensitive: Sequence[str],
        side: Sequence[str] = (),
    ) -> AuditData:
        from PIL import Image

        folder = Path(folder)
        source = str(folder / LABELS_FILE)
        header, rows = _read_table(folder / LABELS_FILE, "--data")
        if "file" not in header:
            raise ScenarioError(source, "file", "labels.csv needs a 'file' column: image names")
        _check_columns(source, header, official, sensitive, side)
        root = folder.resolve()
        images = []
        for i, name in enumerate(rows["file"]):
            path = (folder / name).resolve()
            if not path.is_relative_to(root):  # the auditor reads inside its folder only
                raise ScenarioError(source, f"file (row {i + 2})", f"{name!r} leaves {folder}")
            try:
                with Image.open(path) as img:
                    pixels = np.asarray(img, dtype=np.float32) / 255.0
            except (OSError, ValueError) as err:
                raise ScenarioError(source, f"file (row {i + 2})", f"{name!r}: {err}") from None
            images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ScenarioError(source, "file", f"images of different shapes: {sorted(shapes)}")
        return cls._build(source, np.stack(images), rows, official, sensitive, side)

    @classmethod
    def _build(
        cls,
        source: str,
        x: np.ndarray,
        rows: dict[str, list[str]],
        official: Sequence[str],
        sensitive: Sequence[str],
        side: Sequence[str],
    ) -> AuditData:
        n = len(x)
        if n < MIN_RECORDS:
            raise ScenarioError(
                source,
                "--data",
                f"{n} records; the audit needs at least "
                f"{MIN_RECORDS} (half train the reference, half are decoded)",
            )
        labels = np.stack([_integers(source, c, rows[c]) for c in official], axis=1)
        if len(official) > 1:
            kind: Literal["multilabel", "multiclass"] = "multilabel"
            bad = [c for j, c in enumerate(official) if not np.isin(labels[:, j], (0, 1)).all()]
            if bad:
                raise ScenarioError(
                    source,
                    f"--official {bad[0]}",
                    "several official columns make a multilabel task: 0 or 1 only",
                )
        else:
            kind, labels = "multiclass", labels[:, 0]
            if labels.min() < 0:
                raise ScenarioError(
                    source,
                    f"--official {official[0]}",
                    "class indices of the model's outputs: 0 or more",
                )
        codes, classes = {}, {}
        for name in sensitive:
            codes[name], classes[name] = _categories(rows[name])
            if len(classes[name]) < 2:
                raise ScenarioError(
                    source, f"--sensitive {name}", "has a single value: nothing to leak"
                )
        side_parts = [_side_column(source, c, rows[c]) for c in side]
        side_x = np.concatenate(side_parts, axis=1) if side_parts else np.zeros((n, 0))
        return cls(
            x=x,
            official=labels.astype(np.int64),
            kind=kind,
            official_names=tuple(official),
            sensitive=codes,
            classes=classes,
            side=side_x.astype(np.float32),
            side_names=tuple(side),
            source=source,
        )


def _read_table(path: Path, field: str) -> tuple[list[str], dict[str, list[str]]]:
    if not path.is_file():
        raise ScenarioError(str(path), field, "no such file")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ScenarioError(str(path), field, "empty file; the first line names the columns")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise ScenarioError(str(path), f"column {dupes[0]}", "appears twice in the header")
        columns: dict[str, list[str]] = {h: [] for h in header}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ScenarioError(
                    str(path), f"line {line}", f"{len(row)} values for {len(header)} columns"
                )
            for h, value in zip(header, row, strict=True):
                columns[h].append(value.strip())
    return header, columns


def _check_columns(
    source: str,
    header: list[str],
    official: Sequence[str],
    sensitive: Sequence[str],
    side: Sequence[str],
) -> None:
    if not official:
        raise ScenarioError(source, "--official", "name the official label column(s)")
    if not sensitive:
        raise ScenarioError(source, "--sensitive", "name at least one sensitive column")
    seen: dict[str, str] = {}
    for flag, names in (("--official", official), ("--sensitive", sensitive), ("--side", side)):
        for name in names:
            if name not in header:
                allowed = ", ".join(h for h in header if h != "file")
                raise ScenarioError(source, f"{flag} {name}", f"no such column; columns: {allowed}")
            if name in seen:
                raise ScenarioError(source, f"{flag} {name}", f"already given to {seen[name]}")
            seen[name] = flag


def _numbers(source: str, column: str, values: list[str]) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        bad = next(v for v in values if not _is_number(v))
        raise ScenarioError(
            source, f"column {column}", f"a feature must be a number, got {bad!r}"
        ) from None
    if not np.isfinite(out).all():
        raise ScenarioError(source, f"column {column}", "holds a value that is not finite")
    return out


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _integers(source: str, column: str, values: list[str]) -> np.ndarray:
    out = _numbers(source, column, values)
    if not np.all(out == np.round(out)):
        raise ScenarioError(source, f"--official {column}", "labels must be whole numbers")
    return out.astype(np.int64)


def _categories(values: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes by sorted distinct value: numerically when every value is a number."""
    distinct = set(values)
    if all(_is_number(v) for v in distinct):
        ordered = sorted(distinct, key=float)
    else:
        ordered = sorted(distinct)
    index = {v: i for i, v in enumerate(ordered)}
    return np.array([index[v] for v in values], dtype=np.int64), tuple(ordered)


def _side_column(source: str, column: str, values: list[str]) -> np.ndarray:
    """A categorical side field one-hot (the way splitsim's secret networks read a region), a
    numeric one with many values standardised."""
    distinct = set(values)
    numeric = all(_is_number(v) for v in distinct)
    if not numeric or len(distinct) <= MAX_SIDE_CATEGORIES:
        codes, classes = _categories(values)
        return np.eye(len(classes), dtype=np.float32)[codes]
    x = _numbers(source, column, values)
    spread = x.std() or 1.0
    return ((x - x.mean()) / spread)[:, None]


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference half and decoding half of the auditor's records (a fixed permutation)."""
    from splitsim import seeds

    order = seeds.rng(seed, "audit.halves").permutation(n)
    cut = math.ceil(n / 2)
    return np.sort(order[:cut]), np.sort(order[cut:])
