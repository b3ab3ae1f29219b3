"""The audit's folder: audit.json, report.md (and report.html), and the pictures: the released
scores coloured by each sensitive attribute (supplied beside honest, as the Covid run draws
them) and the excess leakage with its interval."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from splitsim.reporting import html_page, pct, pyplot, save_figure
from splitsim.runs import write_atomic

MAX_POINTS = 2500


def plot_scores(plots: dict, path: Path) -> None:
    plt = pyplot()
    names = list(plots["sensitive"])
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 4 * len(names)), squeeze=False)
    n = len(next(iter(plots["sensitive"].values())))
    keep = np.random.default_rng(0).permutation(n)[:MAX_POINTS]
    scores = {k: v[keep] for k, v in plots["scores"].items()}
    width = scores["supplied"].shape[1]
    names_2 = plots["official_names"] if len(plots["official_names"]) == 2 else None
    axis = (names_2 or ["output 0", "output 1"]) if width == 2 else None
    if width > 2:  # a 2-D PCA of the score vectors, fitted on both models' scores together
        from sklearn.decomposition import PCA

        pca = PCA(2, random_state=0).fit(np.vstack(list(scores.values())))
        scores = {k: pca.transform(v) for k, v in scores.items()}
        axis = ["PCA 1 of the scores", "PCA 2 of the scores"]
    for row, name in enumerate(names):
        labels = plots["sensitive"][name][keep]
        for col, which in enumerate(("reference", "supplied")):
            ax = axes[row][col]
            s = scores[which]
            y = s[:, 1] if s.shape[1] > 1 else np.random.default_rng(1).random(len(s))
            for k, cls in enumerate(plots["classes"][name]):
                mask = labels == k
                ax.scatter(s[mask, 0], y[mask], s=4, alpha=0.5, label=cls)
            ax.set_title(
                f"{'honest reference' if which == 'reference' else 'supplied model'}, "
                f"coloured by {name}",
                fontsize=10,
            )
            ax.set_xlabel(axis[0] if axis else "score")
            ax.set_ylabel(axis[1] if axis and s.shape[1] > 1 else "jitter")
            ax.legend(markerscale=3, fontsize=7, loc="upper right")
    fig.suptitle("What each model releases for the auditor's records")
    fig.tight_layout()
    save_figure(fig, path)


def plot_excess(result: dict, path: Path) -> None:
    plt = pyplot()
    names = list(result["sensitive"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
    for i, name in enumerate(names):
        cell = result["sensitive"][name]
        lo, hi = (100 * v for v in cell["interval"])
        x = 100 * cell["excess"]
        colour = {"more": "#d62728", "less": "#2ca02c"}.get(cell["verdict"], "#7f7f7f")
        ax.errorbar([i], [x], yerr=[[x - lo], [hi - x]], fmt="o", color=colour, capsize=6)
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("excess decoding accuracy (points)")
    ax.set_title("Supplied minus honest, 95 % interval", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def markdown(result: dict, model: str, data: str) -> str:
    out = io.StringIO()
    w = out.write
    rec = result["records"]
    w(f"# Audit of {model}\n\n")
    w(
        f"Records: {data} ({rec['total']}: {rec['reference_training']} train "
        f"{result['references']} honest references, {rec['decoded']} are decoded, "
        f"{result['folds']}-fold cross-fitted). Released: {result['release']}. "
        f"Seed {result['seed']}.\n\n## Verdict\n\n"
    )
    for cell in result["sensitive"].values():
        w(f"- {cell['sentence']}.\n")
    w(
        "\n## Sensitive attributes\n\n| attribute | supplied | honest (mean of references) "
        "| excess (points) | 95 % interval | side fields alone | chance |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for name, cell in result["sensitive"].items():
        lo, hi = (100 * v for v in cell["interval"])
        side = pct(cell["side_only"]) if cell["side_only"] is not None else "-"
        w(
            f"| {name} | {pct(cell['supplied'])} | {pct(cell['reference'])} | "
            f"{100 * cell['excess']:+.1f} | [{lo:+.1f}, {hi:+.1f}] | {side} | "
            f"{pct(cell['chance'])} |\n"
        )
    w(
        "\nDecoding accuracy of gradient-boosted trees reading the released scores (and side "
        "fields), on records they were not trained on. The interval counts both the records "
        "(paired bootstrap) and how much honest networks differ among themselves (the spread "
        "of the references).\n\n![excess](excess.png)\n\n## Official task\n\n"
        "| model | accuracy | label | AUC | calibration error (ECE) | Brier |\n"
        "|---|---|---|---|---|---|\n"
    )
    for which in ("supplied", "reference"):
        q = result["official"][which]
        for label, cell in q.items():
            if label == "accuracy":
                continue
            w(
                f"| {which} | {pct(q['accuracy'])} | {label} | {cell['auc']:.3f} | "
                f"{cell['ece']:.3f} | {cell['brier']:.3f} |\n"
            )
    w("\n![scores](scores.png)\n")
    return out.getvalue()


def write(folder: Path, result: dict, model: str, data: str) -> None:
    plots = result.pop("plots")
    plot_scores(plots, folder / "scores.png")
    plot_excess(result, folder / "excess.png")
    text = markdown(result, model, data)
    write_atomic(folder / "report.md", text)
    write_atomic(folder / "report.html", html_page(text, folder, f"audit of {model}"))
    write_atomic(folder / "audit.json", json.dumps(result, indent=1))
