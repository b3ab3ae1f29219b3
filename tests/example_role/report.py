"""report.md and the console table of the example role."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from splitsim.reporting import wire_section
from splitsim.runs import write_atomic


def console_table(metrics: dict) -> Table:
    table = Table(title="owner averages")
    table.add_column("metric")
    table.add_column("value")
    table.add_row("attacker's error per owner (RMSE)", f"{metrics['leakage']['rmse']:.4f}")
    table.add_row("blind guess's error (RMSE)", f"{metrics['leakage']['chance']:.4f}")
    return table


def write(folder: Path, scenario_name: str, results: dict, plots: dict) -> None:
    m = results["metrics"]
    write_atomic(
        folder / "report.md",
        f"# {scenario_name}\n\nThe server's estimate of each owner's mean record is off by "
        f"{m['leakage']['rmse']:.4f} (a blind guess: {m['leakage']['chance']:.4f}).\n\n"
        + wire_section(m["wire"]),
    )
