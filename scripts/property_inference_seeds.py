"""Active vs passive property inference over seeds: one `splitsim run` per seed, each training
once per alpha with the same data schedule, then a table of AUC and task accuracy per alpha and
the gap to the passive attacker (mean, standard deviation, min over seeds).

    python scripts/property_inference_seeds.py --seeds 0 1 2 3 4 --alphas 1.0 0.7 0.3 0.1 \
        --out results/property_inference

Resumable: a seed whose run already finished in ``--out`` is read back, not run again.
Writes ``seeds.csv`` and ``summary.md`` atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from splitsim.runs import write_atomic

ROOT = Path(__file__).resolve().parents[1]


def finished(folder: Path) -> Path | None:
    runs = sorted(folder.glob("*/*/results.json")) if folder.exists() else []
    return runs[-1] if runs else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios/fl_property_inference.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.7, 0.3, 0.1])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "results/property_inference")
    args = parser.parse_args()
    if 1.0 not in args.alphas:
        parser.error("--alphas must include 1.0, the passive attacker the gaps are measured to")
    active = [a for a in args.alphas if a != 1.0]
    rows = []
    for seed in args.seeds:
        folder = args.out / f"seed{seed}"
        result = finished(folder)
        if result is None:
            command = [sys.executable, "-m", "splitsim", "run", args.scenario, "--out", str(folder),
                       "--set", f"seed={seed}", "--set", f"role.alpha={args.alphas[0]}",
                       "--set", f"role.compare_alphas={list(args.alphas[1:])}"]  # fmt: skip
            for expr in args.overrides:
                command += ["--set", expr]
            print(f"seed {seed}: {' '.join(command[3:])}", flush=True)
            subprocess.run(command, check=True)
            result = finished(folder)
        else:
            print(f"seed {seed}: read back {result.parent}", flush=True)
        assert result is not None
        for row in json.loads(result.read_text())["metrics"]["attackers"]:
            rows.append({"seed": seed, "alpha": row["alpha"], "auc": row["auc"],
                         "accuracy": row["accuracy"],
                         "probe_auc": row["features"]["probe_auc"]})  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(args.out / "seeds.csv", buffer.getvalue())

    def value(seed: int, alpha: float, key: str) -> float:
        return next(r[key] for r in rows if r["seed"] == seed and r["alpha"] == alpha)

    lines = [
        f"Seeds {args.seeds}; mean ± standard deviation over seeds (min of the gap in brackets).",
        "",
        "| alpha | inference AUC | task accuracy | feature probe AUC | AUC gap to passive "
        "| accuracy gap (points) | seeds with AUC above passive |",
        "|---|---|---|---|---|---|---|",
    ]
    for alpha in args.alphas:
        auc = np.array([value(s, alpha, "auc") for s in args.seeds])
        acc = np.array([value(s, alpha, "accuracy") for s in args.seeds])
        probe = np.array([value(s, alpha, "probe_auc") for s in args.seeds])
        line = (
            f"| {alpha:g} | {auc.mean():.3f} ± {auc.std(ddof=1) if len(auc) > 1 else 0:.3f} "
            f"| {100 * acc.mean():.2f} ± {100 * acc.std(ddof=1) if len(acc) > 1 else 0:.2f} "
            f"| {probe.mean():.3f} "
        )
        if alpha in active:
            gap = auc - np.array([value(s, 1.0, "auc") for s in args.seeds])
            cost = 100 * (acc - np.array([value(s, 1.0, "accuracy") for s in args.seeds]))
            spread = gap.std(ddof=1) if len(gap) > 1 else 0
            line += (
                f"| {gap.mean():+.3f} ± {spread:.3f} ({gap.min():+.3f}) "
                f"| {cost.mean():+.2f} ± {cost.std(ddof=1) if len(cost) > 1 else 0:.2f} "
                f"| {int((gap > 0).sum())}/{len(gap)} |"
            )
        else:
            line += "| (passive) | | |"
        lines.append(line)
    write_atomic(args.out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
