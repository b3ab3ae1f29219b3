"""The hidden-learning run's report: report.md, the regime and robustness plots, a table."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from rich.table import Table

from splitsim.reporting import pct, pyplot, wire_section
from splitsim.runs import write_atomic

REGIMES = (("to_then_ts", "To-then-Ts"), ("to_and_ts", "To-and-Ts"), ("ts_only", "Ts-only"))


def plot_secret_accuracy(metrics: dict, path: Path) -> None:
    plt = pyplot()
    secrets = list(metrics["regimes"]["secrets"])
    fig, axes = plt.subplots(1, len(secrets), figsize=(4.2 * len(secrets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], secrets, strict=True):
        cell = metrics["regimes"]["secrets"][name]
        labels = [label for _, label in REGIMES] + ["deployed\n(Flower)"]
        values = [cell[key] for key, _ in REGIMES] + [
            metrics["deployment"]["secrets"][name]["accuracy"]
        ]
        colours = ["#8da0cb", "#e78ac3", "#a6d854", "#fc8d62"]
        bars = ax.bar(labels, [100 * v for v in values], color=colours)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.axhline(100 * cell["chance"], color="black", ls="--", lw=1, label="chance")
        ax.set_ylim(0, 105)
        ax.set_title(f"secret: {name}")
        ax.set_ylabel("secret accuracy (%)")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("What the server recovers from the scores, per training regime")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_distribution(plots: dict, path: Path, max_points: int = 2500) -> None:
    """Scores of held-out users, honest vs hidden N_o, coloured by secret class."""
    plt = pyplot()
    secrets = list(plots["test_secrets"])
    names = plots["official_names"]
    fig, axes = plt.subplots(len(secrets), 2, figsize=(9, 4 * len(secrets)), squeeze=False)
    rng = np.random.default_rng(0)
    n = len(next(iter(plots["test_secrets"].values())))
    keep = rng.permutation(n)[:max_points]
    two_scores = plots["test_scores"]["honest"].shape[1] == 2
    if not two_scores:  # more than two scores: a 2-D PCA of the score vectors
        from sklearn.decomposition import PCA

        names = ["PCA 1 of the scores", "PCA 2 of the scores"]
    for row, secret in enumerate(secrets):
        labels = plots["test_secrets"][secret][keep]
        for col, which in enumerate(("honest", "hidden")):
            ax = axes[row][col]
            scores = plots["test_scores"][which][keep]
            if not two_scores:
                scores = PCA(2, random_state=0).fit_transform(scores)
            for k, cls in enumerate(plots["secret_names"][secret]):
                mask = labels == k
                ax.scatter(scores[mask, 0], scores[mask, 1], s=4, alpha=0.5, label=cls)
            ax.set_title(f"{which} N_o, coloured by {secret}")
            ax.set_xlabel(names[0] if not two_scores else f"score: {names[0]}")
            ax.set_ylabel(names[1] if not two_scores else f"score: {names[1]}")
            ax.legend(markerscale=3, fontsize=8, loc="upper right")
    fig.suptitle("Held-out users' scores: the hidden network sorts them by the secret")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_robustness(robustness: dict, path: Path) -> None:
    """The paper's Table 2 as a picture: accuracy against weight-noise sigma, with spread."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(robustness), figsize=(4.5 * len(robustness), 3.6), squeeze=False
    )
    for ax, (name, rows) in zip(axes[0], robustness.items(), strict=True):
        sigma = [r["sigma"] for r in rows]
        for key, label in (("official", "official N_o"), ("secret", f"secret N_s ({name})")):
            mean = np.array([100 * r[f"{key}_mean"] for r in rows])
            std = np.array([100 * r[f"{key}_std"] for r in rows])
            ax.errorbar(sigma, mean, yerr=std, marker="o", capsize=3, label=label)
        ax.set_xlabel("sigma of the noise on every weight of N_o")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
    fig.suptitle("Weight-noise robustness of the hidden network (papers/001, Table 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def console_table(metrics: dict) -> Table:
    table = Table(title="hidden learning: headline numbers")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    official = metrics["regimes"]["official"]
    table.add_row("official accuracy, hidden N_o", pct(official["hidden"]["accuracy"]))
    table.add_row("official accuracy, honest N_o", pct(official["honest"]["accuracy"]))
    table.add_row(
        "official accuracy, deployed scores", pct(metrics["deployment"]["official"]["accuracy"])
    )
    for name, cell in metrics["regimes"]["secrets"].items():
        for key, label in REGIMES:
            table.add_row(f"{name}: {label}", pct(cell[key]))
        table.add_row(
            f"{name}: deployed (Flower)", pct(metrics["deployment"]["secrets"][name]["accuracy"])
        )
        table.add_row(f"{name}: chance", pct(cell["chance"]))
    table.add_row("records sent by clients", ", ".join(metrics["wire"]["client_records"]))
    return table


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    official = m["regimes"]["official"]
    out = io.StringIO()
    w = out.write
    w(f"# {scenario_name}: hidden learning\n\n")
    if results.get("tasks"):
        w(f"Tasks: official {results['tasks']['official']}, secret {results['tasks']['secret']}. ")
    w(f"Seed {results['seed']}; {m['deployment']['users']} users on {m['deployment']['clients']} ")
    w(f"Flower clients; defences: {results['defences'] or 'none'}.\n\n")
    w("## Official task (held-out users)\n\n| network | accuracy |")
    labels = [k for k in official["hidden"] if k != "accuracy"]
    w("".join(f" {k} |" for k in labels) + "\n|---|---|" + "---|" * len(labels) + "\n")
    for which in ("hidden", "honest"):
        row = official[which]
        w(f"| {which} N_o | {pct(row['accuracy'])} |")
        w("".join(f" {row[k]:.3f} |" if "auc" in k else f" {pct(row[k])} |" for k in labels) + "\n")
    dep = m["deployment"]["official"]
    w("\nScores as delivered through Flower (after the clients' defences): ")
    w(f"accuracy {pct(dep['accuracy'])}.\n\n## Secret tasks\n\n")
    w("| secret | To-then-Ts | To-and-Ts | Ts-only | deployed (Flower) | chance |\n")
    w("|---|---|---|---|---|---|\n")
    for name, cell in m["regimes"]["secrets"].items():
        deployed = m["deployment"]["secrets"][name]["accuracy"]
        w(f"| {name} | {pct(cell['to_then_ts'])} | {pct(cell['to_and_ts'])} ")
        w(f"| {pct(cell['ts_only'])} ")
        w(f"| {pct(deployed)} | {pct(cell['chance'])} |\n")
    w("\nTo-then-Ts is the black-box attacker on an honest network; To-and-Ts the hidden-learning ")
    w("supplier; Ts-only the upper bound (papers/001, Table 1).\n\n")
    w("![secret accuracy](secret_accuracy.png)\n\n")
    w("![score distribution](score_distribution.png)\n\n")
    if m.get("robustness"):
        w("## Weight-noise robustness (papers/001, Table 2)\n\n")
        w("| secret | sigma | official (mean ± std) | secret (mean ± std) |\n|---|---|---|---|\n")
        for name, rows in m["robustness"].items():
            for r in rows:
                w(f"| {name} | {r['sigma']:g} | {pct(r['official_mean'])} ")
                w(f"± {100 * r['official_std']:.1f} ")
                w(f"| {pct(r['secret_mean'])} ± {100 * r['secret_std']:.1f} |\n")
        w("\n![robustness](robustness.png)\n\n")
    w(wire_section(m["wire"]))
    return out.getvalue()


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    plot_secret_accuracy(results["metrics"], folder / "secret_accuracy.png")
    plot_score_distribution(plots, folder / "score_distribution.png")
    if results["metrics"].get("robustness"):
        plot_robustness(results["metrics"]["robustness"], folder / "robustness.png")
    write_atomic(folder / "report.md", markdown(scenario_name, results))
