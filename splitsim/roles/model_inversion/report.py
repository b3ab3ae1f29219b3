"""The model-inversion run's report: report.md, reconstructions.png, training.png, a table."""

from __future__ import annotations

import io
from pathlib import Path

from rich.table import Table

from splitsim.reporting import (
    class_counts_section,
    defences_text,
    image_grid,
    pct,
    pyplot,
    wire_section,
)
from splitsim.runs import write_atomic


def plot_reconstructions(plots: dict, path: Path, title: str) -> None:
    """One example per class, like the paper's figures: originals above reconstructions."""
    rows = [("original (inference)", plots["originals"]), ("reconstructed", plots["inference"])]
    for b, images in (plots.get("sweep") or {}).items():
        if float(b) > 0:
            rows.append((f"after-training noise b={b}", images))
    if plots.get("training") is not None:
        rows += [
            ("original (training)", plots["training_originals"]),
            ("reconstructed", plots["training"]),
        ]
    image_grid(rows, path, title)


def plot_training(metrics: dict, path: Path) -> None:
    plt = pyplot()
    history = metrics["utility"]["history"]
    decoder = metrics["attack"]["decoder_history"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    if history:
        rounds = [h["round"] for h in history]
        axes[0].plot(rounds, [100 * h["train_accuracy"] for h in history], "o-")
        axes[0].set_xlabel("round (epoch)")
        axes[0].set_ylabel("server-side train accuracy (%)")
        axes[0].set_title("split training through Flower")
    else:  # an intercepting owner never sees the server's training log
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "the server's training log:\nnot seen by an intercepting owner",
                     ha="center", va="center", fontsize=9)  # fmt: skip
    axes[1].plot(
        [h["epoch"] for h in decoder], [h["train_mse"] for h in decoder], "o-", label="train"
    )
    axes[1].plot([h["epoch"] for h in decoder], [h["val_mse"] for h in decoder], "s-", label="val")
    axes[1].set_xlabel("decoder epoch")
    axes[1].set_ylabel("MSE (pixels in [0, 1])")
    axes[1].set_title("attacker's decoder")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_noise_sweep(sweep: list[dict], path: Path) -> None:
    """The paper's Figure 4 (accuracy against noise added after training) with what the same
    noise leaves the attacker."""
    plt = pyplot()
    scales = [row["scale"] for row in sweep]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if all(r["accuracy"] is not None for r in sweep):  # an interceptor holds no f2
        ax.plot(scales, [100 * r["accuracy"] for r in sweep], "o-", label="task accuracy")
    ax.plot(
        scales,
        [100 * r["reference_accuracy"] for r in sweep],
        "s-",
        label="reference classifier on reconstructions",
    )
    ax.set_xlabel("Laplace scale b added after training")
    ax.set_ylabel("%")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=8)
    ax.set_title("Noise after training: utility against leakage", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def console_table(metrics: dict) -> Table:
    table = Table(title="model inversion: headline numbers")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    u, d = metrics["utility"], metrics["distance_correlation"]
    table.add_row("task accuracy (as deployed)", pct(u["accuracy"]))
    table.add_row("distance correlation (input, intermediate)", f"{d['mean']:.3f} ± {d['se']:.3f}")
    for where, leak in metrics["leakage"].items():
        table.add_row(
            f"{where}: reference classifier on reconstructions", pct(leak["reference_accuracy"])
        )
        table.add_row(
            f"{where}: MSE / PSNR / SSIM",
            f"{leak['mse']:.4f} / {leak['psnr']:.1f} dB / {leak['ssim']:.3f}",
        )
    table.add_row("records sent by clients", ", ".join(metrics["wire"]["client_records"]))
    return table


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    u, d, a, tr = m["utility"], m["distance_correlation"], m["attack"], m["training"]
    out = io.StringIO()
    w = out.write
    w(f"# {scenario_name}: model inversion of a split network\n\n")
    w(f"Seed {results['seed']}; {tr['data_owners']} data owners, {tr['schedule']} schedule, ")
    w(f"{tr['rounds']} rounds, {tr['round_trips']} Flower round trips; ")
    w(f"defences: {defences_text(results)}.\n\n")
    w("## Utility and distance correlation (papers/003, Table 1)\n\n")
    w("| quantity | value |\n|---|---|\n")
    w(f"| task accuracy, as deployed ({u['test_images']} test images) | {pct(u['accuracy'])} |\n")
    w("| task accuracy without the inference-time noise | ")
    clean = u["accuracy_without_inference_noise"]
    w(f"{pct(clean)}{' (an intercepting owner holds no f2)' if clean is None else ''} |\n")
    w(f"| distance correlation, mean ± s.e. over {d['batches']} batches | ")
    w(f"{d['mean']:.3f} ± {d['se']:.3f} |\n\n")
    counts = tr.get("owner_class_counts")
    if counts:
        digits = [str(c) for c in range(10)]
        what = "owners' training images per digit"
        w(class_counts_section(counts, tr.get("partitioner"), what, digits))
    w("## The attack\n\n")
    if a["access"] == "intercepting":
        w(f"Data owner {a['interceptor']} is the attacker (papers/003, Appendix A): it got a ")
        w(f"copy of owner {a['victim']}'s inference exchange (the `intercept` message in the ")
        w("wire log), holds its own segment and no f2, and trained its decoder on ")
        w(f"{a['aux_size']} of its own training images")
    else:
        w(f"The server got the data owners' segment by **{a['access']}** access and trained ")
        w(f"its decoder on {a['aux_size']} **{a['aux_data']}** images")
    w(
        f", adaptively, on tensors defended with {', '.join(a['defences_known'])} as the "
        "owners defend theirs.\n\n"
        if a["defences_known"]
        else " (not adaptive: it does not model the owners' defences).\n\n"
    )
    w("| tensors reconstructed | images | reference classifier | on originals ")
    w("| MSE | PSNR | SSIM |\n")
    w("|---|---|---|---|---|---|---|\n")
    for where, leak in m["leakage"].items():
        w(f"| {where} | {leak['images']} | {pct(leak['reference_accuracy'])} ")
        w(f"| {pct(leak['reference_accuracy_on_originals'])} | {leak['mse']:.4f} ")
        w(f"| {leak['psnr']:.1f} dB | {leak['ssim']:.3f} |\n")
    w("\nThe reference classifier is trained on MNIST images no one else uses; its accuracy on ")
    w("the reconstructions says how often the attacker recovers the digit.\n\n")
    if m.get("noise_sweep"):
        w("## Noise added after training (papers/003, Figures 2a and 4)\n\n")
        w("The harness adds Laplace(0, b) to the test images' clean tensors, as the `laplace` ")
        w("defence would, and asks the server's classifier and the attacker's decoder above.\n\n")
        w("| b | task accuracy | reference classifier on reconstructions | MSE | SSIM |\n")
        w("|---|---|---|---|---|\n")
        for row in m["noise_sweep"]:
            w(f"| {row['scale']:g} | {pct(row['accuracy'])} ")
            w(f"| {pct(row['reference_accuracy'])} | {row['mse']:.4f} | {row['ssim']:.3f} |\n")
        w("\n![noise sweep](noise_sweep.png)\n\n")
    w("![reconstructions](reconstructions.png)\n\n![training](training.png)\n\n")
    w(wire_section(m["wire"]))
    return out.getvalue()


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    title = f"{scenario_name}: originals and reconstructions, defences: {defences_text(results)}"
    plot_reconstructions(plots, folder / "reconstructions.png", title)
    plot_training(results["metrics"], folder / "training.png")
    if results["metrics"].get("noise_sweep"):
        plot_noise_sweep(results["metrics"]["noise_sweep"], folder / "noise_sweep.png")
    write_atomic(folder / "report.md", markdown(scenario_name, results))
