"""The one-shot `sync` summary on a terminal: it fits, and says each thing once.

Issue 24 item 10: the summary's 16 columns wrapped their headers even at 160 columns, and a
first sync listed a row per clear that found no session of ours ("… gone"), unexplained.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from presencectl.sandbox.people import ADMIN_EMAIL, SYNC_EMAIL


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("width", [100, 120, 160])
def test_the_summary_tables_fit_a_terminal_without_wrapping_a_header(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl import output
    from presencectl.cli.sync import SUMMARY_COUNTS, SUMMARY_RUN
    from presencectl.sync.engine import SyncResult

    monkeypatch.setenv("COLUMNS", str(width))
    summary = SyncResult(direction="connect-to-teams", dry_run=False, matched=12345,
                         unmatched=1234, read=24690, skipped=12000, adopted=12345,
                         throttle_wait_s=1234.5, duration_s=3600.25).summary()  # fmt: skip
    assert set(SUMMARY_COUNTS) | set(SUMMARY_RUN) == set(summary)  # nothing left out
    for columns in (SUMMARY_COUNTS, SUMMARY_RUN):
        screen = Terminal()
        output.render(summary, "table", columns=columns, stream=screen)
        lines = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue()).splitlines()  # colours out
        assert max(len(line) for line in lines) <= width
        header = next(line for line in lines if "┃" in line)  # rich's header row
        for column in columns:
            name = output._header(column, None)
            assert name in header, (name, header)  # whole, on the one header line


def test_a_clear_that_found_nothing_is_one_line_not_a_row_each(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, auto_approve=ADMIN_EMAIL) as sb:
        sb.write_profile("sandbox")
        p = ("--profile", "sandbox")
        assert cli(*p, "setup-azure", "--no-input").exit_code == 0
        sb.control.post(f"/_sandbox/users/{SYNC_EMAIL}/password", json={"password": "N3w-pass"})
        cli(*p, "sync-user", "set", "--username", SYNC_EMAIL, "--password-stdin",
            input="N3w-pass\n")  # fmt: skip
        assert cli(*p, "sync-user", "validate").exit_code == 0
        assert cli(*p, "enable").exit_code == 0
        rows = cli(*p, "-o", "json", "users").json()
        user = next(r["email"] for r in rows if r.get("status") == "matched")
        first = cli(*p, "sync")
        assert first.exit_code == 0
        assert "adopted" in first.stderr and "no state" in first.stderr  # said once, explained
        sb.control.post("/_sandbox/connect/presence", json={"user": user, "status": "onphone"})
        assert cli(*p, "sync").exit_code == 0  # our Teams session: Busy/InACall
        person = sb.world.person_by_email(user)
        person.teams.sessions.clear()  # gone behind our back (expired, cleared by someone)
        # Connect's Do not disturb maps to "unaltered" in Teams: our session there is cleared.
        sb.control.post("/_sandbox/connect/presence", json={"user": user, "status": "dnd"})
        result = cli(*p, "sync")
        assert result.exit_code == 0, result.stderr
        assert "gone" not in result.stdout
        assert "1 clear(s) found no session of ours" in result.stderr
        again = cli(*p, "-o", "json", "sync")  # the data keeps every row
        assert again.exit_code == 0
