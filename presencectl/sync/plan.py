"""The pure sync decision: pair states + new observations + mapping + now → actions and new states.

No I/O and no clock: ``now`` is given, so a test runs a hundred watch cycles instantly.

How a cycle decides, per pair
=============================

1. **Observations → genuine state** (the echo rule; docs/architecture.md sums it up). Each side
   shows an *aggregate* of the user's own state and our session there (Teams: DoNotDisturb > Busy >
   Available > Away, a preferred presence beats every session; Connect: mapping.py's tiers, ties to
   the most recent). An observation is **ours** ("explained") when it equals

   - the value of our live session on that side, or
   - the value or the previous value of a write of ours still *pending* on that side (written,
     not yet seen landing, younger than ``echo_window``: the side may still show the old value).

   "Equals" for Teams means the same availability/activity, ignoring the out-of-office flag (the
   user's calendar, not ours); an Available/AvailableInactive, Available/Inactive or AvailableIdle
   reading also counts as our Available session, fading. Then:

   - equal to our **live session**: because Teams (and Connect) aggregate, an observed
     Busy/InACall while we hold a Busy/InACall session tells nothing about the user: they may be
     Available under it, or on a Teams call of their own. The genuine state becomes **unknown**
     (None) instead of keeping an old guess: a stale guess is what lets two sessions of ours hold
     each other up forever (a phantom call after both calls ended);
   - equal only to a **pending** write (its new or its old value: the write is still in flight):
     our echo, consumed, it changes nothing — the genuine state stays as it was;
   - anything else is the user's own state, visible: it becomes genuine.

   This is the literal rule applied level-triggered (not only on change), so a user state revealed
   when our session goes away counts too, and a pending write older than ``echo_window`` no
   longer explains anything.

2. **Genuine state → what we assert.** On side B we assert the mapping of side A's genuine state;
   unknown or "unaltered" means no session of ours on B (clear the one we hold). Three refinements
   keep it from churning or corrupting:

   - *equivalent already*: if B's own genuine state is already equivalent to the target (Connect:
     same aggregation tier, so ``onphone`` is never written over ``agent_onphone``; Teams: the same
     pair), we start no session there;
   - *masking*: a new session of ours that ranks at or above B's own state will hide it, so B's
     genuine state becomes unknown and B exports nothing: we do not write on A what B shows now
     (this is why Teams showing our InACall never writes ``onphone`` back to Connect);
   - *both would mask*: if each side's new session would hide the other user, only one side gets
     a session: the one that already holds it, else the side whose genuine state did *not*
     change last (otherwise the two sessions would hide both users, be cleared, reveal them, and
     start again: a loop).

3. **Upkeep of a session we keep.** Renew before expiry (``renew_margin`` before
   ``expires_at``); re-send an Available Teams session every ``available_refresh`` (Teams fades an
   unrefreshed one to Away); if the side shows *less* than our session would force (it was dropped
   early or cleared by someone) re-assert it — once per distinct masking value, so a Teams preferred
   presence that beats our session does not cost a write every cycle.

One-way directions set sessions only on the side they write; a session of ours left on the other
side by an earlier two-way run is cleared (never left stale).

``plan`` returns ``PlanResult(actions, new_states, observed_states)``: ``new_states`` assume every
action succeeds; the engine can instead fold successful actions into ``observed_states`` with
``apply_action``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from presencectl.errors import ConfigError
from presencectl.mapping import (
    Mapping,
    TeamsStatus,
    Unaltered,
    connect_rank,
    teams_rank,
)
from presencectl.sync.model import (
    Action,
    ActionKind,
    ActionPurpose,
    Direction,
    Observation,
    PairState,
    PendingWrite,
    PlanResult,
    SessionRecord,
    Side,
    Value,
)

__all__ = ["PlanSettings", "apply_action", "plan", "plan_pair", "release"]

MIN_TEAMS_TTL = timedelta(minutes=5)
MAX_TEAMS_TTL = timedelta(hours=4)
_FADE_ACTIVITIES = frozenset({"AvailableInactive", "Inactive"})


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Timing knobs of the planner (defaults suit a 5 s poll)."""

    teams_session_ttl: timedelta = timedelta(hours=1)  # setPresence expirationDuration
    renew_margin: timedelta = timedelta(minutes=5)  # renew this long before expiry
    available_refresh: timedelta = timedelta(minutes=4)  # Teams fades Available after 5 min
    echo_window: timedelta = timedelta(seconds=60)  # how long a write may take to show
    connect_session_ttl: timedelta | None = None  # Connect sessions do not expire

    def __post_init__(self) -> None:
        if not MIN_TEAMS_TTL <= self.teams_session_ttl <= MAX_TEAMS_TTL:
            raise ConfigError(
                f"Teams session lifetime {self.teams_session_ttl} is outside PT5M–PT4H",
                hint="setPresence accepts an expirationDuration from 5 minutes to 4 hours",
            )
        if self.renew_margin >= self.teams_session_ttl:
            raise ConfigError(
                f"renew margin {self.renew_margin} is not shorter than the session lifetime",
                hint="use a margin of a few minutes",
            )


def plan(
    states: AbcMapping[str, PairState],
    observations: AbcMapping[str, Sequence[Observation]],
    mapping: Mapping,
    direction: Direction | str,
    now: datetime,
    *,
    teams_session_ttl: timedelta = timedelta(hours=1),
    renew_margin: timedelta = timedelta(minutes=5),
    available_refresh: timedelta = timedelta(minutes=4),
    echo_window: timedelta = timedelta(seconds=60),
    connect_session_ttl: timedelta | None = None,
    fast_path: bool = True,
) -> PlanResult:
    """Decide one cycle for every pair in ``states`` or ``observations`` (keyed by pair key).

    ``observations[key]`` lists what was read for that pair since the last cycle (either side,
    any order, several per side allowed: a change feed's burst). A pair with no new observation
    is still planned (renewals, level-triggered reconciliation on its last known values).
    ``fast_path``: skip a pair still settled (see ``_still_settled``); it changes no decision,
    only the work (a test plans with it off to prove so).
    """
    settings = PlanSettings(
        teams_session_ttl, renew_margin, available_refresh, echo_window, connect_session_ttl
    )
    direction = Direction(direction)
    actions: list[Action] = []
    new_states: dict[str, PairState] = {}
    observed_states: dict[str, PairState] = {}
    empty: Sequence[Observation] = ()
    context = (mapping.fingerprint, direction.value)  # what a settled decision was made under
    for key in _keys(states, observations):
        state = states.get(key) or PairState(key)
        pair_observations = observations.get(key, empty)
        if (
            fast_path
            and state.settled == context
            and _still_settled(state, pair_observations, now, settings)
        ):
            observed_states[key] = new_states[key] = state
            continue
        observed, pair_actions = plan_pair(
            state, pair_observations, mapping, direction, now, settings
        )
        observed_states[key] = observed
        if pair_actions:
            actions.extend(pair_actions)
            for action in pair_actions:
                observed = apply_action(observed, action, now)
        else:
            observed = observed.mark_settled(context)
        new_states[key] = observed
    return PlanResult(actions, new_states, observed_states)


def _still_settled(
    state: PairState, observations: Sequence[Observation], now: datetime, settings: PlanSettings
) -> bool:
    """True when planning ``state`` again would decide the same nothing as last time.

    ``state.settled`` says the planner decided "nothing to do" for this very state, under the same
    mapping and direction. The decision depends only on the state's values and, through session
    upkeep, on the clock; so it stands
    while no write of ours is pending, every new observation repeats the side's last value
    exactly, no renewal or Available refresh is due, and each session of ours was already checked
    against an observation made after it was written (the re-assert rule). Most pairs, most
    cycles: a 10,000-user watch cycle then plans only the pairs that moved.
    """
    if state.pending_teams or state.pending_connect:
        return False
    for obs in observations:
        side = obs.side
        last = state.last(side)
        if last is None or obs.value != last.value:
            return False
        # With nothing pending, observing this value makes the genuine state exactly this (None
        # if it shows our session); the last cycle may have consumed the same value as an echo.
        session = state.session(side)
        if session is not None and _shows(obs.value, session.value):
            if state.genuine(side) is not None:
                return False
        elif not _same(obs.value, state.genuine(side)):
            return False
    for side, session in (
        (Side.TEAMS, state.our_teams_session),
        (Side.CONNECT, state.our_connect_session),
    ):
        if session is None:
            continue
        if session.expires_at is not None and now >= session.expires_at - settings.renew_margin:
            return False
        value = session.value
        if (
            isinstance(value, TeamsStatus)
            and value.availability == "Available"
            and now - session.written_at >= settings.available_refresh
        ):
            return False
        last = state.last(side)
        if last is None or last.observed_at < session.written_at:
            return False
    return True


def _keys(states: AbcMapping[str, PairState], observations: AbcMapping[str, object]) -> list[str]:
    keys = list(states)
    keys.extend(k for k in observations if k not in states)
    return keys


def plan_pair(
    state: PairState,
    observations: Iterable[Observation],
    mapping: Mapping,
    direction: Direction,
    now: datetime,
    settings: PlanSettings,
) -> tuple[PairState, list[Action]]:
    """One pair: (state after the observations, actions). Pure; see the module docstring."""
    state = _observe_all(state, observations, now - settings.echo_window)
    return state, _decide(state, mapping, direction, now, settings)


# --------------------------------------------------------------------------------------------
# 1. observations → genuine state
# --------------------------------------------------------------------------------------------


def _same(a: Value | None, b: Value | None) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, TeamsStatus):
        return isinstance(b, TeamsStatus) and a.same_presence(b)
    return a == b


def _is_fade_of(observed: Value, ours: Value | None) -> bool:
    """Teams shows our Available session fading (AvailableInactive, Inactive, AvailableIdle)."""
    if not isinstance(observed, TeamsStatus) or not isinstance(ours, TeamsStatus):
        return False
    if ours.availability != "Available" or ours.activity != "Available":
        return False
    return observed.availability == "AvailableIdle" or (
        observed.availability == "Available" and observed.activity in _FADE_ACTIVITIES
    )


def _shows(observed: Value, ours: Value | None) -> bool:
    """The side shows our value (exactly, or as a fading Available session)."""
    return _same(observed, ours) or _is_fade_of(observed, ours)


class _SideWork:
    """A mutable working copy of one side of a PairState (one PairState built per pair, not per
    observation: this loop runs for every pair every cycle)."""

    __slots__ = ("changed", "genuine", "genuine_at", "last", "pending", "session")

    def __init__(
        self,
        last: Observation | None,
        genuine: Value | None,
        genuine_at: datetime | None,
        session: SessionRecord | None,
        pending: tuple[PendingWrite, ...],
        horizon: datetime,
    ) -> None:
        self.last, self.genuine, self.genuine_at = last, genuine, genuine_at
        self.session, self.pending, self.changed = session, pending, False
        if pending:
            kept = tuple(p for p in pending if p.written_at > horizon)
            if len(kept) != len(pending):
                self.pending, self.changed = kept, True
                if last is not None:
                    # Level-triggered: the last reading may have been taken for the echo of a
                    # write that has now outlived the echo window. Read it again without that
                    # write, or a side nobody changes again (a quiet feed) keeps a stale state.
                    self.observe(last)

    def observe(self, obs: Observation) -> None:
        last = self.last
        if last is not None and obs.observed_at < last.observed_at:
            return  # out of order: older than what we already know
        self.last, self.changed = obs, True
        value, session, pending = obs.value, self.session, self.pending
        ours_now = session is not None and _shows(value, session.value)
        in_flight = False
        if pending:
            landed_upto = -1
            for i, p in enumerate(pending):
                if not in_flight and (_shows(value, p.value) or _shows(value, p.previous)):
                    in_flight = True
                if obs.observed_at >= p.written_at and (
                    _same(value, p.value) if p.value is not None else not _shows(value, p.previous)
                ):
                    landed_upto = i
            if landed_upto >= 0:
                self.pending = pending[landed_upto + 1 :]
        if ours_now:
            assert session is not None
            if session.masked_by is not None:
                self.session = replace(session, masked_by=None)
            genuine = None  # our session shows: the user's own state is hidden under it
        elif in_flight:
            return  # the echo of a write in flight: consumed, changes nothing
        else:
            genuine = value  # the user's own state, visible
        if not _same(genuine, self.genuine):
            self.genuine, self.genuine_at = genuine, obs.observed_at


def _observe_all(
    state: PairState, observations: Iterable[Observation], horizon: datetime
) -> PairState:
    teams = _SideWork(
        state.last_teams, state.genuine_teams, state.genuine_teams_at,
        state.our_teams_session, state.pending_teams, horizon,
    )  # fmt: skip
    connect = _SideWork(
        state.last_connect, state.genuine_connect, state.genuine_connect_at,
        state.our_connect_session, state.pending_connect, horizon,
    )  # fmt: skip
    teams_side = Side.TEAMS
    for obs in observations:  # no sort needed: an older reading than the last one is skipped
        (teams if obs.side is teams_side else connect).observe(obs)
    if not teams.changed and not connect.changed:
        return state
    genuine_teams = teams.genuine
    genuine_connect = connect.genuine
    assert genuine_teams is None or isinstance(genuine_teams, TeamsStatus)
    assert genuine_connect is None or isinstance(genuine_connect, str)
    return PairState(
        state.key, teams.last, connect.last, genuine_teams, genuine_connect,
        teams.genuine_at, connect.genuine_at, teams.session, connect.session,
        teams.pending, connect.pending,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# 2. genuine state → what we assert; 3. upkeep
# --------------------------------------------------------------------------------------------


def _rank(value: Value) -> int:
    return teams_rank(value) if isinstance(value, TeamsStatus) else connect_rank(value)


def _equivalent(genuine: Value, target: Value) -> bool:
    """The user's own state on that side already says what we would assert."""
    if isinstance(genuine, TeamsStatus):
        return isinstance(target, TeamsStatus) and genuine.same_presence(target)
    return isinstance(target, str) and connect_rank(genuine) == connect_rank(target)


def _fmt(value: Value | None) -> str:
    if value is None:
        return "nothing"
    return value.key if isinstance(value, TeamsStatus) else value


@dataclass(slots=True)
class _Want:
    """What we want on one side: ``value`` None = no session of ours; ``why`` explains it
    (a callable: the sentence is only built for the few pairs that get an action)."""

    value: Value | None
    why: Callable[[], str]
    purpose: ActionPurpose = ActionPurpose.MIRROR


def _target(
    side: Side,
    genuine: Value | None,
    own: Value | None,
    session: SessionRecord | None,
    mapping: Mapping,
) -> _Want:
    """What to assert on ``side`` given the other side's genuine state (and ``side``'s own)."""
    source = side.other
    if genuine is None:
        return _Want(
            None,
            lambda: (
                f"unaltered: clear our session ({source.label} shows our own session or is "
                "not read yet: no genuine state to mirror)"
            ),
            ActionPurpose.CLEAR,
        )
    result: TeamsStatus | str | Unaltered
    if isinstance(genuine, TeamsStatus):
        result = mapping.teams_to_connect(genuine)
    else:
        result = mapping.connect_to_teams(genuine)
    if isinstance(result, Unaltered):
        return _Want(
            None,
            lambda: (
                f"unaltered: clear our session ({source.label} {_fmt(genuine)} maps to unaltered)"
            ),
            ActionPurpose.CLEAR,
        )
    target = result
    if (
        own is not None
        and _equivalent(own, target)
        and (session is None or not _same(session.value, target))
    ):
        return _Want(
            None,
            lambda: (
                f"{side.label} already shows {_fmt(own)}, equivalent to {_fmt(target)}: "
                "no session of ours needed"
            ),
            ActionPurpose.CLEAR,
        )
    return _Want(target, lambda: f"{source.label} {_fmt(genuine)} → {_fmt(target)}")


def _fixed(text: str) -> Callable[[], str]:
    return lambda: text


_WHY_TEAMS_MASKED = _fixed("unaltered: clear our session (Teams will show our own session)")
_WHY_CONNECT_MASKED = _fixed("unaltered: clear our session (Connect will show our own session)")


def _masks(side: Side, want: _Want, state: PairState) -> bool:
    """Would the session we want on ``side`` hide the user's own state there (new writes only)?"""
    if want.value is None:
        return False
    own = state.genuine(side)
    if own is None:
        return True
    session = state.session(side)
    last = state.last(side)
    if session is not None and _same(session.value, want.value):
        if session.masked_by is not None:
            return False  # known to be beaten by the user's own state: it hides nothing
        if not state.pending(side) and last is not None and last.observed_at >= session.written_at:
            return False  # seen in force, and the user's own state still shows: it hides nothing
    return _rank(want.value) >= _rank(own)


def _decide(
    state: PairState, mapping: Mapping, direction: Direction, now: datetime, settings: PlanSettings
) -> list[Action]:
    teams_session, connect_session = state.our_teams_session, state.our_connect_session
    genuine_teams, genuine_connect = state.genuine_teams, state.genuine_connect
    if direction.writes(Side.TEAMS):
        want_teams = _target(Side.TEAMS, genuine_connect, genuine_teams, teams_session, mapping)
    else:
        want_teams = _Want(None, _leftover(direction, Side.TEAMS), ActionPurpose.CLEAR)
    if direction.writes(Side.CONNECT):
        want_connect = _target(
            Side.CONNECT, genuine_teams, genuine_connect, connect_session, mapping
        )
    else:
        want_connect = _Want(None, _leftover(direction, Side.CONNECT), ActionPurpose.CLEAR)
    masks_teams = _masks(Side.TEAMS, want_teams, state)
    masks_connect = _masks(Side.CONNECT, want_connect, state)
    if masks_teams and masks_connect:
        leader = _leader(state, want_teams, want_connect)
        why = _fixed(
            f"{leader.label} changed last and leads: our session goes on {leader.other.label} only"
        )
        if leader is Side.TEAMS:
            want_teams = _Want(None, why, ActionPurpose.CLEAR)
        else:
            want_connect = _Want(None, why, ActionPurpose.CLEAR)
    elif masks_teams and direction.writes(Side.CONNECT):
        # Our Teams session will hide the Teams user: Teams has nothing of its own to export.
        want_connect = _Want(None, _WHY_TEAMS_MASKED, ActionPurpose.CLEAR)
    elif masks_connect and direction.writes(Side.TEAMS):
        want_teams = _Want(None, _WHY_CONNECT_MASKED, ActionPurpose.CLEAR)

    actions: list[Action] = []
    action = _act(Side.TEAMS, want_teams, state, now, settings)
    if action is not None:
        actions.append(action)
    action = _act(Side.CONNECT, want_connect, state, now, settings)
    if action is not None:
        actions.append(action)
    return actions


def _leftover(direction: Direction, side: Side) -> Callable[[], str]:
    return lambda: f"direction {direction.value}: clear our leftover {side.label} session"


def _leader(state: PairState, want_teams: _Want, want_connect: _Want) -> Side:
    """Of two sides whose sessions would hide each other, the one that gets no session.

    Keep the arrangement we already have (the side holding the wanted session stays the
    follower: deciding afresh on information that lags our writes would flip-flop); otherwise
    the side whose genuine state changed last leads (Connect on a tie: a phone call rules).
    """
    teams, connect = state.our_teams_session, state.our_connect_session
    held_teams = teams is not None and _same(teams.value, want_teams.value)
    held_connect = connect is not None and _same(connect.value, want_connect.value)
    if held_teams != held_connect:
        return Side.CONNECT if held_teams else Side.TEAMS
    teams_at, connect_at = state.genuine_teams_at, state.genuine_connect_at
    if teams_at is not None and (connect_at is None or teams_at > connect_at):
        return Side.TEAMS
    return Side.CONNECT


def _act(
    side: Side, want: _Want, state: PairState, now: datetime, settings: PlanSettings
) -> Action | None:
    session = state.session(side)
    if want.value is None:
        if session is None:
            return None
        shown = _shown(state, side)
        return Action(
            state.key, side, ActionKind.CLEAR, None, want.why(), want.purpose, None, shown
        )
    expiration = _expiration(side, settings)
    if session is None or not _same(session.value, want.value):
        return Action(
            state.key, side, ActionKind.SET, want.value, want.why(), ActionPurpose.MIRROR,
            expiration, _shown(state, side),
        )  # fmt: skip
    upkeep = _upkeep(side, session, state, now, settings)
    if upkeep is None:
        return None
    reason, purpose = upkeep
    return Action(
        state.key, side, ActionKind.SET, session.value, reason, purpose, expiration,
        _shown(state, side),
    )  # fmt: skip


def _shown(state: PairState, side: Side) -> Value | None:
    last = state.last(side)
    return last.value if last is not None else None


def _expiration(side: Side, settings: PlanSettings) -> timedelta | None:
    return settings.teams_session_ttl if side is Side.TEAMS else settings.connect_session_ttl


def _upkeep(
    side: Side, session: SessionRecord, state: PairState, now: datetime, settings: PlanSettings
) -> tuple[str, ActionPurpose] | None:
    if session.expires_at is not None and now >= session.expires_at - settings.renew_margin:
        return (
            "renew before expiry" if now < session.expires_at else "session expired: write again",
            ActionPurpose.RENEW,
        )
    value = session.value
    is_available = isinstance(value, TeamsStatus) and value.availability == "Available"
    if is_available and now - session.written_at >= settings.available_refresh:
        return ("refresh Available before Teams fades it", ActionPurpose.RENEW)
    last = state.last(side)
    if last is None or last.observed_at < session.written_at or state.pending(side):
        return None
    shown = last.value
    if is_available and _is_fade_of(shown, value):
        return ("Teams is fading our Available session: refresh", ActionPurpose.RENEW)
    if (
        not _shows(shown, value)
        and _rank(shown) < _rank(value)
        and not _same(session.masked_by, shown)
    ):
        return (
            f"re-assert: {side.label} shows {_fmt(shown)}, less than our {_fmt(value)} session",
            ActionPurpose.REASSERT,
        )
    return None


# --------------------------------------------------------------------------------------------
# Folding actions back, and releasing pairs
# --------------------------------------------------------------------------------------------


def apply_action(state: PairState, action: Action, at: datetime) -> PairState:
    """The pair state once ``action`` succeeded at ``at`` (a 404 on clear counts as success)."""
    side = action.side
    session = state.session(side)
    # Until the write lands the side may still show our old session — but only if it showed it
    # when we wrote. If the user's own state masked our session then, a stale read shows that
    # state again, never our old value; an observation of our old value is then the user's own
    # change (e.g. back to `available` after an agent call that made us clear `available`).
    last = state.last(side)
    previous = (
        session.value
        if session is not None and last is not None and _shows(last.value, session.value)
        else None
    )
    if action.kind is ActionKind.CLEAR:
        if session is None:
            return state
        pending = (*state.pending(side), PendingWrite(side, None, previous, at))
        return state.with_side(side, session=None, pending=pending[-4:])
    assert action.value is not None
    expires = at + action.expiration if action.expiration is not None else None
    if action.purpose is ActionPurpose.RENEW and session is not None:
        return state.with_side(side, session=replace(session, written_at=at, expires_at=expires))
    if action.purpose is ActionPurpose.REASSERT and session is not None:
        # Same value again: the session itself explains its echo, no pending write needed.
        return state.with_side(
            side,
            session=replace(session, written_at=at, expires_at=expires, masked_by=action.shown),
        )
    new_session = SessionRecord(side, action.value, at, expires)
    pending = (*state.pending(side), PendingWrite(side, action.value, previous, at))
    return state.with_side(side, session=new_session, pending=pending[-4:])


def release(
    states: Iterable[PairState], reason: str = "release: clear our session"
) -> list[Action]:
    """CLEAR actions for every session we hold in ``states`` (disable; a pair no longer matched)."""
    actions: list[Action] = []
    for state in states:
        for session in state.sessions():
            last = state.last(session.side)
            actions.append(
                Action(
                    state.key,
                    session.side,
                    ActionKind.CLEAR,
                    None,
                    reason,
                    ActionPurpose.CLEAR,
                    None,
                    last.value if last is not None else None,
                )
            )
    return actions
