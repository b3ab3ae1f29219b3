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
_loaded = False


def load_plugins() -> None:
    """Import the built-in parts and every installed plugin once (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first, so that a plugin's own look-ups while it registers do not recurse
    try:
        importlib.import_module(BUILTIN)
        for entry in metadata.entry_points(group=ENTRY_POINTS):
            if entry.value != BUILTIN:
                entry.load()
    except BaseException:
        _loaded = False
        raise


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plugin loaded for a while, e.g. by a test)."""
        self._entries.pop(name, None)

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


ROLES: Registry = Registry("role")
DEFENCES: Registry = Registry("defence")
DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")


def describe(obj: object) -> str:
    """First line of a plugin's docstring, for ``splitsim list``."""
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
