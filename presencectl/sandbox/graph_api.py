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
- ``POST/GET/PATCH/DELETE /v1.0/subscriptions`` for ``/communications/presences?$filter=id in
  (…)`` (delegated tokens only, <= 650 ids, <= 60 minutes, the validationToken handshake) and the
  background delivery of change notifications.

Every presence request passes `throttle.inject_faults` and `throttle.check_presence_throttle`.
It also exposes ``control_routes`` (the presence control API of presence_control.py) for app.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.batch_envelope import batch_answer, refuse_whole_batch
from presencectl.sandbox.errors import GraphError, bad_request, bearer_claims, require
from presencectl.sandbox.presence_control import control_routes
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
    from presencectl.sandbox.world import Claims, Person, World

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


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise bad_request("Empty Payload. JSON content expected.")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise bad_request("Unable to read JSON request payload. Please ensure Content-Type "
                          "header is set and payload is of valid JSON format.") from exc
    if not isinstance(data, dict):
        raise bad_request("Invalid request body: a JSON object is expected.")
    return data


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


def presence_endpoint(world: World, handler: Handler, *, throttled: bool = True) -> Callable[
    [Request], Awaitable[Response]
]:
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
            404, "Request_ResourceNotFound",
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
        data = await _json_object(request)
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
        data = await _json_object(request)
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
        world.stats.writes += 1
        if changed:
            await _announce_teams_change(world, person)
        return Response(status_code=200)

    async def clear_presence(request: Request, claims: Claims) -> Response:
        person = _writable_person(world, request, claims)
        data = await _json_object(request)
        session_id = data.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise bad_request("Required parameter 'sessionId' is missing.")
        result = person.teams.clear_session(session_id.lower(), world.clock.now())
        if result is None:
            raise GraphError(404, "NotFound", f"Presence session '{session_id}' was not found.")
        world.stats.writes += 1
        if result:
            await _announce_teams_change(world, person)
        return Response(status_code=200)

    async def set_preferred(request: Request, claims: Claims) -> Response:
        person = _writable_person(world, request, claims)
        data = await _json_object(request)
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
        world.stats.writes += 1
        if changed:
            await _announce_teams_change(world, person)
        return Response(status_code=200)

    async def clear_preferred(request: Request, claims: Claims) -> Response:
        person = _writable_person(world, request, claims)
        changed = person.teams.clear_preferred(world.clock.now())
        world.stats.writes += 1
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
            data = await _json_object(request)
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

_FILTER_IDS = re.compile(r"^id\s+in\s*\((?P<ids>.*)\)\s*$", re.IGNORECASE | re.DOTALL)
_SINGLE = re.compile(r"^/?communications/presences/(?P<id>[^/?]+)$", re.IGNORECASE)


def parse_presence_resource(resource: str) -> list[str] | None:
    """User ids of a presence subscription resource, or None if it is not one."""
    single = _SINGLE.match(resource.strip())
    if single:
        return [single.group("id").strip("'()")]
    path, _, query = resource.strip().partition("?")
    if path.strip("/").lower() != "communications/presences":
        return None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "$filter":
            match = _FILTER_IDS.match(value.strip())
            if not match:
                return None
            ids = [item.strip().strip("'\"") for item in match.group("ids").split(",")]
            return [i for i in ids if i]
    return None


@dataclass
class PresenceSubscription:
    """One Graph change-notification subscription on presences."""

    id: str
    resource: str
    user_ids: list[str]
    notification_url: str
    client_state: str | None
    expires_at: float
    application_id: str
    creator_id: str | None
    last_seq: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "@odata.context": f"{GRAPH_BASE}/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": "updated",
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": None,
            "expirationDateTime": _iso(self.expires_at),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationQueryOptions": None,
            "notificationUrlAppId": None,
        }


class PresenceNotifier:
    """Subscriptions of one world and the delivery of their change notifications.

    Delivery is driven by loop timers (every DELIVERY_POLL seconds while a subscription lives,
    and at once on a ``teams.presence`` event), not by a long-lived task, so stopping the server
    leaves nothing pending behind.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.subscriptions: dict[str, PresenceSubscription] = {}
        self.delivered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._posts: set[asyncio.Task[None]] = set()
        world.events.subscribe(self._on_event)

    def _on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "teams.presence" and self.subscriptions and self._loop is not None:
            self._loop.call_soon(self._deliver)

    def ensure_running(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._timer is None:
            self._timer = self._loop.call_later(DELIVERY_POLL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._deliver()
        if self.subscriptions and self._loop is not None and not self._loop.is_closed():
            self._timer = self._loop.call_later(DELIVERY_POLL, self._tick)

    def _deliver(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        for url, payload in self.collect():
            task = self._loop.create_task(self._post(url, payload))
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)

    async def _post(self, url: str, payload: dict[str, Any]) -> None:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
                await client.post(url, json=payload)
            self.delivered += len(payload["value"])
        except Exception as exc:  # best effort, like Graph
            log.info("presence notification to %s failed: %s", url, exc)

    def snapshot(self, sub: PresenceSubscription) -> None:
        now = self.world.clock.now()
        for user_id in sub.user_ids:
            person = self.world.person_by_azure_id(user_id)
            if person is not None:
                sub.last_seq[user_id] = person.teams.presence(now).sequence_number

    def collect(self) -> list[tuple[str, dict[str, Any]]]:
        """The notifications due now, one POST per subscription; drops expired subscriptions."""
        now = self.world.clock.now()
        due: list[tuple[str, dict[str, Any]]] = []
        for sub_id, sub in list(self.subscriptions.items()):
            if sub.expires_at <= now:
                del self.subscriptions[sub_id]
                continue
            values = []
            for user_id in sub.user_ids:
                person = self.world.person_by_azure_id(user_id)
                if person is None or person.azure_id is None:
                    continue
                presence = person.teams.presence(now)
                if sub.last_seq.get(user_id) == presence.sequence_number:
                    continue
                sub.last_seq[user_id] = presence.sequence_number
                resource = f"communications/presences('{person.azure_id}')"
                data = presence.graph_json(person.azure_id)
                data.pop("@odata.type", None)
                values.append(
                    {
                        "subscriptionId": sub.id,
                        "subscriptionExpirationDateTime": _iso(sub.expires_at),
                        "clientState": sub.client_state,
                        "changeType": "updated",
                        "resource": resource,
                        "tenantId": self.world.tenant_id,
                        "resourceData": {
                            "@odata.type": "#Microsoft.Graph.presence",
                            "@odata.id": resource,
                            **data,
                        },
                    }
                )
            if values:
                due.append((sub.notification_url, {"value": values}))
        return due


def _notifier(world: World) -> PresenceNotifier:
    notifier = world.extra.get("graph_presence_notifier")
    if notifier is None:
        notifier = world.extra["graph_presence_notifier"] = PresenceNotifier(world)
    return notifier


def _notification_url_ok(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.netloc:
        return True
    # Graph demands https; plain http is allowed to loopback so local receivers can test.
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


async def _validate_notification_url(url: str) -> bool:
    import httpx

    token = (
        "Validation: Testing client application reachability for subscription "
        f"Request-Id: {uuid.uuid4()}"
    )
    separator = "&" if "?" in url else "?"
    try:
        async with httpx.AsyncClient(timeout=VALIDATION_TIMEOUT) as client:
            answer = await client.post(
                f"{url}{separator}validationToken={quote(token)}",
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
    except Exception as exc:
        log.info("validation request to %s failed: %s", url, exc)
        return False
    content_type = answer.headers.get("content-type", "")
    return answer.status_code == 200 and "text/plain" in content_type and answer.text == token


def _subscription_handlers(world: World) -> dict[str, Callable[[Request], Awaitable[Response]]]:

    def claims_of(request: Request) -> Claims:
        return bearer_claims(world, request)

    def expiry(raw: Any) -> float:
        when = _parse_iso(raw)
        if when is None:
            raise bad_request("Invalid or missing 'expirationDateTime'.")
        now = world.clock.now()
        if when <= now:
            raise bad_request("Subscription expiration date must be in the future.")
        if when > now + MAX_SUBSCRIPTION_MINUTES * 60 + 1:
            raise bad_request(
                "Subscription expiration can only be 60 minutes in the future for presence."
            )
        return when

    def owned(request: Request, claims: Claims) -> PresenceSubscription:
        sub = _notifier(world).subscriptions.get(request.path_params["sub_id"])
        if sub is None or sub.expires_at <= world.clock.now() or sub.application_id != claims.appid:
            raise GraphError(
                404, "ResourceNotFound",
                f"The object was not found. Subscription '{request.path_params['sub_id']}'.",
            )
        return sub

    async def create(request: Request) -> Response:
        try:
            claims = claims_of(request)
            data = await _json_object(request)
            resource = data.get("resource")
            if not isinstance(resource, str) or not resource:
                raise bad_request("Invalid 'resource'.")
            user_ids = parse_presence_resource(resource)
            if user_ids is None:
                raise bad_request(f"Resource '{resource}' is not supported by this sandbox.")
            if claims.kind != "delegated":
                raise GraphError(
                    403, "ExtensionError",
                    "Operation: Create; Exception: [Status Code: Forbidden; Reason: Application "
                    "permissions are not supported for presence subscriptions.]",
                )
            require(claims, (), ("Presence.Read.All",), code="Forbidden")
            if not user_ids:
                raise bad_request("The subscription resource must name at least one id.")
            if len(user_ids) > MAX_PRESENCE_IDS:
                raise bad_request(
                    f"Too many ids in the subscription resource ({len(user_ids)}); "
                    f"at most {MAX_PRESENCE_IDS} are allowed."
                )
            if str(data.get("changeType", "")).lower() != "updated":
                raise bad_request("Presence subscriptions support changeType 'updated' only.")
            client_state = data.get("clientState")
            if client_state is not None and (
                not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE
            ):
                raise bad_request("clientState must be a string of at most 128 characters.")
            when = expiry(data.get("expirationDateTime"))
            url = data.get("notificationUrl")
            if not isinstance(url, str) or not _notification_url_ok(url):
                raise bad_request("The notificationUrl must be an https URL.")
            if not await _validate_notification_url(url):
                raise bad_request(
                    "Subscription validation request failed. Response must exactly match "
                    "validationToken query parameter."
                )
            sub = PresenceSubscription(
                id=str(uuid.uuid4()),
                resource=resource,
                user_ids=user_ids,
                notification_url=url,
                client_state=client_state,
                expires_at=when,
                application_id=claims.appid,
                creator_id=claims.oid,
            )
            notifier = _notifier(world)
            notifier.snapshot(sub)
            notifier.subscriptions[sub.id] = sub
            notifier.ensure_running()
            return JSONResponse(sub.to_json(), status_code=201)
        except GraphError as exc:
            return exc.to_response(request)

    async def get(request: Request) -> Response:
        try:
            return JSONResponse(owned(request, claims_of(request)).to_json())
        except GraphError as exc:
            return exc.to_response(request)

    async def patch(request: Request) -> Response:
        try:
            sub = owned(request, claims_of(request))
            data = await _json_object(request)
            sub.expires_at = expiry(data.get("expirationDateTime"))
            return JSONResponse(sub.to_json())
        except GraphError as exc:
            return exc.to_response(request)

    async def delete(request: Request) -> Response:
        try:
            sub = owned(request, claims_of(request))
            _notifier(world).subscriptions.pop(sub.id, None)
            return Response(status_code=204)
        except GraphError as exc:
            return exc.to_response(request)

    return {"create": create, "get": get, "patch": patch, "delete": delete}


# --------------------------------------------------------------------------- routes

def graph_presence_routes(world: World) -> list[BaseRoute]:
    """The Graph presence, $batch and subscription routes of the sandbox."""
    handlers = _presence_handlers(world)

    def wrap(name: str, throttled: bool = True) -> Callable[[Request], Awaitable[Response]]:
        return presence_endpoint(world, handlers[name], throttled=throttled)

    subs = _subscription_handlers(world)
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
        Route(f"{users}/setPresence", wrap("setPresence"), methods=["POST"],
              name="graph.setPresence"),
        Route(f"{users}/clearPresence", wrap("clearPresence"), methods=["POST"],
              name="graph.clearPresence"),
        Route(f"{users}/setUserPreferredPresence", wrap("setUserPreferredPresence"),
              methods=["POST"], name="graph.setUserPreferredPresence"),
        Route(f"{users}/clearUserPreferredPresence", wrap("clearUserPreferredPresence"),
              methods=["POST"], name="graph.clearUserPreferredPresence"),
        Route("/v1.0/$batch", _batch_endpoint(world), methods=["POST"], name="graph.batch"),
        Route("/v1.0/subscriptions", subs["create"], methods=["POST"],
              name="graph.subscriptions.create"),
        Route("/v1.0/subscriptions/{sub_id}", subs["get"], methods=["GET"],
              name="graph.subscriptions.get"),
        Route("/v1.0/subscriptions/{sub_id}", subs["patch"], methods=["PATCH"],
              name="graph.subscriptions.renew"),
        Route("/v1.0/subscriptions/{sub_id}", subs["delete"], methods=["DELETE"],
              name="graph.subscriptions.delete"),
    ]


__all__ = ["control_routes", "graph_presence_routes", "parse_presence_resource"]
