"""Name -> class tables for every pluggable part: roles, defences, datasets, models.

A plugin registers itself with ``@DEFENCES.register("laplace")``; the scenario loader validates
the YAML against the registered class's ``Params`` model, and ``python -m splitsim list`` prints
what is registered.

The tables fill themselves on first use: they import the modules named by the entry-point group
``splitsim.plugins`` (a package of one's own can publish parts there) and ``splitsim.plugins``,
which holds the built-in parts. The registry knows those modules by name only, the way Flower
finds a ServerApp, so the scenario loader that uses the tables does not depend on the roles that
depend on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T")

BUILTIN = "splitsim.plugins"
ENTRY_POINTS = "splitsim.plugins"
BUILT_IN = "built in"
_loaded = False
_loading: str | None = None  # the distribution whose entry point is being imported


def load_plugins() -> None:
    """Import the built-in parts and every installed plugin once (idempotent)."""
    global _loaded, _loading
    if _loaded:
        return
    _loaded = True  # first, so that a plugin's own look-ups while it registers do not recurse
    try:
        importlib.import_module(BUILTIN)
        for entry in metadata.entry_points(group=ENTRY_POINTS):
            if entry.value == BUILTIN:
                continue
            dist = entry.dist
            _loading = (
                f"{dist.name} {dist.version}" if dist is not None else f"entry point {entry.name}"
            )
            try:
                entry.load()
            except Exception as err:
                raise ImportError(
                    f"splitsim plugin {entry.name!r} ({_loading}, {entry.value}) failed to "
                    f"import: {type(err).__name__}: {err}"
                ) from err
    except BaseException:
        _loaded = False
        raise
    finally:
        _loading = None


def _origin(obj: object) -> str:
    """Where a registered part came from: the distribution whose entry point registered it,
    splitsim itself, or the module that registered it (a script, a test)."""
    if _loading is not None:
        return _loading
    module = getattr(obj, "__module__", "") or ""
    return BUILT_IN if module == "splitsim" or module.startswith("splitsim.") else module


class Registry(Generic[T]):
    """Names a scenario may give (``role: {name: ...}``) and the class each one means."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@DEFENCES.register("laplace")`` above the class."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            self._origins[name] = _origin(obj)
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plugin loaded for a while, e.g. by a test)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    def origin(self, name: str) -> str:
        """``built in``, the plugin distribution and version, or the registering module."""
        self.get(name)
        return self._origins[name]

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            allowed = ", ".join(self.names())
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {allowed}") from None

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        load_plugins()
        return sorted(self._entries.items())


ROLES: Registry = Registry("role")  #: attacker roles (splitsim.roles.base.Role subclasses)
DEFENCES: Registry = Registry("defence")  #: data-owner defences (splitsim.defences.base)
DATASETS: Registry = Registry("dataset")  #: datasets a scenario may name
MODELS: Registry = Registry("model")  #: network builders for a role's model slots


def describe(obj: object) -> str:
    """First line of a plugin's docstring, for ``splitsim list``."""
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
