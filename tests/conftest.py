import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

# Tests must pass the same on any machine: keep Ray quiet and local.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


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
