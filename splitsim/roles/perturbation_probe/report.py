"""The perturbation-probing run's report: one table of direction kinds x defences,
reconstructions.png (originals above reconstructions, one digit per class, every session) and
styles.png (one digit class across writers: does slant and stroke width carry over?)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from splitsim.reporting import image_grid, pct, wire_section
from splitsim.runs import write_atomic


def _grid(rows: list[tuple[str, np.ndarray]], path: Path, title: str) -> None:
    image_grid(rows, path, title, cell=(1.0, 1.1), margin=1.6, label_size=6, wrap=24, dpi=110)


def _plan(row: dict) -> str:
    # runs recorded before the adaptive prober: every direction, one copy of each query
    return f"{row.get('votes', 1)} x {row.get('directions_used', '-')}"


def console_table(metrics: dict) -> Table:
    adaptive = metrics["adversary"].get("adaptive", False)
    table = Table(
        title="perturbation probing: reconstructions from label-change bits"
        + (" (adaptive prober)" if adaptive else "")
    )
    columns = ("directions", "defences", "votes x dirs", "reference acc.", "SSIM",
               "queries/input", "served")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for row in metrics["sessions"]:
        table.add_row(
            row["directions"],
            row["defences"],
            _plan(row),
            pct(row["reference_accuracy"]),
            f"{row['ssim']:.3f}",
            f"{row['queries_per_input']:.0f}",
            pct(row["served_accuracy"]),
        )
    return table


def adaptive_text(adversary: dict) -> str:
    if not adversary.get("adaptive", False):
        return (
            "The prober is not adaptive: it asks each query once and trains its decoders on "
            "undefended signatures."
        )
    text = (
        "The prober is adaptive: it knows each session's defences, asks each query as many "
        "times as the votes column says (every copy a query of its own, in the messages and "
        "against the budget), probes the first directions of the kind as the column says, and "
        "trains each session's decoder on its own images measured under that session's "
        "defences the same way."
    )
    pilot = adversary.get("pilot_queries_per_direction")
    if pilot:
        costs = ", ".join(f"{k} {v:.1f}" for k, v in pilot.items())
        text += f" A direction cost it {costs} queries (90th percentile, its own images)."
    return text


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    a = m["adversary"]
    lines = [
        f"# {scenario_name}: perturbation probing (papers/004)",
        "",
        f"{m['targets']} secret test images held by the data owners; served model's test "
        f"accuracy {pct(m['served_model_test_accuracy'])}. The adversary computed signatures of "
        f"{a['aux_images']} of its own images ({a['directions']} directions) to train one "
        "decoder per direction kind. Reference accuracy: an independent MNIST classifier's "
        f"accuracy on the reconstructions (chance {pct(m['chance'])}).",
        "",
        adaptive_text(a),
        "",
        "| directions | data owners' defences | votes x directions | reference acc. | MSE | PSNR "
        "| SSIM | queries / input (max) | round trips | flipped | refused | served accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["sessions"]:
        lines.append(
            f"| {r['directions']} | {r['defences']} | {_plan(r)} "
            f"| {pct(r['reference_accuracy'])} "
            f"| {r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} "
            f"| {r['queries_per_input']:.0f} ({r['queries_max']}) | {r['round_trips']} "
            f"| {pct(r['flipped'])} | {pct(r['refused'])} | {pct(r['served_accuracy'])} |"
        )
    lines += [
        "",
        "![reconstructions](reconstructions.png)",
        "",
        "![one class across styles](styles.png)",
        "",
        wire_section(m["wire"]),
    ]
    return "\n".join(lines)


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    rows = [("original", plots["originals"]), *plots["sessions"]]
    _grid(rows, folder / "reconstructions.png", "originals above reconstructions, per session")
    styles = [("original", plots["style_originals"]), *plots["style_sessions"]]
    _grid(styles, folder / "styles.png", f"digit {plots['style_class']} across writers")
    write_atomic(folder / "report.md", markdown(scenario_name, results))
