"""How many images one forward pass takes when a network only infers.

On the CPU a convolutional network's forward pass over a large batch spends its time faulting
in fresh pages for its activations. 256 images a pass, one thread (``scripts/bench_inference.py``,
idle 2-core machine): the reference classifier 2.5 s against 3.3 s at 1,000 on 6,000 MNIST-shaped
images; the split CNN's client segment 4.7 against 6.0 s, its decoder 2.9 against 4.0 s on
3,000; the FMNIST LeNet 1.4 s against 2.9 s at 4,096 on 10,000. Every output was the same bit
for bit: an image's arithmetic does not depend on the batch it came in. An accelerator keeps
the batch its caller chose; tabular rows (the Covid networks) keep theirs.
"""

from __future__ import annotations

import torch

CPU_IMAGES = 256


def images_per_pass(device: str | torch.device, otherwise: int) -> int:
    """``CPU_IMAGES`` on the CPU, else ``otherwise`` (the caller's batch on an accelerator)."""
    return CPU_IMAGES if torch.device(device).type == "cpu" else otherwise
