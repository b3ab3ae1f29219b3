"""The malicious-training run's report: one table (each training's test accuracy beside what the
supplier recovered), recovered.png (originals above recovered images) and report.md."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from splitsim.reporting import defences_text, image_grid, pct, wire_section
from splitsim.runs import write_atomic


def console_table(metrics: dict) -> Table:
    title = f"malicious training code ({metrics['encoding']}): what the model remembers"
    table = Table(title=title)
    for column in ("code", "test acc.", "reference acc.", "SSIM", "MSE", "bits"):
        table.add_column(column)
    for row in metrics["trainings"]:
        r = row["recovery"]
        table.add_row(
            row["code"],
            pct(row["test_accuracy"]),
            pct(r["reference_accuracy"]),
            f"{r['ssim']:.3f}",
            f"{r['mse']:.4f}",
            pct(r.get("bit_accuracy")),
        )
    return table


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    s, chance = m["secrets"], m["chance"]
    lines = [
        f"# {scenario_name}: malicious training code, {m['encoding']} encoding "
        "(papers/002 sec. 3; Song et al., CCS 2017)",
        "",
        f"{s['owners']} data owner(s) trained with the supplier's code; it encoded the first "
        f"{s['per_owner']} training image(s) of each ({s['images']} in all), pooled to "
        f"{s['side']}x{s['side']}"
        + ("" if m["encoding"] == "correlation" else f" at {s['bits_per_pixel']} bit(s) a pixel")
        + f". Defences: {defences_text(results)}"
        + (" (the supplier knows them)" if m["defences"]["adaptive"] else "")
        + ". Reference accuracy: an independent classifier's accuracy on the recovered images "
        f"(chance {pct(chance['secrets'])}); bits: the secret bits read back (chance 50 %).",
        "",
        "| training code | official test accuracy | reference acc. | MSE | PSNR | SSIM | bits |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in m["trainings"]:
        r = t["recovery"]
        lines.append(
            f"| {t['code']} | {pct(t['test_accuracy'])} | {pct(r['reference_accuracy'])} "
            f"| {r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {pct(r.get('bit_accuracy'))} |"
        )
    c = m["ceiling"]
    lines.append(
        f"| (every bit read back) | | {pct(c['reference_accuracy'])} | {c['mse']:.4f} "
        f"| {c['psnr']:.2f} | {c['ssim']:.3f} | 100.0 % |"
    )
    if m["accuracy_cost"] is not None:
        lines += ["", f"Test accuracy lost to the supplier's code: {100 * m['accuracy_cost']:.2f} "
                  "points."]  # fmt: skip
    q = m["capacity"]
    if q is not None:
        lines += [
            "",
            f"Black-box read-back: {q['bits_per_query']} bits per query (one label), "
            f"{q['queries_needed']} queries for all the images ({q['queries_per_image']:.1f} per "
            f"image of {q['bits_per_image']} bits), {q['queries_answered']} answered; at the "
            f"measured bit error rate the channel carries {q['information_bits_per_query']:.2f} "
            "bits per query.",
        ]
    lines += ["", "![originals above recovered images](recovered.png)", "", wire_section(m["wire"])]
    return "\n".join(lines)


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    rows = [("original", plots["originals"]), ("every bit read back", plots["ceiling"]),
            *plots["recovered"]]  # fmt: skip
    title = "the owners' training images, and what the supplier read back"
    image_grid(rows, folder / "recovered.png", title, cell=(1.0, 1.1), margin=1.6,
               label_size=6, wrap=18)  # fmt: skip
    write_atomic(folder / "report.md", markdown(scenario_name, results))
