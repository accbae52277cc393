"""Generate the docs that the tool itself can print, so they cannot drift from it.

docs/cli.md from the --help of every command; the tables of docs/mapping.md (between its
``<!-- generated: mapping -->`` markers) from ``presencectl mapping show -o md``.

    python scripts/gen_cli_docs.py          # rewrite them
    python scripts/gen_cli_docs.py --check  # exit 1 when one is stale (tests do this)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
MAPPING_DOC = DOCS.parent / "mapping.md"
BEGIN, END = "<!-- generated: mapping -->", "<!-- end generated: mapping -->"
WIDTH = 100

HEADER = """\
# Command reference

Generated from `--help` by `scripts/gen_cli_docs.py`; do not edit by hand
(`python scripts/gen_cli_docs.py` rewrites it, and a test fails when it is stale).

Global options (`--profile`, `-o/--output`, `-v`, `-q`, `--no-input`) may be written before the
command or after it: `presencectl mapping show -o json`. Exit codes, environment variables and
JSON shapes are in [ci.md](ci.md).

Shell completion: `presencectl --install-completion` (bash, zsh, fish, PowerShell), then restart
the shell; `presencectl --show-completion` prints the script instead.
"""


def _walk(command: Any, ctx: Any) -> Iterator[tuple[str, str]]:
    yield ctx.command_path, command.get_help(ctx)
    subcommands = getattr(command, "commands", None) or {}
    for name in command.list_commands(ctx) if subcommands else []:
        sub = command.get_command(ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        sub_ctx = sub.context_class(
            sub, info_name=name, parent=ctx, terminal_width=WIDTH, max_content_width=WIDTH
        )
        yield from _walk(sub, sub_ctx)


def render() -> str:
    """The whole of docs/cli.md, independent of the terminal and of PRESENCECTL_* variables."""
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith("PRESENCECTL_")]:
            del os.environ[name]
        os.environ["COLUMNS"] = str(WIDTH)
        return _render()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _render() -> str:
    from presencectl.cli.app import root_command

    root = root_command()
    settings = {**root.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = root.context_class(root, info_name="presencectl", **settings)
    parts = [HEADER]
    for path, text in _walk(root, ctx):
        parts.append(f"\n## `{path}`\n\n```text\n{text.rstrip()}\n```\n")
    return "".join(parts)


def _mapping_tables() -> str:
    import contextlib
    import io

    from presencectl.cli.app import run

    parts = []
    for direction, title in (
        ("teams-to-connect", "Teams → Connect"),
        ("connect-to-teams", "Connect → Teams"),
    ):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            argv = ["--profile", "__docs__", "-o", "md", "mapping", "show"]
            code = run([*argv, "--direction", direction])
        if code != 0:
            raise SystemExit(f"mapping show failed with exit {code}")
        table = "\n".join(line for line in out.getvalue().splitlines() if not line.startswith("#"))
        parts.append(f"### {title}\n\n{table.strip()}\n")
    return "\n".join(parts)


def render_mapping(current: str) -> str:
    """docs/mapping.md with its generated block replaced."""
    head, sep, rest = current.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{MAPPING_DOC} lacks the {BEGIN} … {END} markers")
    import tempfile

    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith("PRESENCECTL_")]:
            del os.environ[name]
        with tempfile.TemporaryDirectory() as empty:
            os.environ["PRESENCECTL_CONFIG_DIR"] = empty  # no profile: the defaults only
            tables = _mapping_tables()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return f"{head}{BEGIN}\n{tables}{END}{tail}"


def main(argv: list[str]) -> int:
    outputs = {DOCS: render()}
    if MAPPING_DOC.exists():
        outputs[MAPPING_DOC] = render_mapping(MAPPING_DOC.read_text("utf-8"))
    if "--check" in argv:
        stale = [
            path
            for path, text in outputs.items()
            if (path.read_text("utf-8") if path.exists() else "") != text
        ]
        for path in stale:
            print(f"{path} is stale: run `python scripts/gen_cli_docs.py`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text, "utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
