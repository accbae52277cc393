"""Which sync user's presence subscription covers whom: the pure assignment of people to the pool.

Owns :func:`assign_people` and :class:`PoolAssignment`. Graph allows one presence subscription
per user per application, of at most 650 ids (docs/verification.md), so a pool of sync users
covers up to 650 people each. ``sync/notify.py`` asks this module where everyone goes each time
the directory or the pool changes, and creates, rebuilds or deletes one subscription per member
to match.

The rules, in order:

- **stable**: a person keeps the member the previous assignment gave them while that member is
  still usable and under the cap, so adding a person or a member never moves anyone else (a
  moved person costs a delete and a create of two whole subscriptions);
- **balanced, on as few members as needed**: ``ceil(people / 650)`` members are active (those
  already holding people first, then the next in pool order); a person without a place goes to
  the least-loaded active member with room (ties by pool order). A fresh start spreads people
  evenly; the members beyond need stay **idle** — spares that take over a failed member's people;
- **failed members** (sign-in refused, 403) are not usable: their people are placed like new
  people on the others where room exists (an idle member is activated for them); whoever still
  has no place is ``unplaced`` (polled).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from presencectl.graph.subscriptions import SUBSCRIPTION_IDS_MAX


@dataclass(frozen=True)
class PoolAssignment:
    """Each usable member's people (sorted), and the people no member has room for."""

    by_member: dict[str, list[str]] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)

    def owner_of(self) -> dict[str, str]:
        return {person: member for member, ids in self.by_member.items() for person in ids}


def assign_people(
    wanted: Iterable[str],
    members: Sequence[str],
    previous: Mapping[str, Iterable[str]] | None = None,
    *,
    cap: int = SUBSCRIPTION_IDS_MAX,
) -> PoolAssignment:
    """Place every id of ``wanted`` on one of ``members`` (usable ones, in pool order).

    ``previous`` is the last assignment (member → ids); ids it placed on a member that is still
    in ``members`` stay there (up to ``cap``). Every other id goes to the least-loaded member with
    room. Deterministic: the same input gives the same answer."""
    people = set(wanted)
    cap = max(1, min(cap, SUBSCRIPTION_IDS_MAX))
    load: dict[str, set[str]] = {m: set() for m in dict.fromkeys(members)}
    placed: set[str] = set()
    for member, ids in (previous or {}).items():
        if member not in load:
            continue
        for person in sorted(set(ids)):
            if person in people and person not in placed and len(load[member]) < cap:
                load[member].add(person)
                placed.add(person)
    order = {m: i for i, m in enumerate(load)}
    active = [m for m in load if load[m]]
    idle = [m for m in load if not load[m]]
    needed = -(-len(people) // cap)
    while len(active) < needed and idle:
        active.append(idle.pop(0))
    unplaced: list[str] = []
    for person in sorted(people - placed):
        room = [m for m in active if len(load[m]) < cap]
        if not room and idle:
            active.append(idle.pop(0))
            room = active[-1:]
        if not room:
            unplaced.append(person)
            continue
        target = min(room, key=lambda m: (len(load[m]), order[m]))
        load[target].add(person)
    return PoolAssignment({m: sorted(ids) for m, ids in load.items()}, unplaced)


__all__ = ["PoolAssignment", "assign_people"]
