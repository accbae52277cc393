"""The echo window end to end: a user who goes back, right after our write, to exactly the value
that write replaced is mirrored once the profile's ``echo_window_s`` has passed, not before.

Found by the fault soak (bench/soak.py): a Teams call starting right after the phone call we had
mirrored as Busy/InACall was not mirrored to Connect for the whole window, longer than the soak's
quiet end. Inside the window the sync cannot tell that user from our clear not having landed yet
(sync/plan.py, the echo rule); the window is the profile's to set."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine_sandbox import ADMIN, Org

from presencectl import config
from presencectl.errors import ConfigError

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def org(cli: Any) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, seed=5, auto_approve=ADMIN) as sb:
        yield Org(sb, cli)


def test_a_value_our_clear_replaced_is_trusted_after_the_echo_window(org: Org) -> None:
    assert org.run("enable").exit_code == 0
    user = org.people[0].email
    org.teams(user, "Available", "Available")
    org.connect(user, "onphone")  # a phone call ...
    org.sync()
    assert org.teams_pair(user) == "Busy/InACall"  # ... mirrored by our Teams session
    org.connect(user, "away")  # the call ends (away maps to unaltered): our session is cleared
    cleared = org.sync().json()
    assert cleared["cleared"] >= 1 and org.teams_pair(user) == "Available/Available"

    org.teams(user, "Busy", "InACall")  # a Teams call of the user's own, right after
    org.sync()
    # Inside the default 60 s window, Teams showing the value our clear replaced is read as
    # the clear not landed yet: nothing is written to Connect.
    assert org.connect_shows(user)["status"] == "away"

    assert org.run("config", "set", "echo_window_s", "2").exit_code == 0
    time.sleep(2.5)  # the shorter window has passed since the clear
    org.sync()
    assert org.connect_shows(user)["status"] == "onphone"  # now mirrored


def test_echo_window_s_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[profiles.p]\necho_window_s = 15\n")
    assert config.load_profile("p", path=path).echo_window_s == 15
    assert config.Profile().echo_window_s == 60
    for bad in ("1", "601", '"15"', "true", "2.5"):
        path.write_text(f"[profiles.p]\necho_window_s = {bad}\n")
        with pytest.raises(ConfigError, match="echo_window_s"):
            config.load_profile("p", path=path)
