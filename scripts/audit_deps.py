"""Audit the installed environment for known vulnerabilities (the `.ci/run` step; issue 26).

Runs ``pip-audit --local --skip-editable -f json`` (the editable presencectl itself is not on
PyPI) and decides:

- a dependency with a known vulnerability → exit 1, each one named with its fix versions;
- every dependency audited, none vulnerable → exit 0;
- dependencies pip-audit could not audit (no vulnerability service answered: pip-audit reports
  them as skipped, and still says "No known vulnerabilities found") → said loudly on stderr with
  the count, then exit 0 — unless ``PRESENCECTL_AUDIT_STRICT=1``, which makes it exit 2. A
  machine that reaches only a package mirror cannot audit; that is reported, not hidden, and not
  mistaken for a clean result.

``--service osv`` asks OSV instead of PyPI's JSON API. ``--from-json FILE`` decides from a saved
pip-audit report (tests/test_audit_deps.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def decide(report: dict[str, Any]) -> tuple[int, list[str]]:
    """(exit status, lines to print) for one pip-audit JSON report."""
    deps = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if d.get("skip_reason")]
    lines: list[str] = []
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            aliases = ", ".join(vuln.get("aliases") or [])
            lines.append(
                f"VULNERABLE {dep['name']} {dep.get('version', '?')}: {vuln.get('id')}"
                + (f" ({aliases})" if aliases else "")
                + f"; fixed in {fixes}"
            )
    if vulnerable:
        return 1, lines
    audited = len(deps) - len(skipped)
    if skipped:
        lines.append(
            f"NOT AUDITED: {len(skipped)} of {len(deps)} installed packages could not be checked "
            "(no vulnerability service answered from this machine, or the package is not on "
            f"PyPI); {audited} audited, none vulnerable. First reason: "
            f"{skipped[0]['skip_reason']}"
        )
        strict = os.environ.get("PRESENCECTL_AUDIT_STRICT") == "1"
        return (2 if strict else 0), lines
    lines.append(f"{audited} installed packages audited: no known vulnerabilities")
    return 0, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", choices=("pypi", "osv"), default="pypi")
    parser.add_argument("--from-json", type=Path, help="decide from a saved pip-audit report")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip_audit",
            "--local",
            "--skip-editable",
            "--progress-spinner",
            "off",
            "-f",
            "json",
            "-s",
            args.service,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            # pip-audit could not produce a report at all (e.g. the service's host does not
            # resolve): its own last line says why.
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"NOT AUDITED: pip-audit -s {args.service} failed: {why}", file=sys.stderr)
            return 2 if os.environ.get("PRESENCECTL_AUDIT_STRICT") == "1" else 0
    status, lines = decide(report)
    for line in lines:
        print(line, file=sys.stderr if status or line.startswith("NOT") else sys.stdout)
    print(f"   audit: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
