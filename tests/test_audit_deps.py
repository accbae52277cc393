"""scripts/audit_deps.py (the `.ci/run` dependency audit): a known vulnerability fails, an
unaudited environment is said aloud (and fails under PRESENCECTL_AUDIT_STRICT=1), and the
declared floors are past the vulnerable versions named in issue 26."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts" / "audit_deps.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# pip-audit's JSON report (pip_audit/_format/json.py): dependencies with vulns or a skip_reason.
VULNERABLE = {
    "dependencies": [
        {
            "name": "h11",
            "version": "0.14.0",
            "vulns": [
                {
                    "id": "GHSA-vqfr-h8mv-ghfj",
                    "fix_versions": ["0.16.0"],
                    "aliases": ["CVE-2025-43859"],
                    "description": "request smuggling",
                }
            ],
        },
        {"name": "rich", "version": "14.0.0", "vulns": []},
    ],
    "fixes": [],
}
UNREACHABLE = {
    "dependencies": [
        {"name": "rich", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        {"name": "h11", "version": "0.16.0", "vulns": []},
    ],
    "fixes": [],
}


def test_a_known_vulnerability_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps(VULNERABLE))
    assert _script().main(["--from-json", str(report)]) == 1
    err = capsys.readouterr().err
    assert "VULNERABLE h11 0.14.0" in err and "CVE-2025-43859" in err and "0.16.0" in err


def test_unaudited_packages_are_said_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps(UNREACHABLE))
    assert _script().main(["--from-json", str(report)]) == 0
    assert "NOT AUDITED: 1 of 2" in capsys.readouterr().err
    monkeypatch.setenv("PRESENCECTL_AUDIT_STRICT", "1")
    assert _script().main(["--from-json", str(report)]) == 2


def test_a_clean_report_passes() -> None:
    status, lines = _script().decide(
        {"dependencies": [{"name": "h11", "version": "0.16.0", "vulns": []}]}
    )
    assert status == 0 and "no known vulnerabilities" in lines[0]


@pytest.mark.parametrize(
    ("name", "vulnerable", "fixed"),
    [
        ("h11", "0.15.0", "0.16.0"),  # CVE-2025-43859
        ("starlette", "1.3.0", "1.3.1"),  # CVE-2024-47874, CVE-2026-48710, CVE-2026-54283
        ("python-multipart", "0.0.26", "0.0.27"),  # CVE-2024-53981 and later
        ("cryptography", "48.0.0", "48.0.1"),  # GHSA-537c-gmf6-5ccf
    ],
)
def test_the_floors_exclude_the_vulnerable_versions(name: str, vulnerable: str, fixed: str) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps if Requirement(d).name == name]
    assert reqs, f"{name} is not declared"
    assert not reqs[0].specifier.contains(Version(vulnerable))
    assert reqs[0].specifier.contains(Version(fixed))


def test_ci_runs_the_audit() -> None:
    assert "python scripts/audit_deps.py" in (ROOT / ".ci" / "run").read_text()
