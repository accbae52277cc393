"""Data the planner, the state store and the engine share: pairs, observations, sessions, actions.

Owns only plain, immutable dataclasses and enums (no I/O). ``sync/plan.py`` turns
(``PairState`` + new ``Observation``s) into ``Action``s and new ``PairState``s; ``sync/state.py``
persists ``PairState`` (one row per pair key) and the audit log; ``sync/cycle.py`` executes the
actions and folds the successful ones back with ``plan.apply_action``.

Values: a Teams value is a ``TeamsStatus`` (availability/activity + out-of-office flag); a Connect
value is its wire string (``"agent_onphone"``). ``encode_value``/``decode_value`` turn either into
the text the state store keeps (``"Busy/InACall"``, ``"Busy/InACall+oof"``, ``"onphone"``).

Time: every datetime is timezone-aware UTC, given by the caller (the planner never reads a clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeAlias

from presencectl.mapping import TeamsStatus

__all__ = [
    "Action",
    "ActionKind",
    "ActionPurpose",
    "Direction",
    "Observation",
    "PairState",
    "PendingWrite",
    "SessionRecord",
    "Side",
    "UserPair",
    "Value",
    "decode_value",
    "encode_value",
    "pair_key",
]

Value: TypeAlias = TeamsStatus | str
"""A presence on one side: ``TeamsStatus`` on Teams, a Connect wire string on Connect."""


class Side(StrEnum):
    TEAMS = "teams"
    CONNECT = "connect"

    @property
    def other(self) -> Side:
        return Side.CONNECT if self is Side.TEAMS else Side.TEAMS

    @property
    def label(self) -> str:
        return "Teams" if self is Side.TEAMS else "Connect"


class Direction(StrEnum):
    """Which sides the sync writes. The name says where presence flows."""

    BOTH = "both"
    CONNECT_TO_TEAMS = "connect-to-teams"  # writes Teams only
    TEAMS_TO_CONNECT = "teams-to-connect"  # writes Connect only

    def writes(self, side: Side) -> bool:
        """True if this direction may write our session on ``side``."""
        if self is Direction.BOTH:
            return True
        return (side is Side.TEAMS) == (self is Direction.CONNECT_TO_TEAMS)


class ActionKind(StrEnum):
    SET = "set"  # write (or rewrite) our session on that side
    CLEAR = "clear"  # remove our session on that side


class ActionPurpose(StrEnum):
    """Why an action exists; lets reports (and tests) tell mirroring from upkeep."""

    MIRROR = "mirror"  # the other side's genuine state changed what we assert here
    CLEAR = "clear"  # unaltered / no genuine state to mirror: drop our session
    RENEW = "renew"  # same value again: expiry is near, or Teams would fade an Available session
    REASSERT = "reassert"  # side shows less than our session forces: it was dropped


def pair_key(azure_id: str, connect_id: str) -> str:
    """Stable key of a matched pair (ids, not email: an email change must not orphan sessions)."""
    return f"{azure_id}:{connect_id}"


@dataclass(frozen=True, slots=True)
class UserPair:
    """One person matched on both sides (sync/match.py)."""

    key: str  # pair_key(azure_id, connect_id)
    azure_id: str  # Entra object id (Graph user id, also the presence id)
    connect_id: str  # Connect contact/user id
    email: str  # the email that matched, lower-cased
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    """What one side showed at one moment (an aggregate: the user's own state and our session)."""

    side: Side
    value: Value
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Our live session on one side (Teams: sessionId = client id; Connect: resource=presencectl).


    ``written_at`` is the last time we (re)wrote it; ``expires_at`` is when the service drops it
    (Teams: written_at + expirationDuration; Connect: None, no expiry). ``masked_by`` is the
    observed value that showed *less* than this session the last time we re-asserted it, so a
    session masked by something stronger (a Teams preferred presence) is re-asserted once, not
    every cycle; None once the session is seen in force.
    """

    side: Side
    value: Value
    written_at: datetime
    expires_at: datetime | None = None
    masked_by: Value | None = None


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A write of ours whose effect has not been observed yet (the echo we expect).

    ``value`` is what we wrote (None: a clear); ``previous`` is the value our session had before,
    if the side was showing it when we wrote (None otherwise): the side may still show it until
    the write lands. Consumed by the first
    later observation that shows the write landed; dropped after the planner's echo window.
    """

    side: Side
    value: Value | None
    previous: Value | None
    written_at: datetime


@dataclass(frozen=True, slots=True)
class PairState:
    """Everything the planner remembers about one pair between cycles (persisted by sync/state.py).

    ``genuine_*`` is the user's own state on that side as far as we can tell: None means unknown
    (not observed yet, or hidden under our own session) and mirrors as "unaltered";
    ``genuine_*_at`` is when it last changed (the side that changed last leads when both sides'
    sessions would hide each other).
    """

    key: str
    last_teams: Observation | None = None
    last_connect: Observation | None = None
    genuine_teams: TeamsStatus | None = None
    genuine_connect: str | None = None
    genuine_teams_at: datetime | None = None
    genuine_connect_at: datetime | None = None
    our_teams_session: SessionRecord | None = None
    our_connect_session: SessionRecord | None = None
    pending_teams: tuple[PendingWrite, ...] = ()
    pending_connect: tuple[PendingWrite, ...] = ()
    # Set by the planner to (mapping fingerprint, direction) when it decided that nothing was to
    # be done for this very state; any other way of making a PairState leaves it None. A hint
    # for the planner's steady-state fast path (persisted, so a one-shot run benefits too); not
    # part of equality.
    settled: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    def last(self, side: Side) -> Observation | None:
        return self.last_teams if side is Side.TEAMS else self.last_connect

    def genuine(self, side: Side) -> Value | None:
        return self.genuine_teams if side is Side.TEAMS else self.genuine_connect

    def session(self, side: Side) -> SessionRecord | None:
        return self.our_teams_session if side is Side.TEAMS else self.our_connect_session

    def pending(self, side: Side) -> tuple[PendingWrite, ...]:
        return self.pending_teams if side is Side.TEAMS else self.pending_connect

    def sessions(self) -> list[SessionRecord]:
        """Every session we hold for this pair (what `disable` must clear)."""
        return [s for s in (self.our_teams_session, self.our_connect_session) if s is not None]

    def mark_settled(self, context: tuple[str, str]) -> PairState:
        """Note, on this very object, that the planner found nothing to do for it under
        ``context``. ``settled`` is a cache annotation outside equality, so setting it in place
        changes no value; copying the state for it (``replace``) doubled the planner's CPU."""
        object.__setattr__(self, "settled", context)
        return self

    def with_side(self, side: Side, **changes: Any) -> PairState:
        """Replace per-side fields by generic name: last, genuine, genuine_at, session, pending."""
        names = _SIDE_FIELDS[side]
        return replace(self, settled=None, **{names[k]: v for k, v in changes.items()})


_SIDE_FIELDS: dict[Side, dict[str, str]] = {
    Side.TEAMS: {
        "last": "last_teams",
        "genuine": "genuine_teams",
        "genuine_at": "genuine_teams_at",
        "session": "our_teams_session",
        "pending": "pending_teams",
    },
    Side.CONNECT: {
        "last": "last_connect",
        "genuine": "genuine_connect",
        "genuine_at": "genuine_connect_at",
        "session": "our_connect_session",
        "pending": "pending_connect",
    },
}


@dataclass(frozen=True, slots=True)
class Action:
    """One write the engine should perform on one side for one pair.

    ``kind`` SET writes our session with ``value`` (Teams: ``expiration`` is the
    expirationDuration to send); CLEAR removes our session (``value`` None; a 404 counts as done).
    ``shown`` is what that side showed when planned (the "from" of `sync --dry-run`), ``reason``
    a human sentence ("Connect agent_onphone → Busy/InACall", "renew before expiry").
    """

    key: str
    side: Side
    kind: ActionKind
    value: Value | None
    reason: str
    purpose: ActionPurpose
    expiration: timedelta | None = None
    shown: Value | None = None

    def describe(self) -> dict[str, Any]:
        """Flat dict for output/audit: key, side, kind, from, to, reason, purpose, expiration_s."""
        return {
            "key": self.key,
            "side": self.side.value,
            "kind": self.kind.value,
            "from": encode_value(self.shown),
            "to": encode_value(self.value),
            "reason": self.reason,
            "purpose": self.purpose.value,
            "expiration_s": int(self.expiration.total_seconds()) if self.expiration else None,
        }


@dataclass(frozen=True, slots=True)
class PlanResult:
    """``actions`` to perform; ``new_states`` as they will be once all actions succeed;
    ``observed_states`` after the observations only (fold successful actions into these with
    ``plan.apply_action`` when some writes fail)."""

    actions: list[Action]
    new_states: dict[str, PairState]
    observed_states: dict[str, PairState] = field(default_factory=dict)


def encode_value(value: Value | None) -> str | None:
    """Teams → "Busy/InACall" (+ "+oof"), Connect → the wire value, None → None."""
    if value is None:
        return None
    if isinstance(value, TeamsStatus):
        return value.key + ("+oof" if value.out_of_office else "")
    return value


def decode_value(side: Side, text: str | None) -> Value | None:
    """Inverse of ``encode_value`` for a value known to belong to ``side``."""
    if text is None:
        return None
    if side is Side.TEAMS:
        oof = text.endswith("+oof")
        return TeamsStatus.parse(text[:-4] if oof else text, out_of_office=oof)
    return text
