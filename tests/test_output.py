"""Rendering: table (plain when piped), JSON, CSV, Markdown, NDJSON, errors, log redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import pytest

from presencectl import output
from presencectl.errors import AuthError


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    if output._log_handler is not None:
        root.removeHandler(output._log_handler)
        output._log_handler = None
    root.setLevel(level)


class Side(Enum):
    TEAMS = "teams"


@dataclass
class Row:
    user: str
    side: Side
    when: datetime
    tags: list[str]
    ok: bool | None


ROWS = [
    Row("ada@contoso.com", Side.TEAMS, datetime(2024, 5, 1, 9, 30, tzinfo=UTC), ["a", "b"], True),
    Row("bob|x@contoso.com", Side.TEAMS, datetime(2024, 5, 1, 9, 31, tzinfo=UTC), [], None),
]


def _render(data: object, fmt: str, **kwargs: object) -> str:
    out = io.StringIO()
    output.render(data, fmt, stream=out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def test_json_is_one_document_with_stable_keys() -> None:
    assert json.loads(_render(ROWS, "json")) == [
        {
            "user": "ada@contoso.com",
            "side": "teams",
            "when": "2024-05-01T09:30:00+00:00",
            "tags": ["a", "b"],
            "ok": True,
        },
        {
            "user": "bob|x@contoso.com",
            "side": "teams",
            "when": "2024-05-01T09:31:00+00:00",
            "tags": [],
            "ok": None,
        },
    ]


def test_csv_keeps_keys_as_headers() -> None:
    assert _render(ROWS, "csv", columns=["user", "tags", "ok"]) == (
        'user,tags,ok\nada@contoso.com,"a, b",yes\nbob|x@contoso.com,,\n'
    )


def test_markdown_escapes_pipes_and_uses_headers() -> None:
    text = _render(ROWS, "md", columns=["user", "ok"], headers={"user": "User"}, title="Users")
    assert text.splitlines() == [
        "### Users",
        "",
        "| User | Ok |",
        "|---|---|",
        "| ada@contoso.com | yes |",
        "| bob\\|x@contoso.com |  |",
    ]


def test_plain_table_when_piped() -> None:
    text = _render(ROWS, "table", columns=["user", "side"])
    assert text.splitlines() == [
        "User               Side",
        "ada@contoso.com    teams",
        "bob|x@contoso.com  teams",
    ]
    assert "─" not in text and "\x1b" not in text


def test_rich_table_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    output.render(ROWS, "table", columns=["user"], stream=out)
    assert "ada@contoso.com" in out.getvalue() and "─" in out.getvalue()


def test_scalars_and_empty_results() -> None:
    assert _render("just text", "table") == "Value\njust text\n"
    assert json.loads(_render("just text", "json")) == "just text"
    assert _render([], "table") == "(none)\n"
    assert json.loads(_render([], "json")) == []


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        _render([], "yaml")


def test_emit_event_is_ndjson() -> None:
    out = io.StringIO()
    output.emit_event({"event": "change", "at": datetime(2024, 1, 1, tzinfo=UTC)}, stream=out)
    output.emit_event({"event": "write", "side": Side.TEAMS}, stream=out)
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["change", "write"]
    assert json.loads(lines[1])["side"] == "teams"


def test_render_error_json_on_stdout_text_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    err = AuthError("consent missing for " + "x" * 120, hint="run `presencectl consent`")
    output.render_error(err, "json")
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"error": err.to_dict()}
    assert json.loads(captured.out)["error"]["code"] == "auth_failed"
    lines = captured.err.splitlines()
    assert lines[0].startswith("error: consent missing") and lines[0].endswith("x" * 120)
    assert lines[1] == "hint: run `presencectl consent`"
    output.render_error(err, "table")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("verbosity", "shown"), [(-1, set()), (0, {"W"}), (1, {"W", "I"}), (2, {"W", "I", "D"})]
)
def test_verbosity_levels(
    verbosity: int, shown: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    output.setup_logging(verbosity)
    log = logging.getLogger("presencectl.test")
    log.debug("D")
    log.info("I")
    log.warning("W")
    err = capsys.readouterr().err
    assert {line.rsplit(" ", 1)[-1] for line in err.splitlines()} == shown


def test_every_log_record_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    output.setup_logging(3)
    logging.getLogger("msal.somewhere").debug("POST data=%s", "password=hunter2&client_id=abc")
    logging.getLogger("presencectl.x").debug("headers %s", {"Authorization": "Bearer eyJ.abc.def"})
    err = capsys.readouterr().err
    assert "hunter2" not in err and "eyJ.abc.def" not in err
    assert "password=***" in err and "client_id=abc" in err
