"""A pool of sync users behind Teams change notifications (sync/notify.py and
sync/subscription_pool.py): who covers whom, failed members, leftovers of a lost state (Graph's
409), against the sandbox with every member signed in by password."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from presencectl.graph.permissions import DELEGATED_SCOPES, GRAPH_RESOURCE
from presencectl.graph.tokens import AccessToken
from presencectl.sandbox import running_sandbox
from presencectl.sandbox.people import Person
from presencectl.sync.subscription_pool import assign_people
from tests.sandbox_helpers import admin_consent, admin_token, create_presence_app, ropc, settings

pytestmark = pytest.mark.timeout(300)

SCOPES = tuple(f"{GRAPH_RESOURCE}/{name}" for name in DELEGATED_SCOPES)


# -- the placement, pure ----------------------------------------------------------------------


def ids(n: int, start: int = 0) -> list[str]:
    return [f"u{i:05d}" for i in range(start, start + n)]


def test_a_fresh_pool_spreads_people_evenly_on_as_few_members_as_needed() -> None:
    plan = assign_people(ids(1000), ["a", "b", "c"])
    assert [len(plan.by_member[m]) for m in "abc"] == [500, 500, 0]  # c: an idle spare
    assert plan.unplaced == []
    plan = assign_people(ids(1993), ["a", "b", "c", "d"])
    assert sorted(len(v) for v in plan.by_member.values()) == [498, 498, 498, 499]


def test_adding_people_or_a_member_moves_nobody() -> None:
    first = assign_people(ids(1200), ["a", "b"])
    more = assign_people(ids(1210), ["a", "b"], first.by_member)
    for member in "ab":
        assert set(first.by_member[member]) <= set(more.by_member[member])
    assert sum(len(v) for v in more.by_member.values()) == 1210
    bigger = assign_people(ids(1210), ["a", "b", "c"], more.by_member)
    assert bigger.by_member["a"] == more.by_member["a"] and bigger.by_member["c"] == []
    grown = assign_people(ids(1400), ["a", "b", "c"], bigger.by_member)
    # 1,400 need three members: c wakes up and, least loaded, takes every new person.
    assert grown.by_member["a"] == more.by_member["a"]
    assert grown.by_member["b"] == more.by_member["b"]
    assert grown.by_member["c"] == ids(190, 1210) and grown.unplaced == []


def test_a_failed_members_people_go_where_room_exists_and_the_rest_is_polled() -> None:
    before = assign_people(ids(1500), ["a", "b", "c"])
    after = assign_people(ids(1500), ["a", "c"], before.by_member)  # b failed
    assert set(before.by_member["a"]) <= set(after.by_member["a"])
    assert len(after.by_member["a"]) == 650 and len(after.by_member["c"]) == 650
    assert len(after.unplaced) == 200
    covered = {p for v in after.by_member.values() for p in v} | set(after.unplaced)
    assert covered == set(ids(1500))


def test_a_shrunk_directory_and_the_cap() -> None:
    first = assign_people(ids(100), ["a", "b"], cap=30)
    assert sorted(len(v) for v in first.by_member.values()) == [30, 30]
    assert len(first.unplaced) == 40
    fewer = assign_people(ids(10), ["a", "b"], first.by_member, cap=30)
    assert {p for v in fewer.by_member.values() for p in v} == set(ids(10))
    assert assign_people([], ["a"]).by_member == {"a": []}


# -- against the sandbox ----------------------------------------------------------------------


class PasswordSignIn:
    """A pool member's delegated token, by a real password sign-in at the sandbox (ROPC), kept
    here as msal keeps it (the Graph client is told it is due, so it asks on every request, as
    msal's silent call is asked); ``broken`` fails the next ask as a revoked sign-in would."""

    def __init__(self, sb: Any, client_id: str, person: Person) -> None:
        self.sb, self.client_id, self.person = sb, client_id, person
        self.broken = False
        self.calls = 0
        self._token: str | None = None

    def __call__(self, force_refresh: bool = False) -> AccessToken:
        from presencectl.errors import AuthError

        self.calls += 1
        if self.broken:
            raise AuthError(
                f"Azure login failed for {self.person.upn}: AADSTS50076", code="sign_in_failed"
            )
        if self._token is None or force_refresh:
            answer = ropc(self.sb, self.person.upn, self.person.password, SCOPES, self.client_id)
            assert answer.status_code == 200, answer.text
            self._token = str(answer.json()["access_token"])
        return AccessToken(self._token, time.time())


class Pool:
    """A sandbox with a consented app, a loopback receiver URL and the people to cover."""

    def __init__(self, sb: Any) -> None:
        self.sb = sb
        token = admin_token(sb)
        self.app = create_presence_app(sb, token, public_client=True)
        consent = admin_consent(sb, self.app["appId"], user=sb.world.admin.email)
        assert consent.status_code in (200, 302), consent.text
        people = [p for p in sb.world.people if p.azure_id and p.password]
        skip = {sb.world.admin.email, sb.world.sync_user.email}
        self.candidates = [p for p in people if p.email not in skip]
        self.notifier = sb.world.extra.get("graph_presence_notifier")

    def member_people(self, n: int) -> list[Person]:
        return self.candidates[-n:]

    def clients(self, members: list[Person]) -> tuple[dict[str, Any], dict[str, PasswordSignIn]]:
        from presencectl.graph.client import GraphClient

        providers = {p.upn: PasswordSignIn(self.sb, self.app["appId"], p) for p in members}
        clients = {
            upn: GraphClient(f"{self.sb.base_url}/v1.0", provider, settings(self.sb))
            for upn, provider in providers.items()
        }
        return clients, providers

    def live(self) -> list[Any]:
        from presencectl.sandbox.graph_notifications import notifier

        return notifier(self.sb.world).live()

    def stat(self, name: str) -> int:
        return int(self.sb.control.get("/_sandbox/stats").json()["requests"].get(name, 0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notifications(pool: Pool, clients: dict[str, Any], store: Any) -> Any:
    from presencectl.sync.notify import NotifyOptions, TeamsNotifications

    port = free_port()
    options = NotifyOptions(
        notify_url=f"http://127.0.0.1:{port}/", profile="pool", listen=f"127.0.0.1:{port}",
        rich=False,
    )  # fmt: skip
    return TeamsNotifications(options, members=clients, store=store, profile="pool", interval=5)


@pytest.fixture
def pool2k() -> Iterator[Pool]:
    with running_sandbox(users=2000, seed=3, allow_http_notifications=True) as sb:
        yield Pool(sb)


def test_2000_people_three_members_then_a_fourth_covers_everyone(
    pool2k: Pool, tmp_path: Any
) -> None:
    """Three members hold 3 × 650 = 1,950 (Graph's cap): the rest is polled and status says so;
    a fourth member takes exactly those, nobody else moves."""
    from presencectl.sync.state import StateStore

    pool = pool2k
    people = [p.azure_id for p in pool.sb.world.people if p.azure_id]
    assert len(people) >= 1993
    four = pool.member_people(4)
    clients, _ = pool.clients(four)
    three = dict(list(clients.items())[:3])

    async def go() -> None:
        with StateStore(tmp_path / "state.db") as store:
            notes = notifications(pool, three, store)
            await notes.start(people)
            try:
                live = await asyncio.to_thread(pool.live)
                assert len(live) == 3 and all(len(s.user_ids) == 650 for s in live)
                assert {s.creator_id for s in live} == {p.azure_id for p in four[:3]}
                assert len(notes.covered) == 1950
                summary = notes.summary()
                assert summary["users_polled"] == len(people) - 1950
                assert (
                    summary["coverage"] == f"1,950 of {len(people):,} people by "
                    "notifications, 3 sync users"
                )
                before = {m: set(v) for m, v in notes.assignment.items()}
                # The pool grows by one member.
                notes.members = clients
                await notes.sync_subscriptions(people)
                live = await asyncio.to_thread(pool.live)
                assert len(live) == 4 and notes.covered == set(people)
                for member, had in before.items():
                    assert set(notes.assignment[member]) == had  # nobody moved
                assert notes.summary()["coverage"] == (
                    f"{len(people):,} of {len(people):,} people by notifications, 4 sync users"
                )
                owners = {r.owner for r in store.subscriptions() if r.side == "graph"}
                assert owners == {p.upn for p in four}
            finally:
                await notes.close()
                for client in clients.values():
                    await client.aclose()
        assert await asyncio.to_thread(pool.live) == []

    asyncio.run(go())


@pytest.fixture
def pool_small() -> Iterator[Pool]:
    with running_sandbox(users=60, seed=4, allow_http_notifications=True) as sb:
        yield Pool(sb)


def test_a_failed_member_hands_its_people_to_an_idle_one_and_says_why(
    pool_small: Pool, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import presencectl.sync.notify as notify
    from presencectl.sandbox.graph_notifications import notifier as sandbox_notifier
    from presencectl.sync.state import StateStore

    pool = pool_small
    people = sorted(p.azure_id for p in pool.sb.world.people if p.azure_id)[:50]
    monkeypatch.setattr(notify, "assign_people", _capped(20))  # 650 in miniature
    members = pool.member_people(4)
    clients, providers = pool.clients(members)
    first, second, third, spare = (p.upn for p in members)

    def states() -> dict[str, Any]:
        return {m["username"]: m for m in notes.summary()["sync_users"]}

    async def go() -> None:
        nonlocal notes
        with StateStore(tmp_path / "state.db") as store:
            notes = notifications(pool, clients, store)
            await notes.start(people)
            try:
                assert [states()[m]["state"] for m in (first, second, third, spare)] == [
                    "active",
                    "active",
                    "active",
                    "idle",
                ]  # 50 people need three of 20
                assert [states()[m]["people"] for m in (first, second, third)] == [17, 17, 16]
                assert notes.summary()["coverage"] == (
                    "50 of 50 people by notifications, 4 sync users (1 idle)"
                )
                before = {m: set(notes.assignment[m]) for m in (first, third)}
                providers[second].broken = True
                # Graph asks to reauthorize; the member cannot sign in any more.
                (sub,) = [s for s in notes.subscriptions.values() if s.owner == second]
                notes._reauth.add(sub.id)
                await notes.maintain()
                assert states()[second]["state"] == "failed"
                assert "AADSTS50076" in states()[second]["reason"]
                # Nobody can delete or renew its subscription: it delivers until it ends, and
                # its people stay on it till then.
                assert notes.summary()["coverage"] == (
                    "50 of 50 people by notifications, 4 sync users (1 idle, 1 failed)"
                )
                assert states()[second]["people"] == 17 and notes.unplaced == []
                asked = providers[second].calls
                await notes.sync_subscriptions(people)  # the directory refreshed meanwhile
                assert providers[second].calls == asked  # the refused sign-in is not re-tried
                # It ends (Graph drops it): its people go where room exists.
                from dataclasses import replace

                await asyncio.to_thread(sandbox_notifier(pool.sb.world).remove, sub.id)
                notes.subscriptions[sub.id] = replace(sub, expires_at=time.time() - 1)
                await notes.maintain()
                assert notes.summary()["coverage"] == (
                    "50 of 50 people by notifications, 4 sync users (1 failed)"
                )
                for member, had in before.items():
                    assert had <= set(notes.assignment[member])  # nobody moved
                # The spare wakes up; the least loaded take them: 17 + 16 + 17.
                assert [states()[m]["people"] for m in (first, third, spare)] == [17, 17, 16]
                assert notes.covered == set(people) and notes.unplaced == []
                live = await asyncio.to_thread(pool.live)
                assert sorted(len(s.user_ids) for s in live) == [16, 17, 17]
                assert sub.id not in {s.id for s in live}
            finally:
                await notes.close()
                for client in clients.values():
                    await client.aclose()

    notes: Any = None
    asyncio.run(go())


def _capped(cap: int) -> Any:
    def assign(wanted: Any, members: Any, previous: Any = None, **_: Any) -> Any:
        return assign_people(wanted, members, previous, cap=cap)

    return assign


def test_a_subscription_we_do_not_know_is_replaced_on_409_and_at_start(
    pool_small: Pool, tmp_path: Any
) -> None:
    """A kill between the POST and the save, or a lost state: Graph holds the member's one
    presence subscription, our state does not. A create gets 409; the member's list shows it;
    it is deleted and ours created. A start clears such leftovers before creating."""
    from presencectl.sandbox.graph_notifications import notifier as sandbox_notifier
    from presencectl.sync.receiver import NotificationReceiver
    from presencectl.sync.state import StateStore

    pool = pool_small
    people = sorted(p.azure_id for p in pool.sb.world.people if p.azure_id)[:30]
    members = pool.member_people(1)
    clients, providers = pool.clients(members)

    def plant() -> str:
        token = providers[members[0].upn]().token
        body = {
            "changeType": "updated", "notificationUrl": notes.options.notify_url,
            "resource": f"/communications/presences?$filter=id in ('{people[0]}')",
            "expirationDateTime": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(pool.sb.world.clock.now() + 1800)
            ),
        }  # fmt: skip
        answer = pool.sb.control.post(
            "/v1.0/subscriptions", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    async def go() -> None:
        nonlocal notes
        with StateStore(tmp_path / "state.db") as store:
            # The 409 path: the receiver runs, nothing cleared at start.
            notes.receiver = NotificationReceiver(
                notes.options.listen, notes.client_state, notes._accept
            )
            await notes.receiver.start()
            notes.store = store
            stray = await asyncio.to_thread(plant)
            await notes.sync_subscriptions(people)
            live = await asyncio.to_thread(pool.live)
            assert [s.id for s in live] != [stray] and len(live) == 1
            assert set(live[0].user_ids) == set(people) and notes.leftovers_removed == 1
            assert pool.stat("graph.subscriptions.list") == 1
            await notes.close(delete=False)  # the process dies: the subscription stays
            assert len(await asyncio.to_thread(pool.live)) == 1
            # The start path: a new run with the state lost clears it before it creates.
            store.delete_subscription(live[0].id)
            again = notifications(pool, clients, store)
            creates = pool.stat("graph.subscriptions.create")
            await again.start(people)
            try:
                (fresh,) = await asyncio.to_thread(pool.live)
                assert fresh.id != live[0].id and again.leftovers_removed == 1
                assert pool.stat("graph.subscriptions.create") == creates + 1  # no 409 first
            finally:
                await again.close()
        assert await asyncio.to_thread(lambda: sandbox_notifier(pool.sb.world).live()) == []
        for client in clients.values():
            await client.aclose()

    notes: Any = notifications(pool, clients, None)
    asyncio.run(go())


def test_doctor_names_the_failed_member_and_the_polled_people() -> None:
    from presencectl.doctor import FAIL, OK, SKIP, WARN, notifications_check

    member = {"username": "a@x", "state": "active", "people": 650, "subscription": "s",
              "reason": None}  # fmt: skip
    failed = {**member, "username": "b@x", "state": "failed", "people": 0,
              "reason": "sign-in failed: AADSTS50076"}  # fmt: skip
    summary = {
        "mode": "notifications",
        "coverage": "650 of 700 people by notifications, 2 sync users (1 failed)",
        "users_polled": 50,
        "sync_users": [member, failed],
    }
    check = notifications_check(summary)
    assert check.status == WARN and check.code == "sync_user_failed"
    assert "b@x: sign-in failed: AADSTS50076" in check.detail
    assert "--username b@x" in check.remedy
    short = {**summary, "sync_users": [member], "coverage": "650 of 700 people by "
             "notifications, 1 sync user"}  # fmt: skip
    check = notifications_check(short)
    assert (
        check.status == WARN
        and check.code == "notifications_partial"
        and "50 polled" in check.detail
    )
    whole = {**short, "users_polled": 0, "coverage": "650 of 650 people by notifications, "
             "1 sync user"}  # fmt: skip
    assert notifications_check(whole).status == OK
    assert notifications_check(whole).detail == whole["coverage"]
    assert notifications_check(None).status == SKIP and FAIL != SKIP


# -- a killed watch, its state lost: covered again within 90 s ----------------------------------


@pytest.mark.slow
def test_a_killed_watch_with_its_state_deleted_covers_everyone_again(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Two sync users, 713 matched people (two subscriptions needed). SIGKILL: Graph keeps both
    subscriptions (nobody deleted them). The state directory is deleted. The watch started again
    lists each member's subscriptions, deletes the leftovers and covers everyone with exactly one
    live subscription per member within 90 s."""
    import os
    import shutil
    import subprocess
    import sys

    from test_engine_sandbox import ADMIN, Org

    from presencectl import secrets
    from presencectl.config import load_profile, save_profile
    from presencectl.identity import sync_pool

    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")  # the children see the secrets
    with running_sandbox(
        users=720, seed=3, auto_approve=ADMIN, allow_http_notifications=True
    ) as sb:
        org = Org(sb, cli)
        assert org.run("enable").exit_code == 0
        second = org.people[-1]
        profile = load_profile("sandbox")
        sync_pool.add_member(profile, second.upn, sync_pool.PASSWORD)
        secrets.set_secret(
            profile.name, sync_pool.password_secret(profile, second.upn), second.password
        )
        save_profile(profile)
        members = {sb.world.sync_user.azure_id, second.azure_id}
        from presencectl.sandbox.graph_notifications import notifier

        def live() -> list[Any]:
            return list(notifier(sb.world).live())

        def covered_by_each_member() -> set[str] | None:
            subs = live()
            if sorted(s.creator_id for s in subs) != sorted(members):
                return None
            return {i for s in subs for i in s.user_ids}

        def start(name: str) -> subprocess.Popen[str]:
            port = free_port()
            out = (tmp_path / f"{name}.out").open("w")
            return subprocess.Popen(
                [sys.executable, "-m", "presencectl", "--profile", "sandbox", "--no-input",
                 "-o", "json", "sync", "--watch", "--interval", "60",
                 "--notify-url", f"http://127.0.0.1:{port}/", "--listen", f"127.0.0.1:{port}"],
                stdout=out, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
            )  # fmt: skip

        def wait(check: Any, seconds: float) -> Any:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                value = check()
                if value:
                    return value
                time.sleep(0.1)
            log = "".join(p.read_text()[-3000:] for p in tmp_path.glob("*.out"))
            raise AssertionError(f"not covered in {seconds} s; live: {live()}\n{log}")

        first = start("first")
        try:
            everyone = wait(covered_by_each_member, 120)
            assert len(everyone) >= 700  # more than one member's 650
            before = {s.id for s in live()}
            first.kill()  # SIGKILL: nothing deleted, nothing saved
            first.wait(30)
            assert {s.id for s in live()} == before  # Graph keeps them until they expire
            shutil.rmtree(os.environ["PRESENCECTL_STATE_DIR"])
            started = time.monotonic()
            again = start("again")
            try:

                def recovered() -> bool:
                    now = {s.id for s in live()}
                    return not (now & before) and covered_by_each_member() == everyone

                wait(recovered, 90)
                took = time.monotonic() - started
                assert len(live()) == 2 and took < 90

                def status(*args: str) -> str:
                    return subprocess.run(
                        [sys.executable, "-m", "presencectl", "--profile", "sandbox", *args,
                         "status", "--section", "notifications"],
                        capture_output=True, text=True, timeout=60, env=os.environ.copy(),
                    ).stdout  # fmt: skip

                def reported() -> bool:
                    return bool(json.loads(status("-o", "json") or "{}").get("coverage") == (
                        f"{len(everyone):,} of {len(everyone):,} people by notifications, "
                        "2 sync users"
                    ))  # fmt: skip

                wait(reported, 30)
                assert f"sync user {second.upn}" in status("-o", "csv")
            finally:
                again.terminate()
                again.wait(60)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(30)


def test_disable_after_a_lost_state_deletes_what_graph_still_lists(cli: Any, tmp_path: Any) -> None:
    """A crash left a subscription and the state directory is gone: `disable` finds it by
    listing the sync user's subscriptions at Graph."""
    import os
    import shutil

    from test_engine_sandbox import ADMIN, Org

    from presencectl.config import load_profile
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.notify import NotifyOptions
    from presencectl.sync.service import engine_for

    with running_sandbox(users=30, seed=3, auto_approve=ADMIN, allow_http_notifications=True) as sb:
        org = Org(sb, cli)
        assert org.run("enable").exit_code == 0
        port = free_port()
        notify = NotifyOptions(
            notify_url=f"http://127.0.0.1:{port}/", profile="sandbox", listen=f"127.0.0.1:{port}"
        )
        options = EngineOptions(direction=Direction.BOTH, notify=notify)

        async def crash() -> None:
            async with engine_for(load_profile("sandbox"), options) as engine:
                await engine.refresh_directory(force=True)
                await engine._start_notifications(asyncio.Queue())
                await engine._follow_directory_with_notifications()
                assert engine.notifications is not None and engine.notifications.active
                await engine.notifications.receiver.close()  # the process dies

        asyncio.run(crash())

        def stats() -> dict[str, Any]:
            return dict(org.sb.control.get("/_sandbox/stats").json())

        assert stats()["subscriptions_active"] == 1
        shutil.rmtree(os.environ["PRESENCECTL_STATE_DIR"])
        result = org.run("-o", "json", "disable", "--yes")
        assert result.exit_code == 0, result.stderr
        assert stats()["subscriptions_active"] == 0
        assert result.json()["subscriptions_deleted"] == 1


def test_the_engine_gives_each_member_of_the_profiles_pool_its_subscription(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine_for → one Graph client per member of the profile's pool (identity/sync_pool.py):
    the seed's sync user by password, an MFA-only account by device code, one spare; with the
    cap at 10 (650 in miniature) the 25 matched people need all three."""
    from test_engine_sandbox import ADMIN, Org

    import presencectl.sync.notify as notify
    from presencectl.config import load_profile
    from presencectl.sandbox.graph_notifications import notifier
    from presencectl.sync.engine import EngineOptions
    from presencectl.sync.model import Direction
    from presencectl.sync.notify import NotifyOptions
    from presencectl.sync.service import engine_for

    mfa, spare = "sync-mfa@contoso.example", "sync-b@contoso.example"
    monkeypatch.setattr(notify, "assign_people", _capped(10))
    with running_sandbox(
        users=30, seed=3, auto_approve=[ADMIN, mfa], allow_http_notifications=True
    ) as sb:
        org = Org(sb, cli)
        for email, flags in ((mfa, ["mfa_required"]), (spare, [])):
            added = sb.control.post("/_sandbox/users", json={
                "email": email, "display_name": email, "on": ["teams"],
                "password": "Pw-Pool-9!x", "flags": flags})  # fmt: skip
            assert added.status_code in (200, 201), added.text
        assert org.run("sync-user", "add", "--username", mfa, "--device-code").exit_code == 0
        add = cli("--profile", "sandbox", "sync-user", "add", "--username", spare,
                  "--password-stdin", input="Pw-Pool-9!x\n")  # fmt: skip
        assert add.exit_code == 0, add.stderr
        port = free_port()
        options = EngineOptions(
            direction=Direction.BOTH,
            notify=NotifyOptions(
                notify_url=f"http://127.0.0.1:{port}/",
                profile="sandbox",
                listen=f"127.0.0.1:{port}",
            ),
        )

        async def go() -> None:
            async with engine_for(load_profile("sandbox"), options) as engine:
                assert list(engine.subscribers) == [sb.world.sync_user.email, mfa, spare]
                await engine.refresh_directory(force=True)
                await engine._start_notifications(asyncio.Queue())
                await engine._follow_directory_with_notifications()
                notes = engine.notifications
                live = await asyncio.to_thread(lambda: list(notifier(sb.world).live()))
                creators = {s.creator_id for s in live}
                by_email = {p.email: p.azure_id for p in sb.world.people if p.azure_id}
                assert creators == {by_email[sb.world.sync_user.email], by_email[mfa],
                                    by_email[spare]}  # fmt: skip
                assert notes.covered == {p.azure_id for p in engine.pairs.values()}
                assert notes.summary()["coverage"].endswith("people by notifications, 3 sync users")
                await engine._stop_notifications()

        asyncio.run(go())
