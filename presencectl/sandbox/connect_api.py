"""The sandbox's Univerge Blue Connect REST API (docs/architecture.md) and its change feed.

Written from the public sources (docs/verification.md names each), never from presencectl's client.
Owns ``connect_routes(world, hub)``:
- ``POST /univerge/login/user/connect/token`` (client_credentials form with exactly one scope,
  ``api.service.messaging`` or ``api.service.address-book``; an ``api.user.*`` scope, several
  scopes or an unknown one → ``400 {"error": "invalid_scope"}``; wrong client or secret →
  ``400 {"error": "invalid_client"}``; tokens expire on the world's clock);
- ``GET /univerge/api/address-book/v3/accounts/_me/contacts?fields=_all&count=N&offsetToken=T``
  → ``{"results": [...], "nextPageOffsetToken": "…"|null}`` (extend-dotnet-sdk
  ``Models/V3/Contacts.cs``, ``Contact.cs``): users, shared contacts and rooms; no roles; without
  ``fields=_all`` only ``id``, ``type`` and ``displayName`` come back;
- ``GET|PUT|DELETE /univerge/api/messaging/v1/presence/accounts/_me/users/{id}[?resource=R]``
  (PUT ``{"presence": v}`` → 204, unknown value → 400; DELETE → 204, 404 without such resource;
  a resource that is not a GUID → 400);
- subscriptions: ``POST …/subscriptions/accounts/_me/users/_all`` ``{"events", "ttl"}``,
  ``POST …/subscriptions/{id}/renew``, ``DELETE …/subscriptions/{id}``.

Every route checks the token's scope (403 naming the missing one): the directory needs
``api.service.address-book``, everything else ``api.service.messaging``. Error bodies are
``{"error", "message"}``. Every change of a user's aggregate (from these routes or from the control
API, via ``world.events`` ``connect.presence``) is published as ``OnPresenceEvent``
``{<user id field>, "presenceState", "whenRaised"}`` through the SignalR hub to each live
subscription. Missing or expired tokens get 401. Presence and directory requests pass the fault
injector. The Connect unknowns are fault keys (``world.Faults``): ``feed_user_field`` (the
event's user-id field, any name; ``a.b`` nests it), ``feed_event_id`` (each event also carries an
``id`` of its own), ``feed_event_scope`` (``user``: the aggregate; ``session``: the state of the
session that changed, named by ``resource``), ``connect_write_delay_s`` (a PUT shows only after
that delay), ``connect_aggregation`` (``rank`` | ``last_writer``), ``connect_lenient_values``
(unknown values accepted and shown as given), ``connect_throttle_per_min`` (429 + ``Retry-After``
past that many requests per minute per client), ``connect_subscription_max_ttl_s`` (a longer
``ttl`` → ``400 {"message"}``), ``connect_fields_param`` (``reject``: any ``fields`` → ``400
{"message": "The given value is not supported."}``, full contacts without it, as
Quraize/debrief-dashboards reports) and ``connect_contact_types`` (the ``type`` of people; empty:
none); ``hub_affinity_cookie`` is served by the hub.

The routes are built per resource: :func:`token_routes`, :func:`directory_routes`,
:func:`presence_routes`, :func:`subscription_routes`; :func:`connect_routes` joins them.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import math
import random
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
    from presencectl.sandbox.people import Person
    from presencectl.sandbox.world import Claims, World

log = logging.getLogger(__name__)

LOGIN = "/univerge/login"
API = "/univerge/api"
HUB_PATH = "/univerge/hub/presence"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
DEFAULT_RESOURCE = "default"
DEFAULT_TTL = 30 * 60.0
MAX_TTL = 24 * 3600.0
MESSAGING = "api.service.messaging"
ADDRESS_BOOK = "api.service.address-book"
SERVICE_SCOPES = (MESSAGING, ADDRESS_BOOK)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Contacts that are not users: the account's shared contacts and rooms (Contact.type; the exact
# type names are not documented).
OTHER_CONTACTS = (
    ("sharedContact", "Front Desk", "front-desk"),
    ("sharedContact", "Support Line", "support-line"),
    ("room", "Board Room", "board-room"),
)
_TTL = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})(?:\.\d+)?$")


def parse_ttl(text: Any) -> float | None:
    """A .NET TimeSpan ("00:30:00", "1.00:00:00") in seconds, or None."""
    if not isinstance(text, str):
        return None
    match = _TTL.match(text.strip())
    if not match:
        return None
    days = int(match.group("d") or 0)
    return (
        days * 86400
        + int(match.group("h")) * 3600
        + int(match.group("m")) * 60
        + int(match.group("s"))
    )


class ConnectError(Exception):
    """An error answer: ``{"error", "message"}``; ``code=""``: the vendor's ``{"message"}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = (
            {"error": self.code, "message": self.message}
            if self.code
            else {"message": self.message}
        )
        return JSONResponse(body, status_code=self.status, headers=self.headers)


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
        faults = self.world.faults
        for sub in self.live():
            self.events_published += 1
            wire_payload = event_payload(
                payload,
                faults.feed_user_field,
                scope=faults.feed_event_scope,
                event_id=faults.feed_event_id,
            )
            await self.hub.publish("OnPresenceEvent", [wire_payload], subscription_id=sub.id)


def event_payload(
    change: dict[str, Any], user_field: str, *, scope: str = "user", event_id: bool = False
) -> dict[str, Any]:
    """The hub's event for a change: the user id under ``user_field`` (``a.b``: nested); with
    ``scope`` ``session`` the state of the session that changed (and its ``resource``) instead
    of the user's aggregate; with ``event_id`` an ``id`` of the event's own."""
    payload: dict[str, Any] = {"whenRaised": change.get("whenRaised")}
    if scope == "session":
        payload["presenceState"] = change.get("resourceState")
        payload["resource"] = change.get("resource")
    else:
        payload["presenceState"] = change.get("presenceState")
    if event_id:
        payload["id"] = str(uuid.uuid4())
    head, dot, tail = user_field.partition(".")
    if dot:
        nested = payload.get(head)
        payload[head] = {**(nested if isinstance(nested, dict) else {}), tail: change.get("userId")}
    else:
        payload[head] = change.get("userId")
    return payload


def _feed(world: World, hub: Any) -> ConnectFeed:
    feed = world.extra.get("connect_feed")
    if feed is None or feed.hub is not hub:
        feed = world.extra["connect_feed"] = ConnectFeed(world, hub)
    return feed


def _claims(world: World, request: Request, scope: str) -> Claims:
    claims = world.verify_bearer(request.headers.get("authorization"))
    if claims is None or claims.kind != "connect":
        raise ConnectError(
            401,
            "invalid_token",
            "The access token is missing, invalid or expired.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if scope not in claims.scp:
        raise ConnectError(
            403,
            "insufficient_scope",
            f"The access token lacks the scope '{scope}'.",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )
    _throttle(world, claims.appid)
    return claims


def _throttle(world: World, client_id: str) -> None:
    """``connect_throttle_per_min``: past that many requests in the last minute → 429."""
    limit = world.faults.connect_throttle_per_min
    if limit <= 0:
        return
    now = world.clock.now()
    window = world.throttle_state.setdefault(("connect", client_id), collections.deque())
    blocked_until = world.throttle_state.get(("connect-retry-after", client_id), 0.0)
    if now < blocked_until:
        world.stats.in_retry_after_window += 1
    while window and window[0] <= now - 60.0:
        window.popleft()
    if len(window) >= limit:
        wait = max(1, math.ceil(window[0] + 60.0 - now))
        world.throttle_state[("connect-retry-after", client_id)] = now + wait
        world.stats.throttled += 1
        raise ConnectError(
            429,
            "too_many_requests",
            f"Rate limit of {limit} requests per minute exceeded.",
            headers={"Retry-After": str(wait)},
        )
    window.append(now)


async def _guard(world: World, request: Request, scope: str = MESSAGING) -> Claims:
    try:
        await inject_faults(world, request)
    except GraphError as exc:
        raise ConnectError(exc.status, "server_error", exc.message, exc.headers) from exc
    return _claims(world, request, scope)


def other_contacts(world: World) -> list[dict[str, Any]]:
    """The account's shared contacts and rooms (deterministic for the world's seed)."""
    rng = random.Random(f"connect-others-{world.seed}")
    out: list[dict[str, Any]] = []
    for kind, name, local in OTHER_CONTACTS:
        contact_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        room = kind == "room"
        out.append(
            {
                "id": contact_id,
                "type": kind,
                "displayName": name,
                "email": f"{local}@{world.domain}",
                "phoneNumbers": [{"type": "work", "number": f"+1555010{len(out)}"}],
                "pbx": {"enabled": room, "extension": "1999" if room else None},
                "messaging": {"jid": None, "enabled": False},
            }
        )
    return out


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
    return [
        *token_routes(world),
        *directory_routes(world),
        *presence_routes(world),
        *subscription_routes(world, hub, feed),
    ]


def token_routes(world: World) -> list[BaseRoute]:
    """``POST {LOGIN}/user/connect/token``: client credentials, one api.service.* scope."""

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
        requested = str(form.get("scope") or "").split()
        refusal = None
        if len(requested) != 1:
            refusal = "Exactly one scope must be requested."
        elif requested[0].lower().startswith("api.user."):
            refusal = (
                f"The scope '{requested[0]}' needs a user sign-in; client credentials take "
                "api.service.* scopes."
            )
        elif requested[0] not in SERVICE_SCOPES:
            refusal = f"The scope '{requested[0]}' is not allowed for this client."
        if refusal:
            return JSONResponse(
                {"error": "invalid_scope", "error_description": refusal}, status_code=400
            )
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

    return [Route(f"{LOGIN}/user/connect/token", token, methods=["POST"], name="connect.token")]


def _user_contact(world: World, person: Person) -> dict[str, Any]:
    """A user's contact with the ``type`` of ``connect_contact_types`` (empty: no type)."""
    contact = person.connect_contact()
    kind = world.faults.connect_contact_types
    if kind:
        contact["type"] = kind
    else:
        contact.pop("type", None)
    return contact


def directory_routes(world: World) -> list[BaseRoute]:
    """``GET {API}/address-book/v3/accounts/_me/contacts``: every contact, page by page."""

    async def contacts(request: Request) -> Response:
        try:
            await _guard(world, request, ADDRESS_BOOK)
            params = request.query_params
            fields_param = params.get("fields")
            rejects_fields = world.faults.connect_fields_param == "reject"
            if fields_param is not None and rejects_fields:
                raise ConnectError(400, "", "The given value is not supported.")
            offset = 0
            raw = params.get("offsetToken")
            if raw:
                decoded = _decode_offset(raw)
                if decoded is None:
                    raise ConnectError(400, "invalid_request", "Invalid offsetToken.")
                offset = decoded
            try:
                count = int(params.get("count", DEFAULT_PAGE_SIZE))
            except ValueError:
                count = -1
            if not 1 <= count <= MAX_PAGE_SIZE:
                raise ConnectError(
                    400, "invalid_request", f"count must be between 1 and {MAX_PAGE_SIZE}."
                )
            # Without `fields`: the SDK's model (only id, type, displayName), unless the service
            # takes no `fields` at all, which then answers every field (Quraize's client).
            every = rejects_fields or "_all" in (fields_param or "").split(",")
            users = [p for p in world.people if p.connect_id is not None]
            total = len(users) + len(OTHER_CONTACTS)
            page = [_user_contact(world, p) for p in users[offset : offset + count]]
            if offset + count > len(users):
                start = max(0, offset - len(users))
                page += other_contacts(world)[start : start + count - len(page)]
            if not every:
                page = [{k: c[k] for k in ("id", "type", "displayName") if k in c} for c in page]
            following = offset + count
            return JSONResponse(
                {
                    "results": page,
                    "nextPageOffsetToken": _encode_offset(following) if following < total else None,
                }
            )
        except ConnectError as exc:
            return exc.response()
        except DroppedConnection:
            return Response(status_code=500)

    return [
        Route(
            f"{API}/address-book/v3/accounts/_me/contacts",
            contacts,
            methods=["GET"],
            name="connect.contacts",
        ),
    ]


def presence_routes(world: World) -> list[BaseRoute]:
    """``GET|PUT|DELETE {API}/messaging/v1/presence/accounts/_me/users/{id}[?resource=R]``."""
    pending: dict[tuple[str, str], int] = {}  # (user id, resource) → writes not yet visible
    tasks: set[asyncio.Task[None]] = set()

    def state_of(person: Person) -> Any:
        return person.connect.aggregate_with(world.faults.connect_aggregation)

    async def apply_write(person: Person, resource: str, value: str | None) -> None:
        state = state_of(person)
        previous = state.resources.get(resource)
        if value is None:
            changed = bool(state.clear(resource))
        else:
            changed = state.set(resource, value, world.clock.now(), lenient=True)
        # session-scoped events follow each session; user-scoped ones the aggregate only
        session_changed = (previous.status if previous else None) != value
        if changed or (world.faults.feed_event_scope == "session" and session_changed):
            await publish_connect_change(world, person, resource)

    async def apply_later(person: Person, resource: str, value: str | None, delay: float) -> None:
        key = (str(person.connect_id), resource)
        try:
            await asyncio.sleep(delay)
            await apply_write(person, resource, value)
        finally:
            pending[key] -= 1
            if not pending[key]:
                del pending[key]

    def schedule(person: Person, resource: str, value: str | None, delay: float) -> None:
        key = (str(person.connect_id), resource)
        pending[key] = pending.get(key, 0) + 1
        task = asyncio.ensure_future(apply_later(person, resource, value, delay))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def presence(request: Request) -> Response:
        try:
            await _guard(world, request)
            person = _connect_person(world, request.path_params["user_id"])
            resource = request.query_params.get("resource")
            if resource is not None and not _GUID.match(resource):
                raise ConnectError(
                    400, "invalid_request", f"The resource '{resource}' is not a GUID."
                )
            state = state_of(person)
            if request.method == "GET":
                if resource:
                    found = state.resources.get(resource)
                    if found is None:
                        raise ConnectError(404, "not_found", f"No resource '{resource}'.")
                    return JSONResponse({"presence": found.status})
                return JSONResponse({"presence": state.status})
            name = resource or DEFAULT_RESOURCE
            delay = world.faults.connect_write_delay_s
            if request.method == "PUT":
                try:
                    body = json.loads(await request.body() or b"null")
                except ValueError as exc:
                    raise ConnectError(400, "invalid_request", "The body is not JSON.") from exc
                value = body.get("presence") if isinstance(body, dict) else None
                known = isinstance(value, str) and value in CONNECT_STATUSES
                lenient = world.faults.connect_lenient_values and isinstance(value, str) and value
                if not known and not lenient:
                    raise ConnectError(
                        400,
                        "invalid_presence",
                        f"Unknown presence value {value!r}.",
                    )
                world.stats.wrote("connect", person.connect_id)
                if delay > 0:
                    schedule(person, name, str(value), delay)
                else:
                    await apply_write(person, name, str(value))
                return Response(status_code=204)
            # DELETE: behind a write still on its way, the delete waits its turn
            if (str(person.connect_id), name) in pending:
                world.stats.wrote("connect", person.connect_id)
                schedule(person, name, None, delay)
                return Response(status_code=204)
            if name not in state.resources:
                raise ConnectError(404, "not_found", f"No presence resource '{name}'.")
            world.stats.wrote("connect", person.connect_id)
            await apply_write(person, name, None)
            return Response(status_code=204)
        except ConnectError as exc:
            return exc.response()
        except DroppedConnection:
            return Response(status_code=500)

    path = f"{API}/messaging/v1/presence/accounts/_me/users/{{user_id}}"
    return [
        Route(path, presence, methods=["GET"], name="connect.presence.get"),
        Route(path, presence, methods=["PUT"], name="connect.presence.put"),
        Route(path, presence, methods=["DELETE"], name="connect.presence.delete"),
    ]


def subscription_routes(world: World, hub: Any, feed: ConnectFeed) -> list[BaseRoute]:
    """Change-feed subscriptions: create, renew, delete (their events go out through ``feed``)."""

    def hub_base() -> str:
        # The hub is named by host name, not an IP literal: cookies (the hub's sticky-session
        # cookie) are not kept for IP hosts by cookie jars that follow RFC 6265 (aiohttp's).
        return world.base_url.replace("://127.0.0.1:", "://localhost:", 1)

    def subscription_json(sub: ConnectSubscription) -> dict[str, Any]:
        return {
            "id": sub.id,
            "whenExpired": iso(sub.expires_at),
            "events": ["*"],
            "deliveryMethod": {
                "transport": "signalR",
                "uri": f"{hub_base()}{HUB_PATH}?subscriptionId={sub.id}",
            },
        }

    def ttl_of(body: Any) -> float:
        raw = body.get("ttl") if isinstance(body, dict) else None
        if raw is None:
            return DEFAULT_TTL
        ttl = parse_ttl(raw)
        if ttl is None or ttl <= 0 or ttl > MAX_TTL:
            raise ConnectError(400, "invalid_request", f"Invalid ttl {raw!r}.")
        cap = world.faults.connect_subscription_max_ttl_s
        if cap > 0 and ttl > cap:
            raise ConnectError(400, "", f"The ttl must not exceed {int(cap)} seconds.")
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
            claims = _claims(world, request, MESSAGING)
            body = await read_json(request)
            events = body.get("events", ["*"]) if isinstance(body, dict) else None
            if not isinstance(events, list) or not events:
                raise ConnectError(400, "invalid_request", "'events' must be a non-empty list.")
            ttl = ttl_of(body)
            sub = ConnectSubscription(str(uuid.uuid4()), claims.appid, world.clock.now() + ttl, ttl)
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
            claims = _claims(world, request, MESSAGING)
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
            claims = _claims(world, request, MESSAGING)
            sub = owned(request, claims)
            del feed.subscriptions[sub.id]
            if hub is not None:
                await hub.disconnect(sub.id, allow_reconnect=False)
            return Response(status_code=204)
        except ConnectError as exc:
            return exc.response()

    subs = f"{API}/messaging/v1/subscriptions"
    return [
        Route(
            f"{subs}/accounts/_me/users/_all",
            subscribe,
            methods=["POST"],
            name="connect.subscriptions.create",
        ),
        Route(
            f"{subs}/{{sub_id}}/renew", renew, methods=["POST"], name="connect.subscriptions.renew"
        ),
        Route(
            f"{subs}/{{sub_id}}",
            unsubscribe,
            methods=["DELETE"],
            name="connect.subscriptions.delete",
        ),
    ]
