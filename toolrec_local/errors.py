"""The one error type a user can cause: it carries the cause and the fix, and the CLI prints
it as two lines and exits with code 2 instead of a traceback."""

from __future__ import annotations


class ToolrecError(Exception):
    """An error the user can fix. `message` says what is wrong, `hint` what to do about it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class DataError(ToolrecError):
    """A dataset file is missing, malformed or empty."""


def at(path, line: int | None = None) -> str:
    """`file:line` prefix for messages about a place in a file."""
    return f"{path}:{line}" if line is not None else str(path)
