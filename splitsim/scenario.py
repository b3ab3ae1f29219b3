"""The scenario file: pydantic models of the YAML, ``--set`` overrides and one-line errors.

A scenario names its parts (dataset, role, models, defences) by registry name; each part's own
fields are validated against that part's ``Params`` model, so a typo anywhere is caught before
anything runs and reported as ``<file>: <field>: <what is allowed>``.
"""

from __future__ import annotations

import copy
import math
import os
import re
import stat
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from splitsim.errors import ScenarioError
from splitsim.registry import DATASETS, DEFENCES, MODELS, ROLES, Registry


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Plugin(BaseModel):
    """``{name: ..., <the part's own fields>}``; the fields are checked against the registry."""

    model_config = ConfigDict(extra="allow")
    name: str
    _params: BaseModel | None = PrivateAttr(default=None)

    @property
    def params(self) -> Any:
        if self._params is None:
            raise RuntimeError("scenario was not loaded through load_scenario()")
        return self._params


class Models(Strict):
    """Networks by role: ``official``/``secret`` for hidden learning, ``split`` for split
    learning, ``served`` for perturbation probing, ``federated`` for federated training. A role
    fills in its defaults; a network the role does not use is an error."""

    official: Plugin | None = None
    secret: Plugin | None = None
    split: Plugin | None = None
    served: Plugin | None = None
    federated: Plugin | None = None


class Training(Strict):
    epochs: int = Field(40, ge=1, le=10_000, description="the paper trains 40 epochs")
    batch_size: int = Field(64, ge=1, le=1_000_000)
    lr: float = Field(1e-3, gt=0, le=10)
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)


class Partitioner(Strict):
    """How the owners' training data is split among them: even and IID, by class proportions
    drawn from Dirichlet(alpha) (Hsu, Qi, Brown 2019), or ``shards_per_owner`` label-sorted
    shards each (McMahan et al. 2017), as flwr-datasets' partitioners do."""

    name: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float | None = Field(None, gt=0, le=1e6, description="dirichlet: concentration")
    shards_per_owner: int | None = Field(None, ge=1, le=1000, description="shards: per owner")
    min_size: int = Field(10, ge=1, le=100_000, description="dirichlet: least images an owner gets")

    @model_validator(mode="after")
    def _fields_of_the_name(self) -> Partitioner:
        if self.name == "dirichlet" and self.alpha is None:
            raise ValueError("alpha: dirichlet needs a concentration alpha (e.g. 0.3)")
        if self.name == "shards" and self.shards_per_owner is None:
            raise ValueError("shards_per_owner: shards needs shards per owner (e.g. 2)")
        if self.name != "dirichlet" and self.alpha is not None:
            raise ValueError(f"alpha: only for dirichlet, not {self.name}")
        if self.name != "shards" and self.shards_per_owner is not None:
            raise ValueError(f"shards_per_owner: only for shards, not {self.name}")
        return self


class Deployment(Strict):
    clients: int = Field(
        10, ge=1, le=100_000, description="Flower nodes, one partition of users each"
    )
    users: int = Field(2000, ge=1, le=100_000_000, description="data owners across all clients")
    partitioner: Partitioner = Partitioner()
    labels: Literal["server", "owner"] = Field(
        "server",
        description="split learning: who holds the task labels; server: keyed by sample id "
        "(papers/003); owner: sent with each batch (vanilla SplitNN)",
    )


class Fault(Strict):
    """A simulated client failure: the participant raises, or hangs past the server's
    ``engine.client_timeout_s``, on its first ``attempts`` tries in the rounds named."""

    partition: int = Field(ge=0)
    rounds: list[int] = Field(min_length=1)
    phase: Literal["train", "evaluate", "install", "collect", "infer", "probe"] = Field(
        "train",
        description="federated training: train or evaluate; a supplier's deployment: install "
        "or collect; split training: train (rounds are epochs) or infer; probing: probe "
        "(rounds are search steps)",
    )
    kind: Literal["raise", "hang"] = "raise"
    attempts: int = Field(1, ge=1, description="consecutive tries that fail")


class Engine(Strict):
    num_cpus: float = Field(1.0, gt=0, le=1024, description="CPU cores per client actor")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPU fraction per client actor")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where the driver's training runs (supplier, split server, decoders); "
        "'auto': CUDA when visible",
    )
    client_device: Literal["cpu", "auto", "cuda"] = Field(
        "cpu",
        description="where client apps compute: 'auto' or 'cuda' use the GPU share of an actor "
        "with num_gpus > 0 (score-sending clients, federated participants)",
    )
    messages_per_batch: int = Field(
        100, ge=1, le=100_000, description="messages per send_and_receive call"
    )
    flower_loop: Literal["indexed", "stock"] = Field(
        "indexed",
        description="how Flower's simulation hands messages to the actors: 'indexed' as they "
        "are stored (engine/flower_speed.py, for the Flower versions it was checked against), "
        "'stock' Flower's own sweep every 0.1 s; the results are the same",
    )
    ray_cpus: int | None = Field(
        None, ge=1, le=1024, description="CPUs the simulation's local Ray may use (default: all)"
    )
    on_client_failure: Literal["skip", "retry", "fail"] = Field(
        "skip",
        description="a failed or timed-out client call: skip it (recorded), retry it, or "
        "fail the run",
    )
    client_retries: int = Field(2, ge=1, le=100, description="retries per call under 'retry'")
    client_timeout_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="seconds the server waits for one exchange's replies (default: 600); a "
        "role that cannot go on without a client stops with its name",
    )
    faults: list[Fault] = Field([], description="simulated client failures")
    ray_address: str | None = Field(
        None,
        min_length=1,
        description="attach to an existing Ray cluster ('auto', 'host:port' or "
        "'ray://host:port') instead of starting a local Ray",
    )
    mode: Literal["simulation", "deployment"] = Field(
        "simulation",
        description="'simulation': Flower's Ray simulation engine in this process; "
        "'deployment': a SuperLink and one SuperNode per client as separate processes on "
        "loopback, the scenario's ServerApp hosted by the SuperLink",
    )


class Tasks(Strict):
    """Official and secret task of an image dataset (papers/001: C2, C5, C10, Fn, Ln)."""

    official: str
    secret: str
    reweight: Literal["named", "extra", "none"] = "named"
    released: Literal["logits", "probabilities"] = Field(
        "logits",
        description="what N_o releases and N_s reads: its logits (papers/001, Remark 1: N_o maps "
        "into R^k_o, a softmax comes after; reproduces the paper's Table 1) or the softmax "
        "probabilities",
    )

    @field_validator("official", "secret")
    @classmethod
    def _known(cls, name: str) -> str:
        from splitsim.data.tasks import check

        return check(name)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def folder_name(name: str) -> str:
    """A run's name is a folder under the output folder: it may not leave it."""
    if name and not NAME.fullmatch(name):
        raise ValueError(
            "a folder name: letters, digits, '.', '_' and '-', at most 100, starting with a "
            "letter or digit"
        )
    return name


def folder_path(text: str) -> str:
    """An output folder: any path a file system can name (no NUL, no newline)."""
    if not text or len(text) > 4096 or not text.isprintable():
        raise ValueError(
            "a folder path of 1 to 4,096 printable characters ('.' for the current folder)"
        )
    return text


def folder_problem(folder: str | Path) -> str | None:
    """Why a folder cannot be written to or created, or None: it, or the nearest folder above
    it that exists, must be a folder this user may write in."""
    path = Path(folder).absolute()
    for place in (path, *path.parents):
        try:
            info = place.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            return f"cannot use {folder} ({err.strerror})"
        if not stat.S_ISDIR(info.st_mode):
            return f"{place} is a file; allowed: a folder"
        if not os.access(place, os.W_OK | os.X_OK):
            return f"cannot write in {place}"
        return None
    return None


def check_output_folder(folder: str | Path, source: str, field: str) -> None:
    """The folder runs are written to, checked before anything runs: otherwise creating the
    run folder fails after the scenario was accepted."""
    problem = folder_problem(folder)
    if problem is not None:
        raise ScenarioError(source, field, problem)


def name_from_file(source: str) -> str:
    """The default name: the file's stem, in the characters a folder name allows."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).stem).lstrip(".-_")[:100]
    return stem or "scenario"


class Tracking(Strict):
    tensorboard: str | None = Field(
        None,
        description="a folder: the finished run's scalars go to <folder>/<name>/<run> for "
        "TensorBoard (optional extra: pip install -e '.[tracking]')",
    )

    @field_validator("tensorboard")
    @classmethod
    def _folder(cls, path: str | None) -> str | None:
        return None if path is None else folder_path(path)


class Scenario(Strict):
    name: str = ""
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**32)
    dataset: Plugin
    role: Plugin
    tasks: Tasks | None = None
    models: Models = Models()
    training: Training = Training()
    deployment: Deployment = Deployment()
    defences: list[Plugin] = []
    engine: Engine = Engine()
    tracking: Tracking = Tracking()
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _folder(cls, name: str) -> str:
        return folder_name(name)

    @field_validator("output_dir")
    @classmethod
    def _output(cls, path: str) -> str:
        return folder_path(path)

    def resolved(self) -> dict[str, Any]:
        """Every field with its default filled in, as plain YAML-able data."""
        return self.model_dump(mode="json")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Scenario:
        """The scenario in ``path``, checked as ``python -m splitsim run`` checks it, with
        ``overrides`` (``["training.epochs=2"]``) applied first; raises ScenarioError."""
        return load_scenario(path, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Scenario:
        """A scenario from the mapping a YAML file would hold, checked the same way (the
        role's and defences' own checks too); errors name ``source``."""
        return validate(copy.deepcopy(data), source)


def apply_override(data: dict[str, Any], expr: str, source: str) -> None:
    """Apply ``a.b.0.c=value`` to the raw scenario mapping; the value is parsed as YAML."""
    if "=" not in expr:
        raise ScenarioError(source, f"--set {expr}", "expected key=value, e.g. --set seed=3")
    path, _, text = expr.partition("=")
    keys = path.strip().split(".")
    if not all(keys):
        raise ScenarioError(
            source, f"--set {path}", "a dotted field path with no empty part, e.g. engine.num_cpus"
        )
    value = parse_yaml(text, source, field=path.strip())
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            # ASCII digits only: str.isdigit() also takes '²', which int() refuses
            if not re.fullmatch(r"[0-9]{1,9}", key) or int(key) >= len(node):
                raise ScenarioError(source, where, f"no item {key}; the list has {len(node)}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ScenarioError(source, where, f"cannot set a field inside a {type(node).__name__}")


def _needs_role_flag(
    scenario: Scenario, role: type, flag: str, key: str, refusal: str, source: str
) -> None:
    """``engine.<key>`` is set: refuse it unless the role declares ``flag`` (a class attribute)."""
    if getattr(role, flag, False):
        return
    allowed = [n for n, r in ROLES.items() if getattr(r, flag, False)]
    raise ScenarioError(
        source,
        f"engine.{key}",
        f"role {scenario.role.name} {refusal}; allowed with: {', '.join(allowed)}",
    )


def _check_gpu(engine: Engine, source: str) -> None:
    """A GPU asked for where none is: torch would fail deep inside training, and a local Ray
    would wait for ever for an actor it cannot place."""
    if engine.client_device == "cuda" and engine.num_gpus == 0:
        raise ScenarioError(
            source,
            "engine.client_device",
            "'cuda' needs engine.num_gpus > 0: Ray gives a client actor a GPU only with a share",
        )
    if engine.device != "cuda" and (engine.num_gpus == 0 or engine.ray_address is not None):
        return
    import torch

    if torch.cuda.is_available():
        return
    if engine.device == "cuda":
        raise ScenarioError(
            source, "engine.device", "'cuda', but torch sees no GPU here; allowed here: auto, cpu"
        )
    raise ScenarioError(
        source,
        "engine.num_gpus",
        f"{engine.num_gpus:g} per client, but this machine has no GPU for the local Ray; "
        "allowed here: 0 (or engine.ray_address of a cluster with GPUs)",
    )


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` (used to say what a typo'd key should have been)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = field.annotation
        while typing.get_origin(current) in (list, typing.Union):
            current = next(a for a in typing.get_args(current) if a is not type(None))
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _pydantic_error(
    err: ValidationError, source: str, model: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> ScenarioError:
    errors = err.errors()
    # A typo'd key also makes the intended key "missing": name the typo, it is the cause.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = prefix + tuple(first["loc"])
    field = _dotted(loc)
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(model, tuple(first["loc"])[:-1])
        return ScenarioError(source, field, f"unknown field; allowed: {', '.join(allowed)}")
    if first["type"] == "missing":
        return ScenarioError(source, field, "required field is missing")
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ScenarioError(source, field, f"{message} (got {shown})")


def _bind(plugin: Plugin, registry: Registry, loc: tuple[Any, ...], source: str) -> None:
    """Validate a part's fields against its registered ``Params`` and store the result."""
    where = _dotted(loc)
    if plugin.name not in registry:
        raise ScenarioError(
            source,
            f"{where}.name",
            f"unknown {registry.kind} {plugin.name!r}; allowed: {', '.join(registry.names())}",
        )
    params_model: type[BaseModel] = registry.get(plugin.name).Params
    extras = dict(plugin.model_extra or {})
    try:
        params = params_model.model_validate(extras, strict=True)
    except ValidationError as err:
        raise _pydantic_error(err, source, params_model, loc) from None
    # Write the validated, default-filled fields back so the resolved scenario shows them.
    for key in list(plugin.model_extra or {}):
        delattr(plugin, key)
    for key, value in params.model_dump(mode="json").items():
        setattr(plugin, key, value)
    plugin._params = params


def validate(data: Any, source: str) -> Scenario:
    """Turn a raw mapping into a checked :class:`Scenario`, or raise one :class:`ScenarioError`."""

    if not isinstance(data, dict):
        raise ScenarioError(source, "", "a scenario must be a YAML mapping of fields")
    check_values(data, source)
    try:
        # strict: numbers and strings as YAML wrote them; ``seed: true`` or ``clients: "10"``
        # is refused, not read as 1 and 10 as pydantic's lax mode would
        scenario = Scenario.model_validate(data, strict=True)
    except ValidationError as err:
        raise _pydantic_error(err, source, Scenario) from None
    if not scenario.name:
        scenario.name = name_from_file(source)
    _bind(scenario.dataset, DATASETS, ("dataset",), source)
    _bind(scenario.role, ROLES, ("role",), source)
    role = ROLES.get(scenario.role.name)
    for key in Models.model_fields:
        plugin = getattr(scenario.models, key)
        if key not in role.models:
            if plugin is not None:
                raise ScenarioError(
                    source,
                    f"models.{key}",
                    f"not used by role {scenario.role.name}; allowed: {', '.join(role.models)}",
                )
            continue
        if plugin is None:
            plugin = Plugin(name=role.models[key])
            setattr(scenario.models, key, plugin)
        _bind(plugin, MODELS, ("models", key), source)
    for i, defence in enumerate(scenario.defences):
        _bind(defence, DEFENCES, ("defences", i), source)
        stage = DEFENCES.get(defence.name).stage
        if stage not in role.stages:
            allowed = [n for n, d in DEFENCES.items() if d.stage in role.stages]
            raise ScenarioError(
                source,
                f"defences.{i}.name",
                f"{defence.name!r} acts on {stage}, which role {scenario.role.name} does not "
                f"have; allowed here: {', '.join(allowed)}",
            )
    dataset_cls = DATASETS.get(scenario.dataset.name)
    if hasattr(dataset_cls, "check_available"):
        problem = dataset_cls.check_available(scenario.dataset.params)
        if problem:
            raise ScenarioError(source, problem[0], problem[1])
    if scenario.deployment.users < scenario.deployment.clients:
        raise ScenarioError(
            source,
            "deployment.users",
            f"must be at least deployment.clients ({scenario.deployment.clients}): "
            "every client holds one or more users",
        )
    engine = scenario.engine
    for key in ("faults", "on_client_failure"):
        if getattr(engine, key) != Engine.model_fields[key].default:
            _needs_role_flag(
                scenario, role, "fault_tolerant", key, "does not handle client failures", source
            )
    if engine.client_device != "cpu":
        _needs_role_flag(
            scenario, role, "gpu_clients", "client_device", "keeps its clients on the CPU", source
        )
    if any(f.kind == "hang" for f in engine.faults) and engine.client_timeout_s is None:
        raise ScenarioError(source, "engine.faults", "a 'hang' fault needs engine.client_timeout_s")
    if engine.ray_address is not None and engine.ray_cpus is not None:
        raise ScenarioError(
            source,
            "engine.ray_cpus",
            "sizes a local Ray; an existing cluster (engine.ray_address) has its own size",
        )
    if engine.mode == "deployment":
        for key in ("ray_address", "ray_cpus"):
            if getattr(engine, key) is not None:
                raise ScenarioError(
                    source,
                    f"engine.{key}",
                    "applies to the Ray simulation engine; engine.mode 'deployment' runs "
                    "SuperNodes, not Ray actors",
                )
    _check_gpu(engine, source)
    if engine.ray_cpus is not None and engine.num_cpus > engine.ray_cpus:
        raise ScenarioError(
            source,
            "engine.num_cpus",
            f"a client actor cannot have more CPUs than engine.ray_cpus ({engine.ray_cpus})",
        )
    if scenario.tracking.tensorboard is not None:
        _check_tracking(scenario.tracking.tensorboard, source)
    role.check_declared(scenario, source)
    role.check(scenario, source)
    return scenario


def _check_tracking(folder: str, source: str) -> None:
    from splitsim.tracking import tensorboard_missing

    problem = tensorboard_missing() or folder_problem(folder)
    if problem:
        raise ScenarioError(source, "tracking.tensorboard", problem)


MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_TEXT = 10_000
MAX_VALUES = 100_000


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, mark: yaml.Mark | None) -> None:
        super().__init__(f"{key} appears twice")
        self.key = key
        self.problem_mark = mark


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: the constructor below says so
            break
        if duplicate:
            raise _DuplicateKey(key, key_node.start_mark)
        seen.add(key)
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader (libyaml's when installed: a large file is refused in moments, not
    parsed for a minute), refusing a key given twice instead of keeping the last."""


class _Dumper(yaml.SafeDumper):
    """YAML's safe dumper, quoting every string that ``_Loader`` would read as a number."""


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# YAML 1.2's floats without a dot (``lr: 1e-3``): YAML 1.1 reads them as strings, which the
# strict validation would refuse where a number goes.
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def dump_yaml(data: Any) -> str:
    """``data`` as YAML that :func:`read_yaml` reads back as the same data (a name ``1e5``
    stays a string), for the scenario files splitsim writes."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def read_yaml(path: str | Path, what: str = "scenario") -> Any:
    """A scenario or matrix file as data, or one ScenarioError: missing, not a regular file,
    too large, not text, not YAML, a key twice, nested too deeply."""
    source = str(path)
    try:
        info = Path(path).stat()
        # A FIFO or a device is never opened: reading one blocks, or never ends (/dev/zero).
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ScenarioError(source, "", f"{kind}, not a {what} file")
        if info.st_size > MAX_FILE_BYTES:
            raise ScenarioError(
                source, "", f"a {what} file is at most 1 MiB (this one: {info.st_size:,} bytes)"
            )
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)  # it may have grown since stat
    except FileNotFoundError:
        raise ScenarioError(source, "", f"no such {what} file") from None
    except OSError as err:
        raise ScenarioError(source, "", f"cannot read the file ({err.strerror})") from None
    except ValueError:  # a path holding a NUL (from a matrix file: argv cannot hold one)
        raise ScenarioError(source, "", "not a file name (it holds a NUL character)") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(source, "", f"a {what} file is at most 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScenarioError(
            source, "", f"not a text file (invalid UTF-8 at byte {err.start}); a {what} is YAML"
        ) from None
    if "\x00" in text:
        raise ScenarioError(source, "", f"not a text file (a NUL byte); a {what} is YAML")
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str, field: str | None = None) -> Any:
    """YAML text as data, or one ScenarioError. ``field``: the text is a ``--set`` value for
    that field (errors name it), not a file (errors name the line)."""

    def refuse(mark: yaml.Mark | None, problem: str, key: str = "") -> ScenarioError:
        if field is not None:
            return ScenarioError(source, field, f"--set value: {' '.join((key, problem)).strip()}")
        line = f"line {mark.line + 1}" if mark is not None else ""
        return ScenarioError(source, ": ".join(x for x in (line, key) if x), problem)

    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader)
    except _DuplicateKey as err:
        raise refuse(err.problem_mark, "appears twice; give each key once", str(err.key)) from None
    except RecursionError:
        raise refuse(None, f"nested too deeply (at most {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise refuse(getattr(err, "problem_mark", None), f"invalid YAML: {problem}") from None
    except ValueError as err:  # a scalar Python cannot build: an int of 5,000 digits, 2001-02-30
        raise refuse(None, f"invalid YAML: {str(err).split(';')[0]}") from None


def check_values(data: Any, source: str) -> None:
    """Every number finite, every string at most ``MAX_TEXT`` characters, at most
    ``MAX_VALUES`` values, no deeper than ``MAX_DEPTH`` levels: an infinite learning rate or
    noise scale is refused here, not discovered when training has started, and YAML aliases
    that repeat a list of lists ("billion laughs") are refused before anything walks them."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    seen = 0
    while stack:
        node, where = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ScenarioError(
                source, "", f"more than {MAX_VALUES:,} values (each use of a YAML alias counts)"
            )
        if len(where) > MAX_DEPTH:
            raise ScenarioError(source, "", f"nested too deeply (at most {MAX_DEPTH} levels)")
        if isinstance(node, float) and not math.isfinite(node):
            raise ScenarioError(source, _dotted(where), f"must be a finite number (got {node})")
        if isinstance(node, str) and len(node) > MAX_TEXT:
            raise ScenarioError(
                source, _dotted(where), f"at most {MAX_TEXT:,} characters (got {len(node):,})"
            )
        if isinstance(node, dict):
            stack += [(v, (*where, k)) for k, v in node.items()]
        elif isinstance(node, list):
            stack += [(v, (*where, i)) for i, v in enumerate(node)]


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    source = str(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    for expr in overrides or []:
        if not isinstance(data, dict):
            break
        apply_override(data, expr, source)
    return validate(data, source)


def dataset_spec(scenario: Scenario) -> Any:
    """The dataset's official task, secrets and side fields under this scenario's tasks."""
    return DATASETS.get(scenario.dataset.name).describe(scenario.dataset.params, scenario.tasks)
