"""splitsim from Python: run a scenario, attack a finished run again, compare defences.

    >>> import splitsim
    >>> result = splitsim.run("scenarios/hidden_covid_app.yaml", set={"training.epochs": 2})
    >>> result.metrics["official"], result.folder
    >>> table = splitsim.compare("scenarios/defence_matrix.yaml")
    >>> table.rows[0]["leakage"], table.folder / "report.html"

These are the code paths of ``python -m splitsim run|attack|compare``: the same run folder,
the same checks. Bad input raises the same one-line :class:`~splitsim.errors.ScenarioError`
(the command prints it and exits 2), before anything is trained or written; a deployed run
or a comparison cell that fails raises :class:`~splitsim.errors.RunFailed`.

``set`` takes ``{field: value}`` (values are plain data: numbers, strings, lists, mappings)
or ``["field=value", ...]`` as ``--set`` does; fields are dotted, list items by index:
``{"defences.0.scale": 0.5}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from splitsim.errors import RunFailed, ScenarioError

if TYPE_CHECKING:
    from rich.console import Console

    from splitsim.scenario import Scenario

Overrides = Mapping[str, Any] | Iterable[str] | None
END_OF_DOCUMENT = "...\n"  # what yaml.dump ends a lone scalar with

__all__ = ["Comparison", "RunResult", "attack", "compare", "load", "overrides", "run"]


@dataclass(frozen=True)
class RunResult:
    """A finished run folder and what its ``results.json`` holds."""

    folder: Path
    results: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """The role's metrics: utility, leakage and the attack's own, as in ``report.md``."""
        return self.results["metrics"]

    @property
    def summary(self) -> dict[str, Any]:
        """The role's headline numbers, as ``compare`` tabulates them: ``utility`` and a list
        of ``leakage`` entries, each a name, a value and its no-information level."""
        from splitsim.registry import ROLES

        return ROLES.get(self.results["role"]).summary(self.metrics)

    @classmethod
    def read(cls, folder: str | Path) -> RunResult:
        folder = Path(folder).resolve()
        return cls(folder, json.loads((folder / "results.json").read_text()))


@dataclass(frozen=True)
class Comparison:
    """A comparison's folder and its table: one row per cell, as in ``matrix.csv``."""

    folder: Path
    rows: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] in ("failed", "not run")]


def overrides(values: Overrides, source: str) -> list[str]:
    """``set`` as the ``field=value`` expressions ``--set`` takes; a value is written as YAML
    so that the loader reads back exactly it (``"1e5"`` stays a string, ``1e5`` a number)."""
    if values is None:
        return []
    if isinstance(values, str | bytes):
        raise ScenarioError(
            source, "set", "a mapping {field: value} or a list of 'field=value' strings"
        )
    if isinstance(values, Mapping):
        from splitsim.scenario import _Dumper

        exprs = []
        for key, value in values.items():
            if not isinstance(key, str) or not key:
                raise ScenarioError(
                    source, str(key), "a field is a dotted name such as 'training.epochs'"
                )
            if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
                value = value.tolist()  # a numpy number or array from a notebook: plain data
            try:
                text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=float("inf"))
            except yaml.YAMLError:
                raise ScenarioError(
                    source,
                    key,
                    f"a value is plain data (number, string, list, mapping), "
                    f"not {type(value).__name__}",
                ) from None
            exprs.append(f"{key}={text.removesuffix(END_OF_DOCUMENT).strip()}")
        return exprs
    exprs = list(values)
    for expr in exprs:  # the loader itself names a string without "=" as --set does
        if not isinstance(expr, str):
            raise ScenarioError(source, "set", f"not a 'field=value' string: {expr!r}")
    return exprs


def load(scenario: str | Path | Scenario, values: Overrides = None) -> tuple[Scenario, str]:
    """A checked scenario from a file or from a :class:`~splitsim.scenario.Scenario` built in
    code, with ``values`` applied, and the name errors give it. A Scenario object is checked
    again as a file would be: its role's and defences' own checks run here."""
    from splitsim.scenario import Scenario, apply_override, load_scenario, validate

    if isinstance(scenario, Scenario):
        source = f"<Scenario {scenario.name or 'built in code'}>"
        data = scenario.resolved()
        for expr in overrides(values, source):
            apply_override(data, expr, source)
        return validate(data, source), source
    if not isinstance(scenario, str | Path):
        raise ScenarioError(
            repr(scenario)[:80], "", "a scenario is a YAML file's path or a splitsim.Scenario"
        )
    source = str(scenario)
    return load_scenario(scenario, overrides(values, source)), source


def _console(quiet: bool, console: Console | None) -> Console:
    from rich.console import Console

    from splitsim.engine.simulation import telemetry_defaults

    telemetry_defaults()  # before any Flower or Ray process starts
    return console if console is not None else Console(quiet=quiet)


def run(
    scenario: str | Path | Scenario,
    set: Overrides = None,  # noqa: A002 (the CLI's --set)
    *,
    out: str | Path | None = None,
    quiet: bool = False,
    console: Console | None = None,
    _out_field: str = "out",
) -> RunResult:
    """Run one scenario into ``<out or output_dir>/<name>/<timestamp>/``: ``python -m splitsim
    run``. ``quiet`` keeps the progress bars and tables off the terminal."""
    from splitsim.scenario import check_output_folder

    checked, source = load(scenario, set)
    field = _out_field if out is not None else "output_dir"
    check_output_folder(out if out is not None else checked.output_dir, source, field)
    console = _console(quiet, console)
    out_text = None if out is None else str(out)
    if checked.engine.mode == "deployment":
        from splitsim.engine.deployment import run_deployed

        folder = run_deployed(checked, console, out_text)
        if folder is None:
            raise RunFailed(f"{source}: the deployed run failed (the reason is printed above)")
    else:
        from splitsim.execute import run_scenario

        folder = run_scenario(checked, console, out_text)
    return RunResult.read(folder)


def attack(
    folder: str | Path,
    set: Overrides = None,  # noqa: A002
    *,
    quiet: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Attack a finished run again from what it recorded as received, without Flower:
    ``python -m splitsim attack``. ``set`` may change only the attacker's fields."""
    from splitsim.execute import attack_recorded

    exprs = overrides(set, str(folder))
    return RunResult.read(attack_recorded(folder, exprs, _console(quiet, console)))


def _track_cells(logdir: str, folder: Path, records: dict[str, dict]) -> None:
    """A cell logs itself when it finishes; cells read back from an earlier comparison (run
    before tracking was on) are logged here, once."""
    from splitsim.tracking import log_run, tensorboard_folder

    for record in records.values():
        if record.get("status") == "ok":
            run_folder = folder / record["run_folder"]
            if not tensorboard_folder(logdir, run_folder).exists():
                log_run(run_folder, logdir)


def compare(
    matrix: str | Path,
    set: Overrides = None,  # noqa: A002
    *,
    out: str | Path | None = None,
    quiet: bool = False,
    console: Console | None = None,
    _out_field: str = "out",
) -> Comparison:
    """Run a defence x attacker-role matrix (``python -m splitsim compare``); finished cells
    are read back, so an interrupted comparison resumes. Raises ``RunFailed`` naming the
    failed cells once the others are done (they are kept; a rerun tries only those)."""
    from splitsim.matrix import report
    from splitsim.matrix.runner import lock_folder, run_cells
    from splitsim.matrix.spec import expand, load_matrix
    from splitsim.scenario import check_output_folder

    source = str(matrix)
    spec = load_matrix(matrix, overrides(set, source))
    cells = expand(spec, source)  # every cell checked before anything runs
    folder = Path(out if out is not None else Path(spec.output_dir) / spec.name).resolve()
    check_output_folder(folder, source, _out_field if out is not None else "output_dir")
    console = _console(quiet, console)
    folder.mkdir(parents=True, exist_ok=True)
    na = sum(c.scenario is None for c in cells)
    console.print(
        f"[bold]{spec.name}[/bold]: {len(cells)} cells ({na} n/a), "
        f"{len({c.id for c in cells if c.id})} to compute or read back; folder {folder}"
    )
    with lock_folder(folder):
        records = run_cells(spec, cells, folder, console)
        if spec.tracking.tensorboard is not None:
            _track_cells(spec.tracking.tensorboard, folder, records)
        table = report.write(folder, spec, cells, records)
    console.print(f"matrix: [bold]{folder / 'matrix.csv'}[/bold]; report: {folder / 'report.html'}")
    result = Comparison(folder, table)
    if result.failed:
        raise RunFailed(
            f"{source}: {len(result.failed)} cell(s) failed; see {folder / 'matrix.csv'} and "
            f"{folder / 'logs'}",
            result,
        )
    return result
