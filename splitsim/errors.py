"""Errors a user can fix: each renders as one line naming the file, the field and the fix."""

from __future__ import annotations

FIELD_MAX, MESSAGE_MAX = 200, 2000


def one_line(text: str, most: int) -> str:
    """``text`` on one line of at most ``most`` characters: a key or value from the file may
    hold a newline or be thousands of characters long, and the error quotes it."""
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return flat if len(flat) <= most else flat[: most - 3] + "..."


class ScenarioError(Exception):
    """A scenario that cannot run as written. The CLI prints ``str(err)`` and exits 2."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        source, field = one_line(source, MESSAGE_MAX), one_line(field, FIELD_MAX)
        message = one_line(message, MESSAGE_MAX)
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")


class RunFailed(RuntimeError):
    """A run that started but did not finish: a deployed run whose ServerApp failed, or a
    comparison with failed cells (``result`` holds the comparison's table; the finished cells
    are kept). The CLI prints it and exits 1."""

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result
