"""The first process of a run's Ray head: it starts ``ray start --head --block`` and, when the
run's process ends without stopping the head (killed with -9), ends the head's whole process
group at once.

Why a guard and not the end-with-the-parent signal on ``ray start`` alone: that signal ends
``ray start``, and Ray's GCS and raylet end with it, but the raylet's agents (the dashboard
agent and the runtime-environment agent) only notice by polling for their raylet, once they
have finished starting (ray 2.55, ``ray/_private/process_watcher.py``): one still starting
when the head ended outlived the run, by 15 s on the idle 2-core machine and by more than 30 s
in a CI run under load. The guard asks the kernel for SIGTERM when the run ends, which it can
catch, and kills its group.

Run as a script (``python -I head_guard.py <run pid> <command>...``), standard library only:
it must start in milliseconds and not depend on the run's import path.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _end_group(*_: object) -> None:
    os.killpg(0, signal.SIGKILL)  # the guard is the group's leader: it ends with it


def on_parent_death(sig: int) -> None:
    """The kernel sends this process ``sig`` when the thread that started it ends (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def main(argv: list[str]) -> None:
    run_pid, command = int(argv[0]), argv[1:]
    signal.signal(signal.SIGTERM, _end_group)
    on_parent_death(signal.SIGTERM)
    if os.getppid() != run_pid:  # the run ended before the kernel was asked to tell us
        _end_group()
    # if the guard itself is killed, the head ends as it did before the guard: its GCS and
    # raylet end with ``ray start``
    head = subprocess.Popen(command, preexec_fn=lambda: on_parent_death(signal.SIGKILL))
    head.wait()
    _end_group()  # ``ray start`` ended on its own: what it started goes with it


if __name__ == "__main__":
    main(sys.argv[1:])
