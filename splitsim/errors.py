"""Errors a user can fix: each renders as one line naming the file, the field and the fix."""

from __future__ import annotations


class ScenarioError(Exception):
    """A scenario that cannot run as written. The CLI prints ``str(err)`` and exits 2."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")
