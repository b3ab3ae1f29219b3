"""The stealthiest supplier the loss allows (issue 27): the Covid app's hidden N_o trained with a
weight lambda on the secret loss and a closeness mu to an honest N_o (``role.secret_weight``,
``role.closeness``; roles/hidden_learning/attack.py says how), each point audited.

    nohup python scripts/stealth_curve.py > results/hidden_learning/stealth/log.txt 2>&1 &

Per (lambda, mu) point, on the scenario's data and sizes (scenarios/hidden_covid_app.yaml,
its seed): official accuracy and severe/infected AUC of the hidden and the honest N_o on the
supplier's held-out records, each secret's To-and-Ts accuracy there, and ``splitsim.audit`` of
the hidden N_o on an auditor's own records (a fresh sample of the same population, drawn from
another seed: no record the supplier trained on): per secret the excess-leakage interval, whose
lower bound is the detection margin (> 0: the audit says "more"). The honest N_o is audited
once too (point ``honest``), the margin an honest supplier gets.

Only the hidden and the honest N_o are trained (``train_supplier(baselines=False)``); the
honest one trains alone first, so every point compares with the same honest N_o, bit for bit.
Each point is one JSON file written atomically; a finished point is read back, not retrained.
Then ``summary.md`` (the table) and ``curve.png`` (secret accuracy against the detection
margin and against the AUC gap, a marker per point) are rebuilt from every finished point.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from splitsim import seeds
from splitsim.audit import AuditData, audit
from splitsim.data.health_records import generate, to_score_data
from splitsim.metrics import accuracy
from splitsim.registry import DATASETS, MODELS
from splitsim.roles.hidden_learning.attack import (
    regime_metrics,
    split_validation,
    train_regimes,
    train_supplier,
)
from splitsim.roles.hidden_learning.protocol import official_network
from splitsim.roles.hidden_learning.scores import predict_scores, predict_secret
from splitsim.roles.hidden_learning.stacked import Regime
from splitsim.runs import write_atomic
from splitsim.scenario import Scenario, dataset_spec, load_scenario

LAMBDAS = (1.0, 0.3, 0.1, 0.03, 0.01)
MUS = (0.0, 1.0, 10.0, 100.0)
AUDITOR_SEED_OFFSET = 1000  # the auditor's sample: the scenario's seed + this, its own records


def point_name(lam: float, mu: float) -> str:
    return f"lambda{lam:g}_mu{mu:g}"


def train_point(scenario: Scenario, lam: float, mu: float) -> tuple[object, dict]:
    """The hidden and honest N_o of one point, with their held-out metrics."""
    t = scenario.training
    dataset = DATASETS.get(scenario.dataset.name)(
        scenario.dataset.params, scenario.seed, scenario.tasks
    )
    spec = dataset.spec
    train, test = dataset.supplier_train(), dataset.supplier_test()
    secrets = list(scenario.role.params.secrets or spec.secret_classes)
    shape = tuple(int(d) for d in train.x.shape[1:])
    secret_spec = scenario.models.secret
    models = train_supplier(
        train, spec.official, secrets,
        {name: len(spec.secret_classes[name]) for name in secrets},
        lambda: official_network(scenario, shape).body,
        lambda n_in, n_out: MODELS.get(secret_spec.name).build(secret_spec.params, (n_in,), n_out),
        epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
        validation_fraction=t.validation_fraction, seed=scenario.seed, on_epoch=lambda _: None,
        secret_weight=lam, closeness=mu, baselines=False,
    )  # fmt: skip
    metrics = regime_metrics(models, test, secrets)
    metrics.pop("history")
    return models, metrics


def black_box(scenario: Scenario) -> dict:
    """The paper's To-then-Ts on the sweep's honest N_o: N_s per secret trained on its frozen
    scores, the black-box attacker's accuracy that a stealthy supplier has to beat."""
    t = scenario.training
    dataset = DATASETS.get(scenario.dataset.name)(
        scenario.dataset.params, scenario.seed, scenario.tasks
    )
    spec, test = dataset.spec, dataset.supplier_test()
    secrets = list(scenario.role.params.secrets or spec.secret_classes)
    models, _ = train_point(scenario, 1.0, 0.0)  # its honest N_o is every point's, bit for bit
    train, val = split_validation(dataset.supplier_train(), t.validation_fraction, scenario.seed)
    secret_spec = scenario.models.secret
    regimes = []
    for i, name in enumerate(secrets):
        seed = seeds.int_seed(scenario.seed, "hidden.network_init", 10 + i)  # as train_supplier
        torch.manual_seed(seed)
        net = MODELS.get(secret_spec.name).build(
            secret_spec.params, (spec.official.outputs + train.side.shape[1],),
            len(spec.secret_classes[name]),
        )  # fmt: skip
        regimes.append(Regime(models.honest.official, {name: net}, False, True, seed))
    train_regimes(regimes, train, val, spec.official, stack=True, epochs=t.epochs,
                  batch_size=t.batch_size, lr=t.lr, on_epoch=lambda _: None)  # fmt: skip
    scores = predict_scores(models.honest.official, test.x)
    return {
        "point": "black_box",
        "to_then_ts": {
            name: accuracy(predict_secret(r.secrets[name], scores, test.side), test.secrets[name])
            for name, r in zip(secrets, regimes, strict=True)
        },
    }


def auditor_data(scenario: Scenario, records: int) -> AuditData:
    spec = dataset_spec(scenario)
    secrets = list(scenario.role.params.secrets or spec.secret_classes)
    sample = generate(records, seeds.stream(scenario.seed + AUDITOR_SEED_OFFSET, "records.test"))
    return AuditData.from_score_data(
        to_score_data(sample), spec.official, secrets, spec.secret_classes, source="auditor sample"
    )


def audited(scenario: Scenario, body: torch.nn.Module, data: AuditData) -> dict:
    shape = DATASETS.get(scenario.dataset.name).input_shape(scenario.dataset.params)
    result = audit(body, data, lambda: official_network(scenario, tuple(shape)).body, seed=0)
    result.pop("plots")
    return result


def run_point(scenario: Scenario, lam: float | None, mu: float | None, data: AuditData) -> dict:
    """One point (``lam is None``: the honest N_o itself, audited)."""
    start = time.perf_counter()
    models, metrics = train_point(scenario, 1.0 if lam is None else lam, mu or 0.0)
    trained = time.perf_counter() - start
    body = (models.honest if lam is None else models.hidden).official.body
    result = audited(scenario, body, data)
    return {
        "point": "honest" if lam is None else point_name(lam, mu),
        "secret_weight": lam,
        "closeness": mu,
        "supplier": metrics,
        "audit": result,
        "seconds": {"training": trained, "audit": time.perf_counter() - start - trained},
    }


def rows(out: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    found = [r for r in found if r["point"] != "black_box"]
    honest = [r for r in found if r["point"] == "honest"]
    rest = sorted(
        (r for r in found if r["point"] != "honest"),
        key=lambda r: (-r["secret_weight"], r["closeness"]),
    )
    return honest + rest


def numbers(r: dict) -> dict:
    """A point's figures: accuracy in %, the gaps hidden minus honest (audited: honest)."""
    official = r["supplier"]["official"]
    shipped = official["honest" if r["point"] == "honest" else "hidden"]
    honest = official["honest"]
    out = {
        "accuracy": 100 * shipped["accuracy"],
        "accuracy_gap": 100 * (honest["accuracy"] - shipped["accuracy"]),
        "severe_auc": shipped["severe_auc"],
        "severe_auc_gap": honest["severe_auc"] - shipped["severe_auc"],
        "infected_auc_gap": honest["infected_auc"] - shipped["infected_auc"],
        "secrets": {},
    }
    for name, cell in r["audit"]["sensitive"].items():
        secret = r["supplier"]["secrets"][name]
        out["secrets"][name] = {
            # the honest N_o has no N_s: its secret cell is the audit's decoder on its scores
            "accuracy": None if r["point"] == "honest" else 100 * secret["to_and_ts"],
            "chance": 100 * secret["chance"],
            "excess": 100 * cell["excess"],
            "margin": 100 * cell["interval"][0],
            "high": 100 * cell["interval"][1],
            "verdict": cell["verdict"],
        }
    return out


def summarise(out: Path) -> str:
    found = rows(out)
    if not found:
        return ""
    secrets = list(found[0]["audit"]["sensitive"])
    head = "| lambda | mu | accuracy | gap (points) | severe AUC | AUC gap severe / infected | "
    head += " | ".join(
        f"{s} To-and-Ts | {s} audit excess [95 % interval] | {s} verdict" for s in secrets
    )
    lines = [head + " |", "|" + "---|" * (6 + 3 * len(secrets))]
    for r in found:
        n = numbers(r)
        cells = [
            "honest" if r["point"] == "honest" else f"{r['secret_weight']:g}",
            "-" if r["point"] == "honest" else f"{r['closeness']:g}",
            f"{n['accuracy']:.2f}",
            f"{n['accuracy_gap']:+.2f}",
            f"{n['severe_auc']:.3f}",
            f"{n['severe_auc_gap']:+.3f} / {n['infected_auc_gap']:+.3f}",
        ]
        for s in secrets:
            c = n["secrets"][s]
            cells += [
                "-" if c["accuracy"] is None else f"{c['accuracy']:.1f}",
                f"{c['excess']:+.1f} [{c['margin']:+.1f}, {c['high']:+.1f}]",
                c["verdict"],
            ]
        lines.append("| " + " | ".join(cells) + " |")
    first = found[0]["supplier"]["secrets"]
    chance = ", ".join(f"{s} {100 * first[s]['chance']:.1f}" for s in secrets)
    lines.append(f"\nChance (most common class, held-out records): {chance} %.")
    if (out / "black_box.json").exists():
        box = json.loads((out / "black_box.json").read_text())["to_then_ts"]
        text = ", ".join(f"{s} {100 * box[s]:.1f}" for s in secrets)
        lines.append(f"The black-box attacker (To-then-Ts on this honest N_o): {text} %.")
    text = "\n".join(lines) + "\n"
    write_atomic(out / "summary.md", text)
    return text


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [r for r in rows(out) if r["point"] != "honest"]
    if not found:
        return
    secrets = list(found[0]["audit"]["sensitive"])
    mus = sorted({r["closeness"] for r in found})
    colours = dict(zip(mus, plt.cm.viridis([i / max(1, len(mus) - 1) for i in range(len(mus))]),
                       strict=True))  # fmt: skip
    markers = dict(zip(secrets, ["o", "s", "^", "D"], strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for r in found:
        n = numbers(r)
        for s in secrets:
            c = n["secrets"][s]
            style = dict(color=colours[r["closeness"]], marker=markers[s], s=36, alpha=0.85)
            axes[0].scatter(c["margin"], c["accuracy"], **style)
            axes[1].scatter(n["severe_auc_gap"], c["accuracy"], **style)
            if s == secrets[0]:  # the others crowd near chance: their labels would overlap
                axes[0].annotate(f"{r['secret_weight']:g}", (c["margin"], c["accuracy"]),
                                 fontsize=6, xytext=(3, 2), textcoords="offset points")  # fmt: skip
    axes[0].axvline(0, color="grey", lw=0.8, ls="--")
    axes[1].axvline(0.01, color="grey", lw=0.8, ls="--")
    axes[0].set_xlabel("audit's detection margin: lower bound of the excess interval (points)")
    axes[1].set_xlabel("severe-risk AUC gap, honest minus hidden")
    axes[0].set_ylabel("secret accuracy, To-and-Ts (%)")
    box = out / "black_box.json"
    box = json.loads(box.read_text())["to_then_ts"] if box.exists() else {}
    for s in secrets:
        chance = 100 * found[0]["supplier"]["secrets"][s]["chance"]
        for ax in axes:
            ax.axhline(chance, color="grey", lw=0.5, ls=":")
            if s in box:
                ax.axhline(100 * box[s], color="tab:red", lw=0.6, ls="-.")
    handles = [
        plt.Line2D([], [], color=colours[m], marker="o", ls="", label=f"mu = {m:g}") for m in mus
    ] + [
        plt.Line2D([], [], color="black", marker=markers[s], ls="", label=s, fillstyle="none")
        for s in secrets
    ]
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(
        "Stealthy hidden learning on the Covid app (labels: lambda); dotted: chance, "
        "dash-dot: the black-box attacker (To-then-Ts)"
    )
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    write_atomic(out / "curve.png", image.getvalue())


def _commit() -> str:
    import subprocess

    run = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return run.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/hidden_covid_app.yaml")
    parser.add_argument("--set", action="append", default=[], help="scenario override")
    parser.add_argument("--out", default="results/hidden_learning/stealth")
    parser.add_argument("--lambdas", default=",".join(f"{v:g}" for v in LAMBDAS))
    parser.add_argument("--mus", default=",".join(f"{v:g}" for v in MUS))
    parser.add_argument("--audit-records", type=int, default=6000)
    parser.add_argument("--summary-only", action="store_true", help="rebuild table and plot")
    args = parser.parse_args()
    # Small networks and small trees: on a shared 2-core machine more threads only wait for
    # each other (the audit's trees took minutes instead of seconds under load).
    torch.set_num_threads(1)
    threadpool_limits(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        scenario = load_scenario(args.scenario, args.set)
        data = auditor_data(scenario, args.audit_records)
        grid = [(None, None)] + [
            (float(lam), float(mu)) for mu in args.mus.split(",") for lam in args.lambdas.split(",")
        ]
        for lam, mu in grid:
            name = "honest" if lam is None else point_name(lam, mu)
            path = out / f"{name}.json"
            if path.exists():
                continue  # finished: read back by the summary
            result = run_point(scenario, lam, mu, data)
            result["scenario"] = {
                "file": args.scenario,
                "overrides": args.set,
                "seed": scenario.seed,
                "audit_records": args.audit_records,
                "commit": _commit(),
            }
            write_atomic(path, json.dumps(result, indent=1))
            n = numbers(result)
            secrets = {s: f"{c['accuracy'] or 0:.1f} % margin {c['margin']:+.1f}"
                       for s, c in n["secrets"].items()}  # fmt: skip
            print(name, f"accuracy gap {n['accuracy_gap']:+.2f}",
                  f"severe AUC gap {n['severe_auc_gap']:+.3f}", secrets,
                  {k: round(v, 1) for k, v in result["seconds"].items()}, flush=True)  # fmt: skip
        if not (out / "black_box.json").exists():
            write_atomic(out / "black_box.json", json.dumps(black_box(scenario), indent=1))
    print(summarise(out))
    plot(out)


if __name__ == "__main__":
    main()
