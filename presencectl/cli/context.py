"""What every command receives: the global options, and the few helpers that use them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from presencectl import output
from presencectl.errors import UsageError

if TYPE_CHECKING:
    import typer

    from presencectl.config import Profile


@dataclass
class AppContext:
    profile_name: str | None = None
    output: str = "table"
    verbosity: int = 0
    no_input: bool = False

    @property
    def interactive(self) -> bool:
        """True when prompting is allowed: not --no-input and stdin is a terminal."""
        return not self.no_input and sys.stdin.isatty()

    @property
    def json(self) -> bool:
        return self.output == "json"

    def load_profile(self, *, must_exist: bool = True, check_mapping: bool = True) -> Profile:
        from presencectl.config import load_profile

        return load_profile(self.profile_name, must_exist=must_exist, check_mapping=check_mapping)

    def render(self, data: Any, **kwargs: Any) -> None:
        output.render(data, self.output, **kwargs)

    def status(self, message: str) -> None:
        """A progress line on stderr (suppressed by -q)."""
        if self.verbosity >= 0:
            output.stderr_console().print(message)

    def require_input(self, what: str, *, flag: str, env: str | None = None) -> None:
        """Raise the usage error for a missing answer when prompting is not allowed."""
        if not self.interactive:
            via = f"pass {flag}" + (f" or set {env}" if env else "")
            raise UsageError(
                f"{what} is required and prompting is off (--no-input or no terminal)", hint=via
            )

    def confirm(self, question: str, *, flag: str = "--yes") -> bool:
        self.require_input("confirmation", flag=flag)
        import typer

        return bool(typer.confirm(question, err=True))

    def prompt_secret(self, what: str, *, flag: str, env: str | None = None) -> str:
        self.require_input(what, flag=flag, env=env)
        import getpass

        return getpass.getpass(f"{what}: ", stream=sys.stderr)


def app_context(ctx: typer.Context) -> AppContext:
    """The run's :class:`AppContext` (the global options), for any command or group."""
    return ctx.ensure_object(AppContext)


def env_output_default() -> str:
    return os.environ.get("PRESENCECTL_OUTPUT", "table")
