"""The label-inference run's report: report.md, scores.png (the attacks' scores by true label),
epochs.png (AUC or accuracy per epoch beside chance), and a console table."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from rich.table import Table

from splitsim.reporting import defences_text, pct, pyplot, save_figure, wire_section
from splitsim.runs import write_atomic


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _leak(row: dict, key: str, binary: bool) -> str:
    return _num(row.get(key)) if binary else pct(row.get(key))


def plot_scores(plots: dict, binary: bool, path: Path, title: str) -> None:
    """Histograms of each attack's score, one colour per true label (binary), or the best
    cosine by true digit (ten classes)."""
    plt = pyplot()
    y = np.asarray(plots["y"])
    panels = [("norm", "gradient norm (oriented)"), ("direction", "cosine with known example")]
    if not binary:
        panels = panels[1:]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.3), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        values = np.asarray(plots[key])
        finite = np.isfinite(values)
        classes = np.unique(y)
        edges = np.histogram_bin_edges(values[finite], bins=40) if finite.any() else 10
        for c in classes:
            ax.hist(values[finite & (y == c)], bins=edges, alpha=0.55, label=f"label {c}")
        ax.set_xlabel(label)
        ax.set_ylabel("watched examples")
        if len(classes) <= 2:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_epochs(metrics: dict, path: Path) -> None:
    plt = pyplot()
    rows = metrics["leakage"]["per_epoch"]
    binary = metrics["attack"]["task"] == "binary"
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    rounds = [r["round"] for r in rows]
    ax.plot(rounds, [r["direction"] for r in rows], "o-", label="direction attack")
    if binary:
        ax.plot(rounds, [r["norm"] for r in rows], "s-", label="norm attack")
    ax.plot(rounds, [r["chance"] for r in rows], "k--", label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("AUC" if binary else "accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Labels inferred from returned gradients", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def console_table(metrics: dict) -> Table:
    binary = metrics["attack"]["task"] == "binary"
    table = Table(title="label inference: headline numbers")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("chance", justify="right")
    u, leak = metrics["utility"], metrics["leakage"]["all_epochs"]
    table.add_row("task accuracy (server's answers)", pct(u["accuracy"]), pct(u["chance"]))
    table.add_row(leak["direction_name"], _leak(leak, "direction", binary),
                  _leak(leak, "chance", binary))  # fmt: skip
    if binary:
        table.add_row("norm attack AUC", _num(leak["norm"]), "0.500")
    table.add_row("records sent by clients", ", ".join(metrics["wire"]["client_records"]), "")
    return table


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    u, a, tr = m["utility"], m["attack"], m["training"]
    binary = a["task"] == "binary"
    out = io.StringIO()
    w = out.write
    w(f"# {scenario_name}: a curious data owner infers the server's labels\n\n")
    task = (
        f"binary (digits {', '.join(map(str, a['positive']))} against the rest)"
        if binary
        else "ten digits"
    )
    w(f"Seed {results['seed']}; {tr['data_owners']} data owners, {tr['schedule']} schedule, ")
    w(f"task {task}; defences: {defences_text(results)}. Data owner {a['attacker']} watched ")
    w(f"{a['watched_examples']} returned gradients and knew {a['known_examples']} labels ")
    w("(Li et al., ICLR 2022, sections 4.1-4.2).\n\n")
    w(f"Task accuracy of the server's answers on the owner's {u['test_images']} test images: ")
    w(f"**{pct(u['accuracy'])}** (majority class {pct(u['chance'])}).\n\n")
    what = "AUC" if binary else "accuracy"
    w(f"## The attack's {what}, per epoch, on the examples whose labels it did not know\n\n")
    head = (
        "| epoch | examples | direction | norm | chance |"
        if binary
        else ("| epoch | examples | direction | chance |")
    )
    w(head + "\n")
    w("|" + "---|" * (head.count("|") - 1) + "\n")
    rows = [*m["leakage"]["per_epoch"], {"round": "all", **m["leakage"]["all_epochs"]}]
    for row in rows:
        cells = [str(row["round"]), str(row["examples"]), _leak(row, "direction", binary)]
        if binary:
            cells.append(_num(row["norm"]))
        cells.append(_leak(row, "chance", binary))
        w("| " + " | ".join(cells) + " |\n")
    if a["defences_known"]:
        w(f"\nAdaptive: the owner knew {', '.join(a['defences_known'])}'s scale and projected ")
        w("the gradients onto their signal subspace first.\n")
    if m["protection"]:
        w("\n## The server's gradient defence, as it published it\n\n")
        w("| quantity | value |\n|---|---|\n")
        for key, value in m["protection"].items():
            w(f"| {key} | {value:.4g} |\n")
    w("\n![scores](scores.png)\n\n![epochs](epochs.png)\n\n")
    w(wire_section(m["wire"]))
    return out.getvalue()


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    binary = results["metrics"]["attack"]["task"] == "binary"
    title = f"{scenario_name}: attack scores by true label, defences: {defences_text(results)}"
    plot_scores(plots, binary, folder / "scores.png", title)
    plot_epochs(results["metrics"], folder / "epochs.png")
    write_atomic(folder / "report.md", markdown(scenario_name, results))
