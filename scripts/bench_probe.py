"""The perturbation prober's signature search: PyTorch's default layout against the search's own.

    python scripts/bench_probe.py --aux 3000 --directions 100 --kind random

Computes the adversary's signatures of its own MNIST images (``scenarios/mnist_probe.yaml``'s
served model, from the cache or trained as a run trains it; the run's directions and search
settings) twice, in one thread as a run does: once with the served model as trained (NCHW, 512
images a forward pass, the search's settings before ``attack.search_copy``) and once as the
search now runs it (a channels-last copy, 256 a pass). Prints both times, their ratio, and
whether the two searches gave the same signatures, bit for bit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aux", type=int, default=600, help="adversary images (tests: 600)")
    parser.add_argument("--directions", type=int, default=40, help="directions (tests: 40)")
    parser.add_argument("--kind", default="random", choices=["random", "centroid", "gradient"])
    parser.add_argument("--steps", type=int, default=None, help="search steps (scenario's)")
    parser.add_argument("--root", default=str(ROOT / "data"), help="dataset root")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from splitsim.data.mnist import ATTACKER_TRAIN
    from splitsim.registry import DATASETS
    from splitsim.roles.perturbation_probe import attack
    from splitsim.roles.perturbation_probe.protocol import served_network
    from splitsim.roles.perturbation_probe.role import served_model
    from splitsim.scenario import load_scenario
    from splitsim.seeds import int_seed

    sets = [f"dataset.root={args.root}", f"role.num_directions={args.directions}"]
    scenario = load_scenario(ROOT / "scenarios" / "mnist_probe.yaml", sets)
    p = scenario.role
    dataset = DATASETS.get("mnist")(scenario.dataset.params, scenario.seed, None)
    model = served_model(
        lambda: served_network(scenario), *dataset.classifier_train(), args.root,
        scenario.seed, p.served_epochs, lambda n=1: None,
    )  # fmt: skip
    x, y = dataset.images(train=True)
    x, y = x[ATTACKER_TRAIN[0] : ATTACKER_TRAIN[0] + args.aux], y[ATTACKER_TRAIN[0] :][: args.aux]
    dirs = attack.directions(args.kind, args.directions, (1, 28, 28),
                             int_seed(scenario.seed, "probe.directions"), model, x, y)  # fmt: skip
    steps = args.steps or p.max_steps
    search = {"eps_start": p.eps_start, "eps_max": p.eps_max, "tolerance": p.tolerance,
              "max_steps": steps}  # fmt: skip

    plain_model = model.eval()

    def plain_oracle(idx: np.ndarray, direction: np.ndarray, eps: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = np.empty(len(idx), dtype=np.uint8)
            for s in range(0, len(idx), 512):
                i, d = idx[s : s + 512], direction[s : s + 512]
                e = torch.from_numpy(eps[s : s + 512]).view(-1, 1, 1, 1)
                probe = torch.from_numpy(x[i]) + e * torch.from_numpy(dirs[d])
                out[s : s + 512] = plain_model(probe).argmax(1).numpy() != reference[i]
            return out

    with torch.no_grad():
        reference = plain_model(torch.from_numpy(x)).argmax(1).numpy()
    started = time.perf_counter()
    before = attack.search(plain_oracle, len(x), len(dirs), **search)
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    now = attack.search(attack.local_oracle(model, x, dirs), len(x), len(dirs), **search)
    search_s = time.perf_counter() - started
    same = (
        all(
            np.array_equal(getattr(before, f), getattr(now, f))
            for f in ("eps", "flipped", "refused", "queries")
        )
        and before.steps == now.steps
    )
    print(f"{args.aux} images x {args.directions} {args.kind} directions, {steps} steps at most, "
          f"one thread")  # fmt: skip
    print(f"default layout, 512 a pass: {plain_s:6.1f} s")
    print(f"search_copy, 256 a pass:    {search_s:6.1f} s   ratio {plain_s / search_s:.2f}x")
    print(f"signatures the same, bit for bit: {same}")


if __name__ == "__main__":
    main()
