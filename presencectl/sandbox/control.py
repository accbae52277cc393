"""The sandbox control API (``/_sandbox/...``, docs/architecture.md) except presence.

Owns: health, profile, users (add, password change, sessions revoked), device-code approval,
clock, faults and stats. The presence control endpoints (``/_sandbox/teams/*``,
``/_sandbox/connect/*``) come from ``presence_control.control_routes(world)`` (see app.py).
JSON in and out; errors are ``{"error": {"code", "message"}}`` with 400/404.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.people import (
    ADMIN_EMAIL,
    DOMAIN,
    FLAGS,
    GLOBAL_ADMIN,
    SECURITY_MANAGER,
    SYNC_EMAIL,
    Person,
)
from presencectl.sandbox.world import World

SIDES = ("teams", "connect")
ROLES = (GLOBAL_ADMIN, SECURITY_MANAGER)


def control_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def json_body(request: Request) -> dict[str, Any] | JSONResponse:
    """The JSON object of the request, or a 400 answer to return."""
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        return control_error(400, "invalid_json", "the body is not JSON")
    if not isinstance(data, dict):
        return control_error(400, "invalid_json", "the body must be a JSON object")
    return data


def profile_document(world: World) -> dict[str, Any]:
    admin = world.admin
    sync = world.sync_user
    return {
        "tenant_id": world.tenant_id,
        "domain": world.domain,
        "authority": f"{world.base_url}/{world.tenant_id}",
        "authority_url": world.base_url,
        "graph_url": f"{world.base_url}/v1.0",
        "ca_bundle": world.ca_bundle,
        "connect_login_url": f"{world.base_url}/univerge/login",
        "connect_api_url": f"{world.base_url}/univerge/api",
        "connect_client_id": world.connect_client_id,
        "connect_client_secret": world.connect_client_secret,
        "connect_account_email": ADMIN_EMAIL,
        "admin": admin.email,
        "admin_password": admin.password,
        "sync_user": sync.email,
        "sync_user_password": sync.password,
        "users": len(world.people),
        # an OIDC issuer of the sandbox's own, for federated credentials (client_assertions.py)
        "oidc_issuer": f"{world.base_url}/_sandbox/oidc",
    }


def oidc_routes(world: World) -> list[BaseRoute]:
    """The sandbox as an OIDC issuer (metadata, keys, tokens on request), as a Kubernetes
    cluster or a CI system is one: the federated credential's other half."""
    from presencectl.sandbox.client_assertions import EXCHANGE_AUDIENCE, OIDC_PATH, client_auth_of

    def issuer() -> str:
        return f"{world.base_url}{OIDC_PATH}"

    async def metadata(request: Request) -> Response:
        return JSONResponse({
            "issuer": issuer(), "jwks_uri": f"{issuer()}/keys",
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })  # fmt: skip

    async def keys(request: Request) -> Response:
        return JSONResponse(client_auth_of(world).jwks())

    async def token(request: Request) -> Response:
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        subject = str(data.get("subject") or "")
        if not subject:
            return control_error(400, "invalid_subject", "'subject' is required")
        lifetime = data.get("lifetime_s", 3600)
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool):
            return control_error(400, "invalid_lifetime", "'lifetime_s' must be a number")
        audience = str(data.get("audience") or EXCHANGE_AUDIENCE)
        minted = client_auth_of(world).mint(issuer(), subject, audience, float(lifetime))
        return JSONResponse({"token": minted, "issuer": issuer()})

    return [
        Route(f"{OIDC_PATH}/.well-known/openid-configuration", metadata, methods=["GET"],
              name="sandbox_oidc_metadata"),
        Route(f"{OIDC_PATH}/keys", keys, methods=["GET"], name="sandbox_oidc_keys"),
        Route(f"{OIDC_PATH}/token", token, methods=["POST"], name="sandbox_oidc_token"),
    ]  # fmt: skip


def control_routes(world: World) -> list[BaseRoute]:
    """The control endpoints S1a owns."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def profile(request: Request) -> Response:
        return JSONResponse(profile_document(world))

    async def add_user(request: Request) -> Response:
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        email = str(data.get("email") or "").strip()
        if "@" not in email:
            return control_error(400, "invalid_email", "'email' must be an email address")
        if world.person_by_email(email) is not None:
            return control_error(409, "exists", f"{email} already exists")
        on = data.get("on", list(SIDES))
        flags = data.get("flags", [])
        roles = data.get("roles", [])
        if not isinstance(on, list) or not set(on) <= set(SIDES) or not on:
            return control_error(400, "invalid_on", "'on' must list 'teams' and/or 'connect'")
        if not isinstance(flags, list) or not set(flags) <= set(FLAGS):
            return control_error(400, "invalid_flags", "'flags' may hold: " + ", ".join(FLAGS))
        if not isinstance(roles, list) or not set(roles) <= set(ROLES):
            return control_error(400, "invalid_roles", "'roles' may hold: " + ", ".join(ROLES))
        local = email.split("@", 1)[0]
        display = str(data.get("display_name") or local.replace(".", " ").title())
        person = Person(
            email=email,
            display_name=display,
            given_name=display.split(" ", 1)[0],
            surname=display.split(" ", 1)[1] if " " in display else "",
            password=str(data.get("password") or uuid.uuid4().hex),
            flags=set(flags),
            roles=set(roles),
        )
        if "teams" in on:
            person.azure_id = world.new_id()
            person.upn = email
            person.mail = email
            person.proxy_addresses = [f"SMTP:{email}"]
        if "connect" in on:
            person.connect_id = world.new_id()
            person.connect_email = email
        world.add_person(person)
        return JSONResponse(person_document(person), status_code=201)

    async def change_password(request: Request) -> Response:
        person = world.person_by_email(request.path_params["email"])
        if person is None or person.azure_id is None:
            return control_error(404, "not_found", "no such Azure user")
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        password = data.get("password")
        if not isinstance(password, str) or len(password) < 8:
            return control_error(
                400, "invalid_password", "'password' must be at least 8 characters"
            )
        person.password = password
        person.flags.discard("must_change_password")
        return JSONResponse(person_document(person))

    async def revoke_sessions(request: Request) -> Response:
        """What an admin's "Revoke sessions" (Graph revokeSignInSessions) or a sign-in frequency
        policy does to a user's refresh tokens: each is refused from now on, invalid_grant with
        AADSTS50173 (revoked) or AADSTS70043 (sign_in_frequency)."""
        person = world.person_by_email(request.path_params["email"])
        if person is None or person.azure_id is None:
            return control_error(404, "not_found", "no such Azure user")
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        reason = str(data.get("reason") or "revoked")
        codes = {"revoked": 50173, "sign_in_frequency": 70043}
        if reason not in codes:
            return control_error(400, "invalid_reason", "'reason' is revoked or sign_in_frequency")
        count = world.revoke_sessions(person.azure_id, codes[reason])
        return JSONResponse({"user": person.upn, "revoked": count, "aadsts": codes[reason]})

    async def approve_device_code(request: Request) -> Response:
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        code = world.device_code_by_user_code(str(data.get("user_code") or ""))
        if code is None:
            return control_error(404, "not_found", "no such user_code")
        email = str(data.get("user") or ADMIN_EMAIL)
        person = world.person_by_email(email)
        if person is None or person.azure_id is None:
            return control_error(404, "not_found", f"no Azure user {email}")
        if data.get("deny"):
            code.denied = True
        else:
            code.approved_by = person.upn
        return JSONResponse(
            {"user_code": code.user_code, "user": person.upn, "approved": not code.denied}
        )

    async def advance_clock(request: Request) -> Response:
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        seconds = data.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            return control_error(400, "invalid_seconds", "'seconds' must be a number ≥ 0")
        now = world.clock.advance(seconds)
        return JSONResponse({"now": now, "offset": world.clock.offset})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            data = await json_body(request)
            if isinstance(data, JSONResponse):
                return data
            if not isinstance(data, dict):
                return control_error(400, "invalid_faults", "send a JSON object of fault keys")
            try:
                world.faults.update(data)
            except (TypeError, ValueError) as exc:
                return control_error(400, "invalid_faults", str(exc))
            if data.get("outage_s") is not None:
                from presencectl.sandbox.outage import arm

                arm(world)  # the outage runs from now
        return JSONResponse(world.faults.to_dict())

    async def stats(request: Request) -> Response:
        if request.method == "DELETE":
            world.stats.__init__()  # type: ignore[misc]
        from presencectl.sandbox.graph_notifications import notification_stats

        return JSONResponse({**world.stats.to_dict(), **notification_stats(world)})

    async def get_user(request: Request) -> Response:
        person = world.person_by_email(request.path_params["email"])
        if person is None:
            return control_error(404, "not_found", "no such user")
        return JSONResponse(person_document(person))

    return [
        Route("/_sandbox/health", health, methods=["GET"], name="sandbox_health"),
        Route("/_sandbox/profile", profile, methods=["GET"], name="sandbox_profile"),
        Route("/_sandbox/users", add_user, methods=["POST"], name="sandbox_add_user"),
        Route("/_sandbox/users/{email}", get_user, methods=["GET"], name="sandbox_get_user"),
        Route(
            "/_sandbox/users/{email}/password",
            change_password,
            methods=["POST"],
            name="sandbox_password",
        ),
        Route(
            "/_sandbox/users/{email}/revoke",
            revoke_sessions,
            methods=["POST"],
            name="sandbox_revoke_sessions",
        ),
        Route(
            "/_sandbox/devicecode/approve",
            approve_device_code,
            methods=["POST"],
            name="sandbox_devicecode_approve",
        ),
        Route("/_sandbox/clock/advance", advance_clock, methods=["POST"], name="sandbox_clock"),
        Route("/_sandbox/faults", faults, methods=["GET", "POST"], name="sandbox_faults"),
        Route("/_sandbox/stats", stats, methods=["GET", "DELETE"], name="sandbox_stats"),
        *oidc_routes(world),
    ]


def person_document(person: Person) -> dict[str, Any]:
    return {
        "email": person.email,
        "display_name": person.display_name,
        "azure_id": person.azure_id,
        "connect_id": person.connect_id,
        "connect_email": person.connect_email,
        "flags": sorted(person.flags),
        "roles": sorted(person.roles),
    }


__all__ = [
    "DOMAIN",
    "SYNC_EMAIL",
    "control_error",
    "control_routes",
    "json_body",
    "profile_document",
]
