"""The sandbox control API, the simulated organisation and the profile the sandbox writes."""

from __future__ import annotations

from typing import Any

import pytest

from presencectl.sandbox import org
from presencectl.sandbox.world import World


def test_health_and_profile(sandbox: Any) -> None:
    assert sandbox.control.get("/_sandbox/health").json() == {"status": "ok"}
    info = sandbox.profile_info()
    assert info["authority"] == f"{sandbox.base_url}/{sandbox.world.tenant_id}"
    assert info["graph_url"] == f"{sandbox.base_url}/v1.0"
    assert info["ca_bundle"] == sandbox.ca_bundle
    assert info["connect_login_url"] == f"{sandbox.base_url}/univerge/login"
    assert info["connect_api_url"] == f"{sandbox.base_url}/univerge/api"
    assert info["admin"] == "admin@contoso.example" and info["admin_password"]
    assert info["sync_user"] == "presence-sync@contoso.example" and info["sync_user_password"]
    assert info["connect_client_id"] and info["connect_client_secret"]


def test_add_user_on_one_side_with_flags_and_roles(sandbox: Any) -> None:
    created = sandbox.control.post(
        "/_sandbox/users",
        json={
            "email": "New.Person@contoso.example",
            "display_name": "New Person",
            "on": ["connect"],
            "roles": ["Security Manager"],
        },
    )
    assert created.status_code == 201
    person = sandbox.world.person_by_email("new.person@CONTOSO.example")
    assert person is not None and person.azure_id is None and person.connect_id
    assert person.roles == {"Security Manager"}
    assert "roles" not in person.connect_contact()  # Connect shows no roles (Contact.cs)
    duplicate = sandbox.control.post(
        "/_sandbox/users", json={"email": "new.person@contoso.example"}
    )
    assert duplicate.status_code == 409
    bad = sandbox.control.post(
        "/_sandbox/users", json={"email": "x@contoso.example", "flags": ["sleepy"]}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_flags"
    assert sandbox.control.post("/_sandbox/users", content=b"[1]").status_code == 400


def test_clock_faults_and_stats(sandbox: Any) -> None:
    before = sandbox.world.clock.now()
    moved = sandbox.control.post("/_sandbox/clock/advance", json={"seconds": 600}).json()
    assert moved["offset"] == 600 and sandbox.world.clock.now() - before >= 600
    assert sandbox.control.post("/_sandbox/clock/advance", json={"seconds": -1}).status_code == 400
    faults = sandbox.control.post(
        "/_sandbox/faults", json={"error_rate": 0.5, "throttle_per_30s": 10}
    ).json()
    assert faults["error_rate"] == 0.5 and faults["throttle_per_30s"] == 10
    assert sandbox.world.faults.throttle_per_30s == 10
    unknown = sandbox.control.post("/_sandbox/faults", json={"eror_rate": 0.5})
    assert unknown.status_code == 400 and "eror_rate" in unknown.json()["error"]["message"]
    bad = sandbox.control.post(
        "/_sandbox/faults", json={"error_rate": 0.1, "connect_aggregation": "loudest"}
    )
    assert bad.status_code == 400 and "connect_aggregation" in bad.json()["error"]["message"]
    assert sandbox.world.faults.error_rate == 0.5  # all or nothing: the bad request changed nothing
    switched = sandbox.control.post(
        "/_sandbox/faults", json={"connect_aggregation": "last_writer", "hub_affinity_cookie": True}
    ).json()
    assert switched["connect_aggregation"] == "last_writer" and switched["hub_affinity_cookie"]
    sandbox.control.get("/_sandbox/health")
    sandbox.control.get("/_sandbox/health")
    stats = sandbox.control.get("/_sandbox/stats").json()
    assert stats["requests"]["sandbox_health"] == 2
    assert {"throttled", "in_retry_after_window", "writes"} <= set(stats)


def test_devicecode_approve_unknown_code_is_404(sandbox: Any) -> None:
    response = sandbox.control.post(
        "/_sandbox/devicecode/approve", json={"user_code": "NOPE", "user": "a@b"}
    )
    assert response.status_code == 404


def test_organisation_is_deterministic_and_holds_the_mess() -> None:
    a, b = org.build(users=25, seed=7), org.build(users=25, seed=7)
    assert [p.email for p in a.people] == [p.email for p in b.people]
    assert [p.password for p in a.people] == [p.password for p in b.people]
    assert a.tenant_id == b.tenant_id != org.build(users=25, seed=8).tenant_id
    world = World(users=25, seed=7)
    people = world.people
    assert len(people) == 25
    assert (
        sum(1 for p in people if p.azure_id and not p.connect_id) == 4
    )  # sync user, 2 Azure-only, conflict B
    assert sum(1 for p in people if p.connect_id and not p.azure_id) == 2
    case_only = [
        p
        for p in people
        if p.connect_email
        and p.mail
        and p.connect_email != p.mail
        and p.connect_email.lower() == p.mail.lower()
    ]
    assert len(case_only) == 1
    proxy_only = [
        p
        for p in people
        if p.connect_email and p.mail and p.connect_email.lower() != p.mail.lower()
    ]
    assert len(proxy_only) == 1
    assert world.azure_people_by_proxy(proxy_only[0].connect_email) == proxy_only
    conflicts = [
        p
        for p in people
        if p.connect_email and len(world.azure_people_by_address(p.connect_email)) == 2
    ]
    assert len(conflicts) == 1
    assert (
        world.admin.roles == {"Global Administrator", "Security Manager"} and world.admin.connect_id
    )
    assert world.sync_user.connect_id is None and "must_change_password" in world.sync_user.flags
    azure_ids = {p.azure_id for p in people if p.azure_id}
    assert not azure_ids & {p.connect_id for p in people if p.connect_id}


def test_fifty_thousand_people_have_consistent_lookups() -> None:
    # Behaviour only: how fast the world builds and answers is a bench/ figure, not a test limit.
    world = World(users=50_000, seed=3)
    assert len(world.people) == 50_000
    last = world.people[-1]
    assert world.person_by_email(last.email.upper()) is last
    assert world.person_by_azure_id(last.azure_id or "") is last
    assert world.person_by_connect_id(last.connect_id or "") is last


@pytest.mark.parametrize("users", [2, 5, 10])
def test_small_organisations_still_hold_the_two_accounts(users: int) -> None:
    world = World(users=users)
    assert len(world.people) == users
    assert (
        world.admin.email == "admin@contoso.example"
        and world.sync_user.email == "presence-sync@contoso.example"
    )


def test_write_profile_points_at_the_sandbox(sandbox: Any, sandbox_profile: Any) -> None:
    from presencectl import secrets
    from presencectl.config import load_profile

    profile = load_profile("sandbox")
    assert profile.tenant_id == sandbox.world.tenant_id
    assert profile.authority == f"{sandbox.base_url}/{sandbox.world.tenant_id}"
    assert (
        profile.graph_url == f"{sandbox.base_url}/v1.0" and profile.ca_bundle == sandbox.ca_bundle
    )
    assert profile.connect_account_email == "admin@contoso.example"
    assert profile.http_settings().msal_port_fixes == {"127.0.0.1": sandbox.port}
    assert (
        secrets.get_secret("sandbox", secrets.CONNECT_CLIENT_SECRET)
        == sandbox.world.connect_client_secret
    )
