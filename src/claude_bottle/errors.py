"""Errors that the CLI turns into one clear message and an exit code (SPEC: Exit codes)."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_LAUNCH_FAILED = 125


class BottleError(Exception):
    """An error the user can act on: `message` says what is wrong, `hint` how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class ConfigError(BottleError):
    """Bad usage or configuration. Messages name the file, the key and the problem."""

    exit_code = EXIT_USAGE


class MissingDependency(BottleError):
    """A binary or kernel feature a backend needs is absent."""

    exit_code = EXIT_MISSING_DEPENDENCY


class LaunchError(BottleError):
    """The bottle failed to start; everything created so far has been torn down."""

    exit_code = EXIT_LAUNCH_FAILED
