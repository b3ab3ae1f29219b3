"""Scale benchmark: many simulated data owners, each workload in a fresh process.

    python scripts/bench_scale.py                                  # all of the below
    python scripts/bench_scale.py --covid 10,100 --split ""        # a subset

- Covid app (``scenarios/hidden_covid_app.yaml``) with 10, 100, 1,000 and 10,000 data owners,
  each a Flower node of the Ray simulation engine (phones = max(2,000, owners)); and 10,000
  owners (phones) held by 100 Flower nodes, the scenario's own way to model many phones
  (``--grouped``). The supplier's training is cut to ``--covid-epochs`` (default 5) because it
  does not depend on the owners.
- Split training (``scenarios/mnist_inversion.yaml``, the paper's CNN) with 10 and 100 data
  owners over ``--split-images`` MNIST images, one epoch.

For each: wall time of the whole run, the Flower phase's time (Ray start-up included), peak
memory of the whole process tree (the run, Ray's processes and actors: the sum of their
proportional set sizes, sampled every 0.2 s with psutil), Flower messages and bytes per second
over the Flower phase, and the ratio of the Flower phase's time to the plain single-process
PyTorch computation of the same work (Covid: the official network
on every owner's phones; split training: the same two segments on the same images, batch 32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def covid(owners: int, epochs: int, nodes: int | None = None) -> dict:
    import bench_covid

    from splitsim.cli import main as splitsim_main
    from splitsim.scenario import load_scenario

    path = str(ROOT / "scenarios" / "hidden_covid_app.yaml")
    overrides = [
        f"deployment.clients={nodes or owners}",
        f"deployment.users={owners if nodes else max(2000, owners)}",
        f"training.epochs={epochs}",
    ]
    with tempfile.TemporaryDirectory() as out:
        args = ["run", path, *[x for o in overrides for x in ("--set", o)], "--out", out]
        if splitsim_main(args) != 0:
            raise SystemExit(f"the Covid run with {owners} owners failed")
        (found,) = Path(out).rglob("results.json")
        results = json.loads(found.read_text())
    wire = results["metrics"]["wire"]
    return {
        "flower_s": results["timing_s"]["flower simulation"],
        "messages": wire["messages"],
        "bytes": wire["bytes_to_clients"] + wire["bytes_from_clients"],
        "plain_s": bench_covid.plain_inference_s(load_scenario(path, overrides)),
    }


def split(owners: int, images: int) -> dict:
    import bench_split

    r = bench_split.flower(owners, images, 1)
    base = bench_split.plain(images, 1)
    return {
        "flower_s": r["train_s"],
        "messages": r["messages"],
        "bytes": r["bytes"],
        "plain_s": base["train_s"],
    }


def tree_share(proc: psutil.Process) -> int:
    """A process's proportional set size: pages it shares (torch's libraries, the data owners'
    memory-mapped state files) are split among the processes mapping them, so the tree's sum
    is the memory really used. RSS would count each shared page once per process (measured:
    18 GiB "used" by split training with 100 owners on this 24 GiB machine)."""
    info = proc.memory_full_info()
    return int(getattr(info, "pss", info.rss))


def measure(argv: list[str]) -> dict:
    """Run one workload in a child process; its result plus wall time and peak tree memory."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--one", *argv], stdout=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(child.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in tree:
                try:
                    total += tree_share(proc)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak = max(peak, total)
            time.sleep(0.2)

    started = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_s": wall, "peak_mib": peak / 2**20}


def row(workload: str, owners: int, r: dict) -> str:
    return (
        f"| {workload} | {owners:,} | {r['wall_s']:.1f} | {r['flower_s']:.1f} "
        f"| {r['peak_mib']:,.0f} | {r['messages'] / r['flower_s']:,.0f} "
        f"| {r['bytes'] / r['flower_s'] / 2**20:.2f} | {r['plain_s']:.3f} "
        f"| {r['flower_s'] / max(r['plain_s'], 1e-9):,.1f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--covid", default="10,100,1000,10000", help="owners, comma-separated")
    parser.add_argument("--split", default="10,100", help="owners, comma-separated")
    parser.add_argument(
        "--grouped",
        default="10000:100",
        help="OWNERS:NODES pairs, comma-separated: Covid owners (phones) held by fewer nodes",
    )
    parser.add_argument("--covid-epochs", type=int, default=5)
    parser.add_argument("--split-images", type=int, default=3200)
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # KIND OWNERS [NODES]
    args = parser.parse_args()
    if args.one:
        kind, owners = args.one[0], int(args.one[1])
        nodes = int(args.one[2]) if len(args.one) > 2 else 0
        result = (
            covid(owners, args.covid_epochs, nodes)
            if kind == "covid"
            else split(owners, args.split_images)
        )
        print(json.dumps(result))
        return
    print(
        "| workload | data owners | wall s | Flower phase s | peak memory MiB | messages/s "
        "| MiB/s | plain PyTorch s | ratio (Flower / plain) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for owners in [int(k) for k in args.covid.split(",") if k]:
        r = measure(["covid", str(owners), "0", "--covid-epochs", str(args.covid_epochs)])
        print(row("Covid app, a node per owner", owners, r), flush=True)
    for pair in [p for p in args.grouped.split(",") if p]:
        owners, nodes = (int(k) for k in pair.split(":"))
        r = measure(["covid", str(owners), str(nodes), "--covid-epochs", str(args.covid_epochs)])
        print(row(f"Covid app, phones on {nodes} nodes", owners, r), flush=True)
    for owners in [int(k) for k in args.split.split(",") if k]:
        r = measure(["split", str(owners), "0", "--split-images", str(args.split_images)])
        print(row(f"split training ({args.split_images} images)", owners, r), flush=True)


if __name__ == "__main__":
    main()
