import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests must pass the same on any machine: keep Ray quiet and local.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Two test workers share the CI's 2 cores, each with a driver and its Ray actors (one thread
# each, as Ray sets): a driver on every core as well oversubscribes them, and torch's
# OpenMP threads then spin against each other. Read by torch when it is first imported (and
# by numba, which dcor imports: numba's own default would set torch's threads back to 2).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--private-ray",
        action="store_true",
        help="start a private local Ray in every run, as a user's run does by default, instead "
        "of one shared loopback Ray per test worker",
    )


@contextlib.contextmanager
def loopback_head(cpus: int) -> Iterator[str]:
    """A Ray head on loopback, as a run's own (engine/local_ray.py ``start``: ``ray start
    --head --block`` with local-only, telemetry-off settings), its address while it runs;
    stopped with its process group, and only that (``ray stop`` would stop every Ray on the
    machine, another test worker's too)."""
    from splitsim.engine import kept_actors, local_ray
    from splitsim.engine.simulation import head_environment, local_only_ray

    env = head_environment()
    # the test worker's runs join it: their driver too must take loopback for the node's
    # address, as a run's driver does for its own head (engine/simulation.py ``simulate``)
    local_only_ray()
    head = local_ray.start(env, cpus)
    try:
        if not head.ready(timeout_s=90):
            raise RuntimeError("the Ray head did not come up")
        yield head.address
    finally:
        kept_actors.release()  # the driver's connection to it, if runs kept their actors
        head.stop()


# One CPU, so one actor a run: each actor is a fresh process that imports torch, Flower and the
# role (4-6 s of CPU, measured on the shared head: 11.8 s of the head's CPU for a small Covid run
# at two CPUs, 6.1 s at one), and the two test workers already keep both cores busy. Measured on
# the idle 2-core machine, CI's command: 1,143 s and 2,030 s of CPU at two, 806 s and 1,486 s
# at one. A test that needs two owners served at once asks for a Ray of its own.
SHARED_RAY_CPUS = 1


@pytest.fixture(scope="session")
def shared_ray(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """One loopback Ray per test worker, which every end-to-end run joins through
    ``RAY_ADDRESS`` (engine/simulation.py ``cluster_address``) instead of starting and stopping
    a Ray of its own (measured on an idle 2-core machine: a small run's Flower phase 10.7 s with
    its own Ray, 5.5-5.9 s on a running head), and whose actors each run hands on to the next
    (engine/kept_actors.py: 3.7 s of the head's CPU for a fresh actor, 0.1 s for a kept one).
    Which Ray hosts the actors, and what they served before, does not enter a run's arithmetic
    (tests/test_kept_actors.py); ``--private-ray`` runs the suite as users run, and the loopback
    and telemetry check of tests/test_hardening.py always runs that way."""
    if request.config.getoption("--private-ray") or os.environ.get("RAY_ADDRESS"):
        yield os.environ.get("RAY_ADDRESS")
        return
    with contextlib.ExitStack() as stack:
        try:
            address = stack.enter_context(loopback_head(SHARED_RAY_CPUS))
        except (RuntimeError, OSError) as error:  # every run starts its own Ray instead
            warnings.warn(f"no shared Ray ({error}); runs start their own", stacklevel=2)
            yield None
            return
        os.environ["RAY_ADDRESS"] = address
        # and each run hands its actor on to the next (engine/kept_actors.py), unless the
        # user's environment says otherwise
        users = os.environ.get("SPLITSIM_KEEP_ACTORS")
        os.environ.setdefault("SPLITSIM_KEEP_ACTORS", "1")
        stack.enter_context(kept_actor_given_back_before_children())
        try:
            yield address
        finally:
            del os.environ["RAY_ADDRESS"]
            if users is None:
                del os.environ["SPLITSIM_KEEP_ACTORS"]


@contextlib.contextmanager
def kept_actor_given_back_before_children() -> Iterator[None]:
    """Within the block, the test worker gives back its kept actor (engine/kept_actors.py)
    before a test starts a Python child process: the child may be a run or a comparison that
    joins the same one-CPU head through the inherited ``RAY_ADDRESS``, and would wait for ever
    for the CPU the kept actor holds while the test waits for the child. Only from the main
    thread, where tests run: Ray's and Flower's own threads start commands too (Ray's
    accelerator probes, Flower's telemetry reading the platform), and releasing under them
    would end a connection another thread is using."""
    from splitsim.engine import kept_actors

    popen_init = subprocess.Popen.__init__

    def init(self: subprocess.Popen, args: object, *rest: object, **kwargs: object) -> None:
        single = isinstance(args, str | bytes | os.PathLike)
        command = [args] if single else list(args)  # type: ignore[call-overload]
        python = bool(command) and os.fspath(command[0]) == sys.executable
        if python and threading.current_thread() is threading.main_thread():
            kept_actors.release()
        popen_init(self, args, *rest, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", init)
        yield


@pytest.fixture
def ray_head() -> Iterator[str]:
    """A Ray head of the test's own, stopped after it."""
    with loopback_head(2) as address:
        yield address


# The longest test files, longest first: their summed setup, call and teardown times in one
# ``CI=true python -m pytest -q --durations=0`` (idle 2-core machine, 2026-12-06: 621 s), except
# that test_split_learning.py goes first: it makes the run test_split_owners.py reads
# (``shared_run``), which then seldom waits for it. pyproject runs ``--dist loadfile
# --no-loadscope-reorder``: pytest-xdist hands whole files to its two workers in collection
# order, so the long files start at once and the short ones fill in at the end (xdist's default
# order, most tests first, started quick files of many parametrised cases first and could leave
# a long file to the end on one worker while the other idled). Files not listed follow, more
# slow tests first.
LONGEST_FIRST = (
    "test_split_learning.py",  # 131 s
    "test_compare.py",  # 216 s
    "test_split_hijacking.py",  # 134 s
    "test_hardening.py",  # 96 s
    "test_deployment.py",  # 90 s
    "test_split_owners.py",  # 51 s
    "test_kept_actors.py",  # 46 s
    "test_local_ray.py",  # 41 s
    "test_perturbation_probe.py",  # 40 s
    "test_split_resume.py",  # 40 s
    "test_images.py",  # 36 s
    "test_property_inference.py",  # 34 s
    "test_split_non_iid.py",  # 31 s
    "test_scale.py",  # 30 s
    "test_label_inference.py",  # 28 s
    "test_compare_failure.py",  # 24 s
    "test_flower_speed.py",  # 23 s
    "test_roles.py",  # 20 s
    "test_gradient_inversion.py",  # 19 s
    "test_covid_end_to_end.py",  # 18 s
)


def longest_files_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with whole files in the order above (stable: a file's own order is kept)."""
    slow = Counter(item.path.name for item in items if item.get_closest_marker("slow"))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> tuple[int, int, str]:
        name = item.path.name
        return rank.get(name, len(rank)), -slow[name], str(item.path)

    return sorted(items, key=key)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items[:] = longest_files_first(items)
    # only the slow tier runs scenarios: the quick tier starts no Ray
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.fixturenames.insert(0, "shared_ray")


def run_scenario(scenario: Path, out: Path, *sets: str) -> Path:
    """``python -m splitsim run SCENARIO --out OUT --set ...`` in this process, which must exit
    0; the folder of the run it wrote (the one ``results.json`` under ``out`` that was not there
    before), so that runs of one module can share ``out``."""
    from splitsim.cli import main

    before = set(out.rglob("results.json")) if out.exists() else set()
    args = ["run", str(scenario), "--out", str(out)]
    for expr in sets:
        args += ["--set", expr]
    assert main(args) == 0
    (new,) = set(out.rglob("results.json")) - before
    return new.parent


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``run_scenario`` for a run that test files on either test worker read alike (the same
    scenario and settings): the first to ask runs it, holding a lock in the session's shared
    temp folder; the others wait for it and read the same folder. A reader must not write
    into that folder (a re-attack does: give it a run of its own)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is under the session's
        root = root.parent
    root = root / "shared-runs"

    def get(scenario: Path, *sets: str) -> Path:
        key = hashlib.sha256("\0".join([str(scenario), *sets]).encode()).hexdigest()[:16]
        home = root / key
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            done = home / "folder"
            if not done.exists():
                done.write_text(str(run_scenario(scenario, home / "runs", *sets)))
            return Path(done.read_text())

    return get


@pytest.fixture
def kill_run_when():
    """Start a command in its own session and kill -9 its whole process group as soon as a
    path matching ``pattern`` exists under ``folder``: the interrupted run that the resume
    tests then carry on."""

    def kill(args: list[str], folder: Path, pattern: str, what: str, timeout_s: float,
             poll_s: float) -> None:  # fmt: skip
        victim = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        try:
            while not list(folder.glob(pattern)):
                assert victim.poll() is None, f"the run ended before {what}"
                assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
                time.sleep(poll_s)
        finally:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()

    return kill
