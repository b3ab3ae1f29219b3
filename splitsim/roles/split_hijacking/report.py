"""The split-hijacking run's report: report.md, reconstructions.png (originals above the server's
reconstructions), progress.png (reconstruction quality per kept batch), splitguard.png (each
owner's SG scores against the threshold), and a console table."""

from __future__ import annotations

import io
from pathlib import Path

from rich.table import Table

from splitsim.reporting import defences_text, image_grid, pct, pyplot, save_figure, wire_section
from splitsim.runs import write_atomic


def _quality(row: dict) -> str:
    if not row.get("images"):
        return "none received"
    return (f"{row['mse']:.4f} / {row['psnr']:.1f} dB / {row['ssim']:.3f}; reference classifier "
            f"{pct(row['reference_accuracy'])} (majority {pct(row['chance'])})")  # fmt: skip


def plot_reconstructions(plots: dict, path: Path, title: str) -> None:
    """Originals above reconstructions: the first kept batch, the last ones, inference."""
    rows = [
        ("first kept batch", plots["early_originals"]), ("reconstructed", plots["early"]),
        ("last kept batches", plots["originals"]), ("reconstructed", plots["reconstructed"]),
        ("inference", plots["inference_originals"]), ("reconstructed", plots["inference"]),
    ]  # fmt: skip
    image_grid(rows, path, title)


def plot_progress(metrics: dict, path: Path) -> None:
    """SSIM and the reference classifier's accuracy of each kept batch's reconstruction, by the
    owner batch at which it arrived; where owners stopped, a vertical line."""
    plt = pyplot()
    rows = [r for r in metrics["leakage"]["per_batch"] if r.get("images")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for owner in sorted({r["owner"] for r in rows}):  # each owner's segment is hijacked apart
        mine = [r for r in rows if r["owner"] == owner]
        batches = [r["batch"] for r in mine]
        ax.plot(batches, [r["ssim"] for r in mine], "o-", ms=3, label=f"SSIM, owner {owner}")
        ax.plot(batches, [r["reference_accuracy"] for r in mine], "s--", ms=3,
                label=f"reference classifier, owner {owner}")  # fmt: skip
    guard = metrics.get("detector") or {}
    for pid, owner in (guard.get("owners") or {}).items():
        if owner["stopped"]:
            ax.axvline(owner["stopped_batch"], color="red", ls=":", lw=1)
            ax.text(owner["stopped_batch"], 1.0, f" owner {pid} stops", color="red", fontsize=7,
                    va="top", rotation=90)  # fmt: skip
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("owner batches the server had answered")
    ax.set_ylabel("reconstruction quality")
    ax.set_title(f"server: {metrics['attack']['server']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_splitguard(metrics: dict, path: Path) -> None:
    plt = pyplot()
    guard = metrics["detector"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for pid, owner in guard["owners"].items():
        ax.plot(range(1, len(owner["scores"]) + 1), owner["scores"], "o-", ms=3,
                label=f"owner {pid}" + (" (stopped)" if owner["stopped"] else ""))  # fmt: skip
    ax.axhline(guard["params"]["threshold"], color="k", ls="--", lw=1, label="threshold")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("fake batches sent")
    ax.set_ylabel("SplitGuard score")
    ax.set_title(f"SplitGuard against the {guard['server']} server", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def console_table(metrics: dict) -> Table:
    a, leak = metrics["attack"], metrics["leakage"]
    table = Table(title=f"split hijacking ({a['server']} server): headline numbers")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("task accuracy (server's answers)", pct(metrics["utility"]["accuracy"]))
    table.add_row("last kept batches: MSE / PSNR / SSIM; ref. acc.", _quality(leak["last"]))
    table.add_row("inference: MSE / PSNR / SSIM; ref. acc.", _quality(leak["inference"]))
    guard = metrics.get("detector")
    if guard:
        table.add_row("owners stopped by SplitGuard",
                      f"{guard['stopped']} of {len(guard['owners'])}")  # fmt: skip
    if a["adaptive"]:
        table.add_row("batches answered honestly", f"{a['honest_answers']} of {a['owner_batches']}")
    return table


def markdown(scenario_name: str, results: dict) -> str:
    m = results["metrics"]
    a, leak, tr = m["attack"], m["leakage"], m["training"]
    out = io.StringIO()
    w = out.write
    w(f"# {scenario_name}: a {a['server']} server in split learning\n\n")
    w(f"Seed {results['seed']}; {tr['data_owners']} data owners, {tr['schedule']} schedule, labels "
      f"held by the {tr['labels']}; {tr['rounds_trained']} rounds trained, {a['owner_batches']} "
      f"owner batches answered, {tr['round_trips']} Flower round trips; defences: "
      f"{defences_text(results)}.\n\n")  # fmt: skip
    if a["server"] == "fsha":
        w("The server ran the Feature-Space Hijacking Attack (Pasquini et al., CCS 2021): it "
          "returned the gradient of its critic instead of the task's, and decodes with its "
          "pilot's inverse.")  # fmt: skip
        if a["adaptive"]:
            w(f" Adaptive (knows SplitGuard): it answered {a['honest_answers']} of "
              f"{a['owner_batches']} batches with the task gradient (warm-up, and batches its "
              "shadow classifier got wrong).")  # fmt: skip
    else:
        w("The server was honest; as the passive inversion server of papers/003 it trained a "
          "decoder on its public images through the segment it relayed (FedAvg).")  # fmt: skip
    w("\n\n## Reconstructions\n\n")
    w("| tensors | MSE / PSNR / SSIM; reference classifier |\n|---|---|\n")
    w(f"| last {len(leak['last'].get('batches', []))} kept training batches | "
      f"{_quality(leak['last'])} |\n")  # fmt: skip
    w(f"| owners' inference tensors | {_quality(leak['inference'])} |\n\n")
    w(f"Task accuracy of the server's answers on the owners' test images: "
      f"{pct(m['utility']['accuracy'])}.\n\n")  # fmt: skip
    w("![reconstructions](reconstructions.png)\n\n![progress](progress.png)\n\n")
    guard = m.get("detector")
    if guard:
        gp = guard["params"]
        w("## SplitGuard (Erdoğan et al., WPES 2022)\n\n")
        w(f"p_fake {gp['p_fake']}, b_fake {gp['b_fake']}, first fake after {gp['start']} "
          f"batches, SG = sigmoid({gp['mult']} S)^{gp['exp']}; an owner stops when the mean of "
          f"its last {gp['window']} scores is under {gp['threshold']}.\n\n")  # fmt: skip
        w("| owner | fakes scored | mean score | stopped at (round, step) |\n|---|---|---|---|\n")
        for pid, owner in guard["owners"].items():
            at = owner["stopped_at"]
            where = f"round {at['round']}, step {at['step']}" if at else "did not stop"
            mean = "n/a" if owner["mean_score"] is None else f"{owner['mean_score']:.3f}"
            w(f"| {pid} | {len(owner['scores'])} | {mean} | {where} |\n")
        w(f"\n{guard['stopped']} of {len(guard['owners'])} owners stopped.\n\n")
        w("![splitguard](splitguard.png)\n\n")
    w(wire_section(m["wire"]))
    return out.getvalue()


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    title = f"{scenario_name}: originals and reconstructions, defences: {defences_text(results)}"
    plot_reconstructions(plots, folder / "reconstructions.png", title)
    plot_progress(results["metrics"], folder / "progress.png")
    if results["metrics"].get("detector"):
        plot_splitguard(results["metrics"], folder / "splitguard.png")
    write_atomic(folder / "report.md", markdown(scenario_name, results))
