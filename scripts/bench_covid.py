"""Benchmark: the Covid-app scenario end to end against its 5-minute budget on 2 CPU cores.

    python scripts/bench_covid.py                          # the shipped scenario
    python scripts/bench_covid.py --set deployment.clients=1000

Prints wall time per phase, the ratio to the budget, and for the Flower phases the cost per
client message against running the same official network on the same users in one process.
Then, in the same process, a plain eager PyTorch loop of one official-and-secret pair (the
scenario's networks, its epochs, batch size and learning rate, torch.optim.Adam, no model
selection, one intra-op thread as the supplier's training uses) on the supplier's records, and
the whole run's wall time as a ratio of that loop. ``SPLITSIM_WARM_RAY=0`` in the environment
runs the scenario without its warm Ray head (engine/local_ray.py), as before it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from splitsim.cli import main as splitsim_main
from splitsim.data.score_data import partition_sizes
from splitsim.registry import DATASETS
from splitsim.roles.hidden_learning.protocol import official_network
from splitsim.scenario import load_scenario
from splitsim.threads import one_thread

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300.0


def plain_inference_s(scenario) -> float:
    """The deployment's computation without Flower: every partition through the network."""
    dataset = DATASETS.get(scenario.dataset.name)(
        scenario.dataset.params, scenario.seed, scenario.tasks
    )
    sizes = partition_sizes(scenario.deployment.users, scenario.deployment.clients)
    first = dataset.partition(0, scenario.deployment.clients, scenario.deployment.users)
    net = official_network(scenario, tuple(first.x.shape[1:])).eval()
    with torch.no_grad():  # warm-up: torch's first call sets up its thread pool
        net.scores(torch.as_tensor(first.x))
    start = time.perf_counter()
    for pid in range(len(sizes)):
        users = dataset.partition(pid, scenario.deployment.clients, scenario.deployment.users)
        with torch.no_grad():
            net.scores(torch.as_tensor(users.x))
    return time.perf_counter() - start


def plain_pair_s(scenario) -> float:
    """One official-and-secret pair trained jointly in the plainest eager PyTorch: what a
    researcher would write first for one of the six networks the scenario trains."""
    from torch.nn import functional as F

    from splitsim.registry import MODELS

    dataset = DATASETS.get(scenario.dataset.name)(
        scenario.dataset.params, scenario.seed, scenario.tasks
    )
    train = dataset.supplier_train()
    secret = scenario.role.params.secrets[0]
    x = torch.as_tensor(train.x)
    side = torch.as_tensor(train.side)
    y_o = torch.as_tensor(train.official).float()
    y_s = torch.as_tensor(train.secrets[secret])
    n = int(len(x) * (1 - scenario.training.validation_fraction))
    torch.manual_seed(0)
    official = official_network(scenario, tuple(x.shape[1:]))
    spec = scenario.models.secret
    secret_net = MODELS.get(spec.name).build(
        spec.params, (y_o.shape[1] + side.shape[1],), int(y_s.max()) + 1
    )
    optimiser = torch.optim.Adam(
        [*official.parameters(), *secret_net.parameters()], lr=scenario.training.lr
    )
    t = scenario.training
    with one_thread():  # as the run's supplier trains: a second thread only waits for a core
        start = time.perf_counter()
        for _ in range(t.epochs):
            order = torch.randperm(n)
            for i in range(0, n, t.batch_size):
                idx = order[i : i + t.batch_size]
                logits = official(x[idx])
                features = torch.cat([torch.sigmoid(logits), side[idx]], dim=1)
                loss = F.binary_cross_entropy_with_logits(logits, y_o[idx]) + F.cross_entropy(
                    secret_net(features), y_s[idx]
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "hidden_covid_app.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    scenario = load_scenario(args.scenario, args.overrides)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        overrides = [x for o in args.overrides for x in ("--set", o)]
        code = splitsim_main(["run", args.scenario, *overrides, "--out", out])
        wall = time.perf_counter() - start
        if code != 0:
            raise SystemExit(code)
        (results_path,) = Path(out).rglob("results.json")
        results = json.loads(results_path.read_text())
    timing = results["timing_s"]
    wire = results["metrics"]["wire"]
    flower_s = timing["flower simulation"]
    plain_s = plain_inference_s(scenario)
    clients = scenario.deployment.clients
    print(
        f"\nclients {clients}, users {scenario.deployment.users}, epochs {scenario.training.epochs}"
    )
    for phase, seconds in timing.items():
        print(f"  {phase:<24} {seconds:8.1f} s")
    print(f"  {'wall (incl. imports)':<24} {wall:8.1f} s")
    print(f"ratio wall / 5-minute budget:           {wall / BUDGET_S:6.2f}")
    print(f"Flower messages:                        {wire['messages']}")
    print(f"Flower phases per client message:       {1000 * flower_s / wire['messages']:6.1f} ms")
    print(f"ratio Flower phases / plain inference:  {flower_s / max(plain_s, 1e-9):6.0f}")
    print(
        f"bytes/s over the wire:                  "
        f"{(wire['bytes_to_clients'] + wire['bytes_from_clients']) / flower_s:,.0f}"
    )
    print(f"peak RSS (MiB):                         {_peak_rss_mib():.0f}")
    if scenario.role.name == "hidden_learning" and scenario.dataset.name == "covid_health_records":
        pair_s = plain_pair_s(scenario)
        print(f"plain eager pair loop, {scenario.training.epochs} epochs:   {pair_s:6.1f} s")
        print(f"ratio wall / plain pair loop:           {wall / pair_s:6.2f}")


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
