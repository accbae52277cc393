"""The watch loop: polls, Connect feed events as they come, outages waited out.

Owns :class:`WatchLoop` (a base of ``SyncEngine``, ``sync/engine.py``): ``watch`` polls Teams
every ``interval`` seconds and reacts to each Connect feed event at once (the Connect→Teams write
follows the event, not the next poll); while the feed is down (or deaf: events nobody can read),
Connect is polled with Teams, and read once fully after every reconnect. Renewals are planned
every poll. A failure a retry can fix (``sync/resilience.py``) is waited out with backoff, shown
as an outage (events and the state's ``outage`` meta for ``status``), and the next cycle
reconciles in full. ``stop`` (an ``asyncio.Event``; the CLI sets it on SIGINT/SIGTERM) ends the
loop after the batch in flight has been written and persisted. Clock and sleep are injected.
Teams change notifications between polls are the glue of ``sync/notify_glue.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from presencectl.errors import PresencectlError
from presencectl.sync.model import Observation, Side
from presencectl.sync.notify_glue import NotificationsGlue
from presencectl.sync.resilience import Outage, is_transient, service_of
from presencectl.sync.results import SyncResult
from presencectl.sync.state import SubscriptionRow
from presencectl.sync.writes import why

log = logging.getLogger(__name__)

OUTAGE_META = "outage"  # state meta key: the outage a watch is waiting out (status shows it)


class WatchLoop(NotificationsGlue):
    """The engine's watch: :meth:`watch` and what it waits for."""

    async def watch(
        self,
        *,
        stop: asyncio.Event | None = None,
        max_cycles: int | None = None,
        duration: float | None = None,
        after_cycle: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> SyncResult:
        """Poll Teams every ``interval``; write Connect changes to Teams as their events come.

        Ends when ``stop`` is set, after ``max_cycles`` polls, or after ``duration`` seconds
        (of the injected clock); the batch in flight is always written and persisted first.
        """
        stop = stop or asyncio.Event()
        self._stop = stop
        started = time.monotonic()
        started_at = self.clock()
        result = self._new_result()
        self._start_run("watch")
        self._set_outage_meta(None)  # left by a watch that was killed while waiting
        self._watching = True
        events: asyncio.Queue[Any] = asyncio.Queue()
        self._emit(
            "start",
            direction=self.options.direction.value,
            interval="auto" if self.options.auto_interval else self.options.interval,
        )
        feed = await self._start_feed(events) if self.options.use_feed else None
        await self._start_notifications(events)
        outcome = "error"
        try:
            while not stop.is_set():
                if duration is not None and self._outage and self._elapsed(started_at) >= duration:
                    break  # the duration ran out while a service was down
                # A failure a retry can fix is waited out, then the poll starts over (_survive).
                if not await self._survive(self.refresh_directory(), stop):
                    continue
                self._fill_directory_counts(result)
                if not await self._survive(self._follow_directory_with_notifications(), stop):
                    continue
                if not await self._survive(self.release_unmatched(result), stop):
                    continue
                # Connect is read in full on the first poll, while the feed is down, and once
                # after every reconnect (events raised meanwhile are lost); else the feed says.
                poll_connect = (
                    result.cycles == 0
                    or feed is None
                    or not feed.connected
                    or self._feed_deaf(feed)
                    or self._feed_reconnected(feed)
                    or self._outage is not None  # and after an outage
                )
                if not await self._survive(self.cycle(result, read_connect=poll_connect), stop):
                    continue
                self._recovered()
                result.cycles += 1
                self._emit_cycle(result)
                if after_cycle is not None:
                    maybe = after_cycle(result.cycles)
                    if maybe is not None:
                        await maybe
                if max_cycles is not None and result.cycles >= max_cycles:
                    break
                if duration is not None and (self.clock() - started_at).total_seconds() >= duration:
                    break
                await self._survive(self._wait_for_events(events, stop, result), stop)
            result.interrupted = stop.is_set()
            outcome = "partial" if result.failed else "ok"
        finally:
            if feed is not None:
                with contextlib.suppress(Exception):
                    await feed.close()
                self._forget_feed(feed)
            await self._stop_notifications()
            result.duration_s = time.monotonic() - started
            result.throttled, result.throttle_wait_s = self._throttle()
            self._set_outage_meta(None)  # a stopped watch is not waiting for anything
            self._record_budget()  # the next run continues this budget (sync/pacing.py)
            self._finish_run(result, outcome)
            self._emit("stop", **result.summary(), failures=result.failures)
        return result

    # -- weathering outages (sync/resilience.py) --------------------------------------------------

    def _elapsed(self, since: datetime) -> float:
        return (self.clock() - since).total_seconds()

    async def _survive(self, step: Awaitable[Any], stop: asyncio.Event) -> bool:
        """Run one step of a watch; False when it failed in a way a retry can fix and the
        failure was waited out (anything else is raised)."""
        try:
            await step
        except Exception as exc:
            await self._weather(exc, stop)
            return False
        return True

    async def _weather(self, exc: Exception, stop: asyncio.Event) -> None:
        """Wait out a failure a retry can fix (re-raise any other); the next cycle reconciles
        in full: directories listed again, Connect read in full."""
        if not is_transient(exc):
            raise exc
        delay = self._backoff.next_delay()
        text = why(exc) if isinstance(exc, PresencectlError) else f"{type(exc).__name__}: {exc}"
        if self._outage is None:
            self._outage = Outage(service_of(exc), self.clock(), text)
        self._outage.service, self._outage.error = service_of(exc), text
        self._outage.retry(self.clock(), delay, self._backoff.attempts)
        self._directory_at = None
        log.warning("%s (%s)", self._outage.message(), text)
        self._emit("outage", **self._outage.to_dict())
        self._set_outage_meta(self._outage)
        await self._pause(delay, stop)

    def _recovered(self) -> None:
        if self._outage is None:
            return
        down = self._elapsed(self._outage.since)
        log.warning("%s reachable again after %.0f s; reconciled in full", self._outage.service,
                    down)  # fmt: skip
        self._emit("recovered", service=self._outage.service, down_s=round(down, 1),
                   attempts=self._outage.attempts)  # fmt: skip
        self._outage = None
        self._backoff.reset()
        self._set_outage_meta(None)

    def _set_outage_meta(self, outage: Outage | None) -> None:
        if self.options.dry_run:
            return
        import json

        self.store.set_meta(OUTAGE_META, None if outage is None else json.dumps(outage.to_dict()))

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        """``sleep(seconds)``, cut short by ``stop``."""
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        _, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    def _emit_cycle(self, result: SyncResult) -> None:
        if not self.options.dry_run:  # what `status` shows as health (sync/health.py)
            from presencectl.sync import health

            health.record_cycle(
                self.store,
                throttled=self._throttle()[0],
                feed_state=getattr(self, "_feed_state", None),
            )
            self._record_budget()  # the Connect budget and write backlog (sync/pacing.py)
        renewals = sorted(
            (s.expires_at, self._user(k), str(s.side))
            for k, st in self.states.items()
            for s in st.sessions()
            if s.expires_at is not None
        )[:5]
        self._emit(
            "cycle",
            cycle=result.cycles,
            matched=result.matched,
            written=result.written,
            cleared=result.cleared,
            failed=result.failed,
            throttled=result.throttled,
            throttle_wait_s=round(result.throttle_wait_s, 3),
            sessions=sum(len(st.sessions()) for st in self.states.values()),
            next_renewals=[
                {"user": u, "side": side, "at": at.isoformat()} for at, u, side in renewals
            ],
        )

    async def _wait_for_events(
        self, events: asyncio.Queue[Any], stop: asyncio.Event, result: SyncResult
    ) -> None:
        """Until the next poll is due: handle Connect events as they come."""
        deadline = time.monotonic() + self._poll_interval()
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            getter = asyncio.ensure_future(events.get())
            stopper = asyncio.ensure_future(stop.wait())
            sleeper = asyncio.ensure_future(self.sleep(left))
            done, pending = await asyncio.wait(
                {getter, stopper, sleeper}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if getter in done:
                batch = [getter.result()]
                while not events.empty():
                    batch.append(events.get_nowait())
                await self._on_connect_events(batch, result)
            elif sleeper in done:
                return

    async def _on_connect_events(self, batch: list[Any], result: SyncResult) -> None:
        batch = await self._take_teams_notifications(batch, result)
        observations: dict[str, list[Observation]] = defaultdict(list)
        now = self.clock()
        session_keys: dict[str, None] = {}
        for event in batch:
            key = self._by_connect.get(event.user_id)
            if key is None:
                continue
            if getattr(event, "session", False):
                session_keys[key] = None  # one session's state: the user's aggregate is read
                continue
            observations[key].append(Observation(Side.CONNECT, event.presence, now))
        if session_keys:
            # One read per user however many of their events came (coalesced), under the
            # client's request budget; a failed read waits for the next poll.
            reads, failures = await self.read_connect(list(session_keys))
            for key, observation in reads.items():
                observations[key].append(observation)
            if failures:
                log.info("connect: %d aggregates after feed events not read", len(failures))
        if observations:
            await self.cycle(
                result,
                read_teams=False,
                read_connect=False,
                connect_observations=observations,
                keys=list(observations),
            )

    async def _start_feed(self, events: asyncio.Queue[Any]) -> Any:
        from presencectl.connect.feed import PresenceFeed

        def on_state(state: Any) -> None:
            self._feed_state = str(state)
            self._emit("feed", state=str(state))

        feed = PresenceFeed(
            self.connect,
            on_event=events.put_nowait,
            on_state=on_state,
            is_known=lambda user_id: user_id in self._connect_ids,  # the latest directory
        )
        feed._seen_reconnects = 0  # type: ignore[attr-defined]
        try:
            await feed.start()
            await feed.wait_connected(timeout=5.0)
        except PresencectlError as exc:
            log.warning("connect feed unavailable, polling instead: %s", exc.message)
            return None
        if feed.subscription is not None:
            self.store.save_subscription(
                SubscriptionRow(feed.subscription.id, "connect", time.time(), None, "users/_all")
            )
        return feed

    def _feed_deaf(self, feed: Any) -> bool:
        """Events arrive but none can be read: poll Connect as if the feed were down, say why
        (once, and in the state for ``status``), and keep the count of unreadable events."""
        unparsed = getattr(feed, "events_unparsed", 0) + getattr(feed, "events_unknown", 0)
        if unparsed != getattr(feed, "_stored_unparsed", 0):
            feed._stored_unparsed = unparsed
            self.store.set_meta("connect_feed_unparsed", str(unparsed))
        deaf = bool(getattr(feed, "deaf", False))
        if deaf != getattr(feed, "_reported_deaf", False):
            feed._reported_deaf = deaf
            reason = getattr(feed, "deaf_reason", "") or (
                f"it delivers events presencectl cannot read ({unparsed} so far)"
            )
            note = (
                f"the Connect feed is deaf: {reason}; polling Connect with Teams instead"
                if deaf
                else None
            )
            if note:
                log.warning("%s", note)
                self._emit("feed", state="deaf")
            self.store.set_meta("connect_feed_note", note)
        return deaf

    def _feed_reconnected(self, feed: Any) -> bool:
        seen = getattr(feed, "_seen_reconnects", 0)
        if feed.reconnects != seen:
            feed._seen_reconnects = feed.reconnects
            return True
        return False

    def _forget_feed(self, feed: Any) -> None:
        for sub in self.store.subscriptions():
            if sub.side == "connect":
                self.store.delete_subscription(sub.id)
