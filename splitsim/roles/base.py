"""The Role contract: what a threat model is, and the bookkeeping every role shares.

A role is one folder, ``roles/<role>/``, and one class in its ``role.py`` that subclasses
:class:`Role` and is registered with :func:`register`. The class declares its parameters
(``Params``), the defence stages it accepts, the networks it needs, and its checks; then four
phases that the harness runs in this order, and that ``role.py`` reads in that order:

1. ``deploy()``: train and deploy through Flower. Returns the role's :class:`Received`: only
   what reached the attacker in Flower Messages (payloads, a colluder's hand-over) and the
   attacker's own state and declared knowledge (its trained networks, a segment it holds). The
   harness writes it to the run folder (``received.npz`` and ``received.json``).
2. ``attack(received)``: the attacker's algorithm (the role's ``attack.py``). It gets the
   ``Received`` and nothing else, and returns the role's :class:`AttackOutput`.
3. ``truth(received)``: what only the harness knows (the owners' inputs and labels, a target's
   schedule), rebuilt from the scenario. ``received`` only says in which order the attacker
   saw the owners, which it knows anyway.
4. ``evaluate(received, truth, output)``: the metrics and the pictures.

Because the attack consumes only ``Received``, ``python -m splitsim attack <run folder>`` can
run phases 2-4 again on a recorded run, with other attacker settings (``attack_params``) and
without Flower: the structural proof that the attacker learns only what crossed the boundary.

The data owners' side is the role's ClientApp, ``client_app(scenario, storage)``: built on the
client from the package code and the resolved scenario, in a simulation's Ray actor as on a
SuperNode of a real federation; ``storage`` is the node's own folder for state between messages.
A role whose deployment can resume after a kill (split training) also takes ``keep``: the
owners' persistent storage, where each owner keeps its own snapshot of the last rounds; it
outlives a killed run, and only the owner reads it.

The base class holds what every role repeats: determinism, random streams by named purpose
(``self.seeds``), the wire log and its summary, timings, running a Flower phase with the
ServerApp's errors surfaced, and saving ``Received``.
"""

from __future__ import annotations

import inspect
import io
import json
import shutil
import sys
import time
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from splitsim.engine.grid import ServerError, surfaced
from splitsim.engine.node_state import state_root
from splitsim.engine.simulation import simulate
from splitsim.engine.wire import WireLog
from splitsim.engine.wire import client_records as wire_records
from splitsim.errors import ScenarioError
from splitsim.registry import ROLES
from splitsim.runs import Run, write_atomic, write_json
from splitsim.scenario import Scenario
from splitsim.seeds import Seeds

if typing.TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

RECEIVED_ARRAYS = "received.npz"
RECEIVED_META = "received.json"
DEPLOYED = "deployed.json"  # in the run's checkpoints: the deployment finished


@dataclass(kw_only=True)
class Received:
    """What the attacker holds after deployment; subclassed per role as a dataclass.

    Fields annotated ``np.ndarray``, ``dict[str, np.ndarray]``, ``dict[int, np.ndarray]`` or
    ``list[np.ndarray]`` go to ``received.npz`` (read back without pickle); every other field
    must be JSON data and goes to ``received.json``. ``wire`` is the wire log's summary."""

    wire: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {}
        for f in fields(self):
            kind, value = _kind(f.type), getattr(self, f.name)
            if kind == "json" or value is None:
                meta[f.name] = value
            elif kind == "array":
                arrays[f.name] = value
            elif kind == "list":
                meta[f"{f.name}#len"] = len(value)
                arrays.update({f"{f.name}#{i}": v for i, v in enumerate(value)})
            else:
                meta[f"{f.name}#keys"] = list(value)
                arrays.update({f"{f.name}/{k}": v for k, v in value.items()})
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomic(folder / RECEIVED_ARRAYS, buffer.getvalue())
        write_json(folder / RECEIVED_META, meta)

    @classmethod
    def load(cls, folder: Path) -> Received:
        meta = json.loads((folder / RECEIVED_META).read_text())
        values: dict[str, Any] = {}
        with np.load(folder / RECEIVED_ARRAYS, allow_pickle=False) as arrays:
            for f in fields(cls):
                kind = _kind(f.type)
                if kind == "json" or meta.get(f.name, ...) is None:
                    values[f.name] = meta.get(f.name)
                elif kind == "array":
                    values[f.name] = arrays[f.name]
                elif kind == "list":
                    values[f.name] = [arrays[f"{f.name}#{i}"] for i in range(meta[f"{f.name}#len"])]
                else:
                    keys = meta[f"{f.name}#keys"]
                    values[f.name] = {k: arrays[f"{f.name}/{k}"] for k in keys}
                    if kind == "int_dict":
                        values[f.name] = {int(k): v for k, v in values[f.name].items()}
        return cls(**values)


def _kind(annotation: object) -> str:
    text = str(annotation).replace(" ", "")
    if text in ("np.ndarray", "np.ndarray|None"):
        return "array"
    if text == "list[np.ndarray]":
        return "list"
    if text == "dict[str,np.ndarray]":
        return "str_dict"
    if text == "dict[int,np.ndarray]":
        return "int_dict"
    return "json"


@dataclass(kw_only=True)
class Truth:
    """What only the harness knows; subclassed per role. Never saved, never given to ``attack``."""


@dataclass(kw_only=True)
class AttackOutput:
    """What the attacker produced; subclassed per role."""


@dataclass
class Evaluation:
    """The phases' result: ``metrics`` go to results.json, ``plots`` to the role's report."""

    metrics: dict[str, Any]
    plots: dict[str, Any]


class Role(ABC):
    """A threat model. Subclass it in ``roles/<role>/role.py`` and decorate it with
    ``@register("<role>")``; docs/adding_a_role.md walks through a small one."""

    #: the role's own fields (``role:`` in a scenario), a pydantic model with extra="forbid"
    Params: ClassVar[type[BaseModel]]
    #: defence stages it has (defences/base.py); a defence of another stage is refused
    stages: ClassVar[tuple[str, ...]]
    #: networks by scenario key (``models.<key>``) and their default registered model
    models: ClassVar[dict[str, str]]
    #: the role's report module: ``write(folder, name, results, plots)`` and
    #: ``console_table(metrics)``
    report: ClassVar[ModuleType]
    #: the datasets it runs on (None: any that describes what it needs)
    datasets: ClassVar[tuple[str, ...] | None] = None
    #: it reads the scenario's ``tasks`` (an image dataset's official and secret task)
    uses_tasks: ClassVar[bool] = False
    #: the ``deployment.partitioner`` names it splits the owners' data by
    partitioners: ClassVar[tuple[str, ...]] = ("iid",)
    #: the ``deployment.labels`` holdings it runs under (split learning: who holds the labels)
    label_holders: ClassVar[tuple[str, ...]] = ("server",)
    #: its Received subclass, read back by ``python -m splitsim attack``
    received_type: ClassVar[type[Received]]
    #: role fields that only the attack and evaluation read: what a re-attack may change
    attack_params: ClassVar[frozenset[str]] = frozenset()
    #: the ``--set`` that makes the attacker adaptive (knows the defences), or None
    adaptive_override: ClassVar[str | None] = None
    #: it handles engine.faults / on_client_failure / client_timeout_s
    fault_tolerant: ClassVar[bool] = False
    #: its clients may compute on a GPU share (engine.client_device)
    gpu_clients: ClassVar[bool] = False

    def __init__(self, scenario: Scenario, run: Run) -> None:
        self.scenario = scenario
        self.params: Any = scenario.role.params
        self.run = run
        self.seeds = Seeds(scenario.seed)
        self._wire: WireLog | None = None
        self._wire_at: dict[str, Any] | None = None

    # -- what a role declares -------------------------------------------------------------

    @classmethod
    def flower_nodes(cls, scenario: Scenario) -> int:
        """Flower nodes the role's phases need (SuperNodes under the deployment engine)."""
        return scenario.deployment.clients

    @classmethod
    def attack_params_for(cls, scenario: Scenario) -> frozenset[str]:
        """``attack_params`` for this scenario (a role may narrow them by its settings)."""
        return cls.attack_params

    @classmethod
    def check_declared(cls, scenario: Scenario, source: str) -> None:
        """What the declarations say: its datasets, and ``tasks`` only where it reads them."""
        name = scenario.role.name
        if cls.datasets is not None and scenario.dataset.name not in cls.datasets:
            allowed = ", ".join(cls.datasets)
            raise ScenarioError(
                source, "dataset.name", f"role {name} runs on {allowed}; allowed: {allowed}"
            )
        if not cls.uses_tasks and scenario.tasks is not None:
            raise ScenarioError(source, "tasks", f"not used by role {name}; remove it")
        chosen = scenario.deployment.partitioner.name
        if chosen not in cls.partitioners:
            raise ScenarioError(
                source, "deployment.partitioner.name",
                f"role {name} splits its owners' data {' or '.join(cls.partitioners)} only "
                f"(got {chosen!r})",
            )  # fmt: skip
        holder = scenario.deployment.labels
        if holder not in cls.label_holders:
            raise ScenarioError(
                source, "deployment.labels",
                f"role {name} runs with the labels held by the {' or '.join(cls.label_holders)} "
                f"only (got {holder!r})",
            )  # fmt: skip

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        """Refuse, with one ScenarioError, what the role cannot run; called by the loader
        after ``check_declared``."""
        return None

    @staticmethod
    @abstractmethod
    def summary(metrics: dict) -> dict:
        """The comparison matrix's numbers: ``{"utility": {name, value, chance}, "leakage":
        [{name, value, chance}, ...]}``, the headline leakage first."""

    @classmethod
    @abstractmethod
    def client_app(cls, scenario: Scenario, storage: str) -> ClientApp:
        """The data owners' ClientApp, built on the client side (Ray actor or SuperNode).
        A role that resumes also accepts ``keep: str | None`` (see the module docstring)."""

    # -- the phases, in the order they run ------------------------------------------------

    @abstractmethod
    def deploy(self) -> Received:
        """Train and deploy through Flower; what reached the attacker."""

    @abstractmethod
    def attack(self, received: Received) -> AttackOutput:
        """The attacker's algorithm on what it received, and nothing else."""

    @abstractmethod
    def truth(self, received: Received) -> Truth:
        """What only the harness knows, rebuilt from the scenario."""

    @abstractmethod
    def evaluate(self, received: Received, truth: Truth, output: AttackOutput) -> Evaluation:
        """Metrics and pictures of the attack against the truth."""

    # -- the harness ----------------------------------------------------------------------

    def execute(self) -> Evaluation:
        """Every phase: deploy, save what was received, attack, evaluate. A resumed run whose
        deployment had finished reads what was received back instead of deploying again."""
        deterministic()
        deployed = self.run.checkpoints / DEPLOYED
        if self.run.resumed and deployed.is_file():
            self.run.timings.update(json.loads(deployed.read_text())["timings"])
            self.run.console.print("the deployment had finished: read back what was received")
            return self.reattack(self.received_type.load(self.run.folder))
        try:
            received = self.deploy()
        finally:
            self.close_wire()
        received.wire = self.wire_summary()
        received.save(self.run.folder)
        write_atomic(deployed, json.dumps({"timings": self.run.timings}))
        return self.reattack(received)

    def reattack(self, received: Received) -> Evaluation:
        """Phases 2-4 on ``received`` (recorded or fresh)."""
        deterministic()
        output = self.attack(received)
        return self.evaluate(received, self.truth(received), output)

    def privacy(
        self, stage: str, releases: dict[str, int], specs: list | None = None, **context: Any
    ) -> list[dict[str, Any]]:
        """The privacy budget of the scenario's ``stage`` defences (or of ``specs``) for each
        kind of record in ``releases``, how many times one such record's value was released
        through them (``splitsim/defences/privacy.py``). Evaluation puts it in the metrics."""
        from splitsim.defences import build
        from splitsim.defences.privacy import budgets

        chosen = self.scenario.defences if specs is None else specs
        return budgets(build(chosen), stage, releases, **context)

    @property
    def wire(self) -> WireLog:
        """This run's wire log (``wire.jsonl``), opened on first use."""
        if self._wire is None:
            self._wire = WireLog(self.run.folder / "wire.jsonl", self._wire_at)
        return self._wire

    def resume_wire(self, at: dict[str, Any]) -> None:
        """Open the wire log where a checkpoint left it (before anything is logged)."""
        if self._wire is not None:
            raise RuntimeError("the wire log is already open")
        self._wire_at = at

    def close_wire(self) -> None:
        if self._wire is not None:
            self._wire.close()

    def wire_summary(self) -> dict[str, Any]:
        """Messages and bytes each way, and every record name clients sent."""
        if self._wire is None:
            return {"messages": 0, "bytes_to_clients": 0, "bytes_from_clients": 0,
                    "client_records": []}  # fmt: skip
        return {
            "messages": self._wire.messages,
            "bytes_to_clients": self._wire.bytes["to_clients"],
            "bytes_from_clients": self._wire.bytes["from_clients"],
            "client_records": wire_records(self._wire.path),
        }

    def flower(
        self,
        server_app: ServerApp,
        holder: ServerError,
        nodes: int | None = None,
        timing: str = "flower simulation",
        keep: Path | None = None,
    ) -> None:
        """Run one Flower phase: the role's ServerApp against its ClientApps (Ray simulation,
        or the SuperLink's grid when one hosts the scenario). The data owners' storage lives
        for the phase and is removed after it; ``keep``, their persistent storage, is passed
        to a role that resumes. An error the ServerApp stopped on is raised."""
        storage = state_root()
        started = time.perf_counter()
        extra = {} if keep is None else {"keep": str(keep)}
        try:
            client = type(self).client_app(self.scenario, str(storage), **extra)
            simulate(server_app, client, nodes or self.flower_nodes(self.scenario),
                     self.scenario.engine)  # fmt: skip
        finally:
            shutil.rmtree(storage, ignore_errors=True)  # the owners' devices go away
            elapsed = round(time.perf_counter() - started, 3)
            self.run.timings[timing] = round(self.run.timings.get(timing, 0.0) + elapsed, 3)
        if holder.error is not None:
            raise RuntimeError(f"the Flower ServerApp failed: {holder.error}") from holder.error


def check_faults(
    scenario: Scenario, source: str, phases: tuple[str, ...], what: str, nodes: int, who: str
) -> None:
    """``engine.faults`` name only the role's ``phases`` (``what`` names them) and partitions
    ``0 .. nodes - 1`` (``who`` says which those are)."""
    for i, fault in enumerate(scenario.engine.faults):
        if fault.phase not in phases:
            raise ScenarioError(source, f"engine.faults.{i}.phase", f"{what}: {', '.join(phases)}")
        if fault.partition >= nodes:
            raise ScenarioError(source, f"engine.faults.{i}.partition", who)


def deterministic() -> None:
    """The same scenario and seed give the same numbers on the CPU."""
    import torch

    # torch.use_deterministic_algorithms also sets TorchInductor's flag, and imports the
    # compiler stack (dynamo, sympy) to do so: 1.1 s of CPU at every run's start, before the
    # supplier's first step. splitsim compiles nothing, so only the eager flag is set, unless
    # the compiler is loaded already or this torch lacks the setter.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def register(name: str) -> Callable[[type[Role]], type[Role]]:
    """Register a role class under ``name`` after checking it states the whole contract."""

    def add(cls: type[Role]) -> type[Role]:
        if not (isinstance(cls, type) and issubclass(cls, Role)):
            raise TypeError(f"role {name!r}: {cls!r} does not subclass splitsim.roles.base.Role")
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise TypeError(f"role {name!r}: {cls.__name__} does not implement {missing}")
        for attribute in ("Params", "stages", "models", "report", "received_type"):
            if not hasattr(cls, attribute):
                raise TypeError(f"role {name!r}: {cls.__name__} does not declare {attribute}")
        unknown = set(cls.attack_params) - set(cls.Params.model_fields)
        if unknown:
            raise TypeError(f"role {name!r}: attack_params names no field: {sorted(unknown)}")
        return ROLES.register(name)(cls)

    return add


__all__ = ["AttackOutput", "Evaluation", "Received", "Role", "ServerError", "Truth",
           "deterministic", "register", "surfaced"]  # fmt: skip
