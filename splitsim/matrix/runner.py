"""Run a matrix's cells as Ray tasks, each a ``splitsim run`` of the cell's scenario in its own
process, and keep every finished cell so an interrupted comparison resumes.

Why a process per cell: a cell's Flower simulation starts its own Ray runtime and its own actors;
inside a Ray worker that would attach to (and, when it shuts down, tear down) the matrix's
runtime. In a child process with the cell's CPUs as its Ray's whole budget
(``engine.ray_cpus``) and the same number of torch threads, the cells never ask for more cores
than their Ray tasks hold, so the machine is not over-subscribed. A child dies with its task
(``PR_SET_PDEATHSIG``), so killing the comparison leaves no orphan behind.

A finished cell is written by its task, atomically, to ``cells/<id>.json`` before the driver
hears of it; a rerun reads those back and runs only the rest. A failed cell is recorded with its
error and tried again on the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from splitsim.defences.privacy import epsilon_text, headline_epsilon
from splitsim.engine.head_guard import on_parent_death
from splitsim.errors import ScenarioError
from splitsim.matrix.spec import Cell, Matrix
from splitsim.runs import write_atomic, write_json
from splitsim.scenario import dump_yaml


def _child_env(cpus: int, user_ray: dict[str, str]) -> dict[str, str]:
    """A Ray worker's environment points at the matrix's runtime, and the cell must start its
    own: Ray's variables are replaced by the user's own (their opt-outs and settings, captured
    in the driver), less the address of a cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({k: v for k, v in user_ray.items() if k != "RAY_ADDRESS"})
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(cpus)
    env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "RuntimeError", "Error"))]
    return (errors or lines or ["no output"])[-1][:500]


def execute_cell(
    cell_id: str, role: str, scenario: dict, out: str, cpus: int, user_ray: dict[str, str]
) -> dict:
    """Run one cell to completion (in a Ray task) and write its record; returns the record."""
    from splitsim.registry import ROLES

    root = Path(out)
    (root / "cells").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    scenario_file = root / "cells" / f"{cell_id}.yaml"
    write_atomic(scenario_file, dump_yaml(scenario))
    runs = root / "runs"
    log = root / "logs" / f"{cell_id}.log"
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "splitsim", "run", str(scenario_file), "--out", str(runs)]
    with open(log, "w") as handle:
        code = subprocess.call(
            cmd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=_child_env(cpus, user_ray),
            preexec_fn=lambda: on_parent_death(signal.SIGKILL),
        )
    wall = round(time.perf_counter() - started, 1)
    record: dict = {"id": cell_id, "wall_s": wall, "log": str(log.relative_to(root))}
    folders = sorted(
        f for f in (runs / scenario["name"]).glob("2*") if (f / "results.json").exists()
    )
    if code == 0 and folders:
        results = json.loads((folders[-1] / "results.json").read_text())
        record |= {
            "status": "ok",
            "run_folder": str(folders[-1].relative_to(root)),
            "summary": ROLES.get(role).summary(results["metrics"]),
            # text: JSON has no infinity, and an unbounded budget is not a missing one
            "epsilon": epsilon_text(headline_epsilon(results["metrics"])),
        }
        write_json(root / "cells" / f"{cell_id}.json", record)
    else:
        record |= {
            "status": "failed",
            "error": f"exit {code}: {_last_line(log.read_text())}",
        }
        write_json(root / "cells" / f"{cell_id}.failed.json", record)
    return record


def read_back(out: Path, cell_id: str) -> dict | None:
    """A finished cell's record, if it is whole and says what it should: an unreadable,
    truncated or foreign record is run again, never trusted."""
    path = out / "cells" / f"{cell_id}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "ok" or record.get("id") != cell_id:
        return None
    folder = record.get("run_folder")
    if not isinstance(record.get("summary"), dict) or not isinstance(folder, str):
        return None
    if Path(folder).is_absolute() or ".." in Path(folder).parts:
        return None
    return record if (out / folder / "results.json").is_file() else None


class FolderInUse(ScenarioError):
    """Another ``compare`` holds the folder."""


@contextmanager
def lock_folder(out: Path) -> Iterator[None]:
    """One comparison per folder at a time: two would run the same cells and race on them."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".compare.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderInUse(
            str(out), "", f"in use by another compare (pid {holder}); wait for it, or --out another"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def run_cells(matrix: Matrix, cells: list[Cell], out: Path, console: Console) -> dict[str, dict]:
    """Records of every runnable cell by id: read back where finished, else computed."""
    records: dict[str, dict] = {}
    todo: dict[str, Cell] = {}
    for cell in cells:
        if cell.scenario is None or cell.id in records or cell.id in todo:
            continue
        old = read_back(out, cell.id)
        if old is not None:
            records[cell.id] = old
            console.print(f"read back  {cell.key}  ({cell.id})", highlight=False)
        else:
            todo[cell.id] = cell
    if not todo:
        return records
    from splitsim.engine.simulation import (
        cluster_address,
        local_only_ray,
        quiet_flower,
        telemetry_defaults,
    )

    telemetry_defaults()
    address = cluster_address(matrix.ray_address)
    if address is None:
        local_only_ray()
    user_ray = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    import ray

    quiet_flower()
    from splitsim.engine import kept_actors

    kept_actors.release()  # they would hold CPUs of the cluster the cells ask for
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address or "local",  # never a stale `ray start` cluster
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        task = ray.remote(execute_cell).options(
            num_cpus=matrix.cpus_per_cell, num_gpus=matrix.gpus_per_cell, max_retries=0
        )
        capacity = int(ray.cluster_resources().get("CPU", 1) // matrix.cpus_per_cell)
        workers = max(1, min(matrix.workers or capacity, capacity))
        console.print(
            f"{len(todo)} cells to run, {len(records)} read back; {workers} at once "
            f"({matrix.cpus_per_cell} CPU each)",
            highlight=False,
        )
        queue = list(todo.values())
        running: dict = {}
        progress = Progress(
            TextColumn("[bold]cells[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            bar = progress.add_task("", total=len(queue))

            def show() -> None:
                done = len(todo) - len(queue) - len(running)
                progress.update(
                    bar,
                    completed=done,
                    description=f"done {done}, running {len(running)}, left {len(queue)}",
                )

            while queue or running:
                while queue and len(running) < workers:
                    cell = queue.pop(0)
                    ref = task.remote(
                        cell.id, cell.role, cell.scenario, str(out), matrix.cpus_per_cell,
                        user_ray,
                    )  # fmt: skip
                    running[ref] = cell
                show()
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    cell = running.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as err:  # the task itself died (worker lost, ...)
                        record = {"id": cell.id, "status": "failed", "error": str(err)[:500]}
                    records[cell.id] = record
                    status = record["status"]
                    progress.console.print(
                        f"{status:<9} {cell.key}  ({cell.id}, {record.get('wall_s', '?')} s)"
                        + (f": {record['error']}" if status == "failed" else ""),
                        highlight=False,
                    )
                show()
    finally:
        if started_here:
            ray.shutdown()
    return records
