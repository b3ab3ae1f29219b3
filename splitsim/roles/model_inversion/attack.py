"""The curious computational server: model inversion of split-network intermediates.

Titcombe et al., *Practical Defences Against Model Inversion Attacks for Split Neural Networks*
(papers/003), section 3: "1) The attackers collect a dataset of inputs (raw data) and
intermediate data produced by the first model segment. 2) They train an attack model to convert
the intermediate data back into raw input data. 3) They collect intermediate data produced by
some data owners and run it through the trained attack model." The attack model g is trained
with the mean squared error ``min_g E_x ||g(f1(x)) - x||^2`` over the attacker's own images x
(Appendix D: same hyper-parameters as the classifier, Adam 1e-3, batch 32), and selected on
the attacker's validation images. How the server gets f1 and its images is Appendix A's
(colluding data owner, or a segment obtained alone); see role.py.

An *adaptive* attacker knows the data owners' payload defences (Laplace(0, b) noise, rounding,
...) and trains on defended tensors, e.g. ``f1(x) + n`` with fresh noise every batch, so the
decoder learns to see through them.

    >>> decoder, history = train_decoder(segment, aux, val, defend=None, epochs=10, ...)
    >>> images = reconstruct(decoder, received_z)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from splitsim.decoding import fit_decoder
from splitsim.inference import CPU_IMAGES
from splitsim.models.split_cnn import InversionDecoder


def intermediates(segment: nn.Module, x: np.ndarray, batch: int = CPU_IMAGES) -> np.ndarray:
    """f1(x) for the attacker's own images, with the segment it holds."""
    segment.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out.append(segment(torch.from_numpy(x[start : start + batch])).numpy())
    return np.concatenate(out)


def train_decoder(
    segment: nn.Module,
    aux: np.ndarray,
    val: np.ndarray,
    *,
    defend: Callable[[np.ndarray], np.ndarray] | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str = "cpu",
    deep: bool = False,
    decoder: Callable[[], nn.Module] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Fit g: z -> x on (f1(x), x), or on (defend(f1(x)), x) for an adaptive attacker (fresh
    draws every batch); keep the epoch with the best validation MSE. ``decoder`` builds another
    architecture than papers/003's."""
    torch.manual_seed(seed)
    z_aux = torch.from_numpy(intermediates(segment, aux))
    z_val = intermediates(segment, val)
    if defend is not None:
        # One fixed defended copy of the validation set, so epochs are compared on equal terms.
        z_val = defend(z_val)
    # built after the seed, so the same seed gives the same decoder
    if decoder is None:  # papers/003's attack model
        model = InversionDecoder(z_aux.shape[1], tuple(aux.shape[1:]), deep)
    else:
        model = decoder()
    return fit_decoder(
        model, z_aux, torch.from_numpy(aux), z_val, val,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
        transform=None if defend is None else lambda z: torch.from_numpy(defend(z.numpy())),
        on_epoch=on_epoch,
    )  # fmt: skip
