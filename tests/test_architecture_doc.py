"""docs/architecture.md matches the tree, and the code points inside the repository.

Every module file of presencectl/ is named on the page (with what it owns), the page names no
module that is gone, and no docstring or comment cites notes a contributor of this repository
does not have (the design notes' ARCHITECTURE.md, FACTS.md, STYLE.md).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "presencectl"
PAGE = ROOT / "docs" / "architecture.md"


def _modules() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}


def _named_on_page() -> set[str]:
    """Module paths the page's "Where things live" lists (`path.py`: …)."""
    text = PAGE.read_text("utf-8")
    section = text[text.index("## Where things live") : text.index("## One sync cycle")]
    return set(re.findall(r"^- `([\w/]+\.py)`:", section, flags=re.M))


def test_every_module_is_on_the_architecture_page() -> None:
    missing = sorted(_modules() - _named_on_page())
    assert missing == [], f"docs/architecture.md, 'Where things live': add a line for {missing}"


def test_the_architecture_page_names_no_module_that_is_gone() -> None:
    gone = sorted(_named_on_page() - _modules())
    assert gone == [], f"docs/architecture.md names modules that do not exist: {gone}"


def test_code_points_inside_the_repository() -> None:
    outside = re.compile(r"ARCHITECTURE\.md|FACTS\.md|STYLE\.md")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("presencectl", "tests", "scripts", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.resolve() != Path(__file__).resolve()
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    docs = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "docs").glob("*.md"))
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert found + docs == [], "cite docs/architecture.md or docs/verification.md instead"


def test_the_page_links_only_pages_that_exist() -> None:
    text = PAGE.read_text("utf-8")
    for target in re.findall(r"\]\(([\w-]+\.md)\)", text):
        assert (ROOT / "docs" / target).exists(), target


def test_the_command_list_has_every_option_of_every_command() -> None:
    """The page's command list against the generated reference (docs/cli.md is `--help`)."""
    text = PAGE.read_text("utf-8")
    block = text[text.index("## Commands") : text.index("## Exit codes")]
    reference = (ROOT / "docs" / "cli.md").read_text("utf-8")
    skip = {"--help", "--install-completion", "--show-completion"}
    missing = []
    for section in re.split(r"^## ", reference, flags=re.M)[1:]:
        command = section.splitlines()[0].strip("` ").removeprefix("presencectl").strip()
        assert command == "" or command.split()[0] in block, command
        for line in re.findall(r"^  (-[^ ].*?)(?:  |$)", section, flags=re.M):
            flags = re.findall(r"(?<![\w-])--?[\w-]+", line)
            if set(flags) & skip:
                continue
            if not any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", block) for f in flags):
                missing.append(f"{command or 'presencectl'}: {line.strip()}")
    assert missing == []
