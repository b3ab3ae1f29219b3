"""The supplied model, loaded without running anything its supplier wrote but the network itself.

Two forms: a TorchScript file (``torch.jit.save``: the network's graph and weights; TorchScript
is a restricted language with no access to Python, and its loader unpickles constants only), or
a state dict of tensors plus the name of a registered architecture. A state dict is read with
``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a
plain container: the supplier's file cannot run code on the auditor's machine.

What a model releases is what a deployment sends: its ``probabilities`` (a sigmoid per label for
a multilabel task, a softmax otherwise) or its ``logits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from splitsim.data.score_data import OfficialTask
from splitsim.errors import ScenarioError
from splitsim.registry import MODELS
from splitsim.roles.hidden_learning.scores import to_scores

Release = Literal["probabilities", "logits"]


def load_model(
    path: str | Path,
    arch: str | None,
    arch_params: dict[str, Any],
    input_shape: tuple[int, ...],
) -> nn.Module:
    """The supplied network, in eval mode on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(str(path), "MODEL", "no such file")
    if arch is None:
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ScenarioError(
                str(path),
                "MODEL",
                "not a TorchScript file ("
                + first[:120]
                + "); for a state dict give --arch, one of "
                + _archs(),
            ) from None
        return net.eval()
    state = _state_dict(path)
    net = build_architecture(str(path), arch, arch_params, input_shape, _outputs(path, state))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ScenarioError(
            str(path), "--arch", f"the state dict does not fit {arch}: {detail}"
        ) from None
    return net.eval()


def build_architecture(
    source: str,
    arch: str,
    arch_params: dict[str, Any],
    input_shape: tuple[int, ...],
    outputs: int,
) -> nn.Module:
    """A fresh network of a registered architecture (its registry's initialisation)."""
    if arch not in MODELS.names():
        raise ScenarioError(source, "--arch", f"unknown architecture {arch!r}; allowed: {_archs()}")
    cls = MODELS.get(arch)
    try:
        params = cls.Params(**arch_params)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(source, f"--arch-set {where}", first["msg"]) from None
    return cls.build(params, input_shape, outputs)


def _archs() -> str:
    return ", ".join(sorted(MODELS.names()))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        first = " ".join(str(err).split())[:160]
        raise ScenarioError(str(path), "MODEL", f"not a state dict of tensors: {first}") from None
    if not isinstance(state, dict) or not state:
        raise ScenarioError(str(path), "MODEL", "not a state dict: a mapping of names to tensors")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        nested = [k for k in bad if isinstance(state[k], dict)]
        hint = f"; its entries {', '.join(map(repr, nested[:4]))} are state dicts" if nested else ""
        raise ScenarioError(str(path), "MODEL", f"entry {bad[0]!r} is not a tensor{hint}")
    return state


def _outputs(path: Path, state: dict[str, torch.Tensor]) -> int:
    """The network's output width: the first dimension of its last weight or bias."""
    last = [v for k, v in state.items() if k.endswith(("weight", "bias")) and v.ndim >= 1]
    if not last:
        raise ScenarioError(str(path), "MODEL", "no weight or bias tensors to read a network from")
    return int(last[-1].shape[0])


@torch.no_grad()
def released(
    net: nn.Module, x: np.ndarray, kind: str, release: Release, batch: int = 2048
) -> np.ndarray:
    """What the network sends for inputs ``x``: (n, k) float32."""
    parts = []
    for i in range(0, len(x), batch):
        logits = net(torch.as_tensor(x[i : i + batch])).float()
        if logits.ndim == 1:
            logits = logits[:, None]
        parts.append(to_scores(logits, OfficialTask(kind=kind, names=(), released=release)))
    return torch.cat(parts).numpy()
