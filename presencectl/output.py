"""The one boundary between results and the terminal: rendering, logging setup, errors → exit codes.

Data goes to stdout (table, json, csv or md); everything else — logs, progress, prompts, the
device-code message — goes to stderr. With ``-o json`` an error is printed to stdout as
``{"error": {"code", "message", "hint"}}``. Core packages never import this module.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any, TextIO

from presencectl.errors import PresencectlError

FORMATS = ("table", "json", "csv", "md")


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, datetimes, sets → plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def _rows(data: Any) -> list[dict[str, Any]]:
    data = to_jsonable(data)
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):  # a scalar (a string is not a list of characters)
        return [{"value": data}]
    return [r if isinstance(r, dict) else {"value": r} for r in data]


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _header(column: str, headers: Mapping[str, str] | None) -> str:
    if headers and column in headers:
        return headers[column]
    return column.replace("_", " ").capitalize()


def render(
    data: Any,
    fmt: str,
    *,
    columns: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    title: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print ``data`` (a dict, a dataclass, or a list of them) to stdout in format ``fmt``.

    ``columns`` picks and orders the keys (default: every key, in first-seen order); ``headers``
    renames them for table and md (JSON and CSV keep the stable snake_case keys).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}")
    out = stream or sys.stdout
    if fmt == "json":
        out.write(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False) + "\n")
        return
    rows = _rows(data)
    cols = _columns(rows, columns)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in cols])
        out.write(buf.getvalue())
        return
    if fmt == "md":
        if title:
            out.write(f"### {title}\n\n")
        out.write("| " + " | ".join(_header(c, headers) for c in cols) + " |\n")
        out.write("|" + "|".join("---" for _ in cols) + "|\n")
        for row in rows:
            cells = [_cell(row.get(c)).replace("|", "\\|") for c in cols]
            out.write("| " + " | ".join(cells) + " |\n")
        return
    _render_table(rows, cols, headers, title, out)


def _render_table(
    rows: list[dict[str, Any]],
    cols: list[str],
    headers: Mapping[str, str] | None,
    title: str | None,
    out: TextIO,
) -> None:
    if not rows:
        out.write((f"{title}\n" if title else "") + "(none)\n")
        return
    if not out.isatty():
        # Plain, aligned text when piped: greppable, no box drawing, no colour.
        table = [[_header(c, headers) for c in cols]]
        table += [[_cell(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
        if title:
            out.write(title + "\n")
        for line in table:
            cells = (cell.ljust(w) for cell, w in zip(line, widths, strict=True))
            out.write("  ".join(cells).rstrip() + "\n")
        return
    from rich.table import Table

    rich_table = Table(title=title, show_lines=False)
    for c in cols:
        rich_table.add_column(_header(c, headers), overflow="fold")
    for r in rows:
        rich_table.add_row(*(_cell(r.get(c)) for c in cols))
    data_console(out).print(rich_table)


def data_console(out: TextIO | None = None) -> Any:
    """A rich Console for data on stdout whose closed pipe raises ``BrokenPipeError``.

    rich's own answer to a closed pipe is ``SystemExit(1)``; ours lets the error boundary
    (``cli/app.py:run``) end quietly with exit 0, as a reader that leaves (``| head``) wants.
    """
    from rich.console import Console

    class DataConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return DataConsole(file=out or sys.stdout)


def emit_event(event: Mapping[str, Any], stream: TextIO | None = None) -> None:
    """One JSON object per line (NDJSON) for streaming output (`sync --watch -o json`)."""
    out = stream or sys.stdout
    out.write(json.dumps(to_jsonable(event), ensure_ascii=False) + "\n")
    out.flush()


def render_error(err: PresencectlError, fmt: str) -> None:
    """The error on stderr for people; with ``-o json`` also ``{"error": {…}}`` on stdout."""
    if fmt == "json" and not err.in_document:
        render_error_json(err)
    console = stderr_console()
    # soft_wrap: a long path or URL stays on one line (greppable), whatever the width.
    console.print(f"[bold red]error:[/] {_escape(_redact(err.message))}", soft_wrap=True)
    if err.hint:
        console.print(f"[yellow]hint:[/] {_escape(_redact(err.hint))}", soft_wrap=True)


def render_error_json(err: PresencectlError) -> None:
    """``{"error": {"code", "message", "hint"}}`` on stdout (the ``-o json`` error contract)."""
    document = err.to_dict()
    for key in ("message", "hint"):  # a proxy URL's password in a validation error, say
        if isinstance(document.get(key), str):
            document[key] = _redact(document[key])
    sys.stdout.write(json.dumps({"error": document}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _redact(text: str) -> str:
    from presencectl.transport import redact

    return redact(text)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


_stderr_console: Any = None


def stderr_console() -> Any:
    """A rich Console on stderr (progress, logs, prompts)."""
    global _stderr_console
    # While a rich Live runs (the live view) sys.stderr is its proxy; the console it draws
    # with writes to the stream behind that proxy. The same console is kept then, so that a
    # line printed meanwhile (a "stopping…" note) goes above the view instead of into it.
    stream = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
    if _stderr_console is None or _stderr_console.file is not stream:
        from rich.console import Console

        # Not a terminal (a log file, journald, CI): never hard-wrap, one message is one line.
        _stderr_console = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
    return _stderr_console


_log_handler: logging.Handler | None = None


def setup_logging(verbosity: int) -> None:
    """-q → errors only; default warnings; -v info; -vv debug (with tracebacks); -vvv also
    the debug logs of httpx, msal and the servers. Every record passes the secret redactor."""
    from presencectl.transport import RedactingFilter

    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity < -1:
        level = logging.CRITICAL
    global _log_handler
    root = logging.getLogger()
    if _log_handler is not None:  # a second run in one process (tests) replaces the first
        root.removeHandler(_log_handler)
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(
            console=stderr_console(), show_path=verbosity >= 2, show_time=verbosity >= 1
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(_LibraryFilter(verbosity))
    _log_handler = handler
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays quiet unless -vvv.
    for noisy in ("httpx", "httpcore", "msal", "uvicorn", "pysignalr", "websockets", "hpack", "h2"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)


class _LibraryFilter(logging.Filter):
    """Other libraries' records: warnings and errors only, unless -vvv (docs/ci.md).

    At the default verbosity pysignalr's warnings (a dropped feed connection it retries) are
    noise too: the sync says what matters about the feed itself.
    """

    def __init__(self, verbosity: int) -> None:
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "presencectl" or name.startswith("presencectl.") or self.verbosity >= 3:
            return True
        if (name == "uvicorn" or name.startswith("uvicorn.")) and self.verbosity >= 2:
            return True  # `sandbox serve -vv`: the access log (the levels uvicorn.Config set)
        if (name == "pysignalr" or name.startswith("pysignalr.")) and self.verbosity < 1:
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING
