"""Both sides' status models and the mapping between them (docs/mapping.md, the seed's table).

Owns:

- ``ConnectStatus``: the 15 Univerge Blue Connect statuses (wire value ↔ UI name) and their
  aggregation priority (``connect_rank``).
- ``TeamsStatus``: a Graph presence (availability, activity, out-of-office flag), normalised from
  any casing (Graph documents both PascalCase and camelCase), and its aggregation rank
  (``teams_rank``).
- The seed's two tables as data (``TEAMS_TO_CONNECT_ROWS``, ``CONNECT_TO_TEAMS_ROWS``), each row
  marked ``seed`` or ``extension``, with the seed's reason text for "Unaltered".
- ``Mapping``: defaults + a profile's overrides, the two lookups the planner uses, and the rows
  ``mapping show`` prints. ``validate_overrides`` checks an override table (``ConfigError`` naming
  the key and listing the valid values).
- ``REFUSED_CONNECT_TARGETS``: Connect values an override may not write (agent states, the DND
  group), each with the reason the refusal gives.

Lookup order Teams → Connect: override for the exact pair, override ``*/Activity``, override
``Availability/*``, then the same three levels in the default table (exact seed/extension rows,
``*/OutOfOffice``, the per-availability fallbacks). An unknown availability (or an unknown
Connect value) maps to ``UNALTERED`` with one warning per value. The out-of-office flag is carried
but never changes the result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, Final, Literal

from presencectl.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "CONNECT_TO_TEAMS_ROWS",
    "REFUSED_CONNECT_TARGETS",
    "SET_PRESENCE_PAIRS",
    "TEAMS_TO_CONNECT_ROWS",
    "UNALTERED",
    "ConnectStatus",
    "Mapping",
    "MappingRow",
    "TeamsStatus",
    "Unaltered",
    "connect_rank",
    "teams_rank",
    "validate_overrides",
]


class Unaltered(Enum):
    """The "no opinion" result: clear our session on the other side, if we hold one."""

    UNALTERED = "unaltered"

    def __str__(self) -> str:
        return "unaltered"


UNALTERED: Final = Unaltered.UNALTERED


# --------------------------------------------------------------------------------------------
# Connect
# --------------------------------------------------------------------------------------------


class ConnectStatus(StrEnum):
    """The 15 Connect statuses; the value is the wire value, ``label`` the UI name (seed order)."""

    AVAILABLE = "available"
    AGENT_AVAILABLE = "agent_available"
    ONPHONE = "onphone"
    MEETING = "meeting"
    SCREEN_SHARING = "screen_sharing"
    AGENT_ONPHONE = "agent_onphone"
    OFFLINE = "offline"
    AWAY = "away"
    ON_BREAK = "on_break"
    BUSY = "busy"
    AGENT_BUSY = "agent_busy"
    DND = "dnd"
    OUT_SICK = "out_sick"
    ON_VACATION = "on_vacation"
    OFF_WORK = "off_work"

    @property
    def label(self) -> str:
        return _CONNECT_LABELS[self]

    @classmethod
    def parse(cls, value: str) -> ConnectStatus | None:
        """A wire value or UI name in any casing → the status; None when unknown."""
        return _CONNECT_BY_NAME.get(value.strip().lower().replace("-", "_"))


_CONNECT_LABELS: Final[dict[ConnectStatus, str]] = {
    ConnectStatus.AVAILABLE: "Available",
    ConnectStatus.AGENT_AVAILABLE: "Agent Available",
    ConnectStatus.ONPHONE: "On call",
    ConnectStatus.MEETING: "In a meeting",
    ConnectStatus.SCREEN_SHARING: "Screen sharing",
    ConnectStatus.AGENT_ONPHONE: "Agent on call",
    ConnectStatus.OFFLINE: "Offline",
    ConnectStatus.AWAY: "Away",
    ConnectStatus.ON_BREAK: "On break",
    ConnectStatus.BUSY: "Busy",
    ConnectStatus.AGENT_BUSY: "Agent busy",
    ConnectStatus.DND: "Do not disturb",
    ConnectStatus.OUT_SICK: "Out sick",
    ConnectStatus.ON_VACATION: "On vacation",
    ConnectStatus.OFF_WORK: "Off work",
}
_CONNECT_BY_NAME: Final[dict[str, ConnectStatus]] = {
    **{s.value: s for s in ConnectStatus},
    **{label.lower().replace(" ", "_"): s for s, label in _CONNECT_LABELS.items()},
    **{label.lower(): s for s, label in _CONNECT_LABELS.items()},
}

# Connect aggregates a user's sessions, highest first (docs/architecture.md); ties: most recent.
_CONNECT_TIERS: Final = (
    ("offline",),
    ("agent_available", "available"),
    ("away",),
    ("on_break",),
    ("busy", "agent_busy"),
    ("dnd", "out_sick", "on_vacation", "off_work"),
    ("meeting", "screen_sharing"),
    ("agent_onphone", "onphone"),
)
_CONNECT_RANK: Final[dict[str, int]] = {v: i for i, tier in enumerate(_CONNECT_TIERS) for v in tier}


def connect_rank(value: str) -> int:
    """Aggregation tier of a Connect wire value (higher wins); unknown values rank lowest (0)."""
    return _CONNECT_RANK.get(value, 0)


def connect_label(value: str) -> str:
    status = ConnectStatus.parse(value)
    return status.label if status else value


# --------------------------------------------------------------------------------------------
# Teams
# --------------------------------------------------------------------------------------------

AVAILABILITIES: Final = (
    "Available", "AvailableIdle", "Away", "BeRightBack", "Busy", "BusyIdle",
    "DoNotDisturb", "Offline", "PresenceUnknown",
)  # fmt: skip
ACTIVITIES: Final = (
    "Available", "AvailableInactive", "Away", "BeRightBack", "Busy", "DoNotDisturb", "Focusing",
    "InACall", "InAConferenceCall", "Inactive", "InAMeeting", "Offline", "OffWork", "OutOfOffice",
    "PresenceUnknown", "Presenting", "UrgentInterruptionsOnly",
)  # fmt: skip
_AVAILABILITY_CANON: Final[dict[str, str]] = {a.lower(): a for a in AVAILABILITIES}
_ACTIVITY_CANON: Final[dict[str, str]] = {a.lower(): a for a in ACTIVITIES}

# Teams aggregates sessions DoNotDisturb > Busy > Available > Away (docs/verification.md); used
# by the planner to tell "the side shows less than our session would force".
_TEAMS_RANK: Final[dict[str, int]] = {
    "PresenceUnknown": 0, "Offline": 1, "Away": 2, "BeRightBack": 2,
    "AvailableIdle": 3, "Available": 3, "BusyIdle": 4, "Busy": 4, "DoNotDisturb": 5,
}  # fmt: skip


def _canon(value: str, table: AbcMapping[str, str]) -> str:
    v = value.strip()
    return table.get(v.lower(), v)


@dataclass(frozen=True, slots=True)
class TeamsStatus:
    """A Teams presence as Graph reports it, casing normalised (``Busy``/``InACall``).

    ``out_of_office`` is ``outOfOfficeSettings.isOutOfOffice``: shown, carried, never mapped.
    Unknown values are kept as given (stripped), so a warning can name them.
    """

    availability: str
    activity: str
    out_of_office: bool = False

    @classmethod
    def of(
        cls, availability: str, activity: str | None = None, out_of_office: bool = False
    ) -> TeamsStatus:
        """Normalise casing; a missing activity defaults to the availability (as Graph pairs)."""
        avail = _canon(availability, _AVAILABILITY_CANON)
        act = _canon(activity, _ACTIVITY_CANON) if activity else avail
        return cls(avail, act, bool(out_of_office))

    @classmethod
    def parse(cls, text: str, out_of_office: bool = False) -> TeamsStatus:
        """``"busy/inacall"`` (or ``"Busy"`` alone) → TeamsStatus."""
        availability, _, activity = text.partition("/")
        return cls.of(availability, activity or None, out_of_office)

    @classmethod
    def from_graph(cls, presence: AbcMapping[str, Any]) -> TeamsStatus:
        """A Graph presence resource (``availability``, ``activity``, ``outOfOfficeSettings``)."""
        oof = presence.get("outOfOfficeSettings") or {}
        return cls.of(
            str(presence.get("availability") or "PresenceUnknown"),
            str(presence.get("activity") or "") or None,
            bool(oof.get("isOutOfOffice", False)) if isinstance(oof, AbcMapping) else False,
        )

    @property
    def key(self) -> str:
        """``Availability/Activity`` (no out-of-office marker)."""
        return f"{self.availability}/{self.activity}"

    @property
    def pair(self) -> tuple[str, str]:
        return (self.availability, self.activity)

    def same_presence(self, other: TeamsStatus) -> bool:
        """Equal availability and activity; the out-of-office flag is ignored."""
        return self.availability == other.availability and self.activity == other.activity

    def __str__(self) -> str:
        return self.key + (" (out of office)" if self.out_of_office else "")


def teams_rank(status: TeamsStatus) -> int:
    """Aggregation rank of a Teams availability (DoNotDisturb highest); unknown ranks 0."""
    return _TEAMS_RANK.get(status.availability, 0)


SET_PRESENCE_PAIRS: Final[tuple[TeamsStatus, ...]] = tuple(
    TeamsStatus(a, b)
    for a, b in (
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Busy", "InAConferenceCall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    )
)
_SET_PRESENCE_BY_KEY: Final[dict[str, TeamsStatus]] = {p.key.lower(): p for p in SET_PRESENCE_PAIRS}

_TEAMS_LABELS: Final[dict[tuple[str, str], str]] = {
    ("Available", "Available"): "Available",
    ("Busy", "InACall"): "In a call",
    ("Busy", "InAConferenceCall"): "In a call (In a video meeting)",
    ("Away", "Away"): "Away",
    ("DoNotDisturb", "Presenting"): "Presenting",
}


def teams_label(status: TeamsStatus) -> str:
    return _TEAMS_LABELS.get(status.pair, status.key)


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------

Origin = Literal["seed", "extension", "override"]
Direction = Literal["teams-to-connect", "connect-to-teams"]
ConnectTarget = str | Unaltered
TeamsTarget = TeamsStatus | Unaltered

NOTE_NO_IMPACT: Final = "Will not impact the presence"
NOTE_NOT_SUPPORTED: Final = "synchronization not supported by MS Teams"
NOTE_IDLE_AWAY: Final = "Away set automatically based on idle time"


@dataclass(frozen=True, slots=True)
class MappingRow:
    """One row of ``mapping show``: a source on one side and what we assert on the other."""

    direction: Direction
    source: str  # Graph pair ("Busy/InACall", "BusyIdle/*") or Connect wire value
    source_label: str
    target: str  # Connect wire value, Graph pair, or "unaltered"
    target_label: str
    origin: Origin
    note: str = ""


def _t2c(
    label: str, source: str, target: str, origin: Origin = "seed", note: str = ""
) -> MappingRow:
    if target == "unaltered":
        target_label = "Unaltered"
        note = note or NOTE_NO_IMPACT
    else:
        target_label = connect_label(target)
    return MappingRow("teams-to-connect", source, label, target, target_label, origin, note)


OOF_SOURCE: Final = "Busy/InACall + isOutOfOffice"

TEAMS_TO_CONNECT_ROWS: Final[tuple[MappingRow, ...]] = (
    _t2c("Available", "Available/Available", "available"),
    _t2c("Busy", "Busy/Busy", "busy"),
    _t2c("In a call", "Busy/InACall", "onphone"),
    _t2c("In a call (In a video meeting)", "Busy/InAConferenceCall", "meeting"),
    _t2c("On call (out of office)", OOF_SOURCE, "onphone",
         note="the out-of-office flag never changes the result"),
    _t2c("Do not Disturb", "DoNotDisturb/DoNotDisturb", "busy"),
    _t2c("Presenting", "DoNotDisturb/Presenting", "meeting"),
    _t2c("Do not Disturb (Focusing mode)", "DoNotDisturb/Focusing", "busy"),
    _t2c("Be right back", "BeRightBack/BeRightBack", "on_break"),
    _t2c("Away", "Away/Away", "unaltered"),
    _t2c("Status Unknown", "PresenceUnknown/PresenceUnknown", "unaltered"),
    _t2c("Out Of Office", "*/OutOfOffice", "unaltered"),
    _t2c("Appear offline", "Offline/OffWork", "unaltered"),
    _t2c("Appear offline", "Offline/Offline", "unaltered"),
    # Extensions: pairs Graph reports that the seed does not list.
    _t2c("In a meeting", "Busy/InAMeeting", "meeting", "extension"),
    _t2c("Busy (idle)", "BusyIdle/*", "busy", "extension"),
    _t2c("Do not disturb (urgent interruptions only)", "DoNotDisturb/UrgentInterruptionsOnly",
         "busy", "extension"),
    _t2c("Available (idle)", "AvailableIdle/*", "unaltered", "extension",
         "idle: Teams is heading for Away"),
    _t2c("Available (inactive)", "Available/Inactive", "unaltered", "extension",
         "idle: Teams is heading for Away"),
    _t2c("Available (inactive)", "Available/AvailableInactive", "unaltered", "extension",
         "idle: Teams is heading for Away"),
    # Fallbacks on availability alone, for activities no row names.
    _t2c("Available (other activity)", "Available/*", "available", "extension"),
    _t2c("Busy (other activity)", "Busy/*", "busy", "extension"),
    _t2c("Do not disturb (other activity)", "DoNotDisturb/*", "busy", "extension"),
    _t2c("Be right back (other activity)", "BeRightBack/*", "on_break", "extension"),
    _t2c("Away (other activity)", "Away/*", "unaltered", "extension"),
    _t2c("Offline (other activity)", "Offline/*", "unaltered", "extension"),
    _t2c("Status unknown (other activity)", "PresenceUnknown/*", "unaltered", "extension"),
)  # fmt: skip


def _c2t(source: ConnectStatus, target: str, note: str = "") -> MappingRow:
    if target == "unaltered":
        target_label = "Unaltered"
    else:
        target_label = _TEAMS_LABELS[TeamsStatus.parse(target).pair]
    return MappingRow(
        "connect-to-teams", source.value, source.label, target, target_label, "seed", note
    )


_CS = ConnectStatus
CONNECT_TO_TEAMS_ROWS: Final[tuple[MappingRow, ...]] = (
    _c2t(_CS.AVAILABLE, "Available/Available"),
    _c2t(_CS.AGENT_AVAILABLE, "Available/Available"),
    _c2t(_CS.ONPHONE, "Busy/InACall"),
    _c2t(_CS.MEETING, "Busy/InACall"),
    _c2t(_CS.SCREEN_SHARING, "Busy/InACall"),
    _c2t(_CS.AGENT_ONPHONE, "Busy/InACall"),
    _c2t(_CS.OFFLINE, "unaltered"),
    _c2t(_CS.AWAY, "unaltered", NOTE_IDLE_AWAY),
    _c2t(_CS.ON_BREAK, "unaltered", NOTE_NOT_SUPPORTED),
    _c2t(_CS.BUSY, "unaltered", NOTE_NOT_SUPPORTED),
    _c2t(_CS.AGENT_BUSY, "unaltered", NOTE_NOT_SUPPORTED),
    _c2t(_CS.DND, "unaltered", NOTE_NOT_SUPPORTED),
    _c2t(_CS.OUT_SICK, "unaltered", NOTE_NOT_SUPPORTED),
    _c2t(_CS.ON_VACATION, "unaltered", NOTE_NOT_SUPPORTED),
    _c2t(_CS.OFF_WORK, "unaltered", NOTE_NOT_SUPPORTED),
)


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------

OVERRIDE_TABLES: Final = ("teams_to_connect", "connect_to_teams")


# Values an override may never write to Connect until `presencectl connect verify` has shown
# how the account treats them: agent states belong to the contact center (a write could fake an
# agent's state), and the vendor's KB 44189 says DND, Out sick, On vacation and Off work put ALL
# the user's devices in Do not disturb — a mapping mistake would silence real phones.
REFUSED_CONNECT_TARGETS: Final[dict[str, str]] = {
    **{
        s.value: "agent states belong to the contact center (Engage); writing one could fake an "
        "agent's state"
        for s in ConnectStatus
        if s.value.startswith("agent_")
    },
    **{
        v: "the vendor's KB 44189 says DND, Out sick, On vacation and Off work put all of the "
        "user's devices in Do not disturb"
        for v in ("dnd", "out_sick", "on_vacation", "off_work")
    },
}


def _valid_connect_targets() -> str:
    writable = [s.value for s in ConnectStatus if s.value not in REFUSED_CONNECT_TARGETS]
    return ", ".join([*writable, "unaltered"])


def _valid_teams_targets() -> str:
    return ", ".join([*(p.key for p in SET_PRESENCE_PAIRS), "unaltered"])


def _parse_teams_key(key: str, where: str) -> tuple[str, str]:
    """``"busy/inameeting"`` → ("Busy", "InAMeeting"); ``*`` allowed on one side."""
    availability, sep, activity = key.strip().partition("/")
    availability, activity = availability.strip(), activity.strip()
    if not sep or not availability or not activity or (availability == "*" and activity == "*"):
        raise ConfigError(
            f"{where}: key '{key}' is not 'Availability/Activity'",
            hint='write keys like "Busy/InAMeeting", "BusyIdle/*" or "*/OutOfOffice"',
        )
    if availability != "*" and availability.lower() not in _AVAILABILITY_CANON:
        raise ConfigError(
            f"{where}: key '{key}': unknown availability '{availability}'",
            hint="valid availabilities: " + ", ".join(AVAILABILITIES) + " (or *)",
        )
    if activity != "*" and activity.lower() not in _ACTIVITY_CANON:
        raise ConfigError(
            f"{where}: key '{key}': unknown activity '{activity}'",
            hint="valid activities: " + ", ".join(ACTIVITIES) + " (or *)",
        )
    return (
        _AVAILABILITY_CANON.get(availability.lower(), "*"),
        _ACTIVITY_CANON.get(activity.lower(), "*"),
    )


def _parse_connect_target(key: str, value: object, where: str) -> ConnectTarget:
    if isinstance(value, str):
        if value.strip().lower() == "unaltered":
            return UNALTERED
        status = ConnectStatus.parse(value)
        if status is not None and status.value in REFUSED_CONNECT_TARGETS:
            raise ConfigError(
                f"{where}: key '{key}' = {value!r} would write {status.value} to Connect, which "
                f"presencectl refuses: {REFUSED_CONNECT_TARGETS[status.value]}",
                hint="valid values: " + _valid_connect_targets(),
                code="mapping_refused",
            )
        if status is not None:
            return status.value
    raise ConfigError(
        f"{where}: key '{key}' = {value!r} is not a Connect status",
        hint="valid values: " + _valid_connect_targets(),
    )


def _parse_teams_target(key: str, value: object, where: str) -> TeamsTarget:
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "unaltered":
            return UNALTERED
        if v in _SET_PRESENCE_BY_KEY:
            return _SET_PRESENCE_BY_KEY[v]
    raise ConfigError(
        f"{where}: key '{key}' = {value!r} is not a presence Teams accepts from setPresence",
        hint="valid values: " + _valid_teams_targets(),
    )


def _parse_connect_key(key: str, where: str) -> str:
    status = ConnectStatus.parse(key)
    if status is None:
        raise ConfigError(
            f"{where}: key '{key}' is not a Connect status",
            hint="valid keys: " + ", ".join(s.value for s in ConnectStatus),
        )
    return status.value


@dataclass(frozen=True, slots=True)
class _Overrides:
    teams_to_connect: dict[
        tuple[str, str], tuple[str, ConnectTarget]
    ]  # (avail, act) → (key, target)
    connect_to_teams: dict[str, TeamsTarget]


def _parse_overrides(overrides: AbcMapping[str, Any] | None, where: str) -> _Overrides:
    t2c: dict[tuple[str, str], tuple[str, ConnectTarget]] = {}
    c2t: dict[str, TeamsTarget] = {}
    if not overrides:
        return _Overrides(t2c, c2t)
    if not isinstance(overrides, AbcMapping):
        raise ConfigError(f"{where} must be a table", hint="tables: " + ", ".join(OVERRIDE_TABLES))
    for table_name, table in overrides.items():
        here = f"{where}.{table_name}"
        if table_name not in OVERRIDE_TABLES:
            raise ConfigError(
                f"{where}: unknown key '{table_name}'",
                hint="valid tables: " + ", ".join(OVERRIDE_TABLES),
            )
        if not isinstance(table, AbcMapping):
            raise ConfigError(
                f'{here} must be a table of "source" = "target"', hint="see docs/mapping.md"
            )
        for key, value in table.items():
            key = str(key)
            if table_name == "teams_to_connect":
                pair = _parse_teams_key(key, here)
                t2c[pair] = (key, _parse_connect_target(key, value, here))
            else:
                c2t[_parse_connect_key(key, here)] = _parse_teams_target(key, value, here)
    return _Overrides(t2c, c2t)


def validate_overrides(overrides: AbcMapping[str, Any] | None, *, where: str = "mapping") -> None:
    """Raise ConfigError naming the exact key, and listing the valid values, for a wrong override.

    ``overrides`` is ``{"teams_to_connect": {"Busy/InAMeeting": "meeting"},
    "connect_to_teams": {"on_break": "Away/Away"}}``; ``where`` prefixes the message (file, table).
    """
    _parse_overrides(overrides, where)


def override_problems(
    overrides: AbcMapping[str, Any] | None, *, where: str = "mapping"
) -> list[ConfigError]:
    """Every wrong key of ``overrides`` (validate_overrides stops at the first)."""
    if not overrides:
        return []
    if not isinstance(overrides, AbcMapping):
        try:
            _parse_overrides(overrides, where)
        except ConfigError as exc:
            return [exc]
        return []
    problems: list[ConfigError] = []
    for table_name, table in overrides.items():
        try:  # the table itself: a known name, a table
            _parse_overrides({table_name: {} if isinstance(table, AbcMapping) else table}, where)
        except ConfigError as exc:
            problems.append(exc)
            continue
        for key, value in table.items():
            try:
                _parse_overrides({table_name: {key: value}}, where)
            except ConfigError as exc:
                problems.append(exc)
    return problems


def override_problem_text(overrides: AbcMapping[str, Any] | None) -> str | None:
    """None when the overrides are valid; else what is wrong, in one line (for status, config
    show: commands that must work whatever the mapping says)."""
    problems = override_problems(overrides)
    if not problems:
        return None
    first = problems[0]
    text = f"{first.message} ({first.hint})" if first.hint else first.message
    return text + (f" and {len(problems) - 1} more" if len(problems) > 1 else "")


# --------------------------------------------------------------------------------------------
# The Mapping object
# --------------------------------------------------------------------------------------------

_warned: set[str] = set()


def _warn_once(kind: str, value: str, outcome: str = "treated as unaltered") -> None:
    token = f"{kind}:{value}"
    if token not in _warned:
        _warned.add(token)
        log.warning("unknown %s %r: %s", kind, value, outcome)


def _target_of(row: MappingRow) -> ConnectTarget:
    return UNALTERED if row.target == "unaltered" else row.target


def _default_t2c() -> dict[tuple[str, str], MappingRow]:
    table: dict[tuple[str, str], MappingRow] = {}
    for row in TEAMS_TO_CONNECT_ROWS:
        if row.source == OOF_SOURCE:
            continue
        availability, _, activity = row.source.partition("/")
        table[(availability, activity)] = row
    return table


_DEFAULT_T2C: Final = _default_t2c()
_DEFAULT_C2T: Final[dict[str, MappingRow]] = {row.source: row for row in CONNECT_TO_TEAMS_ROWS}


def _fingerprint(overrides: AbcMapping[str, Any]) -> str:
    import hashlib
    import json

    text = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Mapping:
    """The mapping in force: the seed's tables plus a profile's overrides.

    ``teams_to_connect(status)`` → a Connect wire value or ``UNALTERED``;
    ``connect_to_teams(value)`` → one of the five setPresence pairs or ``UNALTERED``.
    Results are cached per value, so the planner can call these per pair per cycle.
    """

    def __init__(
        self, overrides: AbcMapping[str, Any] | None = None, *, where: str = "mapping"
    ) -> None:
        self._overrides = _parse_overrides(overrides, where)
        # Identifies the mapping across runs (the planner's settled pairs are valid for it only).
        self.fingerprint = "defaults" if not overrides else _fingerprint(overrides)
        self._t2c_cache: dict[tuple[str, str], ConnectTarget] = {}
        self._c2t_cache: dict[str, TeamsTarget] = {}

    @classmethod
    def from_profile(cls, profile: Any) -> Mapping:
        """Defaults plus ``profile.mapping`` (None or a profile without overrides → defaults)."""
        overrides = getattr(profile, "mapping", None) if profile is not None else None
        name = getattr(profile, "name", "?")
        return cls(overrides or None, where=f"[profiles.{name}.mapping]")

    # -- lookups -------------------------------------------------------------------------

    def teams_to_connect(self, status: TeamsStatus) -> ConnectTarget:
        """What Connect should show for this Teams presence (OOF flag ignored)."""
        pair = (status.availability, status.activity)
        cached = self._t2c_cache.get(pair)
        if cached is None:
            cached = self._t2c_cache[pair] = self._lookup_t2c(pair)
        return cached

    def _lookup_t2c(self, pair: tuple[str, str]) -> ConnectTarget:
        availability, activity = pair
        over = self._overrides.teams_to_connect
        for probe in (pair, ("*", activity), (availability, "*")):
            if probe in over:
                return over[probe][1]
        for probe in (pair, ("*", activity), (availability, "*")):
            row = _DEFAULT_T2C.get(probe)
            if row is not None:
                if activity.lower() not in _ACTIVITY_CANON:
                    _warn_once("Teams activity", activity, f"mapped by the row {row.source}")
                return _target_of(row)
        _warn_once("Teams availability", availability)
        return UNALTERED

    def connect_to_teams(self, value: str) -> TeamsTarget:
        """What Teams should show (our session) for this Connect wire value."""
        cached = self._c2t_cache.get(value)
        if cached is None:
            cached = self._c2t_cache[value] = self._lookup_c2t(value)
        return cached

    def _lookup_c2t(self, value: str) -> TeamsTarget:
        status = ConnectStatus.parse(value)
        if status is None:
            _warn_once("Connect status", value)
            return UNALTERED
        if status.value in self._overrides.connect_to_teams:
            return self._overrides.connect_to_teams[status.value]
        row = _DEFAULT_C2T[status.value]
        return UNALTERED if row.target == "unaltered" else TeamsStatus.parse(row.target)

    # -- the table ----------------------------------------------------------------------

    def rows(self, direction: str = "both") -> list[MappingRow]:
        """Rows for ``mapping show``: defaults, overrides applied in place, new keys appended."""
        rows: list[MappingRow] = []
        if direction in ("both", "teams-to-connect"):
            rows.extend(self._t2c_rows())
        if direction in ("both", "connect-to-teams"):
            rows.extend(self._c2t_rows())
        return rows

    def _t2c_rows(self) -> Iterable[MappingRow]:
        over = dict(self._overrides.teams_to_connect)
        for row in TEAMS_TO_CONNECT_ROWS:
            availability, _, activity = row.source.partition("/")
            hit = over.pop((availability, activity), None) if row.source != OOF_SOURCE else None
            yield row if hit is None else _override_t2c(row.source, row.source_label, hit[1])
        for (availability, activity), (_key, target) in over.items():
            yield _override_t2c(f"{availability}/{activity}", f"{availability}/{activity}", target)

    def _c2t_rows(self) -> Iterable[MappingRow]:
        over = self._overrides.connect_to_teams
        for row in CONNECT_TO_TEAMS_ROWS:
            if row.source not in over:
                yield row
                continue
            target = over[row.source]
            if isinstance(target, Unaltered):
                yield MappingRow(
                    row.direction,
                    row.source,
                    row.source_label,
                    "unaltered",
                    "Unaltered",
                    "override",
                    "set by the profile",
                )
            else:
                yield MappingRow(
                    row.direction,
                    row.source,
                    row.source_label,
                    target.key,
                    teams_label(target),
                    "override",
                    "set by the profile",
                )


def _override_t2c(source: str, label: str, target: ConnectTarget) -> MappingRow:
    if isinstance(target, Unaltered):
        return MappingRow(
            "teams-to-connect",
            source,
            label,
            "unaltered",
            "Unaltered",
            "override",
            "set by the profile",
        )
    return MappingRow(
        "teams-to-connect",
        source,
        label,
        target,
        connect_label(target),
        "override",
        "set by the profile",
    )
