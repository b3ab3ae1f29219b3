"""glibc's default allocator against splitsim's setting (splitsim/allocator.py) on one training
step with multi-megabyte tensors.

    python scripts/bench_allocator.py [--steps 60] [--pairs 3]

papers/003's inversion decoder (a 500 -> 9,216 projection, 4.6 M parameters) with Adam, batch 32,
one thread, as ``role.decoder`` trains it. Each side runs in a fresh process, alternated
``--pairs`` times: CPU ms per step, the minor page faults per step, and whether the trained
weights are the same bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEP = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
if sys.argv[1] == "kept":
    from splitsim.allocator import keep_freed_memory
    keep_freed_memory()
from splitsim.models.split_cnn import InversionDecoder
torch.manual_seed(0)
decoder = InversionDecoder(500, (1, 28, 28), deep=False)
adam = torch.optim.Adam(decoder.parameters(), lr=1e-3, foreach=True)
z, images = torch.randn(32, 500), torch.rand(32, 1, 28, 28)
def step():
    loss = ((decoder(z) - images) ** 2).mean()
    adam.zero_grad()
    loss.backward()
    adam.step()
for _ in range(3):
    step()
steps = int(sys.argv[2])
faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
for _ in range(steps):
    step()
print(json.dumps({
    "cpu_ms": (time.process_time() - cpu) / steps * 1000,
    "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
    "weights": float(sum(p.double().sum() for p in decoder.parameters())),
}))
"""


def side(mode: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", STEP, mode, str(steps)], capture_output=True,
                         text=True, check=True, env={**env, "OMP_NUM_THREADS": "1"})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.pairs):
        default, kept = side("default", args.steps), side("kept", args.steps)
        print(
            f"default {default['cpu_ms']:6.1f} ms/step {default['faults']:7.0f} faults/step | "
            f"kept {kept['cpu_ms']:6.1f} ms/step {kept['faults']:5.0f} faults/step | "
            f"ratio {default['cpu_ms'] / kept['cpu_ms']:.2f}x | "
            f"same weights: {default['weights'] == kept['weights']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
