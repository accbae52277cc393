"""Teams presence of one simulated user, aggregated the way Microsoft Teams/Graph does it.

Owns `TeamsPresenceState`: the user's own Teams client (availability, activity, out of office),
application sessions by sessionId (setPresence / clearPresence) with expiry and the Available
fade, and the user's preferred presence. Aggregation (learn.microsoft.com presence-setpresence,
presence-setuserpreferredpresence; docs/verification.md):

- sessions that expired are gone; an Available app session not refreshed for 5 minutes reads
  Available/AvailableInactive, after 10 minutes Away/Away;
- no session at all (own client signed out and no app session) -> Offline/Offline, and the
  preferred presence does not apply then;
- otherwise the preferred presence wins, else the highest session by
  DoNotDisturb > Busy > Available > Away (ties: the most recently set);
- `sequence_number` grows on every change of the aggregate (detected lazily on read, so time-driven
  changes count as well).

Pure, clock-free (every method takes `now`, epoch seconds) and small (``__slots__``), so a world
of 50,000 users stays cheap. No I/O, no logging of presence values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FADE_INACTIVE_AFTER = 5 * 60.0
FADE_AWAY_AFTER = 10 * 60.0
MIN_EXPIRATION = 5 * 60.0
MAX_EXPIRATION = 4 * 60 * 60.0
DEFAULT_EXPIRATION = MIN_EXPIRATION

# setPresence accepts exactly these pairs (documented casing).
SET_PRESENCE_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Busy", "InAConferenceCall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    }
)
# setUserPreferredPresence accepts exactly these pairs.
PREFERRED_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("Available", "Available"),
        ("Busy", "Busy"),
        ("DoNotDisturb", "DoNotDisturb"),
        ("BeRightBack", "BeRightBack"),
        ("Away", "Away"),
        ("Offline", "OffWork"),
    }
)
# Availability values Graph documents for the presence resource.
AVAILABILITIES: tuple[str, ...] = (
    "Available",
    "AvailableIdle",
    "Away",
    "BeRightBack",
    "Busy",
    "BusyIdle",
    "DoNotDisturb",
    "Offline",
    "PresenceUnknown",
)
# Aggregation rank among sessions: higher wins. The documented order is
# DoNotDisturb > Busy > Available > Away; idle and BeRightBack values sit where Teams shows them.
_RANK: dict[str, int] = {
    "DoNotDisturb": 80,
    "Busy": 70,
    "BusyIdle": 60,
    "Available": 50,
    "AvailableIdle": 40,
    "BeRightBack": 30,
    "Away": 20,
    "Offline": 10,
    "PresenceUnknown": 0,
}
# Activities that out of office replaces (Teams shows OutOfOffice when nothing more specific holds).
_PLAIN_ACTIVITIES = frozenset(
    {"Available", "AvailableInactive", "Away", "BeRightBack", "Offline", "OffWork"}
)
# Preferred presence without expirationDuration (presence-setuserpreferredpresence).
PREFERRED_DEFAULT_EXPIRATION_BUSY = 24 * 3600.0
PREFERRED_DEFAULT_EXPIRATION_OTHER = 7 * 24 * 3600.0

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float | None:
    """An ISO 8601 duration ("PT5M", "PT1H30M", "P1D") in seconds, or None when malformed."""
    match = _DURATION.match(text.strip().upper()) if isinstance(text, str) else None
    if not match or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    if not parts:
        return None
    return (
        parts.get("d", 0.0) * 86400
        + parts.get("h", 0.0) * 3600
        + parts.get("m", 0.0) * 60
        + parts.get("s", 0.0)
    )


def rank(availability: str) -> int:
    """Aggregation rank of an availability (unknown values rank lowest)."""
    return _RANK.get(availability, -1)


@dataclass(frozen=True, slots=True)
class TeamsPresence:
    """The aggregated presence as Graph reports it."""

    availability: str
    activity: str
    out_of_office: bool
    sequence_number: int

    def graph_json(self, user_id: str) -> dict[str, object]:
        """The Graph `presence` resource."""
        return {
            "@odata.type": "#microsoft.graph.presence",
            "id": user_id,
            "availability": self.availability,
            "activity": self.activity,
            "statusMessage": None,
            "outOfOfficeSettings": {"message": None, "isOutOfOffice": self.out_of_office},
            "sequenceNumber": f"{self.sequence_number:016d}",
        }


@dataclass(slots=True)
class AppSession:
    """One application's presence session (setPresence)."""

    availability: str
    activity: str
    expires_at: float
    last_set: float

    def effective(self, now: float) -> tuple[str, str]:
        """The state this session shows at `now`, fade included."""
        if self.availability == "Available":
            idle = now - self.last_set
            if idle >= FADE_AWAY_AFTER:
                return ("Away", "Away")
            if idle >= FADE_INACTIVE_AFTER:
                return ("Available", "AvailableInactive")
        return (self.availability, self.activity)


@dataclass(slots=True)
class PreferredPresence:
    """The user's preferred presence (their own choice in Teams or setUserPreferredPresence)."""

    availability: str
    activity: str
    expires_at: float | None


class TeamsPresenceState:
    """Every presence input of one Teams user plus the aggregate's sequence number."""

    __slots__ = (
        "_last",
        "_seq",
        "client",
        "client_set_at",
        "out_of_office",
        "preferred",
        "sessions",
    )

    def __init__(
        self,
        availability: str | None = None,
        activity: str | None = None,
        out_of_office: bool = False,
        now: float = 0.0,
    ) -> None:
        # The user's own Teams client as last reported; Offline = signed out (no client session).
        self.client: tuple[str, str] = ("Offline", "Offline")
        self.client_set_at = now
        self.out_of_office = out_of_office
        self.sessions: dict[str, AppSession] = {}
        self.preferred: PreferredPresence | None = None
        self._seq = 0
        self._last: tuple[str, str, bool] | None = None
        if availability is not None:
            self.client = (availability, activity or availability)
        self._last = self._aggregate(now)

    # ---- inputs -----------------------------------------------------------------------------
    def set_client(
        self, availability: str, activity: str, out_of_office: bool | None, now: float
    ) -> bool:
        """The user's own client changes state (Offline = signed out). True if aggregate moved."""
        self.presence(now)
        self.client = (availability, activity)
        self.client_set_at = now
        if out_of_office is not None:
            self.out_of_office = out_of_office
        return self._settle(now)

    def set_session(
        self, session_id: str, availability: str, activity: str, expires_in: float, now: float
    ) -> bool:
        """Create or refresh an application session (setPresence). True if the aggregate moved."""
        self.presence(now)
        self.sessions[session_id] = AppSession(availability, activity, now + expires_in, now)
        return self._settle(now)

    def clear_session(self, session_id: str, now: float) -> bool | None:
        """clearPresence: None if there is no such live session, else whether aggregate moved."""
        self.presence(now)
        if session_id not in self.sessions:
            return None
        del self.sessions[session_id]
        return self._settle(now)

    def set_preferred(
        self, availability: str, activity: str, expires_in: float | None, now: float
    ) -> bool:
        """setUserPreferredPresence (expires_in None = until cleared)."""
        self.presence(now)
        expires_at = None if expires_in is None else now + expires_in
        self.preferred = PreferredPresence(availability, activity, expires_at)
        return self._settle(now)

    def clear_preferred(self, now: float) -> bool:
        """clearUserPreferredPresence."""
        self.presence(now)
        self.preferred = None
        return self._settle(now)

    # ---- outputs ----------------------------------------------------------------------------
    def presence(self, now: float) -> TeamsPresence:
        """The aggregate at `now`; bumps the sequence number if it moved since the last look."""
        self._settle(now)
        assert self._last is not None
        availability, activity, ooo = self._last
        return TeamsPresence(availability, activity, ooo, self._seq)

    def live_sessions(self, now: float) -> dict[str, AppSession]:
        """Application sessions still alive at `now` (expired ones are dropped)."""
        self._purge(now)
        return self.sessions

    def active_preferred(self, now: float) -> PreferredPresence | None:
        """The preferred presence unless it expired."""
        self._purge(now)
        return self.preferred

    # ---- internals --------------------------------------------------------------------------
    def _settle(self, now: float) -> bool:
        current = self._aggregate(now)
        if current != self._last:
            self._last = current
            self._seq += 1
            return True
        return False

    def _purge(self, now: float) -> None:
        if self.sessions:
            expired = [sid for sid, s in self.sessions.items() if s.expires_at <= now]
            for sid in expired:
                del self.sessions[sid]
        if (
            self.preferred is not None
            and self.preferred.expires_at is not None
            and self.preferred.expires_at <= now
        ):
            self.preferred = None

    def _aggregate(self, now: float) -> tuple[str, str, bool]:
        self._purge(now)
        best: tuple[int, float, str, str] | None = None
        if _client_signed_in(self.client):
            best = (rank(self.client[0]), self.client_set_at, *self.client)
        for session in self.sessions.values():
            availability, activity = session.effective(now)
            candidate = (rank(availability), session.last_set, availability, activity)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
        if best is None:
            availability, activity = "Offline", "Offline"
        elif self.preferred is not None:
            availability, activity = self.preferred.availability, self.preferred.activity
        else:
            availability, activity = best[2], best[3]
        if self.out_of_office and activity in _PLAIN_ACTIVITIES:
            activity = "OutOfOffice"
        return (availability, activity, self.out_of_office)


def _client_signed_in(client: tuple[str, str]) -> bool:
    # A client that reports Offline has no session: the user is signed out of Teams.
    return client[0] not in ("Offline", "PresenceUnknown")
