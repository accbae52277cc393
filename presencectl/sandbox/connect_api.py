"""The sandbox's Univerge Blue Connect REST API (ARCHITECTURE.md §3 table) and its change feed.

Owns ``connect_routes(world, hub)``:
- ``POST /univerge/login/user/connect/token`` (client_credentials form; wrong client or secret
  → ``400 {"error": "invalid_client"}``; tokens expire on the world's clock);
- ``GET /univerge/api/address-book/v3/accounts/_me/contacts?offsetToken=T`` (pages of 500);
- ``GET|PUT|DELETE /univerge/api/messaging/v1/presence/accounts/_me/users/{id}[?resource=R]``
  (PUT ``{"presence": v}`` → 204, unknown value → 400; DELETE → 204, 404 without such resource);
- subscriptions: ``POST …/subscriptions/accounts/_me/users/_all`` ``{"events", "ttl"}``,
  ``POST …/subscriptions/{id}/renew``, ``DELETE …/subscriptions/{id}``.

Every change of a user's aggregate (from these routes or from the control API, via
``world.events`` ``connect.presence``) is published as ``OnPresenceEvent`` ``{"userId",
"presenceState", "whenRaised"}`` through the SignalR hub to each live subscription. Missing or
expired tokens get 401. Presence and directory requests pass the fault injector.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.connect_presence import CONNECT_STATUSES
from presencectl.sandbox.errors import GraphError
from presencectl.sandbox.presence_control import iso, publish_connect_change
from presencectl.sandbox.throttle import DroppedConnection, inject_faults

if TYPE_CHECKING:
    from presencectl.sandbox.world import Claims, Person, World

log = logging.getLogger(__name__)

LOGIN = "/univerge/login"
API = "/univerge/api"
HUB_PATH = "/univerge/hub/presence"
PAGE_SIZE = 500
DEFAULT_RESOURCE = "default"
DEFAULT_TTL = 30 * 60.0
MAX_TTL = 24 * 3600.0
CONNECT_SCOPES = ("api.service.messaging", "api.user.address-book")
_TTL = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})(?:\.\d+)?$")


def parse_ttl(text: Any) -> float | None:
    """A .NET TimeSpan ("00:30:00", "1.00:00:00") in seconds, or None."""
    if not isinstance(text, str):
        return None
    match = _TTL.match(text.strip())
    if not match:
        return None
    days = int(match.group("d") or 0)
    return days * 86400 + int(match.group("h")) * 3600 + int(match.group("m")) * 60 + int(
        match.group("s")
    )


class ConnectError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.code, "message": self.message},
            status_code=self.status,
            headers=self.headers,
        )


@dataclass
class ConnectSubscription:
    id: str
    client_id: str
    expires_at: float
    ttl: float


class ConnectFeed:
    """Connect change-feed subscriptions of one world, forwarding changes to the hub."""

    def __init__(self, world: World, hub: Any) -> None:
        self.world = world
        self.hub = hub
        self.subscriptions: dict[str, ConnectSubscription] = {}
        self.events_published = 0
        world.events.subscribe(self._on_event)
        if hub is not None and getattr(hub, "subscription_exists", None) is None:
            hub.subscription_exists = self.exists

    def exists(self, subscription_id: str) -> bool:
        sub = self.subscriptions.get(subscription_id)
        return sub is not None and sub.expires_at > self.world.clock.now()

    def live(self) -> list[ConnectSubscription]:
        now = self.world.clock.now()
        for sub_id in [s.id for s in self.subscriptions.values() if s.expires_at <= now]:
            del self.subscriptions[sub_id]
        return list(self.subscriptions.values())

    async def _on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind != "connect.presence" or self.hub is None:
            return
        for sub in self.live():
            self.events_published += 1
            await self.hub.publish("OnPresenceEvent", [payload], subscription_id=sub.id)


def _feed(world: World, hub: Any) -> ConnectFeed:
    feed = world.extra.get("connect_feed")
    if feed is None or feed.hub is not hub:
        feed = world.extra["connect_feed"] = ConnectFeed(world, hub)
    return feed


def _claims(world: World, request: Request) -> Claims:
    claims = world.verify_bearer(request.headers.get("authorization"))
    if claims is None or claims.kind != "connect":
        raise ConnectError(
            401, "invalid_token", "The access token is missing, invalid or expired.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return claims


async def _guard(world: World, request: Request) -> Claims:
    try:
        await inject_faults(world, request)
    except GraphError as exc:
        raise ConnectError(exc.status, "server_error", exc.message, exc.headers) from exc
    return _claims(world, request)


def _connect_person(world: World, user_id: str) -> Person:
    person = world.person_by_connect_id(user_id)
    if person is None:
        raise ConnectError(404, "not_found", f"User '{user_id}' was not found.")
    return person


def _encode_offset(index: int) -> str:
    return base64.urlsafe_b64encode(f"o:{index}".encode()).decode().rstrip("=")


def _decode_offset(token: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        return None
    if not text.startswith("o:") or not text[2:].isdigit():
        return None
    return int(text[2:])


def connect_routes(world: World, hub: Any) -> list[BaseRoute]:
    """The Connect login, directory, presence and subscription routes."""
    feed = _feed(world, hub)

    async def token(request: Request) -> Response:
        raw_form = (await request.body()).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(raw_form).items()}
        grant_type = form.get("grant_type")
        client_id = str(form.get("client_id") or "")
        client_secret = str(form.get("client_secret") or "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode()
                client_id, _, client_secret = decoded.partition(":")
            except ValueError:
                pass
        if grant_type != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if client_id != world.connect_client_id or client_secret != world.connect_client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        requested = str(form.get("scope") or " ".join(CONNECT_SCOPES)).split()
        access_token, claims = world.issue_token(
            kind="connect", appid=client_id, scp=requested, aud="api.univerge.blue"
        )
        return JSONResponse(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": int(claims.exp - claims.iat),
                "scope": " ".join(requested),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def contacts(request: Request) -> Response:
        try:
            await _guard(world, request)
            offset = 0
            raw = request.query_params.get("offsetToken")
            if raw:
                decoded = _decode_offset(raw)
                if decoded is None:
                    raise ConnectError(400, "invalid_request", "Invalid offsetToken.")
                offset = decoded
            people = [p for p in world.people if p.connect_id is not None]
            page = people[offset : offset + PAGE_SIZE]
            following = offset + PAGE_SIZE
            return JSONResponse(
                {
                    "contacts": [p.connect_contact() for p in page],
                    "offsetToken": _encode_offset(following) if following < len(people) else None,
                }
            )
        except ConnectError as exc:
            return exc.response()
        except DroppedConnection:
            return Response(status_code=500)

    async def presence(request: Request) -> Response:
        try:
            await _guard(world, request)
            person = _connect_person(world, request.path_params["user_id"])
            resource = request.query_params.get("resource")
            state = person.connect
            if request.method == "GET":
                if resource:
                    found = state.resources.get(resource)
                    if found is None:
                        raise ConnectError(404, "not_found", f"No resource '{resource}'.")
                    return JSONResponse({"presence": found.status})
                return JSONResponse({"presence": state.status})
            if request.method == "PUT":
                try:
                    body = json.loads(await request.body() or b"null")
                except ValueError as exc:
                    raise ConnectError(400, "invalid_request", "The body is not JSON.") from exc
                value = body.get("presence") if isinstance(body, dict) else None
                if not isinstance(value, str) or value not in CONNECT_STATUSES:
                    raise ConnectError(
                        400, "invalid_presence",
                        f"Unknown presence value {value!r}.",
                    )
                changed = state.set(resource or DEFAULT_RESOURCE, value, world.clock.now())
                world.stats.writes += 1
            else:
                result = state.clear(resource or DEFAULT_RESOURCE)
                if result is None:
                    raise ConnectError(
                        404, "not_found", f"No presence resource '{resource or DEFAULT_RESOURCE}'."
                    )
                changed = result
                world.stats.writes += 1
            if changed:
                await publish_connect_change(world, person)
            return Response(status_code=204)
        except ConnectError as exc:
            return exc.response()
        except DroppedConnection:
            return Response(status_code=500)

    def subscription_json(sub: ConnectSubscription) -> dict[str, Any]:
        return {
            "id": sub.id,
            "whenExpired": iso(sub.expires_at),
            "events": ["*"],
            "deliveryMethod": {
                "transport": "signalR",
                "uri": f"{world.base_url}{HUB_PATH}?subscriptionId={sub.id}",
            },
        }

    def ttl_of(body: Any) -> float:
        raw = body.get("ttl") if isinstance(body, dict) else None
        if raw is None:
            return DEFAULT_TTL
        ttl = parse_ttl(raw)
        if ttl is None or ttl <= 0 or ttl > MAX_TTL:
            raise ConnectError(400, "invalid_request", f"Invalid ttl {raw!r}.")
        return ttl

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ConnectError(400, "invalid_request", "The body is not JSON.") from exc

    async def subscribe(request: Request) -> Response:
        try:
            claims = _claims(world, request)
            body = await read_json(request)
            events = body.get("events", ["*"]) if isinstance(body, dict) else None
            if not isinstance(events, list) or not events:
                raise ConnectError(400, "invalid_request", "'events' must be a non-empty list.")
            ttl = ttl_of(body)
            sub = ConnectSubscription(
                str(uuid.uuid4()), claims.appid, world.clock.now() + ttl, ttl
            )
            feed.subscriptions[sub.id] = sub
            return JSONResponse(subscription_json(sub))
        except ConnectError as exc:
            return exc.response()

    def owned(request: Request, claims: Claims) -> ConnectSubscription:
        feed.live()
        sub = feed.subscriptions.get(request.path_params["sub_id"])
        if sub is None or sub.client_id != claims.appid:
            raise ConnectError(404, "not_found", "Subscription not found.")
        return sub

    async def renew(request: Request) -> Response:
        try:
            claims = _claims(world, request)
            sub = owned(request, claims)
            body = await read_json(request)
            ttl = ttl_of(body) if isinstance(body, dict) and "ttl" in body else sub.ttl
            sub.ttl = ttl
            sub.expires_at = world.clock.now() + ttl
            return JSONResponse(subscription_json(sub))
        except ConnectError as exc:
            return exc.response()

    async def unsubscribe(request: Request) -> Response:
        try:
            claims = _claims(world, request)
            sub = owned(request, claims)
            del feed.subscriptions[sub.id]
            if hub is not None:
                await hub.disconnect(sub.id, allow_reconnect=False)
            return Response(status_code=204)
        except ConnectError as exc:
            return exc.response()

    presence_path = f"{API}/messaging/v1/presence/accounts/_me/users/{{user_id}}"
    subs = f"{API}/messaging/v1/subscriptions"
    return [
        Route(f"{LOGIN}/user/connect/token", token, methods=["POST"], name="connect.token"),
        Route(f"{API}/address-book/v3/accounts/_me/contacts", contacts, methods=["GET"],
              name="connect.contacts"),
        Route(presence_path, presence, methods=["GET"], name="connect.presence.get"),
        Route(presence_path, presence, methods=["PUT"], name="connect.presence.put"),
        Route(presence_path, presence, methods=["DELETE"], name="connect.presence.delete"),
        Route(f"{subs}/accounts/_me/users/_all", subscribe, methods=["POST"],
              name="connect.subscriptions.create"),
        Route(f"{subs}/{{sub_id}}/renew", renew, methods=["POST"],
              name="connect.subscriptions.renew"),
        Route(f"{subs}/{{sub_id}}", unsubscribe, methods=["DELETE"],
              name="connect.subscriptions.delete"),
    ]
