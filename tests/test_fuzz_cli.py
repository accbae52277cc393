"""Bad command lines: usage errors (exit 2) with a message, never a traceback or "unexpected".

The fuzzed command lines use only commands that stay on this machine when no profile exists
(no sign-in, no sandbox server), so the test never touches the network.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

COMMANDS = [
    ["sync"], ["enable"], ["disable"], ["status"], ["users"], ["mapping", "show"],
    ["mapping", "check"], ["config", "show"], ["config", "path"], ["config", "profiles"],
    ["sync-user", "forget"],
]  # fmt: skip
TOKENS = [
    "--watch", "--interval", "--dry-run", "--direction", "--max-cycles", "--duration", "--yes",
    "--unmatched", "-o", "--profile", "-v", "-vv", "-q", "--no-input", "json", "csv", "md",
    "table", "both", "connect-to-teams", "teams-to-connect", "sideways", "-1", "0", "1e9",
    "nan", "abc", "--", "-", "--interval=", "--max-cycles=x", "--output=xml", "--help",
]  # fmt: skip


# A POSIX argv cannot hold a NUL byte.
argv_text = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=8)


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-such-option"],
        ["no-such-command"],
        ["-o", "xml", "status"],
        ["sync", "--interval", "abc"],
        ["sync", "--max-cycles", "many"],
        ["sync", "--duration", "soon"],
        ["sync", "--bogus"],
        ["mapping"],
        ["mapping", "check"],
        ["users", "extra-argument"],
        ["--profile"],
    ],
)
def test_bad_arguments_are_usage_errors(cli: Any, argv: list[str]) -> None:
    result = cli(*argv)
    assert "Traceback" not in result.stderr
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.strip() or result.stdout.strip()  # something says what is wrong


@pytest.mark.parametrize(
    "argv",
    [
        ["enable", "--direction", "sideways"],
        ["sync", "--direction", "sideways"],
        ["mapping", "show", "--direction", "sideways"],
    ],
)
def test_bad_direction_is_a_usage_error_naming_the_choices(cli: Any, argv: list[str]) -> None:
    from presencectl.config import Profile, save_profile

    save_profile(Profile(name="default", tenant_id="contoso.example"))
    result = cli("-o", "json", *argv)
    assert "Traceback" not in result.stderr
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    text = result.stdout + result.stderr
    assert "sideways" in text and "connect-to-teams" in text


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    command=st.sampled_from(COMMANDS),
    tokens=st.lists(st.one_of(st.sampled_from(TOKENS), argv_text), max_size=5),
    prefix=st.lists(st.sampled_from(["-o", "json", "-v", "-q", "--no-input"]), max_size=2),
)
@example(command=["sync"], tokens=["--interval", "-1"], prefix=[])
@example(command=["sync"], tokens=["--max-cycles", "0", "--watch"], prefix=[])
def test_any_command_line_ends_cleanly(
    cli: Any, command: list[str], tokens: list[str], prefix: list[str]
) -> None:
    argv = [*prefix, *command, *tokens]
    result = cli(*argv)
    if "-vv" not in argv and argv.count("-v") < 2:  # -vv asks for tracebacks
        assert "Traceback" not in result.stderr, result.stderr
    assert "error: unexpected" not in result.stderr, result.stderr
    assert '"unexpected"' not in result.stdout, result.stdout
    assert result.exit_code in (0, 2, 3), (result.exit_code, result.stdout, result.stderr)
