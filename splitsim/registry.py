"""Name -> class tables for every pluggable part: roles, defences, datasets, models.

A plugin registers itself with ``@DEFENCES.register("laplace")``; the scenario loader validates
the YAML against the registered class's ``Params`` model, and ``python -m splitsim list`` prints
what is registered. Importing :mod:`splitsim.plugins` fills the tables with the built-in parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            allowed = ", ".join(self.names())
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {allowed}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())


ROLES: Registry = Registry("role")
DEFENCES: Registry = Registry("defence")
DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")


def describe(obj: object) -> str:
    """First line of a plugin's docstring, for ``splitsim list``."""
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
