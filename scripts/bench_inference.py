"""Inference batch size on the CPU: each network's former batch against ``inference.CPU_IMAGES``.

    python scripts/bench_inference.py

One thread, as a run's driver has. For the networks whose inference splitsim batches (the
reference classifier, the split CNN's client segment and its decoder, the FMNIST LeNet of
``scenarios/hidden_fmnist.yaml``), on random MNIST-shaped images: the seconds at the former
batch and at 256, their ratio, and whether the outputs are the same bit for bit.
"""

from __future__ import annotations

import time

import torch


def timed(model: torch.nn.Module, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    model.eval()
    with torch.no_grad():
        started = time.perf_counter()
        out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
        return out, time.perf_counter() - started


def main() -> None:
    from splitsim.inference import CPU_IMAGES
    from splitsim.models.split_cnn import ReferenceCNN, SplitCNN, decoder_for
    from splitsim.registry import MODELS

    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.rand(6000, 1, 28, 28)
    split = SplitCNN.Params()
    client = SplitCNN.build(split, (1, 28, 28), 10).client
    with torch.no_grad():
        sent = client.eval()(images[:3000])
    lenet = MODELS.get("lenet")
    cases = [
        ("reference classifier", ReferenceCNN(), images, 1000),
        ("split CNN client segment", client, images, 1000),
        ("split CNN decoder", decoder_for(split, False), sent, 1000),
        ("FMNIST LeNet", lenet.build(lenet.Params(channels=[16, 32, 32]), (1, 28, 28), 2),
         torch.rand(10000, 1, 28, 28), 4096),
    ]  # fmt: skip
    print(f"{'network':<26} {'rows':>6} {'former':>12} {CPU_IMAGES:>8} a pass  ratio  same")
    for name, model, x, former in cases:
        before, slow = timed(model, x, former)
        after, fast = timed(model, x, CPU_IMAGES)
        print(f"{name:<26} {len(x):>6} {former:>6}: {slow:4.1f} s {fast:8.1f} s  "
              f"{slow / fast:5.2f}x  {torch.equal(before, after)}")  # fmt: skip


if __name__ == "__main__":
    main()
