"""The property-inference run's report: a table per attacker (alpha), features.png (the paper's
Figure 3: the global model's features of test records, projected, coloured by the property,
one panel per alpha), inference.png (the adversary's score per round against the truth, and
the ROC curves) and accuracy.png (the global model's task accuracy per round)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from splitsim.reporting import class_counts_section, pct, pyplot, save_figure, wire_section
from splitsim.runs import write_atomic


def project(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D projection of features: t-SNE (as the paper's figures) or PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    perplexity = min(30.0, (len(features) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features
    )


def _name(row: dict) -> str:
    return f"{row['role']} (alpha {row['alpha']:g})"


def console_table(metrics: dict) -> Table:
    table = Table(title="property inference in federated training")
    for column in ("attacker", "inference AUC", "task accuracy", "feature probe AUC"):
        table.add_column(column)
    for row in metrics["attackers"]:
        table.add_row(
            _name(row),
            f"{row['auc']:.3f}",
            pct(row["accuracy"]),
            f"{row['features']['probe_auc']:.3f}",
        )
    return table


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    prop = m["property"]
    gap = m["active_minus_passive"]
    eps = m["defences"]["epsilon"]
    lines = [
        f"# {scenario_name}: property inference in federated training (papers/002)",
        "",
        f"FedAvg over Flower: {m['participants']['honest']} honest participants and one "
        f"adversary, {prop['rounds']} rounds. Task: {len(prop['task_groups'])} classes "
        f"({'; '.join(' + '.join(g) for g in prop['task_groups'])}). Property: "
        f"{', '.join(prop['classes'])}. The target (partition {prop['target']}) trained on "
        f"records with the property ({pct(prop['target_fraction'])} of its records) in "
        f"{prop['property_rounds']} of {prop['rounds']} rounds.",
        "",
        "| attacker | property-inference AUC | global task accuracy | feature probe AUC "
        "| scored rounds |",
        "|---|---|---|---|---|",
    ]
    for row in m["attackers"]:
        lines.append(
            f"| {_name(row)} | {row['auc']:.3f} | {pct(row['accuracy'])} "
            f"| {row['features']['probe_auc']:.3f} | {row['scored_rounds']} |"
        )
    lines.append("")
    if gap is not None:
        lines.append(
            f"Active minus passive: AUC {gap['auc']:+.3f}, task accuracy "
            f"{100 * gap['accuracy']:+.2f} points, feature probe AUC {gap['probe_auc']:+.3f}."
        )
        lines.append("")
    if eps is not None:
        lines += [f"DP-SGD: each honest participant's epsilon over the run is {eps:.2f}.", ""]
    if m["failures"]:
        lines += [f"{len(m['failures'])} failed participant calls (see results.json).", ""]
    counts = m["participants"].get("class_counts")
    if counts:
        what = "honest participants' training records per class"
        names = m["participants"]["classes"]
        lines.append(class_counts_section(counts, m["participants"]["partitioner"], what, names))
    lines += [
        "AUC chance level 0.5; task accuracy chance "
        f"{pct(m['chance'])}. Feature probe AUC: a linear probe of the property on the final "
        "global model's features of held-out test records.",
        "",
        "![features](features.png)",
        "",
        "![inference](inference.png)",
        "",
        "![accuracy](accuracy.png)",
        "",
        wire_section(m["wire"]),
    ]
    return "\n".join(lines)


def _features_figure(plots: dict, path: Path) -> None:
    plt = pyplot()
    panels = plots["projections"]
    prop = np.asarray(plots["property"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    rows = {f"{r['alpha']:g}": r for r in plots["attackers"]}
    for ax, (alpha, points) in zip(axes[0], panels.items(), strict=True):
        points = np.asarray(points)
        for value, colour, label in ((0, "tab:blue", "without"), (1, "tab:red", "with")):
            mask = prop == value
            ax.scatter(points[mask, 0], points[mask, 1], s=4, c=colour, label=f"{label} property")
        ax.set_title(f"{rows[alpha]['role']}, alpha {alpha}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, markerscale=3)
    fig.suptitle("global model's features of test records (cf. papers/002, Figure 3)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _inference_figure(attackers: list[dict], path: Path) -> None:
    plt = pyplot()
    from sklearn.metrics import roc_curve

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for i, row in enumerate(attackers):
        scores, truth = np.asarray(row["scores"]), np.asarray(row["truth"])
        x = np.asarray(row["rounds"])
        left.scatter(x[truth == 1], scores[truth == 1], s=8, marker="o", color=f"C{i}",
                     label=f"{_name(row)}: property round")  # fmt: skip
        left.scatter(x[truth == 0], scores[truth == 0], s=8, marker="x", color=f"C{i}",
                     alpha=0.6, label=f"{_name(row)}: other round")  # fmt: skip
        if len(np.unique(truth)) == 2:
            fpr, tpr, _ = roc_curve(truth, scores)
            right.plot(fpr, tpr, color=f"C{i}", label=f"{_name(row)}: AUC {row['auc']:.3f}")
    left.set_xlabel("round")
    left.set_ylabel("adversary's score")
    left.legend(fontsize=6)
    right.plot([0, 1], [0, 1], color="grey", linestyle=":")
    right.set_xlabel("false positive rate")
    right.set_ylabel("true positive rate")
    right.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _accuracy_figure(attackers: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for i, row in enumerate(attackers):
        ax.plot(row["accuracy_history"], color=f"C{i}", label=_name(row))
    ax.set_xlabel("round")
    ax.set_ylabel("global task accuracy (test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    _features_figure(plots, folder / "features.png")
    _inference_figure(plots["attackers"], folder / "inference.png")
    _accuracy_figure(plots["attackers"], folder / "accuracy.png")
    write_atomic(folder / "report.md", markdown(scenario_name, results))
