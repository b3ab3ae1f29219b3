"""A data owner's persistent training state: its model segment and optimiser, on its "device".

A Flower node's messages may be served by different Ray actors, so state must live outside the
actor. ``context.state`` is Flower's place for it, but it travels with every message: for the
split classifier of papers/003 (4.6 M client weights, plus Adam's two moments, 55 MB) that costs
259 ms per message on this 2-core machine (measured with 10 nodes) against about 10 ms without.
So each node keeps its state where a phone would, in its own storage: one file per node holding
weights, Adam moments and step count, memory-mapped (``torch.from_file(shared=True)``) so that
the parameters and optimiser update it in place and any actor that maps it sees the latest
values. Only one message per node is in flight at a time, so there is no concurrent writer.
The folder lives in shared memory when the machine has it; nodes on other machines would need a
shared filesystem (see docs/split_learning.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

_OPEN: OrderedDict[str, NodeState] = OrderedDict()
# A handle is a mapping of the node's file, not a copy: cheap to keep. Fewer handles than the
# nodes an actor serves made every message re-open one (an LRU cycled by 100 owners misses
# every time), and a re-opened handle also loses the actor's cached forward pass.
_MAX_OPEN = 1024


def state_root() -> Path:
    """A fresh folder for this run's node files. Folders left by runs whose process died (a
    kill -9 skips our clean-up) are removed first: they hold data owners' models."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for stale in base.glob("splitsim-nodes-*-*"):
        owner = stale.name.split("-")[2]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"splitsim-nodes-{os.getpid()}-", dir=base))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NodeState:
    """Model + Adam whose every number lives in one memory-mapped file."""

    def __init__(self, path: Path, model: nn.Module, lr: float) -> None:
        self.model = model
        params = list(model.parameters())
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        self.total = total
        self.size = 3 * total + len(params)
        self.flat = torch.from_file(str(path), shared=True, size=self.size, dtype=torch.float32)
        offset = 0
        for p, n in zip(params, sizes, strict=True):
            p.data = self.flat[offset : offset + n].view_as(p)
            offset += n
        # foreach=False: the single-tensor Adam updates each state tensor in place.
        self.optimizer = torch.optim.Adam(params, lr=lr, foreach=False)
        steps = 3 * total
        for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
            self.optimizer.state[p] = {
                "step": self.flat[steps + i : steps + i + 1].view(()),
                "exp_avg": self.flat[offset : offset + n].view_as(p),
                "exp_avg_sq": self.flat[offset + total : offset + total + n].view_as(p),
            }
            offset += n

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Take weights from elsewhere (FedAvg, the previous owner); Adam's moments stay."""
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(torch.from_numpy(weights[name]))

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.views().items()}

    def views(self) -> dict[str, np.ndarray]:
        """The weights as views of the file, not copies: for encoding them at once (a copy
        first would be one more pass over 18 MB); they change as the node trains."""
        return {k: v.detach().numpy() for k, v in self.model.state_dict().items()}

    def step(self) -> None:
        self.optimizer.step()


def open_state(folder: str, node: int, build: Callable[[], nn.Module], lr: float) -> NodeState:
    """This process's handle on node ``node``'s state file (created zeroed on first use)."""
    path = Path(folder) / f"node-{node}.bin"
    key = str(path)
    state = _OPEN.get(key)
    if state is None:
        state = NodeState(path, build(), lr)
        _OPEN[key] = state
        while len(_OPEN) > _MAX_OPEN:
            _OPEN.popitem(last=False)
    _OPEN.move_to_end(key)
    return state
