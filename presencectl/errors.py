"""The one exception family of presencectl, and the exit codes it maps to.

Core packages raise these; only ``cli/app.py:run`` catches them, and ``output.render_error``
prints them. Every error has a
stable snake_case ``code`` (a contract: scripts and docs/troubleshooting.md rely on it), a
``message`` that says what happened, a ``hint`` that says what to do next, and an ``exit_code``.
Messages and hints never contain secrets.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes, documented in docs/ci.md (one table)."""

    OK = 0
    ERROR = 1  # unexpected, or an API error
    USAGE = 2
    CONFIG = 3  # configuration missing or invalid, or a prerequisite not done
    AUTH = 4  # sign-in, consent or permission failure
    PARTIAL = 5  # some users failed, the rest synced
    INTERRUPTED = 130


class PresencectlError(Exception):
    """Base of every error the tool reports to a user."""

    code: str = "error"
    exit_code: ExitCode = ExitCode.ERROR
    # True when the command already put this error inside the one JSON document it printed
    # (a partial sync: the summary carries "error"), so -o json stays a single document.
    in_document: bool = False

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        code: str | None = None,
        exit_code: ExitCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class UsageError(PresencectlError):
    code = "usage"
    exit_code = ExitCode.USAGE


class ConfigError(PresencectlError):
    """Configuration missing or invalid, or a prerequisite not done (exit 3)."""

    code = "config_invalid"
    exit_code = ExitCode.CONFIG


class AuthError(PresencectlError):
    """Sign-in, consent or permission failure (exit 4)."""

    code = "auth_failed"
    exit_code = ExitCode.AUTH


class ApiError(PresencectlError):
    """A remote service answered with an error we cannot recover from (exit 1)."""

    code = "api_error"
    exit_code = ExitCode.ERROR

    def __init__(self, message: str, *, status: int | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.status = status


class NetworkError(PresencectlError):
    """A service could not be reached (exit 1)."""

    code = "network_error"
    exit_code = ExitCode.ERROR


class PartialSyncError(PresencectlError):
    """Some users failed, the rest synced (exit 5)."""

    code = "partial_sync"
    exit_code = ExitCode.PARTIAL
