"""Univerge Blue Connect presence of one simulated user: resources and their aggregate.

Owns `ConnectPresenceState`. A user's presence is the aggregate of their "resources" (sessions):
the user's own Connect app is resource ``app``, integrations write their own (a GUID each, as
the public monitoring code writes; the presence routes refuse other names). Aggregation follows
docs/architecture.md ("Univerge Blue Connect"), highest first:
``agent_onphone, onphone > meeting, screen_sharing > dnd, out_sick, on_vacation, off_work >
busy, agent_busy > on_break > away > agent_available, available > offline``; ties go to the most
recently updated resource; no resource at all reads ``offline``.

Whether Connect ranks the resources at all is unverified: ``mode`` (the fault key
``connect_aggregation``) switches between ``rank`` (the tiers above) and ``last_writer`` (the
most recently written resource wins). ``lenient`` accepts values outside the known set (fault key
``connect_lenient_values``): they rank below every known value and are shown as given.

Pure and small; every mutation returns whether the aggregate changed so the caller can publish
``OnPresenceEvent``.
"""

from __future__ import annotations

from dataclasses import dataclass

APP_RESOURCE = "app"

# The service's own ranking, written here independently of presencectl.mapping on purpose: the
# sandbox stands in for Connect, so a mistake in the client's idea of the tiers must show up as
# a test failure, not be copied into the stand-in.
_TIERS: tuple[tuple[str, ...], ...] = (
    ("offline",),
    ("agent_available", "available"),
    ("away",),
    ("on_break",),
    ("busy", "agent_busy"),
    ("dnd", "out_sick", "on_vacation", "off_work"),
    ("meeting", "screen_sharing"),
    ("agent_onphone", "onphone"),
)
CONNECT_RANK: dict[str, int] = {v: tier for tier, values in enumerate(_TIERS) for v in values}
CONNECT_STATUSES: frozenset[str] = frozenset(CONNECT_RANK)


@dataclass(slots=True)
class ConnectResource:
    """One presence source of a Connect user."""

    status: str
    updated_at: float
    seq: int = 0  # write order: ties of updated_at go to the later write


class ConnectPresenceState:
    """Resources of one Connect user and the last aggregate seen."""

    __slots__ = ("_last", "_seq", "mode", "resources")

    def __init__(self, status: str | None = None, now: float = 0.0) -> None:
        self.resources: dict[str, ConnectResource] = {}
        self.mode = "rank"
        self._seq = 0
        if status is not None:
            self.resources[APP_RESOURCE] = ConnectResource(status, now)
        self._last = self.status

    @property
    def status(self) -> str:
        """The aggregate status (wire value)."""
        best: tuple[int, float, int, str] | None = None
        for resource in self.resources.values():
            tier = 0 if self.mode == "last_writer" else CONNECT_RANK.get(resource.status, -1)
            candidate = (tier, resource.updated_at, resource.seq, resource.status)
            if best is None or candidate[:3] > best[:3]:
                best = candidate
        return "offline" if best is None else best[3]

    def set(self, resource: str, status: str, now: float, *, lenient: bool = False) -> bool:
        """Write one resource; True if the aggregate changed. `status` must be a known value
        unless ``lenient``."""
        if status not in CONNECT_STATUSES and not lenient:
            raise ValueError(f"unknown Connect presence {status!r}")
        self._seq += 1
        self.resources[resource] = ConnectResource(status, now, self._seq)
        return self._settle()

    def clear(self, resource: str) -> bool | None:
        """Remove one resource: None if there was none, else whether the aggregate changed."""
        if resource not in self.resources:
            return None
        del self.resources[resource]
        return self._settle()

    def aggregate_with(self, mode: str) -> ConnectPresenceState:
        """Switch the aggregation (``rank`` | ``last_writer``); returns self."""
        if mode != self.mode:
            self.mode = mode
            self._last = self.status
        return self

    def _settle(self) -> bool:
        current = self.status
        changed = current != self._last
        self._last = current
        return changed
