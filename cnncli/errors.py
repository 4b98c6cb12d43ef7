"""One error hierarchy for cnncli; each class knows its exit code.

The CLI edge (``cnncli.cli.app``) turns a ``CnncliError`` into one line on stderr
(plus an optional ``hint:`` line) and exits with ``error.code``. Anything else that
escapes is an internal error (exit 70) and its traceback goes to a crash log.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    ENVIRONMENT = 3
    INTERNAL = 70
    SIGINT = 130
    SIGTERM = 143


class CnncliError(Exception):
    """Base of every error cnncli reports to a user.

    ``path``, ``line`` and ``col`` locate the problem in a file (line and col are
    1-based); ``field`` is a dotted config path such as ``model.blocks[1].conv[0].size``.
    """

    code: int = ExitCode.BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        col: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        self.field = field
        self.hint = hint
        if code is not None:
            self.code = code

    def location(self) -> str:
        parts = []
        if self.path:
            loc = str(self.path)
            if self.line:
                loc += f":{self.line}"
                if self.col:
                    loc += f":{self.col}"
            parts.append(loc)
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)

    def __str__(self) -> str:
        loc = self.location()
        return f"{loc}: {self.message}" if loc else self.message


class SpecError(CnncliError):
    """A config file or --set override is invalid (exit 2)."""


class UsageError(CnncliError):
    """Bad command-line usage (exit 2)."""


class DataError(CnncliError):
    """A dataset or image cannot be used (exit 2)."""


class CheckpointError(CnncliError):
    """A checkpoint is missing, malformed or does not match its config (exit 2)."""


class CheckFailed(CnncliError):
    """The command ran, but its check failed (exit 1)."""

    code = ExitCode.CHECK_FAILED


class RuntimeFault(CnncliError):
    """The environment failed after work started: disk full, out of memory (exit 3)."""

    code = ExitCode.ENVIRONMENT


class Interrupted(CnncliError):
    """Stopped by SIGINT/SIGTERM after saving state (exit 130/143)."""

    code = ExitCode.SIGINT
