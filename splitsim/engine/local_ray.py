"""A run's private local Ray, started as a process of its own when the run starts.

A run that will start a local Ray for its Flower phase starts it instead at its beginning,
with ``ray start --head --block`` in a process of its own (less what such a head never uses:
engine/ray_head.py), on loopback and with the local-only and telemetry settings
``engine/simulation.py`` applies to a ``ray.init``. Ray's start-up then
runs on the core the supplier's one-threaded training leaves idle, and the Flower phase joins
the running head by address (engine/simulation.py ``backend_config``). Measured on the shared
2-core box (docs/covid_app.md): the Covid app's Flower phase 9.0 s against 15.1 s with
``ray.init`` at load 3, 14.4-17.0 s against 29.4 s at load 6-8. Starting Ray in a background
*thread* of the run instead gained 0.9 s: its start-up held the GIL, and Ray's
processes end with the thread that started them.

The head's workers start with it (Ray's ``enable_worker_prestart``) and import ``torch``,
Flower's actor and the role's modules as they start (``preload_python_modules``), while the
supplier still trains: the Flower phase's actors are then ready at once (its driver joins the
head with no job runtime environment, which those workers would not serve: engine/simulation.py
``_join_warm_head``).

The head lives as long as the run: it is stopped (its process group) when the run ends, fails
or is interrupted. When the run's process dies without cleaning up (killed with -9), the
kernel tells the head's guard (``PR_SET_PDEATHSIG``), which ends the group
(engine/head_guard.py). Where the head cannot start or does not answer, the run starts Ray as
before (``ray.init``). ``SPLITSIM_WARM_RAY=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

READY_S = 60.0  # a head not up by then is stopped, and the run starts Ray itself
STOP_S = 10.0


@dataclass
class Head:
    process: subprocess.Popen
    temp: Path
    address: str

    def ready(self, timeout_s: float = READY_S) -> bool:
        """Whether the head is up (waiting for it at most ``timeout_s``): ``ray start`` writes
        its address file once every process of the head has started."""
        deadline = time.monotonic() + timeout_s
        while not (self.temp / "ray_current_cluster").is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return self.process.poll() is None

    def stop(self) -> None:
        """End the head and every process it started (its process group), then its files.
        SIGKILL, not Ray's graceful SIGTERM: the run has finished with the head, and on
        SIGTERM ``ray start`` waits for its processes to end one by one (when heads still ran
        the autoscaler's monitor, it waited for ever for the monitor, which waited to report
        to a GCS that had already ended: ray 2.55)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_S)
        shutil.rmtree(self.temp, ignore_errors=True)


_head: Head | None = None


def address() -> str | None:
    """The address of this run's warm head once it answers; None: there is none (or it did
    not come up, and has been stopped): the Flower phase starts Ray itself."""
    global _head
    if _head is None:
        return None
    if _head.ready():
        return _head.address
    log.warning("the run's Ray head did not start (%s); starting Ray in the run", _head.temp)
    _head.stop()
    _head = None
    return None


@contextlib.contextmanager
def warm_head(env: dict[str, str], cpus: int | None, preload: tuple[str, ...]) -> Iterator[None]:
    """Within this block a private local Ray head runs, for the block's Flower phases to join
    (``address``): started with ``env`` (Ray's settings for a local run), ``cpus`` (None: all),
    and ``preload``, modules its workers import as they start."""
    global _head
    if _head is not None:
        yield
        return
    try:
        _head = start(env, cpus, preload)
    except OSError as error:
        log.warning("could not start the run's Ray head (%s); starting Ray in the run", error)
        yield
        return
    try:
        yield
    finally:
        head, _head = _head, None
        if head is not None:
            head.stop()


def start(env: dict[str, str], cpus: int | None = None, preload: tuple[str, ...] = ()) -> Head:
    """``ray start --head --block`` on loopback, in a session of its own."""
    from splitsim.engine.deployment import free_port

    env = dict(env)
    # the head's first process runs splitsim.engine.ray_head: wherever splitsim is imported from
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    # Workers start with the head, not when the Flower phase asks for its actors, and import
    # what the actors will need as they start; the Flower phase uses them when its driver
    # joins with no job runtime environment (engine/simulation.py ``_join_warm_head``): the
    # Covid app's Flower phase 2.3-2.5 s, against 7.6 s when two new workers started then.
    env.setdefault("RAY_enable_worker_prestart", "1")
    if preload:
        env.setdefault("RAY_preload_python_modules", ",".join(preload))
    _remove_stale()
    # Ray's socket paths live in its temp dir and must stay under the 107-character limit.
    temp = Path(tempfile.mkdtemp(prefix=f"splitsim-ray-{os.getpid()}-", dir="/tmp"))
    port = free_port()
    sized = [] if cpus is None else [f"--num-cpus={cpus}"]
    # ray_head: ``ray start`` less the Ray Client server, the autoscaler's monitor and the log
    # monitor, which a head of splitsim's never uses (engine/ray_head.py). Worker ports 0: the
    # kernel picks each worker's and driver's port, as with ``ray.init``. ``ray start`` hands
    # out 10002, 10003, ... from every head alike, and a second head on the machine (the other
    # test worker's, a comparison's other cell) gave one that the first had given: the driver
    # that lost the race was killed by Ray's check (CI, 2026-12-07: "Failed to start the grpc
    # server. The specified port is 10003").
    args = [sys.executable, "-m", "splitsim.engine.ray_head", "start", "--head", "--block",
            f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
            "--no-monitor", "--include-log-monitor=false", "--disable-usage-stats",
            "--min-worker-port=0", "--max-worker-port=0", f"--temp-dir={temp}",
            *sized]  # fmt: skip
    guard = [sys.executable, "-I", str(Path(__file__).with_name("head_guard.py")), str(os.getpid())]
    try:
        with open(temp / "ray_start.log", "wb") as out:
            process = subprocess.Popen(
                [*guard, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return Head(process, temp, f"127.0.0.1:{port}")


def _remove_stale() -> None:
    """The files of heads whose run was killed (-9) before it could remove them."""
    for temp in Path("/tmp").glob("splitsim-ray-*-*"):
        pid = temp.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
