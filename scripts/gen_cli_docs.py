"""Generate docs/cli.md from the --help of every presencectl command.

    python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 when docs/cli.md is stale (tests do this)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
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


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = DOCS.read_text("utf-8") if DOCS.exists() else ""
        if current != text:
            print(f"{DOCS} is stale: run `python scripts/gen_cli_docs.py`", file=sys.stderr)
            return 1
        return 0
    DOCS.write_text(text, "utf-8")
    print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
