"""The engine's glue to Teams change notifications (``sync --watch --notify-url``).

Owns :class:`NotificationsGlue` (a base of ``SyncEngine``, ``sync/engine.py``): starting and
stopping ``TeamsNotifications`` (``sync/notify.py``; the sync user's client owns the
delegated-only subscriptions), following the directory with the subscriptions, the poll interval
while notifications cover every matched user (the reconcile interval instead of ``interval``),
and turning the notifications that arrived into a cycle over the users they name (a basic
notification carries only the id: one bulk read; a lost one: a full Teams read).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

from presencectl.mapping import TeamsStatus
from presencectl.sync.cycle import SyncCycle
from presencectl.sync.model import Observation, Side
from presencectl.sync.results import SyncResult


class NotificationsGlue(SyncCycle):
    """The engine's side of Teams change notifications."""

    async def _start_notifications(self, events: asyncio.Queue[Any]) -> None:
        notify = self.options.notify
        if (
            notify is None
            or self.options.dry_run
            or not self.options.direction.writes(Side.CONNECT)
        ):
            return
        from presencectl.sync.notify import TeamsNotifications

        self.notifications = TeamsNotifications(
            notify,
            graph=self.subscriber or self.teams_reader,
            members=self.subscribers or None,
            store=self.store,
            profile=notify.profile,
            interval=self.options.interval,
            wake=events,
        )
        await self.notifications.start([])
        self._emit("notifications", **self.notifications.summary())

    async def _follow_directory_with_notifications(self) -> None:
        if self.notifications is not None:
            ids = sorted(p.azure_id for p in self.pairs.values())
            await self.notifications.sync_subscriptions(ids)
            # Said again when coverage changed: the first word (at start) knows no users yet.
            summary = self.notifications.summary()
            said = tuple(
                summary.get(k)
                for k in (
                    "mode",
                    "users_covered",
                    "users_matched",
                    "subscriptions",
                    "next_renewal",
                    "reason",
                )
            )
            if said != getattr(self, "_notifications_said", None):
                self._notifications_said = said
                self._emit("notifications", **summary)

    async def _stop_notifications(self) -> None:
        if self.notifications is not None:
            with contextlib.suppress(Exception):
                await self.notifications.close()

    def _teams_poll_keys(self, wanted: list[str]) -> list[str]:
        """The pairs a Teams poll reads: those notifications do not cover, and everyone once
        every reconcile interval (notifications can be lost; the poll is the safety net)."""
        notes = self.notifications
        if notes is None or not notes.active or not notes.covered:
            return wanted
        now = time.monotonic()
        if now - getattr(self, "_full_teams_poll_at", float("-inf")) >= (
            notes.options.reconcile_interval
        ):
            self._full_teams_poll_at = now
            return wanted
        covered = notes.covered
        return [k for k in wanted if k in self.pairs and self.pairs[k].azure_id not in covered]

    def _poll_interval(self) -> float:
        if self.notifications is not None:
            interval = self.notifications.poll_interval()
            if interval != self.options.interval or not self.options.auto_interval:
                return interval  # notifications cover everyone: the reconcile period
        if not self.options.auto_interval:
            return self.options.interval
        return float(self._auto_interval()["interval_s"])  # sync/pacing.py

    async def _take_teams_notifications(self, batch: list[Any], result: SyncResult) -> list[Any]:
        """Handle the Teams notifications among ``batch``; the rest are Connect events."""
        notes = self.notifications
        if notes is None or not any(item is notes for item in batch):
            return batch
        changes, full = notes.drain()
        if full:
            self._full_teams_poll_at = float("-inf")  # notifications were lost: read everyone
            await self.cycle(result, read_connect=False)
        elif changes:
            now = self.clock()
            observations: dict[str, list[Observation]] = defaultdict(list)
            basic: list[str] = []
            for change in changes:
                key = self._by_azure.get(change.user_id)
                if key is None:
                    continue
                if change.availability is not None and change.activity is not None:
                    status = TeamsStatus.of(change.availability, change.activity, False)
                    observations[key].append(Observation(Side.TEAMS, status, now))
                else:
                    basic.append(key)
            if basic:  # basic notifications carry only the id: one bulk read
                for key, obs in (await self.read_teams(basic)).items():
                    observations[key].append(obs)
            if observations:
                await self.cycle(
                    result,
                    read_teams=False,
                    read_connect=False,
                    connect_observations=observations,
                    keys=list(observations),
                )
        return [item for item in batch if item is not notes]
