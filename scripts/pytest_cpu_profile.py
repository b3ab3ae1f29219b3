"""A pytest plugin: the CPU seconds of every test's setup, call and teardown, for the whole
process tree (the test worker, its Ray head and actors, the processes tests start), read from
the cgroup the suite runs in. Run the suite in one process, so that each interval is one test's:

    CPUPROF_CG=/sys/fs/cgroup/cpuacct/suite CPUPROF_OUT=/tmp/profile.jsonl PYTHONPATH=scripts \\
        scripts/cgroup_time.sh suite python -m pytest -q -n 0 -p pytest_cpu_profile

Each line of ``CPUPROF_OUT``: ``[test id, phase, CPU seconds, wall seconds]``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

_GROUP = os.environ.get("CPUPROF_CG", "")
_OUT = os.environ.get("CPUPROF_OUT", "")


def _cpu() -> float:
    with open(os.path.join(_GROUP, "cpuacct.usage")) as usage:
        return int(usage.read()) / 1e9


def _record(item: pytest.Item, phase: str) -> Iterator[None]:
    if not (_GROUP and _OUT):
        yield
        return
    cpu, wall = _cpu(), time.monotonic()
    yield
    line = [item.nodeid, phase, round(_cpu() - cpu, 3), round(time.monotonic() - wall, 3)]
    with open(_OUT, "a") as out:
        out.write(json.dumps(line) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield from _record(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield from _record(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield from _record(item, "teardown")
