"""The run folder: staged under a hidden name, published by one atomic rename when complete.

``runs/<scenario>/.<timestamp>.partial/`` while running; ``runs/<scenario>/<timestamp>/`` when
every file is written; ``runs/<scenario>/<timestamp>.failed/`` (with ``error.txt``) when it
stopped on an error. A folder without a suffix is always a finished result.

A run that was killed (``kill -9``, a lost machine) leaves its ``.partial`` folder, with the
key of what it computes (the resolved scenario and a digest of the package code) and what it
had finished under ``.resume/``. The same command again finds that folder, takes its lock
(a folder whose run is still alive is locked, and left alone) and carries on from there: a
role's finished deployment is read back rather than run again, and split training restarts at
its last finished round.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from splitsim.scenario import Scenario, dump_yaml


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("splitsim", "torch", "flwr", "ray", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _clean(value: Any) -> Any:
    """JSON has no NaN: an undefined metric (e.g. AUC of one class) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` so that a reader sees the old file or the new one, never part of one:
    a temp file of a unique name in the same folder, flushed to disk, then renamed over it.
    Two writers never share a temp file, and the last rename wins."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone who may read them
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable (not every filesystem can)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the package's code: work computed by other code is computed again."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")


@dataclass
class Run:
    """A run in progress: its staging folder, console and progress bars."""

    scenario: Scenario
    folder: Path
    console: Console
    progress: Progress
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    resumed: bool = False  # carrying on in an interrupted run's folder

    @property
    def checkpoints(self) -> Path:
        """Where this run keeps what a resumed run needs; removed when it ends."""
        folder = self.folder / RESUME
        folder.mkdir(exist_ok=True)
        return folder

    @contextmanager
    def phase(self, name: str, total: int | None, timed: bool = True) -> Iterator[Any]:
        """A progress bar for one phase; yields ``advance(n=1)``; records the phase's time
        unless ``timed`` is false (bars that run side by side are timed by their caller)."""
        task = self.progress.add_task(name, total=total)
        start = time.perf_counter()

        def advance(_: object = None, n: int = 1) -> None:
            self.progress.advance(task, n)

        try:
            yield advance
        finally:
            if timed:
                self.timings[name] = round(time.perf_counter() - start, 3)
            self.progress.update(
                task, completed=total if total is not None else 1, total=total or 1
            )


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


RESUME = ".resume"
KEY = "run.key"
LOCK = ".lock"


def run_key(scenario: Scenario) -> str:
    """What a run computes: its resolved scenario and the code that computes it."""
    # where its scalars are tracked does not change what a run computes: adding a tracker
    # to an interrupted run or a finished comparison redoes nothing
    resolved = {k: v for k, v in scenario.resolved().items() if k != "tracking"}
    text = json.dumps(resolved, sort_keys=True) + code_digest()
    return hashlib.sha256(text.encode()).hexdigest()


def _lock(folder: Path) -> int | None:
    """An exclusive lock on ``folder``'s run, or None while another process holds it. The
    kernel drops a dead process's lock, so a killed run's folder can be taken over."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _interrupted(root: Path, key: str) -> tuple[Path, int] | None:
    """The newest unfinished run of this key whose process is gone, locked for us."""
    for folder in sorted(root.glob(".*.partial"), reverse=True):
        marker = folder / RESUME / KEY
        try:
            if marker.read_text().strip() != key:
                continue
        except OSError:
            continue
        fd = _lock(folder)
        if fd is not None:
            return folder, fd
    return None


def _new_staging(root: Path) -> tuple[Path, str]:
    stamp = _stamp()
    suffix = 0
    while True:
        staging = root / f".{stamp}.partial"
        taken = any((root / f"{stamp}{tail}").exists() for tail in ("", ".failed"))
        if not taken:
            try:
                staging.mkdir()  # atomic: two processes never share a staging folder
                return staging, stamp
            except FileExistsError:
                pass
        suffix += 1
        stamp = f"{_stamp()}-{suffix}"


@contextmanager
def open_run(
    scenario: Scenario,
    console: Console,
    base: Path | None = None,
    root: Path | None = None,
    resumable: bool = True,
) -> Iterator[Run]:
    """Stage a run folder in ``<base or output_dir>/<scenario name>/``, or in ``root``; carry
    on in an interrupted run of the same scenario and code where there is one."""
    root = root if root is not None else Path(base or scenario.output_dir) / scenario.name
    root.mkdir(parents=True, exist_ok=True)
    key = run_key(scenario)
    found = _interrupted(root, key) if resumable else None
    if found is not None:
        staging, fd = found
        stamp = staging.name.removeprefix(".").removesuffix(".partial")
        console.print(f"resuming the interrupted run {staging.name} (same scenario and code)")
    else:
        staging, stamp = _new_staging(root)
        fd = _lock(staging)
        (staging / RESUME).mkdir()
        write_atomic(staging / RESUME / KEY, key + "\n")
        resolved = {**scenario.resolved(), "versions": versions()}
        write_atomic(staging / "scenario.yaml", dump_yaml(resolved))
    progress = Progress(
        TextColumn("[bold]{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    run = Run(scenario=scenario, folder=staging, console=console, progress=progress)
    run.resumed = found is not None
    try:
        try:
            with progress:
                yield run
        except KeyboardInterrupt:
            # Ctrl-C is an interruption, not a failure: the folder stays, for the same
            # command to carry on in.
            console.print(f"interrupted: run the same command again to carry on in {staging}")
            raise
        except BaseException as err:
            (staging / "error.txt").write_text("".join(traceback.format_exception(err)))
            _tidy(staging)
            os.replace(staging, root / f"{stamp}.failed")
            raise
        _tidy(staging)
        final = root / stamp
        os.replace(staging, final)
        run.folder = final
    finally:
        if fd is not None:
            os.close(fd)


def _tidy(staging: Path) -> None:
    """What only a resumed run needs (checkpoints, the owners' snapshots, the lock) goes."""
    shutil.rmtree(staging / RESUME, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (staging / LOCK).unlink()
