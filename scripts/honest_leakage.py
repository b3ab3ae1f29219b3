"""How much an *honest* official network leaks, as a function of how long it was trained.

The To-then-Ts cells of papers/001, Table 1 train N_s on the frozen scores of an N_o trained on
the official task alone (the black-box attacker). This script trains that honest N_o for
``--epochs`` epochs (Glorot init, Adam 1e-3, batch 64, the paper's Fn/Ln re-weighting) and, at
each checkpoint epoch, fits a fresh 16-32 MLP N_s for ``--secret-epochs`` epochs on three
readings of N_o's output (logits, softmax probabilities, log-softmax), keeping the N_s epoch with
the best validation secret accuracy, and records its test accuracy.

    python scripts/honest_leakage.py --experiment F2-L8 --seed 0 --epochs 40

Writes ``<out>/honest_leakage_<exp>_seed<k>.json`` (atomically) and a plot beside it.
The model selection of the honest N_o (best validation accuracy, ``best_epoch``) is tracked
too, so the row the full reproduction would report can be read off.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from reproduce_hidden_learning import PAPER_TABLE1  # scripts/ is on the path when run
from torch.nn import functional as F

from splitsim import seeds
from splitsim.metrics import accuracy
from splitsim.models.lenet import LeNetLike
from splitsim.models.mlp import mlp
from splitsim.registry import DATASETS
from splitsim.roles.hidden_learning.attack import split_validation
from splitsim.roles.hidden_learning.scores import ScoreNet, official_loss
from splitsim.runs import write_atomic
from splitsim.scenario import Tasks

READINGS = {
    "logits": lambda z: z,
    "probabilities": lambda z: F.softmax(z, dim=1),
    "log_softmax": lambda z: F.log_softmax(z, dim=1),
}


def fit_secret(
    inputs: dict[str, torch.Tensor], labels: dict[str, np.ndarray], weight: torch.Tensor,
    classes: int, seed: int, epochs: int,
) -> float:  # fmt: skip
    """Test accuracy of a fresh N_s at its best validation epoch."""
    torch.manual_seed(seed + 7)
    net = mlp(inputs["train"].shape[1], [16, 32], classes)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    y = torch.as_tensor(labels["train"])
    generator = torch.Generator().manual_seed(seed + 3)
    best_val, best_test = -1.0, 0.0
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            idx = order[start : start + 64]
            loss = official_loss(net(inputs["train"][idx]), y[idx], "multiclass", weight[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        net.eval()
        with torch.no_grad():
            val = accuracy(net(inputs["val"]).argmax(1).numpy(), labels["val"])
            if val > best_val:
                best_val = val
                best_test = accuracy(net(inputs["test"]).argmax(1).numpy(), labels["test"])
    return best_test


def plot(rows: list[dict], experiment: str, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [r["epoch"] for r in rows]
    for reading in READINGS:
        ax.plot(epochs, [100 * r[f"ts_{reading}"] for r in rows], marker="o", label=reading)
    paper = PAPER_TABLE1.get(experiment, {}).get(dataset)
    if paper:
        ax.axhline(paper[3], color="grey", linestyle="--", label="paper, To-then-Ts")
    ax.set_xlabel("epochs of honest N_o training")
    ax.set_ylabel("secret test accuracy (%)")
    ax.set_title(f"{experiment}: black-box N_s on an honest N_o")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--experiment", default="F2-L8")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "cifar10"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--checkpoints", default="1,2,3,5,8,12,16,20,30,40")
    parser.add_argument("--secret-epochs", type=int, default=20)
    parser.add_argument("--reweight", default="named", choices=["named", "extra", "none"])
    parser.add_argument("--root", default="data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: results/hidden_learning/<dataset>")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    official_name, secret = args.experiment.split("-")
    tasks = Tasks(official=official_name, secret=secret, reweight=args.reweight, released="logits")
    cls = DATASETS.get(args.dataset)
    dataset = cls(cls.Params(root=args.root), args.seed, tasks)
    train_all, test = dataset.supplier_train(), dataset.supplier_test()
    train, val = split_validation(train_all, 0.1, args.seed)
    task = dataset.spec.official
    # the initialisation the full reproduction gives its honest N_o (train_supplier's fresh(1));
    # the batch order differs, so the two runs' honest networks are not the same
    torch.manual_seed(seeds.int_seed(args.seed, "hidden.network_init", 1))
    body = LeNetLike.build(LeNetLike.Params(), tuple(train.x.shape[1:]), task.outputs)
    net = ScoreNet(body, task)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.as_tensor(train.x), torch.as_tensor(train.official)
    w = torch.as_tensor(train.weight("official"))
    generator = torch.Generator().manual_seed(args.seed)
    parts = {"train": train, "val": val, "test": test}
    labels = {k: v.secrets[secret] for k, v in parts.items()}
    classes = len(dataset.spec.secret_classes[secret])

    @torch.no_grad()
    def logits_of(data) -> torch.Tensor:
        net.eval()
        return torch.cat(
            [net(torch.as_tensor(data.x[i : i + 4096])) for i in range(0, len(data), 4096)]
        )

    checkpoints = {int(c) for c in args.checkpoints.split(",")}
    out = Path(args.out or f"results/hidden_learning/{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"honest_leakage_{args.experiment}_seed{args.seed}"
    best_val, best_epoch, rows = -1.0, 0, []
    start_time = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = official_loss(net(x[idx]), y[idx], "multiclass", w[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        val_logits = logits_of(val)
        to_val = accuracy(val_logits.argmax(1).numpy(), val.official)
        if to_val > best_val:
            best_val, best_epoch = to_val, epoch
        if epoch not in checkpoints:
            continue
        logits = {"train": logits_of(train), "val": val_logits, "test": logits_of(test)}
        row = {
            "epoch": epoch,
            "best_epoch_so_far": best_epoch,
            "to_val": to_val,
            "to_test": accuracy(logits["test"].argmax(1).numpy(), test.official),
            "logit_norm": float(logits["train"].norm(dim=1).mean()),
        }
        for reading, transform in READINGS.items():
            inputs = {k: transform(v) for k, v in logits.items()}
            row[f"ts_{reading}"] = fit_secret(
                inputs, labels, torch.as_tensor(train.weight(secret)), classes, args.seed,
                args.secret_epochs,
            )  # fmt: skip
        rows.append(row)
        print(json.dumps(row), f"{time.perf_counter() - start_time:.0f} s", flush=True)
        result = {**vars(args), "rows": rows}
        write_atomic(out / f"{stem}.json", json.dumps(result, indent=1))
    plot(rows, args.experiment, args.dataset, out / f"{stem}.png")
    print(f"wrote {out / stem}.json and .png")


if __name__ == "__main__":
    main()
