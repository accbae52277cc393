"""The simulated people of the demo: genuine presence changes on both sides, deterministic by seed.

Owns what simulated people do and when, as data (``morning``, ``schedule``), and the one way it
reaches the sandbox: its control API (``apply``, ``run``), exactly as a person's own Teams client
or Connect app would change their presence — never the sync's own sessions.

On Connect a person starts and ends calls, meetings, screen shares, Do not disturb and
contact-center agent sessions (signed in as an agent, then a queue call); on Teams calls, video
meetings, presenting, Do not disturb and Be right back (the last two as the user's preferred
presence, as Teams sets them). Each person does one thing at a time and comes back to Available
afterwards; the sides alternate, so both directions of the sync get work. The same seed gives the
same schedule (offsets, people, activities); only the wall-clock moments differ.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TEAMS = "teams"
CONNECT = "connect"

TEAMS_PRESENCE = "/_sandbox/teams/presence"
TEAMS_PREFERRED = "/_sandbox/teams/preferred"
CONNECT_PRESENCE = "/_sandbox/connect/presence"


@dataclass(frozen=True)
class PresenceChange:
    """One thing a person does in their own Teams client or Connect app."""

    side: str  # teams | connect
    user: str  # email
    what: str  # "starts a call"
    value: str  # what the side shows for it: "Busy/InACall", "onphone", "preferred: clear"
    path: str  # control API endpoint
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScheduledChange:
    """A change and when it happens, in seconds after the simulation starts."""

    offset: float
    change: PresenceChange


# One step of an activity: (what the person does, side-specific value).
_Step = tuple[str, str]


@dataclass(frozen=True)
class Activity:
    side: str
    name: str
    phases: tuple[_Step, ...]  # the first starts it; more phases follow within its span
    end: _Step


_AVAILABLE_TEAMS = "Available/Available"
_CLEAR_PREFERRED = "preferred:clear"

CONNECT_ACTIVITIES: tuple[Activity, ...] = (
    Activity(CONNECT, "call", (("starts a call", "onphone"),), ("hangs up", "available")),
    Activity(
        CONNECT, "meeting", (("joins a meeting", "meeting"),), ("leaves the meeting", "available")
    ),
    Activity(
        CONNECT,
        "screen share",
        (("shares the screen", "screen_sharing"),),
        ("stops sharing the screen", "available"),
    ),
    Activity(
        CONNECT,
        "do not disturb",
        (("turns on Do not disturb", "dnd"),),
        ("turns off Do not disturb", "available"),
    ),
    Activity(
        CONNECT,
        "agent session",
        (
            ("signs in to the queue as an agent", "agent_available"),
            ("takes a queue call", "agent_onphone"),
        ),
        ("signs out of the queue", "available"),
    ),
)

TEAMS_ACTIVITIES: tuple[Activity, ...] = (
    Activity(TEAMS, "call", (("starts a call", "Busy/InACall"),), ("hangs up", _AVAILABLE_TEAMS)),
    Activity(
        TEAMS,
        "meeting",
        (("joins a video meeting", "Busy/InAConferenceCall"),),
        ("leaves the meeting", _AVAILABLE_TEAMS),
    ),
    Activity(
        TEAMS,
        "presenting",
        (("starts presenting", "DoNotDisturb/Presenting"),),
        ("stops presenting", _AVAILABLE_TEAMS),
    ),
    Activity(
        TEAMS,
        "do not disturb",
        (("sets Do not disturb", "preferred:DoNotDisturb/DoNotDisturb"),),
        ("resets the status", _CLEAR_PREFERRED),
    ),
    Activity(
        TEAMS,
        "be right back",
        (("sets Be right back", "preferred:BeRightBack/BeRightBack"),),
        ("is back (resets the status)", _CLEAR_PREFERRED),
    ),
)


def change(side: str, user: str, what: str, value: str) -> PresenceChange:
    """The control API call for ``value`` on ``side`` (see the module docstring for values)."""
    if side == CONNECT:
        return PresenceChange(
            side, user, what, value, CONNECT_PRESENCE, {"user": user, "status": value}
        )
    if value == _CLEAR_PREFERRED:
        return PresenceChange(
            side, user, what, "preferred: clear", TEAMS_PREFERRED, {"user": user, "clear": True}
        )
    if value.startswith("preferred:"):
        availability, activity = value.removeprefix("preferred:").split("/")
        return PresenceChange(
            side,
            user,
            what,
            f"preferred {availability}/{activity}",
            TEAMS_PREFERRED,
            {"user": user, "availability": availability, "activity": activity},
        )
    availability, activity = value.split("/")
    return PresenceChange(
        side,
        user,
        what,
        value,
        TEAMS_PRESENCE,
        {"user": user, "availability": availability, "activity": activity},
    )


def morning(people: Sequence[str]) -> list[PresenceChange]:
    """Everybody signs in: Teams client Available, Connect app available, no preferred status."""
    out: list[PresenceChange] = []
    for user in people:
        out.append(change(TEAMS, user, "signs in to Teams", _AVAILABLE_TEAMS))
        out.append(change(TEAMS, user, "has no preferred status", _CLEAR_PREFERRED))
        out.append(change(CONNECT, user, "opens the Connect app", "available"))
    return out


def schedule(
    people: Sequence[str],
    *,
    span: float,
    seed: int = 1,
    change_every: float = 1.0,
    min_length: float = 0.0,
    rest: float = 1.0,
) -> list[ScheduledChange]:
    """The changes of a simulation lasting ``span`` seconds, by offset (pure, deterministic).

    Every ``change_every`` seconds an idle person starts an activity, on Teams and on Connect in
    turn; it lasts a random share of the span (at least ``min_length`` where the span allows;
    phases spread over it) and always ends — back to Available — by ``span``, so what happens
    can be carried before the simulation stops. A person rests ``rest`` seconds between two
    activities.
    """
    if span <= 0 or not people:
        return []
    rng = random.Random(seed)
    longest = min(30.0, max(1.0, span * 0.5))
    shortest = min(longest, max(longest / 3, min_length))
    busy_until: dict[str, float] = {}
    out: list[ScheduledChange] = []
    sides = (CONNECT, TEAMS)
    turn = 0
    t = min(change_every, span / 4)
    while t < span - 0.2:
        idle = [p for p in people if busy_until.get(p, -1.0) <= t]
        if idle:
            user = rng.choice(idle)
            side = sides[turn % 2]
            turn += 1
            activity = rng.choice(CONNECT_ACTIVITIES if side == CONNECT else TEAMS_ACTIVITIES)
            end = min(t + rng.uniform(shortest, longest), span - 0.1)
            step = (end - t) / len(activity.phases)
            for i, (what, value) in enumerate(activity.phases):
                out.append(ScheduledChange(round(t + i * step, 3), change(side, user, what, value)))
            what, value = activity.end
            out.append(ScheduledChange(round(end, 3), change(side, user, what, value)))
            busy_until[user] = end + rest
        t += change_every
    out.sort(key=lambda s: s.offset)
    return out


async def apply(client: Any, presence_change: PresenceChange) -> None:
    """Make the change through the sandbox control API (``client``: an httpx.AsyncClient)."""
    response = await client.post(presence_change.path, json=presence_change.body)
    if response.status_code >= 400:
        from presencectl.errors import ApiError

        raise ApiError(
            f"sandbox refused {presence_change.user} {presence_change.what}: {response.text}",
            status=response.status_code,
            code="sandbox_error",
        )


async def run(
    client: Any,
    plan: Sequence[ScheduledChange],
    *,
    on_change: Callable[[ScheduledChange, float], None],
    stop: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> int:
    """Apply ``plan`` in time; ``on_change(item, sent_at)`` right before each change is sent
    (``sent_at`` from ``clock``). Ends early when ``stop`` is set. Returns the changes made."""
    started = clock()
    done = 0
    for item in plan:
        if stop.is_set():
            break
        wait = started + item.offset - clock()
        if wait > 0:
            sleeper = asyncio.ensure_future(sleep(wait))
            stopper = asyncio.ensure_future(stop.wait())
            _, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if stop.is_set():
                break
        on_change(item, clock())
        await apply(client, item.change)
        done += 1
    return done


__all__ = [
    "CONNECT",
    "CONNECT_ACTIVITIES",
    "TEAMS",
    "TEAMS_ACTIVITIES",
    "Activity",
    "PresenceChange",
    "ScheduledChange",
    "apply",
    "change",
    "morning",
    "run",
    "schedule",
]
