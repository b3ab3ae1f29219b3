"""Held-out check of ``splitsim audit`` (issue 27): hidden and honest Covid-app networks trained
here, outside the test suite, with other seeds, sizes and secrets, each audited on records the
supplier never saw. It prints and writes whether the audit separates them and whether its
intervals cover the truth (an honest model's excess is zero in expectation).

    python scripts/audit_holdout.py --out results/audit/holdout           # resumable

Each model is written as a state dict (``models/<name>.pt``) and audited with the same code
path as ``python -m splitsim audit MODEL --arch health_mlp ...``; each finished audit is a JSON
file that a second run reads back instead of redoing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from splitsim import seeds
from splitsim.audit import AuditData, audit, load_model
from splitsim.audit.model import build_architecture
from splitsim.data.health_records import (
    OFFICIAL_TASKS,
    SECRET_CLASSES,
    CovidHealthRecords,
    generate,
    to_score_data,
)
from splitsim.registry import MODELS
from splitsim.roles.hidden_learning.attack import split_validation, train_regimes
from splitsim.roles.hidden_learning.scores import ScoreNet
from splitsim.roles.hidden_learning.stacked import Regime
from splitsim.runs import write_atomic

TASK = CovidHealthRecords.fixed.official
INPUT = CovidHealthRecords.input_shape(None)

# (name, hidden?, seed, training records, hidden widths, secrets the supplier hides)
MODELS_HELD_OUT = [
    ("hidden-s11-20k-both", True, 11, 20000, [32, 32], ["cv_risk", "insurer"]),
    ("hidden-s12-10k-cv", True, 12, 10000, [32, 32], ["cv_risk"]),
    ("hidden-s13-20k-ins-w64", True, 13, 20000, [64, 64], ["insurer"]),
    ("hidden-s14-5k-both-w16", True, 14, 5000, [16, 16], ["cv_risk", "insurer"]),
    ("honest-s21-20k", False, 21, 20000, [32, 32], []),
    ("honest-s22-10k", False, 22, 10000, [32, 32], []),
    ("honest-s23-20k-w64", False, 23, 20000, [64, 64], []),
    ("honest-s24-5k-w16", False, 24, 5000, [16, 16], []),
]


def train_model(
    hidden: bool, seed: int, records: int, widths: list[int], secrets: list[str], epochs: int
) -> torch.nn.Module:
    """One supplier's shipped N_o: To-and-Ts when hidden (papers/001's loss), To otherwise."""
    data = to_score_data(generate(records, seeds.stream(seed, "records.train")))
    train, val = split_validation(data, 0.1, seed)
    params = MODELS.get("health_mlp").Params(hidden=widths)
    torch.manual_seed(seed)
    official = ScoreNet(MODELS.get("health_mlp").build(params, INPUT, TASK.outputs), TASK)
    nets = {
        s: MODELS.get("secret_mlp").build(
            MODELS.get("secret_mlp").Params(),
            (TASK.outputs + data.side.shape[1],),
            len(SECRET_CLASSES[s]),
        )
        for s in (secrets if hidden else [])
    }
    regime = Regime(official, nets, True, False, seed)
    train_regimes(
        [regime],
        train,
        val,
        TASK,
        stack=True,
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        on_epoch=lambda _: None,
    )
    return official.body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/audit/holdout")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--records", type=int, default=6000, help="the auditor's records")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--reference-epochs", type=int, default=30)
    parser.add_argument(
        "--models", default=None, help="folder of trained models to reuse (default: <out>/models)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    models = Path(args.models) if args.models else out / "models"
    models.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # the auditor's records: a sample of the same population no supplier trained on
    records = generate(args.records, seeds.stream(1000, "records.test"))
    data = AuditData.from_score_data(
        to_score_data(records), TASK, list(SECRET_CLASSES), SECRET_CLASSES, source="auditor sample"
    )
    chosen = [m for m in MODELS_HELD_OUT if not args.only or m[0] in args.only.split(",")]
    for name, hidden, seed, n, widths, secrets in chosen:
        result_path = out / f"{name}.json"
        if result_path.exists():
            continue
        model_path = models / f"{name}.pt"
        start = time.perf_counter()
        if not model_path.exists():
            body = train_model(hidden, seed, n, widths, secrets, args.epochs)
            torch.save(body.state_dict(), model_path)
        trained = time.perf_counter() - start
        params = {"hidden": widths}
        model = load_model(model_path, "health_mlp", params, INPUT)

        def reference(path: Path = model_path, params: dict = params) -> torch.nn.Module:
            return build_architecture(str(path), "health_mlp", params, INPUT, TASK.outputs)

        result = audit(
            model, data, reference, seed=0, progress=print, reference_epochs=args.reference_epochs
        )
        result.pop("plots")
        result["model"] = {
            "name": name,
            "hidden": hidden,
            "seed": seed,
            "records": n,
            "widths": widths,
            "secrets": secrets,
            "train_s": trained,
            "audit_s": time.perf_counter() - start - trained,
        }
        write_atomic(result_path, json.dumps(result, indent=1))
        print(name, {k: round(v["excess"], 3) for k, v in result["sensitive"].items()})
    summarise(out)


def summarise(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = [
        "| model | hides | secret | excess (points) | 95 % interval | verdict | truth |",
        "|---|---|---|---|---|---|---|",
    ]
    covered = total = 0
    for r in rows:
        m = r["model"]
        for s, cell in r["sensitive"].items():
            hides = s in m["secrets"]
            lo, hi = cell["interval"]
            lines.append(
                f"| {m['name']} | {', '.join(m['secrets']) or '-'} | {s} | "
                f"{100 * cell['excess']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                f"{cell['verdict']} | {'hidden' if hides else 'not hidden'} |"
            )
            if not hides:  # the truth is zero excess for an attribute nobody hid
                total += 1
                covered += lo <= 0 <= hi
    lines.append(f"\nIntervals that contain 0 where nothing was hidden: {covered} of {total}.")
    hidden_cells = [(r, s) for r in rows for s in r["sensitive"] if s in r["model"]["secrets"]]
    found = sum(r["sensitive"][s]["verdict"] == "more" for r, s in hidden_cells)
    lines.append(f"Hidden attributes found (verdict 'more'): {found} of {len(hidden_cells)}.")
    official = [(r["model"]["name"], r["official"]) for r in rows]
    lines.append("\n| model | official accuracy supplied / reference | severe AUC | infected AUC |")
    lines.append("|---|---|---|---|")
    for name, o in official:
        s, ref = o["supplied"], o["reference"]
        lines.append(
            f"| {name} | {100 * s['accuracy']:.1f} / {100 * ref['accuracy']:.1f} | "
            + " | ".join(f"{s[t]['auc']:.3f} / {ref[t]['auc']:.3f}" for t in OFFICIAL_TASKS)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    write_atomic(out / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
