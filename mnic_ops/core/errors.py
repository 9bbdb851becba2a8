"""Exit codes and the one exception type the CLI turns into a clean message.

Every error a user can cause (bad input, a missing file, a refused change) is raised as
an :class:`OpsError`; the CLI prints its message and exits with its code, never a
traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PENDING = 3  # --check: changes would be made

EXIT_CODES_HELP = (
    "Exit codes: 0 success (with --check: nothing would change), 1 failure, "
    "2 usage error or bad input, 3 (--check only) changes are pending."
)


class OpsError(Exception):
    """A failure with a message meant for the admin, and the exit code to use."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputError(OpsError):
    """Bad input: a malformed file, a wrong option value, a path that does not fit."""

    exit_code = EXIT_USAGE


class CommandError(OpsError):
    """An external command failed or could not be started."""
