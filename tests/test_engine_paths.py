"""Engine paths no other test reaches, end to end against the sandbox: a user who stops matching
(release_unmatched), a whole ``$batch`` failing and one failed member with its status, `disable`
deleting the Connect subscription a killed watch left behind, and disable's progress bar."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from rich.console import Console
from test_engine_sandbox import ADMIN, Org

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def org(cli: Any) -> Iterator[Org]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=12, seed=5, auto_approve=ADMIN) as sb:
        o = Org(sb, cli)
        assert o.run("enable").exit_code == 0
        yield o


class BatchFaults(httpx.AsyncBaseTransport):
    """Wraps the Graph writer's transport: answers ``$batch`` as a failing Graph would."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.whole_status: int | None = None  # every $batch fails whole with this status
        self.member_status: dict[str, int] = {}  # user id → status of that user's member
        self.batches = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/$batch"):
            return await self.inner.handle_async_request(request)
        self.batches += 1
        if self.whole_status is not None:
            body = {"error": {"code": "FailedDependency", "message": "the batch failed"}}
            return httpx.Response(self.whole_status, json=body)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        sent = json.loads(request.content)
        answer = json.loads(response.content)
        for member in sent["requests"]:
            for user_id, status in self.member_status.items():
                if f"/users/{user_id}/" in member["url"]:
                    for item in answer["responses"]:
                        if item["id"] == member["id"]:
                            item["status"] = status
                            item["body"] = {
                                "error": {"code": "Forbidden", "message": "not allowed here"}
                            }
        return httpx.Response(200, json=answer, headers={"content-type": "application/json"})


def _run(
    org: Org,
    *,
    once: bool = True,
    dry_run: bool = False,
    faults: BatchFaults | None = None,
    matcher: Callable[[Sequence[Any], Sequence[Any]], Any] | None = None,
) -> Any:
    from presencectl.config import load_profile
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.service import engine_for

    profile = load_profile("sandbox")
    clock = org.sb.world.clock
    options = EngineOptions(direction=Direction.BOTH, dry_run=dry_run)

    def now() -> datetime:
        return datetime.fromtimestamp(clock.now(), UTC)

    async def go() -> Any:
        async with engine_for(profile, options, clock=now, matcher=matcher) as engine:
            if faults is not None:
                faults.inner = engine.graph._http._transport
                engine.graph._http._transport = faults
            return await engine.run_once()

    return asyncio.run(go())


def _without(email: str) -> Callable[[Sequence[Any], Sequence[Any]], Any]:
    """The real matcher, except that ``email`` no longer matches (left one of the directories)."""
    from presencectl.sync.match import match_users

    def matcher(azure: Sequence[Any], connect: Sequence[Any]) -> Any:
        kept = [c for c in connect if (c.email or "").lower() != email]
        return match_users(azure, kept)

    return matcher


def _azure_id(org: Org, email: str) -> str:
    return next(p.azure_id for p in org.sb.world.people if p.email == email)


# -- release_unmatched -----------------------------------------------------------------------


def test_a_user_who_stops_matching_has_our_sessions_cleared(org: Org) -> None:
    from presencectl.sync.state import StateStore

    leaver, stayer = org.people[0].email, org.people[1].email
    org.connect(leaver, "onphone")
    org.connect(stayer, "onphone")
    first = _run(org)
    assert first.failed == 0
    assert len(org.teams_shows(leaver)["sessions"]) == 1
    assert len(org.teams_shows(stayer)["sessions"]) == 1

    dry = _run(org, dry_run=True, matcher=_without(leaver))
    assert dry.cleared == 0
    assert len(org.teams_shows(leaver)["sessions"]) == 1  # a dry run writes nothing

    second = _run(org, matcher=_without(leaver))
    assert second.failed == 0 and second.cleared >= 1
    assert org.teams_shows(leaver)["sessions"] == []  # released
    assert org.teams_pair(leaver) != "Busy/InACall"
    assert len(org.teams_shows(stayer)["sessions"]) == 1  # the others keep theirs
    store = StateStore.for_profile("sandbox")
    audit = [
        a for a in store.audit_tail(200) if a.reason == "user no longer matched: clear our session"
    ]
    assert [(a.side, a.outcome) for a in audit] == [("teams", "ok")]
    assert all(leaver not in h.key for h in store.sessions())


# -- $batch failures ---------------------------------------------------------------------------


def test_a_whole_batch_failing_fails_its_writes_and_a_later_run_writes_them(org: Org) -> None:
    _run(org)  # adopted first: the fault below is for the writes, not the first run's clears
    people = [p.email for p in org.people[:3]]
    for email in people:
        org.connect(email, "onphone")
    faults = BatchFaults(httpx.AsyncHTTPTransport())
    faults.whole_status = 424  # Graph: a throttled batch may fail whole with 424
    failed = _run(org, faults=faults)
    assert faults.batches >= 1
    assert failed.failed == len(people)
    assert {f["user"] for f in failed.failures} == set(people)
    assert all("424" in f["error"] or "batch failed" in f["error"] for f in failed.failures)
    for email in people:
        assert org.teams_shows(email)["sessions"] == []

    # A batch that failed whole may still have landed in part, so its writes stay pending for
    # the echo window (Teams may still show the old value); after it, they are asserted again.
    assert _run(org).written == 0
    org.sb.control.post("/_sandbox/clock/advance", json={"seconds": 61}).raise_for_status()
    healed = _run(org)  # nothing was lost
    assert healed.failed == 0 and healed.written == len(people)
    assert {a.purpose for a in healed.actions} == {"reassert"}
    for email in people:
        assert org.teams_pair(email) == "Busy/InACall"


def test_a_failed_member_reports_its_status_and_the_others_are_written(org: Org) -> None:
    _run(org)  # adopted first: the fault below is for the writes, not the first run's clears
    refused, fine = org.people[0].email, org.people[1].email
    org.connect(refused, "onphone")
    org.connect(fine, "onphone")
    faults = BatchFaults(httpx.AsyncHTTPTransport())
    faults.member_status[_azure_id(org, refused)] = 403
    result = _run(org, faults=faults)
    assert result.failed == 1
    [failure] = result.failures
    assert failure["user"] == refused and failure["side"] == "teams"
    assert "not allowed here" in failure["error"]
    assert org.teams_pair(fine) == "Busy/InACall"
    failed_actions = [a for a in result.actions if a.outcome == "failed"]
    assert [(a.user, a.side) for a in failed_actions] == [(refused, "teams")]


# -- disable -----------------------------------------------------------------------------------


def _subscription_left_by_a_killed_watch(org: Org) -> str:
    """What a `sync --watch` killed with -9 leaves: a live subscription at Connect and its row."""
    import time

    from presencectl.config import load_profile
    from presencectl.connect.client import connect_client_for
    from presencectl.connect.feed import create_subscription
    from presencectl.sync.state import StateStore, SubscriptionRow

    async def create() -> str:
        async with connect_client_for(load_profile("sandbox")) as client:
            return (await create_subscription(client)).id

    sub_id = asyncio.run(create())
    StateStore.for_profile("sandbox").save_subscription(
        SubscriptionRow(sub_id, "connect", time.time(), None, "users/_all")
    )
    return sub_id


def _connect_subscriptions(org: Org) -> set[str]:
    return set(org.sb.world.extra["connect_feed"].subscriptions)


def test_disable_deletes_the_subscription_a_killed_watch_left(org: Org) -> None:
    from presencectl.sync.state import StateStore

    org.connect(org.people[0].email, "onphone")
    assert org.sync().exit_code == 0
    sub_id = _subscription_left_by_a_killed_watch(org)
    assert sub_id in _connect_subscriptions(org)

    result = org.run("-o", "json", "disable", "--yes")
    assert result.exit_code == 0, result.stderr
    assert result.json()["subscriptions_deleted"] == 1
    assert sub_id not in _connect_subscriptions(org)
    assert StateStore.for_profile("sandbox").subscriptions() == []


def test_disable_forgets_a_subscription_connect_no_longer_has(org: Org) -> None:
    from presencectl.sync.state import StateStore

    sub_id = _subscription_left_by_a_killed_watch(org)
    del org.sb.world.extra["connect_feed"].subscriptions[sub_id]  # expired at Connect meanwhile
    result = org.run("-o", "json", "disable", "--yes")
    assert result.exit_code == 0, result.stderr
    assert result.json()["subscriptions_deleted"] == 0  # nothing was deleted at Connect
    assert StateStore.for_profile("sandbox").subscriptions() == []


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_disable_on_a_terminal_shows_a_progress_bar(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work that takes more than SHOW_AFTER_S shows phase, done/total, rate and time left on
    stderr (here the threshold is 0: the sandbox clears a few sessions in well under 2 s)."""
    from presencectl import output
    from presencectl.cli import progress
    from presencectl.cli.app import run

    for person in org.people[:4]:
        org.connect(person.email, "onphone")
    assert org.sync().exit_code == 0
    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=120)
    monkeypatch.setattr(output, "stderr_console", lambda: console)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    out, err = _Tty(), _Tty()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with redirect_stdout(out), redirect_stderr(err):
        code = run(["--profile", "sandbox", "disable", "--yes"])
    assert code == 0
    drawn = console.export_text()
    assert "writes" in drawn
    assert re.search(r"(\d+)/\1\b", drawn), drawn  # done/total reached the end
    assert org.our_sessions() == 0


def test_a_short_disable_shows_no_progress(org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    from presencectl import output
    from presencectl.cli.app import run

    org.connect(org.people[0].email, "onphone")
    assert org.sync().exit_code == 0
    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=120)
    monkeypatch.setattr(output, "stderr_console", lambda: console)
    out, err = _Tty(), _Tty()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with redirect_stdout(out), redirect_stderr(err):
        code = run(["--profile", "sandbox", "disable", "--yes"])
    assert code == 0
    assert "writes" not in console.export_text()  # under 2 s: nothing flickers by


def test_a_one_shot_on_a_terminal_shows_progress_on_stderr_and_json_stays_one_document(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl import output
    from presencectl.cli import progress
    from presencectl.cli.app import run

    assert org.run("enable").exit_code == 0
    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=120)
    monkeypatch.setattr(output, "stderr_console", lambda: console)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    out, err = _Tty(), _Tty()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with redirect_stdout(out), redirect_stderr(err):
        code = run(["--profile", "sandbox", "-o", "json", "sync"])
    assert code == 0
    document = json.loads(out.getvalue())  # one document: nothing of the progress on stdout
    assert document["matched"] > 0
    drawn = console.export_text()
    assert "Connect reads" in drawn and re.search(r"(\d+)/\1\b", drawn), drawn
