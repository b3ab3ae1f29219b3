"""A run's own Ray head (engine/local_ray.py): started as a process of its own when a run that
will start a local Ray begins, joined by its Flower phase, and gone when the run ends, however
it ends; the same metrics as a run that starts Ray in its Flower phase."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from splitsim import allocator
from splitsim.engine import local_ray
from splitsim.engine.simulation import own_ray
from splitsim.scenario import Engine

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT / "scenarios" / "hidden_covid_app.yaml"
SMALL = ["dataset.train_records=500", "dataset.test_records=200", "training.epochs=1",
         "deployment.clients=2", "deployment.users=40"]  # fmt: skip


def _user_env(**extra: str) -> dict[str, str]:
    """The environment a user's run has: no shared test Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **extra}


def _head_processes(temp: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group ``pgid``."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _workers(pid: int) -> set[int]:
    """Ray worker processes under process ``pid`` (its head's), idle or an actor's."""
    found = set()
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                argv = child.cmdline()
                starting = any(arg.endswith("default_worker.py") for arg in argv[:2])
                if starting or " ".join(argv).startswith(("ray::IDLE", "ray::Client")):
                    found.add(child.pid)
    return found


def test_only_a_run_that_would_start_a_local_ray_starts_one(monkeypatch):
    started: list[tuple[dict, int | None]] = []

    @contextlib.contextmanager
    def warm_head(env: dict, cpus: int | None, preload: tuple) -> Iterator[None]:
        started.append((env, cpus))
        yield

    def starts(engine: Engine) -> bool:
        before = len(started)
        with own_ray(engine):
            pass
        return len(started) > before

    monkeypatch.setattr(local_ray, "warm_head", warm_head)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("SPLITSIM_WARM_RAY", raising=False)
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    assert starts(Engine())
    env, cpus = started[-1]
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and cpus is None
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["FLWR_TELEMETRY_ENABLED"] == "0"
    # the driver's import path, which Flower would give the job's workers (simulation.py)
    assert env["PYTHONPATH"].split(os.pathsep)[: len(sys.path)] == sys.path
    assert starts(Engine(ray_cpus=1)) and started[-1][1] == 1
    assert not starts(Engine(ray_address="127.0.0.1:6379"))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert not starts(Engine())  # the cluster the environment names
    assert starts(Engine(ray_cpus=1))  # sized locally: RAY_ADDRESS is not read
    assert "RAY_ADDRESS" not in started[-1][0]
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("SPLITSIM_WARM_RAY", "0")
    assert not starts(Engine())


@pytest.mark.slow
def test_the_head_ends_with_a_run_killed_with_9(tmp_path):
    """kill -9 of the run's process alone (not its group), as soon as its head is up, while the
    raylet's agents may still be starting: the head's guard ends every process of the head at
    once (before the guard, an agent still starting outlived the run by 15 s on the idle box
    and by more than 30 s in CI)."""
    code = (
        "import time\n"
        "from splitsim.engine import local_ray\n"
        "from splitsim.engine.simulation import head_environment\n"
        "head = local_ray.start(head_environment(), cpus=1)\n"
        "print(head.temp, head.process.pid, flush=True)\n"
        "assert head.ready()\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                           env=_user_env())  # fmt: skip
    try:
        temp, group = run.stdout.readline().split()
        assert temp.startswith(f"/tmp/splitsim-ray-{run.pid}-")
        assert run.stdout.readline().strip() == "up", "the head did not come up"
        assert any("raylet" in " ".join(p.cmdline()) for p in _head_processes(temp))
        group_of = {p.pid: " ".join(p.cmdline()) for p in _group(int(group))}
        # what a private head never uses is not started (engine/ray_head.py)
        for unused in ("ray.util.client.server", "monitor.py", "log_monitor.py"):
            assert not any(unused in line for line in group_of.values()), (unused, group_of)
        # and its processes keep the memory a step frees (splitsim/allocator.py)
        (raylet,) = [pid for pid, line in group_of.items() if "raylet/raylet" in line]
        # its workers and drivers bind ports the kernel picks, not ``ray start``'s 10002, ...,
        # which every head on the machine hands out alike (a driver lost that race in CI)
        assert {"--min_worker_port=0", "--max_worker_port=0"} <= set(group_of[raylet].split())
        environ = psutil.Process(raylet).environ()
        if not any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
            assert environ["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()

    def left() -> list[psutil.Process]:
        found = {p.pid: p for p in _head_processes(temp)}
        found.update((p.pid, p) for p in _group(int(group)))
        return list(found.values())

    deadline = time.monotonic() + 10
    while (alive := left()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"left running: {[' '.join(p.cmdline())[:120] for p in alive]}"
    assert Path(temp).is_dir()  # the killed run could not remove its head's files:
    local_ray._remove_stale()  # the next run's head does
    assert not Path(temp).exists()


@pytest.mark.slow
def test_a_run_on_its_own_head_has_the_same_metrics_and_leaves_no_ray(tmp_path):
    metrics = []
    for warm in ("1", "0"):
        out = tmp_path / warm
        args = [sys.executable, "-m", "splitsim", "run", str(COVID), "--out", str(out)]
        for expr in SMALL:
            args += ["--set", expr]
        run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=_user_env(SPLITSIM_WARM_RAY=warm))  # fmt: skip
        heads: set[Path] = set()
        workers: set[int] = set()
        while run.poll() is None:  # the run's own head, named after the run's process
            heads.update(Path("/tmp").glob(f"splitsim-ray-{run.pid}-*"))
            workers.update(_workers(run.pid))
            time.sleep(0.2)
        assert run.returncode == 0, run.stderr.read()[-2000:]
        assert bool(heads) == (warm == "1"), f"heads seen: {heads}"
        if warm == "1":  # the actors are the head's two prestarted workers, no new ones
            assert 1 <= len(workers) <= 2, workers
        for temp in heads:
            assert not temp.exists(), f"the run's Ray files were left: {temp}"
            assert not _head_processes(str(temp)), "the run's Ray processes were left"
        (results,) = out.rglob("results.json")
        metrics.append(json.loads(results.read_text())["metrics"])
    assert metrics[0] == metrics[1]
