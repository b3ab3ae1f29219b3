"""The gradient-inversion run's report: report.md with one row per batch size,
reconstructions.png (originals above reconstructions, as the papers show them) and
matching.png (the attacker's loss, and the global model's accuracy per round)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from splitsim.reporting import defences_text, image_grid, pct, pyplot, save_figure, wire_section
from splitsim.runs import write_atomic

COLUMNS = ("batch", "local steps", "labels", "PSNR dB", "SSIM", "reference accuracy",
           "global accuracy")  # fmt: skip


def _cells(row: dict) -> list[str]:
    return [str(row["batch_size"]), str(row["local_steps"]), pct(row["label_accuracy"]),
            f"{row['psnr']:.1f}", f"{row['ssim']:.3f}", pct(row["reference_accuracy"]),
            pct(row["accuracy"])]  # fmt: skip


def console_table(metrics: dict) -> Table:
    title = "gradient inversion by the FedAvg server"
    if metrics["attacker"]["adaptive"]:
        title += " (adaptive)"
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column)
    for row in metrics["batches"]:
        table.add_row(*_cells(row))
    return table


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    a, t = m["attacker"], m["training"]
    lines = [
        f"# {scenario_name}: gradient inversion in federated training",
        "",
        f"{t['participants']} participants, FedAvg for {t['rounds']} rounds, each round "
        f"{t['local_steps']} full-batch SGD step(s) at {t['local_lr']:g} on new images. The "
        f"server inverts participant {a['target']}'s update of round {a['attack_round']} "
        f"({'adaptive: it knows the defence' if a['adaptive'] else 'it ignores any defence'}; "
        f"{a['iterations']} iterations, TV weight {a['tv_weight']:g}). "
        f"Defences: {defences_text(results)}.",
        "",
        "| " + " | ".join(COLUMNS) + " | chance: PSNR / SSIM / reference |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for row in m["batches"]:
        c = row["chance"]
        lines.append("| " + " | ".join(_cells(row)) + f" | {c['psnr']:.1f} / {c['ssim']:.3f} / "
                     f"{pct(c['reference_accuracy'])} |")  # fmt: skip
    lines += [
        "",
        "Reconstructions are paired with originals by least total squared error (the update "
        "does not order its images). Reference accuracy: an independent MNIST classifier's "
        "accuracy on the reconstructions against the true labels; chance: on the training "
        "images' mean image. Labels: the share of the batch's labels recovered (as a multiset).",
        "",
        "![reconstructions](reconstructions.png)",
        "",
        "![matching](matching.png)",
        "",
        wire_section(m["wire"]),
    ]
    return "\n".join(lines)


def _matching_figure(metrics: dict, path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    for i, row in enumerate(metrics["batches"]):
        losses = row["loss_history"]
        steps = [min(50 * j, metrics["attacker"]["iterations"]) for j in range(len(losses))]
        left.plot(steps, losses, color=f"C{i}", label=f"batch {row['batch_size']}")
        right.plot(range(1, len(row["accuracy_history"]) + 1), row["accuracy_history"],
                   color=f"C{i}", label=f"batch {row['batch_size']}")  # fmt: skip
    left.set_yscale("log")
    left.set_xlabel("iteration")
    left.set_ylabel("matching loss")
    right.set_xlabel("round")
    right.set_ylabel("global accuracy (test)")
    for ax in (left, right):
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    rows = []
    for pic in plots["pictures"]:
        rows += [(f"batch {pic['batch_size']}: original", pic["originals"]),
                 ("reconstructed", pic["reconstructions"])]  # fmt: skip
    title = f"{scenario_name}: the target's images above the server's reconstructions"
    image_grid(rows, folder / "reconstructions.png", title)
    _matching_figure(results["metrics"], folder / "matching.png")
    write_atomic(folder / "report.md", markdown(scenario_name, results))
