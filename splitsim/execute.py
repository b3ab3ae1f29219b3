"""One scenario, start to finish, into its run folder: what ``python -m splitsim run`` does, and
what the Flower App's ServerApp does when Flower's deployment engine (or ``flwr run``) hosts it.
``attack_recorded`` is ``python -m splitsim attack``: the attack and evaluation phases again, on
what a finished run recorded as received."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from rich.console import Console

from splitsim import reporting
from splitsim.allocator import keep_freed_memory
from splitsim.errors import ScenarioError
from splitsim.registry import ROLES
from splitsim.roles.base import DEPLOYED, Evaluation, Role
from splitsim.runs import Run, open_run, versions
from splitsim.scenario import Scenario, apply_override, read_yaml, validate


def run_scenario(scenario: Scenario, console: Console, out: str | Path | None = None) -> Path:
    """Run ``scenario``; returns the finished run folder (a failure leaves ``<stamp>.failed``)."""
    started = time.perf_counter()
    keep_freed_memory()  # for this process and every process the run starts (allocator.py)
    role_cls: type[Role] = ROLES.get(scenario.role.name)
    console.print(f"[bold]{scenario.name}[/bold]: role {scenario.role.name}, seed {scenario.seed}")
    with open_run(scenario, console, Path(out) if out else None) as run:
        with _ray_for(run, scenario, role_cls):
            evaluation = role_cls(scenario, run).execute()
        _finish(run, scenario, role_cls, evaluation, started)
    _track(run.folder, scenario, console)
    console.print(role_cls.report.console_table(evaluation.metrics))
    console.print(f"run folder: [bold]{run.folder}[/bold]")
    return run.folder


def _ray_for(run: Run, scenario: Scenario, role_cls: type[Role]) -> AbstractContextManager:
    """A run that will deploy starts its local Ray now, as a process of its own, to join when
    its Flower phase comes (engine/local_ray.py); a resumed run past its deployment starts
    none. Its workers import what the role's client apps need while the run trains."""
    if run.resumed and (run.checkpoints / DEPLOYED).is_file():
        return nullcontext()
    from splitsim.engine.simulation import own_ray

    preload = ("torch", "flwr.simulation.ray_transport.ray_actor",
               "splitsim.engine.shipped_app", role_cls.__module__)  # fmt: skip
    return own_ray(scenario.engine, preload)


def _finish(
    run: Run,
    scenario: Scenario,
    role_cls: type[Role],
    evaluation: Evaluation,
    started: float,
    extra: dict | None = None,
) -> None:
    results = {
        "scenario": scenario.name,
        "role": scenario.role.name,
        "seed": scenario.seed,
        "defences": [spec.model_dump() for spec in scenario.defences],
        "tasks": scenario.tasks.model_dump() if scenario.tasks else None,
        "metrics": evaluation.metrics,
        "timing_s": {**run.timings, "total": round(time.perf_counter() - started, 3)},
        "versions": versions(),
        **(extra or {}),
    }
    reporting.write(run.folder, scenario.name, results, evaluation.plots, role_cls)


def _track(folder: Path, scenario: Scenario, console: Console, name: str = "") -> None:
    """The finished run's scalars to the scenario's trackers (after the run folder is final,
    so a tracker that fails loses nothing of the run)."""
    if scenario.tracking.tensorboard is None:
        return
    from splitsim.tracking import log_run

    where, count = log_run(folder, scenario.tracking.tensorboard, name)
    console.print(f"TensorBoard: {count} scalars in {where}")


def recorded_scenario(folder: Path, overrides: list[str]) -> Scenario:
    """The scenario a finished run folder recorded, with attacker-only ``overrides``: a
    re-attack may change only the role fields the attack and evaluation read."""
    source = str(folder / "scenario.yaml")
    if not folder.is_dir():
        raise ScenarioError(str(folder), "", "no such run folder")
    for name in ("scenario.yaml", "results.json", "received.json", "received.npz"):
        if not (folder / name).is_file():
            raise ScenarioError(
                str(folder), "", f"not a finished run folder with what it received (no {name})"
            )
    data = read_yaml(folder / "scenario.yaml") or {}
    data.pop("versions", None)
    recorded = validate(dict(data), source)
    role_cls: type[Role] = ROLES.get(recorded.role.name)
    allowed = sorted(role_cls.attack_params_for(recorded))
    for expr in overrides:
        key = expr.partition("=")[0].strip()
        field = key.removeprefix("role.").split(".")[0]
        if not key.startswith("role.") or field not in allowed:
            raise ScenarioError(
                source,
                key,
                "a re-attack changes only what the attacker does with the recorded traffic; "
                f"allowed: {', '.join(f'role.{a}' for a in allowed) or 'nothing for this role'}",
            )
        apply_override(data, expr, source)
    return validate(data, source)


def attack_recorded(folder: str | Path, overrides: list[str], console: Console) -> Path:
    """Attack and evaluate again from ``folder``'s recorded Received, without Flower; the new
    results go to ``<folder>/attacks/<timestamp>/``. Returns that folder."""
    folder = Path(folder).resolve()
    scenario = recorded_scenario(folder, overrides)
    role_cls: type[Role] = ROLES.get(scenario.role.name)
    received = role_cls.received_type.load(folder)
    started = time.perf_counter()
    keep_freed_memory()
    console.print(
        f"[bold]{scenario.name}[/bold]: re-attack of {folder} (role {scenario.role.name}"
        + (f"; {', '.join(overrides)}" if overrides else "")
        + ")"
    )
    with open_run(scenario, console, root=folder / "attacks") as run:
        evaluation = role_cls(scenario, run).reattack(received)
        _finish(run, scenario, role_cls, evaluation, started, {"attack_of": str(folder)})
    _track(run.folder, scenario, console, name=f"{folder.name}-attack-{run.folder.name}")
    console.print(role_cls.report.console_table(evaluation.metrics))
    console.print(f"attack folder: [bold]{run.folder}[/bold]")
    return run.folder
