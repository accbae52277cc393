"""The sandbox's Graph v1.0 presence endpoints, ``$batch`` and presence change notifications.

Owns ``graph_presence_routes(world)``:
- ``POST /v1.0/communications/getPresencesByUserId`` (<= 650 ids; unknown ids skipped),
  ``GET /v1.0/users/{id}/presence``, ``GET /v1.0/communications/presences/{id}``,
  ``GET /v1.0/me/presence``;
- ``POST /v1.0/users/{id}/presence/setPresence`` / ``clearPresence`` /
  ``setUserPreferredPresence`` / ``clearUserPreferredPresence`` (strict pairs, sessionId = the
  caller's appid, expirationDuration PT5M..PT4H, 200 with no body);
- ``POST /v1.0/$batch`` (<= 20 members, each dispatched through the whole app, so each member is
  authorised, throttled and counted on its own; inner 429s stay inside the 200 answer);
- the subscription routes of ``graph_notifications.py`` (presence change notifications).

Every presence request passes `throttle.inject_faults` and `throttle.check_presence_throttle`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.batch_envelope import batch_answer, refuse_whole_batch
from presencectl.sandbox.errors import (
    GraphError,
    bad_request,
    bearer_claims,
    read_json_object,
    require,
)
from presencectl.sandbox.graph_notifications import notification_routes
from presencectl.sandbox.teams_presence import (
    DEFAULT_EXPIRATION,
    MAX_EXPIRATION,
    MIN_EXPIRATION,
    PREFERRED_DEFAULT_EXPIRATION_BUSY,
    PREFERRED_DEFAULT_EXPIRATION_OTHER,
    PREFERRED_PAIRS,
    SET_PRESENCE_PAIRS,
    parse_duration,
)
from presencectl.sandbox.throttle import (
    TICKET,
    DroppedConnection,
    check_presence_throttle,
    inject_faults,
)

if TYPE_CHECKING:
    from presencectl.sandbox.people import Person
    from presencectl.sandbox.world import Claims, World

log = logging.getLogger(__name__)

MAX_PRESENCE_IDS = 650
MAX_BATCH = 20
MAX_SUBSCRIPTION_MINUTES = 60
MAX_CLIENT_STATE = 128
VALIDATION_TIMEOUT = 10.0
DELIVERY_TIMEOUT = 3.0
DELIVERY_POLL = 0.2
BATCH_SCOPE_FLAG = "presencectl.batch"
BATCH_ORIGIN = "presencectl.batch_origin"
GRAPH_BASE = "https://graph.microsoft.com/v1.0"

READ_ROLES = ("Presence.Read.All", "Presence.ReadWrite.All")
READ_SCOPES = ("Presence.Read.All",)
WRITE_ROLES = ("Presence.ReadWrite.All",)
WRITE_SCOPES = ("Presence.ReadWrite",)

Handler = Callable[[Request, "Claims"], Awaitable[Response]]


# --------------------------------------------------------------------------- plumbing


def _now_iso(world: World, offset: float = 0.0) -> str:
    moment = dt.datetime.fromtimestamp(world.clock.now() + offset, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 10000:02d}" + "Z"


def _iso(epoch: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


class _TruncatedResponse(Response):
    """Announce a body, send part of it and fail: the connection closes mid-answer (a drop)."""

    def __init__(self) -> None:
        super().__init__(content=b"{}", status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"1024"), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        raise ConnectionAbortedError("sandbox dropped the connection (fault injection)")


def presence_endpoint(
    world: World, handler: Handler, *, throttled: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a presence handler: faults, bearer token, throttle, Graph error bodies."""

    async def endpoint(request: Request) -> Response:
        try:
            await inject_faults(world, request, in_batch=bool(request.scope.get(BATCH_SCOPE_FLAG)))
            claims = bearer_claims(world, request)
            if throttled:
                check_presence_throttle(world, claims, request.scope.get(TICKET))
            return await handler(request, claims)
        except GraphError as exc:
            return exc.to_response(request)
        except DroppedConnection:
            if getattr(request.receive, "__self__", None) is None:
                return _TruncatedResponse()
            return Response(status_code=500)  # never sent: the connection is gone

    return endpoint


def _person(world: World, user_id: str) -> Person:
    person = world.person_by_azure_id(user_id)
    if person is None and "@" in user_id:
        person = world.azure_person_by_upn(user_id)
    if person is None or person.azure_id is None:
        raise GraphError(
            404,
            "Request_ResourceNotFound",
            f"Resource '{user_id}' does not exist or one of its queried reference-property "
            "objects are not present.",
        )
    return person


async def _announce_teams_change(world: World, person: Person) -> None:
    await world.events.publish("teams.presence", {"userId": person.azure_id})


# --------------------------------------------------------------------------- presence handlers


def _presence_handlers(world: World) -> dict[str, Handler]:

    async def get_presences_by_user_id(request: Request, claims: Claims) -> Response:
        require(claims, READ_ROLES, READ_SCOPES, code="Forbidden")
        data = await read_json_object(request)
        ids = data.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise bad_request("Invalid request: 'ids' must be an array of user ids.")
        if not ids:
            raise bad_request("Invalid request: 'ids' must not be empty.")
        if len(ids) > MAX_PRESENCE_IDS:
            raise bad_request(
                f"The number of ids in the request ({len(ids)}) exceeds the maximum allowed "
                f"({MAX_PRESENCE_IDS})."
            )
        now = world.clock.now()
        seen: set[str] = set()
        values = []
        for user_id in ids:
            key = user_id.lower()
            if key in seen:
                continue
            seen.add(key)
            person = world.person_by_azure_id(user_id) or world.person_by_azure_id(key)
            if person is None or person.azure_id is None:
                continue  # Graph leaves out ids it does not know
            values.append(person.teams.presence(now).graph_json(person.azure_id))
        return JSONResponse(
            {"@odata.context": f"{GRAPH_BASE}/$metadata#Collection(presence)", "value": values}
        )

    async def get_user_presence(request: Request, claims: Claims) -> Response:
        require(claims, READ_ROLES, READ_SCOPES, code="Forbidden")
        person = _person(world, request.path_params["user_id"])
        return _presence_answer(world, person)

    async def get_my_presence(request: Request, claims: Claims) -> Response:
        if claims.kind != "delegated" or not claims.oid:
            raise bad_request("/me request is only valid with delegated authentication flow.")
        require(claims, (), ("Presence.Read", "Presence.Read.All"), code="Forbidden")
        return _presence_answer(world, _person(world, claims.oid))

    async def set_presence(request: Request, claims: Claims) -> Response:
        person = _writable_person(world, request, claims)
        data = await read_json_object(request)
        session_id = data.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise bad_request("Required parameter 'sessionId' is missing.")
        if session_id.lower() != claims.appid.lower():
            raise bad_request(
                "The sessionId must be the application id of the calling application."
            )
        pair = (data.get("availability"), data.get("activity"))
        if pair not in SET_PRESENCE_PAIRS:
            raise bad_request(
                f"Invalid combination of availability '{pair[0]}' and activity '{pair[1]}'. "
                "Supported: Available/Available, Busy/InACall, Busy/InAConferenceCall, "
                "Away/Away, DoNotDisturb/Presenting."
            )
        expires_in = _expiration(data.get("expirationDuration"), DEFAULT_EXPIRATION)
        changed = person.teams.set_session(
            session_id.lower(), str(pair[0]), str(pair[1]), expires_in, world.clock.now()
        )
        world.stats.wrote("teams", person.azure_id)
        if changed:
            await _announce_teams_change(world, person)
        return Response(status_code=200)

    async def clear_presence(request: Request, claims: Claims) -> Response:
        person = _writable_person(world, request, claims)
        data = await read_json_object(request)
        session_id = data.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise bad_request("Required parameter 'sessionId' is missing.")
        result = person.teams.clear_session(session_id.lower(), world.clock.now())
        if result is None:
            raise GraphError(404, "NotFound", f"Presence session '{session_id}' was not found.")
        world.stats.wrote("teams", person.azure_id)
        if result:
            await _announce_teams_change(world, person)
        return Response(status_code=200)

    async def set_preferred(request: Request, claims: Claims) -> Response:
        person = _writable_person(world, request, claims)
        data = await read_json_object(request)
        pair = (data.get("availability"), data.get("activity"))
        if pair not in PREFERRED_PAIRS:
            raise bad_request(
                f"Invalid combination of availability '{pair[0]}' and activity '{pair[1]}'."
            )
        default = (
            PREFERRED_DEFAULT_EXPIRATION_BUSY
            if pair[0] in ("Busy", "DoNotDisturb")
            else PREFERRED_DEFAULT_EXPIRATION_OTHER
        )
        raw = data.get("expirationDuration")
        expires_in = default if raw is None else _expiration(raw, default, maximum=None)
        changed = person.teams.set_preferred(
            str(pair[0]), str(pair[1]), expires_in, world.clock.now()
        )
        world.stats.wrote("teams", person.azure_id)
        if changed:
            await _announce_teams_change(world, person)
        return Response(status_code=200)

    async def clear_preferred(request: Request, claims: Claims) -> Response:
        person = _writable_person(world, request, claims)
        changed = person.teams.clear_preferred(world.clock.now())
        world.stats.wrote("teams", person.azure_id)
        if changed:
            await _announce_teams_change(world, person)
        return Response(status_code=200)

    return {
        "getPresencesByUserId": get_presences_by_user_id,
        "userPresence": get_user_presence,
        "myPresence": get_my_presence,
        "setPresence": set_presence,
        "clearPresence": clear_presence,
        "setUserPreferredPresence": set_preferred,
        "clearUserPreferredPresence": clear_preferred,
    }


def _presence_answer(world: World, person: Person) -> Response:
    assert person.azure_id is not None
    body = person.teams.presence(world.clock.now()).graph_json(person.azure_id)
    body["@odata.context"] = f"{GRAPH_BASE}/$metadata#users('{person.azure_id}')/presence/$entity"
    return JSONResponse(body)


def _writable_person(world: World, request: Request, claims: Claims) -> Person:
    require(claims, WRITE_ROLES, WRITE_SCOPES, code="Forbidden")
    person = _person(world, request.path_params["user_id"])
    if claims.kind == "delegated" and person.azure_id != claims.oid:
        raise GraphError(403, "Forbidden", "Insufficient privileges to complete the operation.")
    return person


def _expiration(raw: Any, default: float, maximum: float | None = MAX_EXPIRATION) -> float:
    if raw is None:
        return default
    seconds = parse_duration(raw) if isinstance(raw, str) else None
    if seconds is None:
        raise bad_request(f"Invalid value '{raw}' for parameter 'expirationDuration'.")
    if seconds < MIN_EXPIRATION or (maximum is not None and seconds > maximum):
        raise bad_request(
            "The expirationDuration must be between PT5M (5 minutes) and PT4H (4 hours)."
        )
    return seconds


# --------------------------------------------------------------------------- $batch


def _batch_endpoint(world: World) -> Callable[[Request], Awaitable[Response]]:

    async def batch(request: Request) -> Response:
        try:
            bearer_claims(world, request)  # the batch itself needs a valid token
            data = await read_json_object(request)
            members = data.get("requests")
            if not isinstance(members, list) or not members:
                raise bad_request("Invalid batch payload format: 'requests' is required.")
            if len(members) > MAX_BATCH:
                raise bad_request(
                    f"Invalid batch payload format: the number of requests ({len(members)}) "
                    f"exceeds the limit of {MAX_BATCH}."
                )
            ids: set[str] = set()
            for member in members:
                if not isinstance(member, dict):
                    raise bad_request("Invalid batch payload format.")
                member_id = member.get("id")
                if not isinstance(member_id, str) or not member_id:
                    raise bad_request("Invalid batch payload format: every request needs an 'id'.")
                if member_id in ids:
                    raise bad_request(f"Invalid batch payload: duplicate request id '{member_id}'.")
                ids.add(member_id)
                if not isinstance(member.get("method"), str) or not isinstance(
                    member.get("url"), str
                ):
                    raise bad_request(
                        f"Invalid batch payload: request '{member_id}' needs 'method' and 'url'."
                    )
        except GraphError as exc:
            return exc.to_response(request)
        refused = refuse_whole_batch(world, request, members)
        if refused is not None:
            return refused
        origin = str(uuid.uuid4())
        responses = []
        for member in members:
            responses.append(await _dispatch_member(request, member, origin))
        return batch_answer(world, responses)

    return batch


async def _dispatch_member(outer: Request, member: dict[str, Any], origin: str) -> dict[str, Any]:
    """Run one batch member through the whole app (auth, throttle, faults, counters)."""
    url = member["url"]
    if url.startswith(("http://", "https://")):
        url = urlsplit(url)._replace(scheme="", netloc="").geturl()
    if not url.startswith("/"):
        url = "/" + url
    if not url.startswith("/v1.0/"):
        url = "/v1.0" + url
    path, _, query = url.partition("?")
    headers: dict[str, str] = {}
    for key, value in (member.get("headers") or {}).items():
        headers[str(key).lower()] = str(value)
    auth = outer.headers.get("authorization")
    if auth:
        headers["authorization"] = auth
    body = b""
    if "body" in member and member["body"] is not None:
        payload = member["body"]
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        headers.setdefault("content-type", "application/json")
    headers["content-length"] = str(len(body))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": str(member["method"]).upper(),
        "scheme": outer.url.scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": outer.scope.get("client"),
        "server": outer.scope.get("server"),
        BATCH_SCOPE_FLAG: True,
        BATCH_ORIGIN: origin,
        TICKET: outer.scope.get(TICKET),  # arrived with the batch; its 429s go out with it
    }
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if sent_body:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        sent_body = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 500
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for key, value in message.get("headers", []):
                name = key.decode("latin-1")
                if name.lower() in ("content-type", "retry-after", "location"):
                    canonical = "-".join(part.capitalize() for part in name.split("-"))
                    response_headers[canonical] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    app = outer.scope["app"]
    try:
        await app(scope, receive, send)
    except Exception:  # an inner failure is an inner 500, not a failed batch
        log.exception("batch member %s failed", member.get("id"))
        status = 500
    answer: dict[str, Any] = {"id": member["id"], "status": status, "headers": response_headers}
    raw = b"".join(chunks)
    if raw:
        try:
            answer["body"] = json.loads(raw)
        except ValueError:
            answer["body"] = raw.decode("utf-8", "replace")
    return answer


# --------------------------------------------------------------------------- subscriptions
# Presence change notifications live in graph_notifications.py (subscriptions and delivery).

# --------------------------------------------------------------------------- routes


def graph_presence_routes(world: World) -> list[BaseRoute]:
    """The Graph presence, $batch and subscription routes of the sandbox."""
    handlers = _presence_handlers(world)

    def wrap(name: str, throttled: bool = True) -> Callable[[Request], Awaitable[Response]]:
        return presence_endpoint(world, handlers[name], throttled=throttled)

    users = "/v1.0/users/{user_id}/presence"
    return [
        Route(
            "/v1.0/communications/getPresencesByUserId",
            wrap("getPresencesByUserId"),
            methods=["POST"],
            name="graph.getPresencesByUserId",
        ),
        Route(users, wrap("userPresence"), methods=["GET"], name="graph.userPresence"),
        Route(
            "/v1.0/communications/presences/{user_id}",
            wrap("userPresence"),
            methods=["GET"],
            name="graph.userPresence",
        ),
        Route("/v1.0/me/presence", wrap("myPresence"), methods=["GET"], name="graph.myPresence"),
        Route(
            f"{users}/setPresence", wrap("setPresence"), methods=["POST"], name="graph.setPresence"
        ),
        Route(
            f"{users}/clearPresence",
            wrap("clearPresence"),
            methods=["POST"],
            name="graph.clearPresence",
        ),
        Route(
            f"{users}/setUserPreferredPresence",
            wrap("setUserPreferredPresence"),
            methods=["POST"],
            name="graph.setUserPreferredPresence",
        ),
        Route(
            f"{users}/clearUserPreferredPresence",
            wrap("clearUserPreferredPresence"),
            methods=["POST"],
            name="graph.clearUserPreferredPresence",
        ),
        Route("/v1.0/$batch", _batch_endpoint(world), methods=["POST"], name="graph.batch"),
        *notification_routes(world),
    ]


__all__ = ["graph_presence_routes"]
