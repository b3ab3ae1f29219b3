"""Where a role's computation runs: the driver's device, a client actor's device, and handing
CUDA memory back after a client call."""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitsim.scenario import Engine

if TYPE_CHECKING:
    import torch


def resolve_device(engine: Engine) -> str:
    """``auto`` is CUDA when this process sees a GPU, else the CPU."""
    import torch

    if engine.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return engine.device


def client_device(engine: Engine) -> str:
    """Where a client app computes, decided inside its Ray actor: ``engine.client_device``
    'auto' or 'cuda' use the GPU share Ray gives an actor with ``engine.num_gpus > 0``.
    Without a share, clients stay on the CPU even when the machine has a GPU: Ray is told not to
    hide GPUs from zero-GPU actors (quiet_flower), and a client must not use a GPU Ray did not
    reserve for it."""
    import torch

    if engine.client_device == "cpu" or engine.num_gpus == 0:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if engine.client_device == "cuda":
        raise RuntimeError("engine.client_device is 'cuda' but this client's actor sees no GPU")
    return "cpu"


def release_cuda(device: str | torch.device) -> None:
    """After a client call on the GPU: hand the cached blocks back, so that an actor Ray keeps
    alive between calls holds only its CUDA context, not the last call's tensors."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
