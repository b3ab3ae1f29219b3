"""One scenario, start to finish, into its run folder: what ``python -m splitsim run`` does, and
what the Flower App's ServerApp does when Flower's deployment engine (or ``flwr run``) hosts it."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from splitsim.scenario import Scenario


def run_scenario(scenario: Scenario, console: Console, out: str | Path | None = None) -> Path:
    """Run ``scenario``; returns the finished run folder (a failure leaves ``<stamp>.failed``)."""
    from splitsim import reporting
    from splitsim.registry import ROLES
    from splitsim.runs import open_run, versions

    started = time.perf_counter()
    role = ROLES.get(scenario.role.name)
    console.print(f"[bold]{scenario.name}[/bold]: role {scenario.role.name}, seed {scenario.seed}")
    with open_run(scenario, console, Path(out) if out else None) as run:
        outcome = role.run(scenario, run)
        results = {
            "scenario": scenario.name,
            "role": scenario.role.name,
            "seed": scenario.seed,
            "defences": [spec.model_dump() for spec in scenario.defences],
            "tasks": scenario.tasks.model_dump() if scenario.tasks else None,
            "metrics": outcome["metrics"],
            "timing_s": {**run.timings, "total": round(time.perf_counter() - started, 3)},
            "versions": versions(),
        }
        reporting.write(run.folder, scenario.name, results, outcome["plots"], role)
    console.print(role.report.console_table(results["metrics"]))
    console.print(f"run folder: [bold]{run.folder}[/bold]")
    return run.folder
