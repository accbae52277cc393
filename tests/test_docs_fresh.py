"""docs/cli.md is generated from --help; this fails when a command changed and the docs did not."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    script = ROOT / "scripts" / "gen_cli_docs.py"
    spec = importlib.util.spec_from_file_location("gen_cli_docs", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_docs_are_fresh() -> None:
    generated = _generator().render()
    current = (ROOT / "docs" / "cli.md").read_text("utf-8")
    assert current == generated, "docs/cli.md is stale: run `python scripts/gen_cli_docs.py`"


def test_cli_docs_cover_every_command() -> None:
    text = (ROOT / "docs" / "cli.md").read_text("utf-8")
    for command in ("setup-azure", "sync-user set", "mapping show", "sandbox serve", "config show"):
        assert f"## `presencectl {command}`" in text


def test_mkdocs_nav_points_at_existing_or_planned_pages() -> None:
    nav = (ROOT / "mkdocs.yml").read_text("utf-8")
    for page in ("index.md", "ci.md", "cli.md"):
        assert page in nav and (ROOT / "docs" / page).exists()


def test_mapping_doc_tables_are_what_mapping_show_prints() -> None:
    path = ROOT / "docs" / "mapping.md"
    current = path.read_text("utf-8")
    assert current == _generator().render_mapping(current), (
        "docs/mapping.md is stale: run `python scripts/gen_cli_docs.py`"
    )
    assert "| connect-to-teams | Agent on call |" in current
