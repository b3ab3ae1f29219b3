"""Throughput of split training through Flower against the same training in one plain process.

    python scripts/bench_split.py --owners 2,10,100 --images 6400 --epochs 1

For each number of data owners, runs the split-training phase of ``scenarios/mnist_inversion.yaml``
(the paper's CNN, batch 32, Adam) through the Flower simulation and times the training rounds
(from the first batch to the last, Ray start-up excluded and reported apart). The baseline trains
the same two segments on the same images, batch 32, in one PyTorch process using every core.
Prints images per second for both and their ratio (Flower time / plain time: 1.0 is parity),
and the CPU seconds of this process (the ServerApp, Flower's link state and loop, Ray's driver:
everything but the owners' actors) over the whole Flower run, which a shared machine's load
moves less than the wall-clock figures.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def flower(owners: int, images: int, epochs: int) -> dict:
    from splitsim.engine.node_state import state_root
    from splitsim.engine.simulation import simulate
    from splitsim.engine.wire import WireLog
    from splitsim.roles.model_inversion.protocol import SplitOutcome, client_app, server_app
    from splitsim.scenario import load_scenario

    scenario = load_scenario(
        ROOT / "scenarios" / "mnist_inversion.yaml",
        [
            f"dataset.train_limit={images}",
            f"training.epochs={epochs}",
            f"deployment.clients={owners}",
            f"deployment.users={owners}",
            "role.access=stolen",
        ],
    )
    marks: list[float] = []
    outcome = SplitOutcome()
    state_dir = state_root()
    wire_dir = Path(state_dir) / "wire"
    wire_dir.mkdir()
    wire = WireLog(wire_dir / "wire.jsonl")
    started, cpu = time.perf_counter(), time.process_time()
    try:
        app = server_app(
            scenario,
            wire,
            outcome,
            set(),
            lambda: marks.append(time.perf_counter()),
            lambda row: marks.append(time.perf_counter()),
        )
        simulate(app, client_app(scenario, str(state_dir)), owners, scenario.engine)
    finally:
        wire.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu
    if outcome.error is not None:
        raise outcome.error
    training = marks[-1] - marks[0]
    steps = len(marks) - epochs
    return {
        "owners": owners,
        "train_s": training,
        "total_s": total,
        "server_cpu_s": cpu,
        "images_per_s": images * epochs / training,
        "round_trips": outcome.round_trips,
        "ms_per_client_batch": 1000 * training / max(1, steps),
        "messages": wire.messages,
        "bytes": wire.bytes["to_clients"] + wire.bytes["from_clients"],
        "accuracy": outcome.history[-1]["train_accuracy"],
    }


def plain(images: int, epochs: int) -> dict:
    from splitsim.data.images import ImageParams
    from splitsim.data.mnist import MNIST
    from splitsim.models.split_cnn import SplitCNN

    torch.set_num_threads(torch.get_num_threads())
    x, y = MNIST(ImageParams(root="data", train_limit=images), 0, None).classifier_train()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    parts = SplitCNN.build(SplitCNN.Params(), (1, 28, 28), 10)
    client_opt = torch.optim.Adam(parts.client.parameters(), lr=1e-3)
    server_opt = torch.optim.Adam(parts.server.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            loss = nn.functional.cross_entropy(parts.server(parts.client(xt[idx])), yt[idx])
            client_opt.zero_grad()
            server_opt.zero_grad()
            loss.backward()
            client_opt.step()
            server_opt.step()
    seconds = time.perf_counter() - started
    return {"train_s": seconds, "images_per_s": images * epochs / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", default="2,10,100")
    parser.add_argument("--images", type=int, default=6400)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    base = plain(args.images, args.epochs)
    print(
        f"plain PyTorch, one process ({torch.get_num_threads()} threads): "
        f"{base['images_per_s']:.0f} images/s ({base['train_s']:.1f} s)",
        flush=True,
    )
    print(
        "| data owners | Flower images/s | plain images/s | ratio (Flower / plain time) "
        "| ms per client-batch | round trips | Ray + set-up s | server process CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for owners in [int(k) for k in args.owners.split(",")]:
        r = flower(owners, args.images, args.epochs)
        ratio = base["images_per_s"] / r["images_per_s"]
        print(
            f"| {owners} | {r['images_per_s']:.0f} | {base['images_per_s']:.0f} | {ratio:.2f}x "
            f"| {r['ms_per_client_batch']:.1f} | {r['round_trips']} "
            f"| {r['total_s'] - r['train_s']:.1f} | {r['server_cpu_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
