"""The root command: every command registered, global options anywhere, the error boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import typer

from presencectl import __version__, config
from presencectl.cli.app import hoist_global_options, root_command
from presencectl.cli.context import AppContext
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


def _small_app() -> Any:
    small = typer.Typer()

    @small.callback()
    def root(output: str = typer.Option("table", "-o", "--output")) -> None:
        """root"""

    @small.command("export")
    def export(
        out: str = typer.Option("-", "-o", "--out-file"),
        name: str = typer.Option("", "--name"),
    ) -> None:
        """a command whose own -o means something else"""

    @small.command("list")
    def list_() -> None:
        """a command without options"""

    return typer.main.get_command(small)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "-o", "json"], ["-o", "json", "list"]),
        (["-v", "list", "-q", "--profile", "p"], ["-v", "-q", "--profile", "p", "list"]),
        (["export", "-o", "file.csv"], ["export", "-o", "file.csv"]),  # the command's own -o
        (["export", "--name", "-v", "-vv"], ["-vv", "export", "--name", "-v"]),  # a value stays
        (["list", "--", "-o", "json"], ["list", "--", "-o", "json"]),
    ],
)
def test_hoist_global_options(argv: list[str], expected: list[str]) -> None:
    assert hoist_global_options(argv, _small_app()) == expected


def test_real_tree_nested_command_is_found() -> None:
    hoisted = hoist_global_options(["config", "show", "-o", "json"], root_command())
    assert hoisted == ["-o", "json", "config", "show"]


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


def test_stdin_not_a_terminal_implies_no_input(cli: Any) -> None:
    from presencectl.cli import app

    cli("config", "path")
    assert app._last_context is not None and app._last_context.no_input
