"""Fitting an attacker's decoder from what it observes back to the images behind it.

Shared by the model-inversion server (papers/003, section 3 and Appendix D: g trained with
``min_g E_x ||g(f1(x)) - x||^2``, Adam) and the perturbation-probing adversary (papers/004,
section 3: a decoder trained with L2 loss on (E_x, x) pairs). Both keep the epoch with the best
mean squared error on the attacker's validation images, and train where ``device`` says.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from splitsim.inference import images_per_pass


@torch.no_grad()
def reconstruct(
    decoder: nn.Module,
    inputs: np.ndarray,
    device: str | torch.device = "cpu",
    batch: int | None = None,
) -> np.ndarray:
    """The attacker's guess of the images behind ``inputs``, clipped to the pixel range [0, 1]
    the attacker knows images have."""
    decoder.eval()
    batch = batch or images_per_pass(device, 1000)
    out = [
        decoder(torch.from_numpy(inputs[start : start + batch]).to(device)).clamp(0, 1).cpu()
        for start in range(0, len(inputs), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0,), np.float32)


def fit_decoder(
    decoder: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    val_inputs: np.ndarray,
    val_targets: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    min_batch: int = 1,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Adam on the MSE between ``decoder(inputs)`` and ``targets``, batches drawn from ``seed``;
    ``transform`` redraws each batch's inputs (an adaptive attacker's fresh defence noise);
    batches under ``min_batch`` are skipped (batch norm needs two). Returns the decoder with
    the best validation MSE, on the CPU, and the per-epoch history."""
    generator = torch.Generator().manual_seed(seed)
    decoder.to(device)
    # foreach: the single-tensor loop's arithmetic, bit for bit (measured), in a few vectorised
    # calls: papers/003's decoder's Adam step fell from 27 to 13 ms of CPU at one thread.
    optimiser = torch.optim.Adam(decoder.parameters(), lr=lr, foreach=True)
    best, best_state, history = float("inf"), None, []
    for epoch in range(1, epochs + 1):
        decoder.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < min_batch:
                continue
            batch = inputs[idx] if transform is None else transform(inputs[idx])
            loss = ((decoder(batch.to(device)) - targets[idx].to(device)) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        val_mse = float(((reconstruct(decoder, val_inputs, device) - val_targets) ** 2).mean())
        row = {"epoch": epoch, "train_mse": total / len(inputs), "val_mse": val_mse}
        history.append(row)
        if val_mse < best:
            best = val_mse
            best_state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
        if on_epoch is not None:
            on_epoch(row)
    if best_state is not None:
        decoder.load_state_dict(best_state)
    return decoder.cpu().eval(), history
