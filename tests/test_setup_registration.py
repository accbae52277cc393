"""setup-azure's app registration as Entra ID enforces it: distinct redirect URIs, and the
replication delay after creation (the sandbox's ``replication_lag_s`` fault key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_helpers import admin_token, client

from presencectl.config import load_profile
from presencectl.errors import ApiError

ADMIN = "admin@contoso.example"


@pytest.fixture
def sbx() -> Iterator[Any]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        yield sb


def setup(cli: Any, *args: str) -> Any:
    return cli("--profile", "sandbox", "--no-input", *args)


# ------------------------------------------------------------------ distinct redirect URIs


@pytest.mark.parametrize(
    ("first", "second"), [("web", "publicClient"), ("web", "spa"), ("spa", "publicClient")]
)
def test_sandbox_refuses_a_redirect_uri_on_two_platforms(sbx: Any, first: str, second: str) -> None:
    uri = "http://localhost"
    with client(sbx, admin_token(sbx)) as c:
        created = c.post(
            "/v1.0/applications",
            json={
                "displayName": "dup",
                first: {"redirectUris": [uri]},
                second: {"redirectUris": [uri]},
            },
        )
        assert created.status_code == 400
        error = created.json()["error"]
        assert error["code"] == "Request_BadRequest"
        assert "distinct" in error["message"] and uri in error["message"]
        assert "innerError" in error

        ok = c.post(
            "/v1.0/applications", json={"displayName": "one", first: {"redirectUris": [uri]}}
        )
        assert ok.status_code == 201
        patched = c.patch(
            f"/v1.0/applications/{ok.json()['id']}", json={second: {"redirectUris": [uri]}}
        )
        assert patched.status_code == 400
        assert uri in patched.json()["error"]["message"]


def test_setup_registers_the_redirect_uri_on_web_only(sbx: Any, cli: Any) -> None:
    result = setup(cli, "setup-azure")
    assert result.exit_code == 0, result.stderr
    app = sbx.world.application_by_app_id(load_profile("sandbox").client_id)
    assert app["web"]["redirectUris"] == ["http://localhost"]
    assert app["publicClient"]["redirectUris"] == []
    assert app["spa"]["redirectUris"] == []
    assert app["isFallbackPublicClient"] is True


def test_setup_repairs_a_registration_with_the_duplicate(sbx: Any, cli: Any) -> None:
    assert setup(cli, "setup-azure").exit_code == 0
    app = sbx.world.application_by_app_id(load_profile("sandbox").client_id)
    # What an earlier presencectl registered (the sandbox of that time let it through).
    app["publicClient"] = {"redirectUris": ["http://localhost", "ms-app://keep-me"]}

    again = setup(cli, "-o", "json", "setup-azure")
    assert again.exit_code == 0, again.stderr
    step = next(s for s in again.json()["steps"] if s["step"] == "App registration")
    assert step["result"] == "updated" and "publicClient" in step["detail"]
    assert app["publicClient"]["redirectUris"] == ["ms-app://keep-me"]
    assert app["web"]["redirectUris"] == ["http://localhost"]


def test_patch_for_a_registration_without_the_web_uri() -> None:
    from presencectl.identity.setup import application_body, application_patch

    app = {**application_body("x"), "web": {"redirectUris": [], "logoutUrl": "https://l"}}
    patch = application_patch(app)
    assert patch == {"web": {"redirectUris": ["http://localhost"], "logoutUrl": "https://l"}}
    assert application_patch(application_body("x")) == {}


# ------------------------------------------------------------------ replication delay


def test_setup_azure_waits_for_replication(sbx: Any, cli: Any) -> None:
    sbx.control.post("/_sandbox/faults", json={"replication_lag_s": 5}).raise_for_status()
    result = setup(cli, "-o", "json", "setup-azure")
    assert result.exit_code == 0, result.stderr + result.stdout
    assert "waiting for Entra ID to replicate the new app" in result.stderr
    report = result.json()
    results = {s["step"]: s["result"] for s in report["steps"]}
    assert results["Service principal"] == "created"
    assert results["Client secret"] == "created"
    assert results["Admin consent"] == "created"
    assert sbx.world.service_principal_by_app_id(report["client_id"]) is not None


def test_sandbox_replication_answers(sbx: Any) -> None:
    sbx.control.post("/_sandbox/faults", json={"replication_lag_s": 30}).raise_for_status()
    with client(sbx, admin_token(sbx)) as c:
        app = c.post("/v1.0/applications", json={"displayName": "new"}).json()
        sp = c.post("/v1.0/servicePrincipals", json={"appId": app["appId"]})
        assert sp.status_code == 400
        assert "does not reference a valid application object" in sp.json()["error"]["message"]
        read = c.get(f"/v1.0/applications/{app['id']}")
        assert read.status_code == 404
        assert read.json()["error"]["code"] == "Request_ResourceNotFound"
        assert c.patch(f"/v1.0/applications/{app['id']}", json={"notes": "n"}).status_code == 404
        sbx.control.post("/_sandbox/clock/advance", json={"seconds": 31}).raise_for_status()
        assert c.get(f"/v1.0/applications/{app['id']}").status_code == 200
        created = c.post("/v1.0/servicePrincipals", json={"appId": app["appId"]})
        assert created.status_code == 201
        assert "_created_at" not in created.json()
        assert c.get(f"/v1.0/servicePrincipals/{created.json()['id']}").status_code == 404


def _api_error(status: int, message: str) -> ApiError:
    return ApiError(
        f"Graph POST /x failed: HTTP {status} Request_BadRequest: {message}", status=status
    )


@pytest.mark.parametrize(
    ("status", "message", "just_created"),
    [
        (400, "Property 'displayName' is required.", True),
        (403, "Insufficient privileges to complete the operation.", True),
        (404, "Resource 'x' does not exist", False),
        (409, "already in use", True),
    ],
)
def test_any_other_4xx_fails_at_once(status: int, message: str, just_created: bool) -> None:
    import asyncio

    from presencectl.identity.setup import after_replication

    calls: list[int] = []
    sleeps: list[float] = []

    async def call() -> None:
        calls.append(1)
        raise _api_error(status, message)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    with pytest.raises(ApiError):
        asyncio.run(
            after_replication(call, just_created=just_created, on_step=lambda s: None, sleep=sleep)
        )
    assert calls == [1] and sleeps == []


def test_replication_answers_are_retried_with_backoff_then_given_up() -> None:
    import asyncio

    from presencectl.identity.setup import after_replication

    steps: list[Any] = []
    sleeps: list[float] = []
    answers = [
        _api_error(
            400,
            "The appId 'a' of the service principal does not reference a valid application object.",
        ),
        _api_error(404, "Resource 'a' does not exist"),
    ]

    async def call() -> str:
        if answers:
            raise answers.pop(0)
        return "done"

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    assert (
        asyncio.run(after_replication(call, just_created=True, on_step=steps.append, sleep=sleep))
        == "done"
    )
    assert sleeps == [1.0, 2.0]
    assert [s.detail for s in steps] == ["waiting for Entra ID to replicate the new app…"]

    async def never() -> str:
        raise _api_error(404, "Resource 'a' does not exist")

    with pytest.raises(ApiError) as gave_up:
        asyncio.run(after_replication(never, just_created=True, on_step=lambda s: None, wait_s=0.0))
    assert gave_up.value.code == "replication_timeout"


# ------------------------------------------------------------------ consent through replication


@pytest.mark.timeout(240)
def test_setup_azure_succeeds_first_time_under_a_20_s_replication_lag(sbx: Any, cli: Any) -> None:
    """Every answer of a replicating tenant at once: the new principal is not found by `$filter`,
    appRoleAssignedTo and oauth2PermissionGrants naming it are refused, its new secret is not
    accepted yet. The first run still completes, with progress on stderr."""
    sbx.control.post("/_sandbox/faults", json={"replication_lag_s": 20}).raise_for_status()
    sbx.control.delete("/_sandbox/stats").raise_for_status()
    result = setup(cli, "-o", "json", "setup-azure")
    assert result.exit_code == 0, result.stderr + result.stdout
    assert "waiting for Entra ID to accept the new client secret" in result.stderr
    report = result.json()
    results = {s["step"]: s["result"] for s in report["steps"]}
    assert results["Service principal"] == "created"
    assert results["Client secret"] == "created"
    assert results["Admin consent"] == "created"
    world = sbx.world
    assert world.app_roles_of(report["client_id"]) == {"Presence.ReadWrite.All", "User.Read.All"}
    assert {"Presence.Read.All", "User.Read", "openid", "profile", "offline_access"} <= (
        world.delegated_scopes_of(report["client_id"])
    )
    # exactly one secret in Entra, and it is the stored one
    app = world.application_by_app_id(report["client_id"])
    assert len(app["passwordCredentials"]) == 1


def test_an_unproven_secret_is_removed_again_so_reruns_never_multiply_secrets(
    sbx: Any, cli: Any
) -> None:
    import asyncio

    from presencectl.errors import AuthError
    from presencectl.identity.secret_rotation import rotate_client_secret
    from presencectl.identity.setup import graph_client_for
    from presencectl.identity.tokens import admin_sign_in

    assert setup(cli, "setup-azure").exit_code == 0
    profile = load_profile("sandbox")
    app = sbx.world.application_by_app_id(profile.client_id)
    before = [c["keyId"] for c in app["passwordCredentials"]]
    # From now on no new secret is accepted within the proof's whole wait.
    sbx.control.post("/_sandbox/faults", json={"replication_lag_s": 100_000}).raise_for_status()
    # the app itself is long replicated; only a secret added now is not
    sbx.control.post("/_sandbox/clock/advance", json={"seconds": 100_001}).raise_for_status()
    session = admin_sign_in(profile, "device_code", on_message=lambda m: None)
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        return None

    async def rotate() -> None:
        async with graph_client_for(profile, session.provider) as graph:
            public = {k: v for k, v in app.items() if not k.startswith("_")}
            await rotate_client_secret(
                graph,
                profile,
                public,
                display_name="presencectl",
                lifetime_days=180,
                sleep=no_sleep,
                on_wait=waits.append,
            )

    for _ in range(2):  # a rerun after the failure
        with pytest.raises(AuthError) as caught:
            asyncio.run(rotate())
        assert caught.value.code == "client_secret_unproven"
        assert [c["keyId"] for c in app["passwordCredentials"]] == before
    assert waits and max(waits) >= 240  # the proof waited minutes, not seconds


def test_sandbox_replication_covers_lookups_grants_and_secrets(sbx: Any) -> None:
    from sandbox_helpers import GRAPH_APP_ID, confidential_app

    from presencectl.graph.permissions import APP_ROLES, GRAPH_DEFAULT_SCOPE

    with client(sbx, admin_token(sbx)) as c:
        app = c.post("/v1.0/applications", json={"displayName": "lagging"}).json()
        sbx.control.post("/_sandbox/faults", json={"replication_lag_s": 30}).raise_for_status()
        sbx.control.post("/_sandbox/clock/advance", json={"seconds": 31}).raise_for_status()
        secret = c.post(f"/v1.0/applications/{app['id']}/addPassword", json={}).json()
        created = c.post("/v1.0/servicePrincipals", json={"appId": app["appId"]})
        assert created.status_code == 201
        sp_id = created.json()["id"]
        found = c.get("/v1.0/servicePrincipals", params={"$filter": f"appId eq '{app['appId']}'"})
        assert found.status_code == 200 and found.json()["value"] == []
        graph_sp = sbx.world.service_principal_by_app_id(GRAPH_APP_ID)["id"]
        assigned = c.post(
            f"/v1.0/servicePrincipals/{graph_sp}/appRoleAssignedTo",
            json={
                "principalId": sp_id,
                "resourceId": graph_sp,
                "appRoleId": APP_ROLES["User.Read.All"],
            },
        )
        assert assigned.status_code == 400
        assert assigned.json()["error"]["message"] == "Not a valid reference update."
        grant = c.post(
            "/v1.0/oauth2PermissionGrants",
            json={
                "clientId": sp_id,
                "consentType": "AllPrincipals",
                "resourceId": graph_sp,
                "scope": "User.Read",
            },
        )
        assert grant.status_code == 404 and sp_id in grant.json()["error"]["message"]
        refused = confidential_app(sbx, app["appId"], secret["secretText"])
        assert refused.acquire_token_for_client([GRAPH_DEFAULT_SCOPE])["error_codes"] == [7000215]
        sbx.control.post("/_sandbox/clock/advance", json={"seconds": 31}).raise_for_status()
        found = c.get("/v1.0/servicePrincipals", params={"$filter": f"appId eq '{app['appId']}'"})
        assert [s["id"] for s in found.json()["value"]] == [sp_id]
        assert (
            c.post(
                f"/v1.0/servicePrincipals/{graph_sp}/appRoleAssignedTo",
                json={
                    "principalId": sp_id,
                    "resourceId": graph_sp,
                    "appRoleId": APP_ROLES["User.Read.All"],
                },
            ).status_code
            == 201
        )


def test_consent_right_after_a_new_principal_uses_its_id_and_waits_out_replication(
    sbx: Any,
) -> None:
    """The principal from the 201, not a `$filter` lookup (which does not find it yet); both
    grants retried while Graph refuses to name it. The waits move the sandbox clock."""
    import asyncio

    from presencectl.identity.setup import application_body, grant_consent, graph_client_for
    from presencectl.identity.tokens import admin_sign_in

    with client(sbx, admin_token(sbx)) as c:
        app = c.post("/v1.0/applications", json=application_body("fresh")).json()
        sbx.control.post("/_sandbox/faults", json={"replication_lag_s": 60}).raise_for_status()
        sbx.control.post("/_sandbox/clock/advance", json={"seconds": 61}).raise_for_status()
        sp = c.post("/v1.0/servicePrincipals", json={"appId": app["appId"]}).json()
        assert "id" in sp, sp
    profile = load_profile("sandbox")
    session = admin_sign_in(profile, "device_code", on_message=lambda m: None)
    slept: list[float] = []
    steps: list[Any] = []

    async def sandbox_sleep(seconds: float) -> None:
        slept.append(seconds)
        sbx.control.post("/_sandbox/clock/advance", json={"seconds": seconds}).raise_for_status()

    async def grant() -> Any:
        async with graph_client_for(profile, session.provider) as graph:
            return await grant_consent(
                graph,
                app["appId"],
                on_step=steps.append,
                app_sp={**sp, "_just_created": True},
                sleep=sandbox_sleep,
            )

    step = asyncio.run(grant())
    assert step.result == "created"
    assert 60 <= sum(slept) < 120
    assert "replicate the new service principal" in steps[0].detail
    world = sbx.world
    assert world.app_roles_of(app["appId"]) == {"Presence.ReadWrite.All", "User.Read.All"}
    assert world.delegated_scopes_of(app["appId"]) == {
        "Presence.Read.All",
        "User.Read",
        "openid",
        "profile",
        "offline_access",
    }
