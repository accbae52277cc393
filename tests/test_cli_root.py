"""The root command: every command registered, global options anywhere, the error boundary."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
import typer

from presencectl import __version__, config
from presencectl.cli.app import run
from presencectl.cli.context import AppContext, app_context
from presencectl.cli.options import OutputOption, VerboseOption
from presencectl.errors import UsageError

COMMANDS = (
    "setup-azure",
    "consent",
    "sync-user",
    "enable",
    "disable",
    "sync",
    "status",
    "users",
    "mapping",
    "doctor",
    "sandbox",
    "demo",
    "config",
)


def test_help_lists_every_command(cli: Any) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(COMMANDS) <= listed


def test_version(cli: Any) -> None:
    result = cli("--version")
    assert (result.exit_code, result.stdout) == (0, f"presencectl {__version__}\n")


def test_python_dash_m_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "presencectl", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"presencectl {__version__}")


def test_importing_the_cli_does_not_import_heavy_libraries() -> None:
    heavy = ["msal", "httpx", "starlette", "uvicorn", "sqlite3", "websockets", "pysignalr"]
    code = (
        "import sys, json, presencectl.cli.app\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_no_command_shows_help_and_exits_2(cli: Any) -> None:
    result = cli()
    assert result.exit_code == 2
    assert "Commands" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "argv",
    [("bogus",), ("config", "show", "--bogus"), ("-o", "yaml", "config", "path"), ("--profile",)],
)
def test_usage_errors_exit_2(cli: Any, argv: tuple[str, ...]) -> None:
    result = cli(*argv)
    assert result.exit_code == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert "Error:" not in result.stderr  # one prefix for every error
    assert result.stdout == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_usage_error_with_json_prints_the_error_object(cli: Any, where: str) -> None:
    argv = ["-o", "json", "config", "show", "--bogus"]
    if where == "after":
        argv = ["config", "show", "--bogus", "-o", "json"]
    result = cli(*argv)
    assert result.exit_code == 2
    error = result.json()["error"]
    assert error["code"] == "usage" and "--bogus" in error["message"]
    assert "presencectl config show --help" in error["hint"]


@pytest.mark.parametrize(
    "argv",
    [
        ("-o", "json", "config", "path"),
        ("config", "path", "-o", "json"),
        ("config", "-o", "json", "path"),
        ("config", "path", "--output=json"),
        ("config", "path", "-ojson", "-vv"),
        ("config", "path", "-q", "--no-input", "--output", "JSON"),
        ("-o", "csv", "config", "path", "-o", "json"),  # after the command wins
    ],
)
def test_global_options_anywhere(cli: Any, argv: tuple[str, ...]) -> None:
    result = cli(*argv)
    assert result.exit_code == 0, result.stderr
    assert result.json()["config_file"] == str(config.config_path())


def test_profile_option_after_the_command(cli: Any) -> None:
    config.save_profile(config.Profile(name="contoso", tenant_id="contoso.example"))
    result = cli("config", "show", "--profile", "contoso", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["profile"] == "contoso"


def _options(*argv: str) -> AppContext:
    """The global options that `presencectl ARGV` runs with."""
    seen = AppContext()
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(list(argv), seen)
    assert code == 0, err.getvalue()
    return seen


@pytest.mark.parametrize(
    ("argv", "profile", "output", "verbosity"),
    [
        (("config", "path", "-o", "json"), None, "json", 0),
        (("-v", "config", "path", "-q", "--profile", "p"), "p", "table", 0),  # counts add up
        (("-vv", "config", "-q", "path", "-v"), None, "table", 2),  # group level too
        (("--profile", "a", "config", "path", "--profile", "b"), "b", "table", 0),
        (("-ojson", "config", "path"), None, "json", 0),
    ],
)
def test_global_options_merge_before_and_after_the_command(
    argv: tuple[str, ...], profile: str | None, output: str, verbosity: int
) -> None:
    seen = _options(*argv)
    assert (seen.profile_name, seen.output, seen.verbosity) == (profile, output, verbosity)


def test_environment_is_a_default_the_command_line_beats_on_either_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRESENCECTL_OUTPUT", "csv")
    monkeypatch.setenv("PRESENCECTL_PROFILE", "from-env")
    assert (_options("config", "path").output, _options("config", "path").profile_name) == (
        "csv",
        "from-env",
    )
    assert _options("-o", "json", "config", "path").output == "json"  # not undone by the env
    assert _options("config", "path", "-o", "json").output == "json"
    assert _options("config", "path", "--profile", "p").profile_name == "p"


def test_every_command_and_group_takes_the_global_options() -> None:
    from presencectl.cli.app import root_command

    wanted = {"--profile", "-o", "--output", "-v", "--verbose", "-q", "--quiet", "--no-input"}

    def walk(command: Any, path: str) -> Any:
        yield path, command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, f"{path} {name}")

    for path, command in walk(root_command(), "presencectl"):
        names = {name for param in command.params for name in param.opts}
        assert wanted <= names, (path, wanted - names)


def test_after_double_dash_nothing_is_a_global_option(cli: Any) -> None:
    result = cli("config", "path", "--", "-o", "json")
    assert result.exit_code == 2 and result.stdout == ""  # `path` takes no arguments


def _small_app() -> typer.Typer:
    small = typer.Typer()
    seen: dict[str, Any] = {}

    @small.callback()
    def root(
        ctx: typer.Context, output: OutputOption = "table", verbose: VerboseOption = 0
    ) -> None:
        """root"""

    @small.command("export")
    def export(
        ctx: typer.Context,
        out: str = typer.Option("-", "-o", "--out-file"),
        name: str = typer.Option("", "--name"),
        _verbose: VerboseOption = 0,
    ) -> None:
        """a command whose own -o means something else: it does not take OutputOption"""
        seen.update(out=out, name=name, context=app_context(ctx))

    @small.command("list")
    def list_(
        ctx: typer.Context,
        args: list[str] = typer.Argument(None),
        _output: OutputOption = "table",
    ) -> None:
        """a command that takes the alias"""
        seen.update(args=args or [], context=app_context(ctx))

    small.seen = seen  # type: ignore[attr-defined]
    return small


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "-o", "json"], {"output": "json", "args": []}),
        (["-o", "csv", "list", "-o", "json"], {"output": "json", "args": []}),
        (["export", "-o", "file.csv"], {"output": "table", "out": "file.csv"}),  # its own -o
        (["-o", "md", "export", "-o", "f"], {"output": "md", "out": "f"}),
        (["export", "--name", "-v", "-vv"], {"verbosity": 2, "name": "-v"}),  # a value stays
        (["list", "--", "-o", "json"], {"output": "table", "args": ["-o", "json"]}),
    ],
)
def test_a_command_takes_the_aliases_it_means(argv: list[str], expected: dict[str, Any]) -> None:
    small = _small_app()
    command = typer.main.get_command(small)
    command.main(args=argv, standalone_mode=False, obj=AppContext())
    seen = small.seen  # type: ignore[attr-defined]
    context = seen.pop("context")
    got = {**seen, "output": context.output, "verbosity": context.verbosity}
    assert {key: got[key] for key in expected} == expected


def test_config_error_exit_3_with_json_error(cli: Any) -> None:
    result = cli("config", "show", "-o", "json")
    assert result.exit_code == 3
    assert result.json() == {
        "error": {
            "code": "config_missing",
            "message": f"no profile 'default' in {config.config_path()}",
            "hint": result.json()["error"]["hint"],
        }
    }
    assert "error: no profile 'default'" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_error_traceback_only_with_vv(cli: Any) -> None:
    assert "Traceback" not in cli("-v", "config", "show").stderr
    assert "Traceback" in cli("-vv", "config", "show").stderr


def _raise(exc: BaseException) -> Any:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return boom


def test_unexpected_error_is_clean_and_redacted(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        config, "config_path", _raise(RuntimeError("GET https://h/x?client_secret=hunter2"))
    )
    result = cli("config", "path", "-o", "json")
    assert result.exit_code == 1
    error = result.json()["error"]
    assert error["code"] == "unexpected"
    assert "RuntimeError" in error["message"] and "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    verbose = cli("config", "path", "-vv")
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


def test_keyboard_interrupt_exits_130(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "config_path", _raise(KeyboardInterrupt()))
    assert cli("config", "path").exit_code == 130


def test_abort_exits_130(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "config_path", _raise(typer.Abort()))
    assert cli("config", "path").exit_code == 130


def test_no_input_names_the_flag_and_env_var() -> None:
    ctx = AppContext(no_input=True)
    assert not ctx.interactive
    with pytest.raises(UsageError) as caught:
        ctx.prompt_secret(
            "the sync password", flag="--password-stdin", env="PRESENCECTL_SYNC_PASSWORD"
        )
    assert caught.value.exit_code == 2
    assert (
        "--password-stdin" in caught.value.hint and "PRESENCECTL_SYNC_PASSWORD" in caught.value.hint
    )


def test_stdin_not_a_terminal_implies_no_input() -> None:
    old_stdin = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        assert _options("config", "path").no_input
    finally:
        sys.stdin = old_stdin
