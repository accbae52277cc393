"""The presence part of the sandbox control API (docs/architecture.md, "The sandbox").

Owns ``control_routes(world)``:
- ``POST /_sandbox/teams/presence`` ``{"user", "availability", "activity", "out_of_office"}``:
  the user's own Teams client (Offline = signed out);
- ``POST /_sandbox/teams/preferred`` ``{"user", "availability", "activity"}`` or
  ``{"user", "clear": true}``: the user's preferred presence (one of the six Teams pairs);
- ``GET /_sandbox/teams/presence?user=E`` → ``{"availability", "activity", "out_of_office",
  "sessions": [{"session_id", "availability", "activity", "expires_at"}], "preferred": {…}|null}``
  (the aggregate Graph shows, plus ``client`` and ``sequence_number``);
- ``POST /_sandbox/connect/presence`` ``{"user", "status"}``: the user's own Connect app
  (resource ``app``); ``GET /_sandbox/connect/presence?user=E`` → ``{"status", "resources":
  [{"resource", "status", "updated_at"}]}``;
- ``GET /_sandbox/sessions?session_id=ID&resource=R`` → ``{"teams": [{"user", "session_id",
  "availability", "activity", "expires_at"}], "connect": [{"user", "resource", "status"}],
  "count"}``: every live Teams application session with that id (any id when it is left out)
  and every Connect resource of that name (none when it is left out), over everyone: the one
  count of "sessions of ours left" that the tests and the soak use.

Emails are matched case-insensitively; an unknown user is 404, an invalid value 400, both as
``{"error": {"code", "message"}}``. Every aggregate change is published on ``world.events``
(``teams.presence`` / ``connect.presence``) so change feeds follow the control API.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.connect_presence import APP_RESOURCE, CONNECT_STATUSES
from presencectl.sandbox.teams_presence import AVAILABILITIES, PREFERRED_PAIRS

if TYPE_CHECKING:
    from presencectl.sandbox.people import Person
    from presencectl.sandbox.world import World

_AVAILABILITY_BY_KEY = {a.lower(): a for a in AVAILABILITIES}
_PREFERRED_BY_KEY = {(a.lower(), b.lower()): (a, b) for a, b in PREFERRED_PAIRS}
# Canonical casing of the activities Graph documents, so "inacall" becomes "InACall".
_ACTIVITIES = (
    "Available",
    "Away",
    "BeRightBack",
    "Busy",
    "DoNotDisturb",
    "InACall",
    "InAConferenceCall",
    "Inactive",
    "InAMeeting",
    "Offline",
    "OffWork",
    "OutOfOffice",
    "PresenceUnknown",
    "Presenting",
    "UrgentInterruptionsOnly",
    "Focusing",
    "AvailableInactive",
)
_ACTIVITY_BY_KEY = {a.lower(): a for a in _ACTIVITIES}


class ControlError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": self.code, "message": self.message}}, status_code=self.status
        )


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC (``…Z``)."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat().replace("+00:00", "Z")


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise ControlError(400, "invalid_json", "the body is not JSON") from exc
    if not isinstance(data, dict):
        raise ControlError(400, "invalid_json", "the body must be a JSON object")
    return data


def _user(world: World, email: Any, side: str) -> Person:
    if not isinstance(email, str) or not email.strip():
        raise ControlError(400, "missing_user", "'user' (an email address) is required")
    email = email.strip()
    if side == "teams":
        found = world.azure_people_by_address(email)
        person = found[0] if found else None
    else:
        person = world.connect_person_by_email(email)
        if person is None:
            candidate = world.person_by_email(email)
            person = candidate if candidate is not None and candidate.connect_id else None
    if person is None:
        raise ControlError(404, "unknown_user", f"no {side} user with email {email}")
    return person


def teams_document(world: World, person: Person) -> dict[str, Any]:
    now = world.clock.now()
    state = person.teams
    presence = state.presence(now)
    preferred = state.active_preferred(now)
    return {
        "user": person.email,
        "id": person.azure_id,
        "availability": presence.availability,
        "activity": presence.activity,
        "out_of_office": presence.out_of_office,
        "sequence_number": presence.sequence_number,
        "client": {"availability": state.client[0], "activity": state.client[1]},
        "sessions": [
            {
                "session_id": session_id,
                "availability": session.effective(now)[0],
                "activity": session.effective(now)[1],
                "expires_at": iso(session.expires_at),
            }
            for session_id, session in state.live_sessions(now).items()
        ],
        "preferred": None
        if preferred is None
        else {
            "availability": preferred.availability,
            "activity": preferred.activity,
            "expires_at": None if preferred.expires_at is None else iso(preferred.expires_at),
        },
    }


def connect_document(world: World, person: Person) -> dict[str, Any]:
    state = person.connect.aggregate_with(world.faults.connect_aggregation)
    return {
        "user": person.connect_email or person.email,
        "id": person.connect_id,
        "status": state.status,
        "resources": [
            {"resource": name, "status": r.status, "updated_at": iso(r.updated_at)}
            for name, r in state.resources.items()
        ],
    }


async def publish_connect_change(world: World, person: Person, resource: str) -> None:
    """Tell listeners (the Connect change feed) that a user's Connect aggregate changed, by a
    write to ``resource`` (whose own state, ``offline`` once cleared, goes along for the fault
    key ``feed_event_scope: session``)."""
    state = person.connect.aggregate_with(world.faults.connect_aggregation)
    session = state.resources.get(resource)
    await world.events.publish(
        "connect.presence",
        {
            "userId": person.connect_id,
            "presenceState": state.status,
            "whenRaised": iso(world.clock.now()),
            "resource": resource,
            "resourceState": session.status if session is not None else "offline",
        },
    )


def control_routes(world: World) -> list[BaseRoute]:
    """The /_sandbox/teams/* and /_sandbox/connect/* control endpoints."""

    async def teams_presence(request: Request) -> Response:
        try:
            if request.method == "GET":
                person = _user(world, request.query_params.get("user"), "teams")
                return JSONResponse(teams_document(world, person))
            data = await _body(request)
            person = _user(world, data.get("user"), "teams")
            availability = _AVAILABILITY_BY_KEY.get(str(data.get("availability", "")).lower())
            if availability is None:
                raise ControlError(
                    400,
                    "invalid_availability",
                    f"'availability' must be one of {', '.join(AVAILABILITIES)}",
                )
            raw_activity = data.get("activity") or availability
            if not isinstance(raw_activity, str):
                raise ControlError(400, "invalid_activity", "'activity' must be a string")
            activity = _ACTIVITY_BY_KEY.get(raw_activity.lower(), raw_activity)
            ooo = data.get("out_of_office")
            if ooo is not None and not isinstance(ooo, bool):
                raise ControlError(400, "invalid_out_of_office", "'out_of_office' is true/false")
            if person.teams.set_client(availability, activity, ooo, world.clock.now()):
                await world.events.publish("teams.presence", {"userId": person.azure_id})
            return JSONResponse(teams_document(world, person))
        except ControlError as exc:
            return exc.response()

    async def teams_preferred(request: Request) -> Response:
        try:
            data = await _body(request)
            person = _user(world, data.get("user"), "teams")
            now = world.clock.now()
            if data.get("clear") is True:
                changed = person.teams.clear_preferred(now)
            else:
                key = (
                    str(data.get("availability", "")).lower(),
                    str(data.get("activity") or data.get("availability", "")).lower(),
                )
                pair = _PREFERRED_BY_KEY.get(key)
                if pair is None:
                    valid = ", ".join(f"{a}/{b}" for a, b in sorted(PREFERRED_PAIRS))
                    raise ControlError(
                        400, "invalid_presence", f"preferred presence must be one of {valid}"
                    )
                changed = person.teams.set_preferred(pair[0], pair[1], None, now)
            if changed:
                await world.events.publish("teams.presence", {"userId": person.azure_id})
            return JSONResponse(teams_document(world, person))
        except ControlError as exc:
            return exc.response()

    async def connect_presence(request: Request) -> Response:
        try:
            if request.method == "GET":
                person = _user(world, request.query_params.get("user"), "connect")
                return JSONResponse(connect_document(world, person))
            data = await _body(request)
            person = _user(world, data.get("user"), "connect")
            status = data.get("status")
            if not isinstance(status, str) or status.lower() not in CONNECT_STATUSES:
                raise ControlError(
                    400,
                    "invalid_status",
                    f"'status' must be one of {', '.join(sorted(CONNECT_STATUSES))}",
                )
            state = person.connect.aggregate_with(world.faults.connect_aggregation)
            previous = state.resources.get(APP_RESOURCE)
            changed = state.set(APP_RESOURCE, status.lower(), world.clock.now())
            by_session = world.faults.feed_event_scope == "session" and (
                previous is None or previous.status != status.lower()
            )
            if changed or by_session:
                await publish_connect_change(world, person, APP_RESOURCE)
            return JSONResponse(connect_document(world, person))
        except ControlError as exc:
            return exc.response()

    async def sessions(request: Request) -> Response:
        session_id = request.query_params.get("session_id")
        resource = request.query_params.get("resource")
        now = world.clock.now()
        teams: list[dict[str, Any]] = []
        connect: list[dict[str, Any]] = []
        for person in world.people:
            if person.azure_id:
                for sid, session in person.teams.live_sessions(now).items():
                    if session_id is None or sid == session_id:
                        availability, activity = session.effective(now)
                        teams.append({"user": person.email, "session_id": sid,
                                      "availability": availability, "activity": activity,
                                      "expires_at": iso(session.expires_at)})  # fmt: skip
            if person.connect_id and resource is not None:
                state = person.connect.aggregate_with(world.faults.connect_aggregation)
                held = state.resources.get(resource)
                if held is not None:
                    connect.append({"user": person.connect_email or person.email,
                                    "resource": resource, "status": held.status})  # fmt: skip
        count = len(teams) + len(connect)
        return JSONResponse({"teams": teams, "connect": connect, "count": count})

    return [
        Route("/_sandbox/sessions", sessions, methods=["GET"], name="sandbox_sessions"),
        Route(
            "/_sandbox/teams/presence",
            teams_presence,
            methods=["GET", "POST"],
            name="sandbox_teams_presence",
        ),
        Route(
            "/_sandbox/teams/preferred",
            teams_preferred,
            methods=["POST"],
            name="sandbox_teams_preferred",
        ),
        Route(
            "/_sandbox/connect/presence",
            connect_presence,
            methods=["GET", "POST"],
            name="sandbox_connect_presence",
        ),
    ]
