"""glibc keeps the memory a training step frees for the next step (splitsim/allocator.py): the
same step then takes no fresh pages from the kernel, the processes a run starts inherit the
setting, and a user's own setting is left alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from splitsim import allocator

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

STEPS = """
import os, resource
import torch
from splitsim.allocator import keep_freed_memory
from splitsim.models.split_cnn import InversionDecoder
torch.manual_seed(0)
decoder = InversionDecoder(500, (1, 28, 28), deep=False)  # papers/003's, as in the MNIST run
adam = torch.optim.Adam(decoder.parameters(), foreach=True)
z, images = torch.randn(32, 500), torch.rand(32, 1, 28, 28)
def step():
    loss = ((decoder(z) - images) ** 2).mean()
    adam.zero_grad()
    loss.backward()
    adam.step()
def faults():
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults(), os.environ.get("MALLOC_MMAP_THRESHOLD_", "-"))
keep_freed_memory()
print(faults(), os.environ.get("MALLOC_MMAP_THRESHOLD_", "-"))
"""


def test_a_step_takes_no_fresh_pages_once_freed_memory_is_kept():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True,
                         env={**clean, "OMP_NUM_THREADS": "1"}, check=True)  # fmt: skip
    (default, unset), (kept, setting) = (line.split() for line in out.stdout.splitlines()[-2:])
    assert unset == "-"
    assert int(default) > 10 * 1000, default  # measured: about 6,000 fresh pages a step
    # 0-45 a step on the idle machine (scripts/bench_allocator.py), 450 once beside the suite
    assert int(kept) < int(default) / 5, (kept, default)
    # and the processes it starts (a run's Ray head and its workers, SuperNodes) inherit it
    assert setting == str(allocator.MMAP_THRESHOLD)


def test_a_users_own_allocator_setting_is_kept(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    allocator.keep_freed_memory()
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "1000000"
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    allocator.child_environment(env)
    assert env == {"MALLOC_MMAP_THRESHOLD_": "65536"}
    env = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}
    allocator.child_environment(env)
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}
    env = {}
    allocator.child_environment(env)
    assert env == {k: str(v) for k, v in allocator.SETTINGS.items()}
