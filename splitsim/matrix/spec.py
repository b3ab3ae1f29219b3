"""The comparison matrix file: roles (each a scenario file with overrides) x defences x
attackers x seeds, checked before anything runs and expanded into cells.

A cell is one ordinary scenario: the role's scenario with the cell's defences, seed and attacker.
It is validated by the same loader as ``splitsim run``; a combination the loader refuses because
the defence cannot apply to the role (a stage the role does not have, a field the role forbids)
becomes an ``n/a`` cell with that reason. Anything else wrong in the matrix file is bad input:
one line naming the file and the field, exit 2.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from splitsim.errors import ScenarioError
from splitsim.registry import DEFENCES, ROLES
from splitsim.runs import code_digest
from splitsim.scenario import (
    Plugin,
    Tracking,
    _pydantic_error,
    apply_override,
    check_values,
    folder_name,
    folder_path,
    name_from_file,
    read_yaml,
    validate,
)

Attacker = Literal["non_adaptive", "adaptive"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleEntry(Strict):
    scenario: str = Field(description="a scenario file, relative to the matrix file")
    set: list[str] = Field([], description="--set overrides applied to it, e.g. training.epochs=5")
    label: str | None = Field(
        None, min_length=1, description="its name in the tables (default: the role's name)"
    )


class DefenceEntry(Strict):
    label: str = Field(min_length=1)
    use: list[Plugin] = Field([], description="the defences, in order; [] is no defence")


class Matrix(Strict):
    name: str = ""

    @field_validator("name")
    @classmethod
    def _folder(cls, name: str) -> str:
        return folder_name(name)

    @field_validator("output_dir")
    @classmethod
    def _output(cls, path: str) -> str:
        return folder_path(path)

    description: str = ""
    roles: list[RoleEntry] = Field(min_length=1)
    defences: list[DefenceEntry] = Field(min_length=1)
    attackers: list[Attacker] = Field(["non_adaptive", "adaptive"], min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    cpus_per_cell: int = Field(1, ge=1, description="CPUs a cell may use (Ray task resources)")
    gpus_per_cell: float = Field(0.0, ge=0)
    workers: int | None = Field(None, ge=1, description="cells at once; default CPUs // cpus")
    ray_address: str | None = Field(None, description="an existing Ray cluster, or auto")
    beta: float = Field(0.5, ge=0, le=1, description="defence score: weight of leakage")
    tracking: Tracking = Tracking()
    output_dir: str = "runs"


@dataclass
class Cell:
    """One (role, defence, attacker, seed). ``scenario`` is the resolved scenario a cell runs;
    ``reason`` says why a cell is n/a. Cells with the same ``id`` are one computation."""

    role: str
    defence: str
    params: str
    attacker: str
    seed: int
    scenario: dict | None
    reason: str | None
    id: str
    label: str = ""  # the role entry's name in the tables (two entries may share a role)

    @property
    def shown(self) -> str:
        return self.label or self.role

    @property
    def key(self) -> str:
        return f"{self.shown} / {self.defence} / {self.attacker} / seed {self.seed}"


def describe_defences(use: list[Plugin]) -> str:
    """``laplace(scale=0.1) + nopeek(alpha=0.5)``; ``-`` for none."""
    if not use:
        return "-"
    parts = []
    for plugin in use:
        fields = ", ".join(f"{k}={v}" for k, v in (plugin.model_extra or {}).items())
        parts.append(f"{plugin.name}({fields})")
    return " + ".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "cell"


def _without_nulls(value: Any) -> Any:
    # An unset optional field hashes like a field that does not exist yet, so adding one to
    # the scenario schema does not invalidate every finished cell.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def cell_id(scenario: dict) -> str:
    """Content hash of what the cell computes (its name and output folder excluded), and of
    the code that computes it."""
    body = {
        k: v
        for k, v in scenario.items()
        if k not in ("name", "description", "output_dir", "tracking")
    }
    body["splitsim code"] = code_digest()
    text = json.dumps(_without_nulls(body), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_matrix(path: str | Path, overrides: list[str] | None = None) -> Matrix:
    source = str(path)
    data = read_yaml(path, "matrix")
    if not isinstance(data, dict):
        raise ScenarioError(source, "", "a matrix must be a YAML mapping of fields")
    for expr in overrides or []:
        apply_override(data, expr, source)
    check_values(data, source)  # after the overrides: a --set value is checked like the file's
    try:
        matrix = Matrix.model_validate(data, strict=True)
    except ValidationError as err:
        raise _pydantic_error(err, source, Matrix) from None
    if not matrix.name:
        matrix.name = name_from_file(source)

    labels = [d.label for d in matrix.defences]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise ScenarioError(source, f"defences.{i}.label", f"{label!r} is used twice")
    for i, entry in enumerate(matrix.defences):
        for j, plugin in enumerate(entry.use):
            where = f"defences.{i}.use.{j}"
            if plugin.name not in DEFENCES:
                raise ScenarioError(
                    source,
                    f"{where}.name",
                    f"unknown defence {plugin.name!r}; allowed: {', '.join(DEFENCES.names())}",
                )
            params_model = DEFENCES.get(plugin.name).Params
            try:
                params_model.model_validate(dict(plugin.model_extra or {}), strict=True)
            except ValidationError as err:
                raise _pydantic_error(
                    err, source, params_model, ("defences", i, "use", j)
                ) from None
    if not any(not d.use for d in matrix.defences):
        raise ScenarioError(
            source,
            "defences",
            "needs an entry with use: [] (no defence); the defence score compares against it",
        )
    return matrix


def _role_base(entry: RoleEntry, i: int, matrix_path: Path, source: str) -> dict:
    """The role's scenario mapping with the entry's overrides, checked with no defence."""
    path = (matrix_path.parent / entry.scenario).resolve()
    if not path.is_file():
        raise ScenarioError(source, f"roles.{i}.scenario", f"no such file {path}")
    data = read_yaml(path) or {}
    for expr in entry.set:
        apply_override(data, expr, f"{source} roles.{i}.set")
    data["defences"] = []
    validate(copy.deepcopy(data), f"{source} (roles.{i}: {entry.scenario})")
    return data


def expand(matrix: Matrix, matrix_path: str | Path) -> list[Cell]:
    """Every cell, in matrix order: role, then defence, then attacker, then seed."""
    source = str(matrix_path)
    cells: list[Cell] = []
    shown: set[str] = set()
    for i, entry in enumerate(matrix.roles):
        base = _role_base(entry, i, Path(matrix_path), source)
        role_name = base["role"]["name"]
        role = ROLES.get(role_name)
        if (entry.label or role_name) in shown:
            raise ScenarioError(
                source, f"roles.{i}.label",
                f"{entry.label or role_name!r} names another entry too; give each a label",
            )  # fmt: skip
        shown.add(entry.label or role_name)
        for defence in matrix.defences:
            use = [{"name": p.name, **(p.model_extra or {})} for p in defence.use]
            for attacker in matrix.attackers:
                for seed in matrix.seeds:
                    data = copy.deepcopy(base)
                    data["defences"] = copy.deepcopy(use)
                    data["seed"] = seed
                    # The cell's own simulation stays inside the CPUs its Ray task holds.
                    data.setdefault("engine", {})["ray_cpus"] = matrix.cpus_per_cell
                    data["name"] = _slug(f"{role_name}-{defence.label}-{attacker}-s{seed}")
                    if matrix.tracking.tensorboard is not None:
                        # absolute: a cell runs in a Ray worker, whose folder may differ
                        where = str(Path(matrix.tracking.tensorboard).absolute())
                        data["tracking"] = {"tensorboard": where}
                    reason = None
                    resolved = None
                    try:
                        resolved = validate(
                            copy.deepcopy(data), f"{source} ({role_name})"
                        ).resolved()
                        # An adaptive attacker facing no defence is the plain one: one cell.
                        if attacker == "adaptive" and use:
                            override = getattr(role, "adaptive_override", None)
                            if override is None:
                                resolved, reason = (
                                    None,
                                    f"role {role_name} has no adaptive attacker",
                                )
                            else:
                                apply_override(data, override, source)
                                resolved = validate(data, f"{source} ({role_name})").resolved()
                    except ScenarioError as err:
                        if not err.field.startswith(("defences", "role")):
                            raise
                        resolved, reason = None, f"{err.field}: {err.message}"
                    ident = cell_id(resolved) if resolved is not None else ""
                    if resolved is not None:
                        # Two roles may share a role name: the id keeps run folders apart.
                        resolved["name"] = f"{resolved['name']}-{ident}"
                    cells.append(
                        Cell(
                            role=role_name,
                            defence=defence.label,
                            params=describe_defences(defence.use),
                            attacker=attacker,
                            seed=seed,
                            scenario=resolved,
                            reason=reason,
                            id=ident,
                            label=entry.label or role_name,
                        )
                    )
    return cells
