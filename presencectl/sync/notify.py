"""Teams → Connect by Graph presence change notifications, with polling as the safety net.

Owns :class:`TeamsNotifications`, which ``SyncEngine.watch`` starts when the profile has a
``notify_url``:

- the receiver (``sync/receiver.py``) on ``--listen``; the items it accepts go into a bounded
  queue (``QUEUE_MAX``); an overflow drops the items and asks for one full Teams poll instead, so
  the receiver's answer never waits;
- the subscriptions, one per **pool member** (a sync user; presence subscriptions are
  delegated-only and Microsoft allows one per user per application, of at most 650 ids), created
  with that member's delegated token. ``sync/subscription_pool.py`` says who goes where (stable,
  balanced, idle members as spares); a member that fails (sign-in, 403, any refusal) is set aside
  (a sign-in or permission failure for ``FAILED_RETRY`` seconds, so that a password is not
  hammered; any other refusal until the next ``MAINTAIN_EVERY`` tick); its subscription is
  deleted, or, when its token no longer allows, delivers until it ends with its people on it;
  then its people move to the others where room exists, else they are polled (``status`` says
  who failed and why). Graph's 409 to a create (a subscription of this app
  and member we no longer know: lost state, a kill between the POST and the save) and every start
  list ``GET /subscriptions`` as the member and delete the presence ones we do not hold, then
  create ours: adopting is not possible, as Graph never returns ``clientState`` and ours is new
  each run, so the receiver would drop every notification of an adopted one. They are renewed
  (PATCH ``expirationDateTime``, which also reauthorizes) ``RENEW_MARGIN`` before they end, renewed
  at once on ``reauthorizationRequired``, recreated when gone, rebuilt when the directory changes,
  recorded in the state database (side ``graph``) and deleted on a clean stop and by ``disable``;
- rich notifications: the profile's own encryption certificate (self-signed RSA 2048, the whole
  certificate and private key in the secret store as ``notify_certificate``; a new one
  ``CERT_ROTATE_BEFORE`` its end, the previous kept to decrypt what is still in flight);
  a notification whose signature fails is dropped, counted and logged at WARNING without content;
- the poll period: every ``reconcile_interval`` while notifications cover every matched user,
  else every ``interval`` as without them, with the reason kept for ``status``.

Every notification is an observation for the echo rule like a polled one: rich ones carry the
presence; for basic ones the notified users are read in one getPresencesByUserId call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets as token_source
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from presencectl.errors import ApiError, PresencectlError
from presencectl.graph.notifications import (
    EncryptionCertificate,
    LifecycleEvent,
    PresenceChange,
    Untrusted,
    new_encryption_certificate,
    read_item,
)
from presencectl.graph.subscriptions import (
    SUBSCRIPTION_IDS_MAX,
    create_presence_subscription,
    delete_subscription,
    is_conflict,
    is_presence_resource,
    list_subscriptions,
    renew_subscription,
)
from presencectl.sync.state import SubscriptionRow
from presencectl.sync.subscription_pool import assign_people

if TYPE_CHECKING:
    from presencectl.graph.client import GraphClient
    from presencectl.sync.state import StateStore

log = logging.getLogger(__name__)

QUEUE_MAX = 10_000
LIFETIME = timedelta(minutes=55)  # under Graph's 60, with room for clock skew
RENEW_MARGIN = timedelta(minutes=15)
MAINTAIN_EVERY = 15.0
CERT_SECRET = "notify_certificate"
CERT_PREVIOUS_SECRET = "notify_certificate_previous"
META_KEY = "teams_notifications"
SIDE = "graph"
SOLE_MEMBER = "sync user"  # the member's name when the engine hands over one client, no pool
FAILED_RETRY = 300.0  # seconds before a member whose sign-in failed is tried again


@dataclass
class NotifyOptions:
    """The CLI's notification flags."""

    notify_url: str
    profile: str = "default"  # whose secret store keeps the encryption certificate
    listen: str = "127.0.0.1:8765"
    listen_cert: str | None = None
    listen_key: str | None = None
    reconcile_interval: float = 60.0
    rich: bool = True
    routes: list[Any] = field(default_factory=list)  # also served: /healthz, /readyz, /metrics
    # Who the validationTokens must name, and how to fetch the tenant's keys (engine_for fills
    # these from the profile): the authority URL with the tenant, our app id, HttpSettings.
    authority: str | None = None
    app_id: str | None = None
    http: Any = None


class TeamsNotifications:
    """Receiver + subscriptions + the bounded hand-off to the engine (see the module doc)."""

    def __init__(
        self,
        options: NotifyOptions,
        *,
        graph: GraphClient | None = None,
        members: Mapping[str, GraphClient] | None = None,
        store: StateStore,
        profile: str,
        interval: float,
        wake: Any = None,
    ) -> None:
        self.options = options
        # The pool: member (sync user name) → its Graph client, in pool order.
        pool: Mapping[str, Any] = members or {SOLE_MEMBER: graph}
        self.members: dict[str, GraphClient] = dict(pool)
        self.store = store
        self.profile = profile
        self.interval = interval
        self.wake = wake  # put a marker here (the engine's event queue) when items arrive
        self.client_state = token_source.token_urlsafe(32)
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.receiver: Any = None
        self.subscriptions: dict[str, SubscriptionRow] = {}
        self.covered: set[str] = set()
        self.wanted: set[str] = set()
        self.reason = "starting"
        self.signed_in = True
        self.assignment: dict[str, list[str]] = {}  # member → the people it should cover
        self.unplaced: list[str] = []  # people no usable member has room for: polled
        # member → (why, monotonic time from which it may be tried again)
        self.failed: dict[str, tuple[str, float]] = {}
        self.certificate: EncryptionCertificate | None = None
        self._keys: dict[str, str] = {}
        self._woken = False
        self._overflow = False
        self._reauth: set[str] = set()
        self.leftovers_removed = 0  # subscriptions a lost state left in Graph, deleted here
        self._undeletable: set[str] = set()  # a failed member's subscription it could not delete
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, user_ids: Sequence[str]) -> None:
        from presencectl.sync.receiver import NotificationReceiver

        self.receiver = NotificationReceiver(
            self.options.listen,
            self.client_state,
            self._accept,
            certfile=self.options.listen_cert,
            keyfile=self.options.listen_key,
            routes=self.options.routes,
            check_tokens=self._token_checker(),
        )
        try:
            await self.receiver.start()
        except OSError as exc:
            self.receiver = None
            self.reason = f"the receiver cannot listen on {self.options.listen}: {exc.strerror}"
            log.warning("Teams notifications off, polling instead: %s", self.reason)
            self._save()
            return
        if self.options.rich:
            self._load_certificate()
        await self._forget_recorded()
        await self.sync_subscriptions(user_ids)
        self._task = asyncio.create_task(self._maintain_loop())

    async def close(self, *, delete: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if delete:
            for sub_id in list(self.subscriptions):
                await self._delete(sub_id)
            self.covered = {i for row in self.subscriptions.values() for i in self._ids_of(row)}
        if self.receiver is not None:
            await self.receiver.close()
        self.reason = "stopped"
        self._save()

    @property
    def active(self) -> bool:
        return self.receiver is not None and bool(self.subscriptions) and self.signed_in

    def poll_interval(self) -> float:
        """Reconcile period while notifications cover everyone, else the normal interval."""
        if self.active and self.wanted and self.wanted <= self.covered:
            return self.options.reconcile_interval
        return self.interval

    # -- receiving ------------------------------------------------------------------------------

    def _accept(self, items: list[Mapping[str, Any]]) -> None:
        for item in items:
            try:
                self.queue.put_nowait(item)
            except asyncio.QueueFull:
                self._overflow = True
                if self.receiver is not None:
                    self.receiver.counts.overflows += 1
        if not self._woken and self.wake is not None:
            self._woken = True
            self.wake.put_nowait(self)

    def drain(self) -> tuple[list[PresenceChange], bool]:
        """Take what arrived: the changes, and whether a full Teams poll is needed instead."""
        self._woken = False
        full, self._overflow = self._overflow, False
        changes: list[PresenceChange] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            try:
                read = read_item(item, self._keys)
            except Untrusted as exc:
                if self.receiver is not None:
                    self.receiver.counts.dropped_untrusted += 1
                log.warning("dropped an untrusted Teams notification: %s", exc)
                continue
            if isinstance(read, LifecycleEvent):
                self._on_lifecycle(read)
                if read.event in ("missed", "subscriptionRemoved"):
                    full = True
            elif read.subscription_id in self.subscriptions:
                changes.append(read)
        self._save()
        return changes, full

    def _on_lifecycle(self, event: LifecycleEvent) -> None:
        log.info("Graph lifecycle event %s for subscription %s", event.event, event.subscription_id)
        if event.subscription_id in self.subscriptions:
            self._reauth.add(event.subscription_id)
            if event.event == "subscriptionRemoved":
                self.subscriptions.pop(event.subscription_id, None)
                self.store.delete_subscription(event.subscription_id)
            self._kick.set()

    # -- subscriptions --------------------------------------------------------------------------

    async def sync_subscriptions(self, user_ids: Sequence[str]) -> None:
        """Make the pool's subscriptions cover ``user_ids`` (each in one, each member ≤ 650)."""
        self.wanted = set(user_ids)
        await self._rebalance()

    def _member_sub(self, member: str) -> SubscriptionRow | None:
        first = next(iter(self.members))
        for row in self.subscriptions.values():
            if (row.owner or first) == member:  # no owner: a row from before the pool
                return row
        return None

    @staticmethod
    def _ids_of(row: SubscriptionRow) -> list[str]:
        return [str(i) for i in (row.detail or {}).get("user_ids") or []]

    async def _rebalance(self) -> None:
        """Place everyone (``sync/subscription_pool.py``) and make each member's one subscription
        hold exactly its people: rebuilt (delete, then create: one per member) where that
        changed, deleted where a member went idle; a member that fails is set aside and the plan
        made again without it."""
        if self.receiver is None:
            self._save()
            return
        now = time.monotonic()
        for member, (_, retry_at) in list(self.failed.items()):
            if now >= retry_at:
                del self.failed[member]
                row = self._member_sub(member)
                if row is not None:
                    self._undeletable.discard(row.id)
        while True:
            usable = [m for m in self.members if m not in self.failed]
            # A failed member's subscription is deleted when its token still allows; else it
            # delivers until it ends (nobody can renew it) and its people stay on it till then.
            stranded: set[str] = set()
            for member in self.failed:
                row = self._member_sub(member)
                if row is None:
                    continue
                if (row.expires_at or 0.0) <= time.time():
                    self._forget(row.id)
                    self._undeletable.discard(row.id)
                elif row.id in self._undeletable or not await self._delete(row.id):
                    # Asked once per failure: every try of a refused password is one more
                    # towards the account's lockout.
                    self._undeletable.add(row.id)
                    stranded.update(self._ids_of(row))
            plan = assign_people(self.wanted - stranded, usable, self.assignment)
            self.assignment, self.unplaced = plan.by_member, plan.unplaced
            replan = False
            for member in usable:
                ids = plan.by_member.get(member, [])
                row = self._member_sub(member)
                if row is not None and set(self._ids_of(row)) == set(ids):
                    continue
                if row is not None:
                    await self._delete(row.id)
                if ids and not await self._create(member, ids):
                    replan = True  # its people go to the others where room exists
                    break
            if not replan:
                break
        self.covered = {i for row in self.subscriptions.values() for i in self._ids_of(row)}
        if not self.wanted:
            self.reason = "no matched users"
        self._update_reason()
        self._save()

    async def _create(self, member: str, ids: list[str], *, after_conflict: bool = False) -> bool:
        cert = self.certificate
        client = self.members[member]
        try:
            sub = await create_presence_subscription(
                client,
                ids,
                self.options.notify_url,
                client_state=self.client_state,
                lifetime=LIFETIME,
                lifecycle_url=self.options.notify_url,
                encryption_certificate=cert.graph_value() if cert else None,
                encryption_certificate_id=cert.cert_id if cert else None,
            )
        except PresencectlError as exc:
            if is_conflict(exc) and not after_conflict:
                # One presence subscription per user and app, and Graph holds one of this
                # member's that we do not know (our state was lost): remove it, create ours.
                log.info("Graph holds a subscription of %s we do not know; replacing it", member)
                if await self._clear_leftovers(member):
                    return await self._create(member, ids, after_conflict=True)
            self._fail(member, f"Graph refused the subscription: {exc.message}", exc)
            return False
        self.signed_in = True
        row = SubscriptionRow(
            sub.id, SIDE, time.time(), sub.expires_at.timestamp(), sub.resource[:200],
            {"users": len(ids), "user_ids": ids}, member,
        )  # fmt: skip
        self.store.save_subscription(row)
        self.subscriptions[sub.id] = row
        self.covered.update(ids)
        return True

    def _fail(self, member: str, why: str, exc: PresencectlError | None = None) -> None:
        pause = FAILED_RETRY if exc is not None and _is_sign_in(exc) else MAINTAIN_EVERY
        self.failed[member] = (why, time.monotonic() + pause)
        if exc is not None and _is_sign_in(exc):
            self.signed_in = any(m not in self.failed for m in self.members)
        self.reason = why if len(self.members) == 1 else f"{member}: {why}"
        log.warning("Teams notifications: sync user %s: %s", member, why)

    async def _delete(self, sub_id: str) -> bool:
        """Delete it at Graph (404: already gone) and forget it; False, and kept, when Graph
        could not be asked (its member cannot sign in): it lives on until it ends."""
        row = self.subscriptions.get(sub_id)
        client = self._client_of(row.owner if row else None)
        try:
            await delete_subscription(client, sub_id)
        except PresencectlError as exc:
            if row is not None and row.owner in self.failed:
                log.info("the subscription of failed %s stays until it ends: %s",
                         row.owner, exc.message)  # fmt: skip
                return False
        self._forget(sub_id)
        return True

    def _forget(self, sub_id: str) -> None:
        self.subscriptions.pop(sub_id, None)
        self.store.delete_subscription(sub_id)

    def _client_of(self, owner: str | None) -> GraphClient:
        """The member's client; a row from before the pool (no owner) was the first member's."""
        if owner is not None and owner in self.members:
            return self.members[owner]
        return next(iter(self.members.values()))

    async def _clear_leftovers(self, member: str) -> int:
        """Delete the presence subscriptions Graph lists for this member and app that we do not
        hold (subscription-list.md: a delegated token lists what this app created for the
        signed-in user). Returns how many went."""
        client = self.members[member]
        try:
            listed = await list_subscriptions(client)
        except PresencectlError as exc:
            log.info("listing the subscriptions of %s failed: %s", member, exc.message)
            if _is_sign_in(exc):
                self._fail(member, f"sign-in failed: {exc.message}", exc)
            return 0
        gone = 0
        for sub in listed:
            if sub.id in self.subscriptions or not is_presence_resource(sub.resource):
                continue
            with contextlib.suppress(PresencectlError):
                await delete_subscription(client, sub.id)
                gone += 1
                log.info("deleted a leftover presence subscription of %s (%s)", member, sub.id)
        self.leftovers_removed += gone
        return gone

    async def _forget_recorded(self) -> None:
        """Delete what a previous run left: what the state recorded, then whatever Graph still
        lists for each member (a lost state, a kill between a create and its save)."""
        first = next(iter(self.members))
        for row in self.store.subscriptions():
            if row.side == SIDE:
                # Who covered whom is kept (stable placement); the subscription itself cannot
                # be: its clientState was the last run's.
                owner = row.owner or first
                if owner in self.members:
                    self.assignment.setdefault(owner, []).extend(self._ids_of(row))
                self.subscriptions[row.id] = row
                await self._delete(row.id)
        for member in self.members:
            await self._clear_leftovers(member)

    async def maintain(self) -> None:
        """Renew what ends within RENEW_MARGIN or was asked to reauthorize; recreate what is gone;
        try failed members again when due; rotate the certificate when it is due."""
        now = datetime.now(UTC)
        rotated = False
        if self.options.rich and self.certificate and self.certificate.due_for_rotation(now):
            self._rotate_certificate()
            rotated = True
        replan = False
        for sub_id, row in list(self.subscriptions.items()):
            ends = row.expires_at or 0.0
            due = ends - time.time() < RENEW_MARGIN.total_seconds()
            if not (due or rotated or sub_id in self._reauth):
                continue
            self._reauth.discard(sub_id)
            member = row.owner or next(iter(self.members))
            if member in self.failed:  # it cannot renew; it ends, then the plan moves its people
                replan = replan or ends <= time.time()
                continue
            try:
                cert = self.certificate if rotated else None
                expires = await renew_subscription(
                    self._client_of(row.owner),
                    sub_id,
                    lifetime=LIFETIME,
                    encryption_certificate=cert.graph_value() if cert else None,
                    encryption_certificate_id=cert.cert_id if cert else None,
                )
            except ApiError as exc:
                if exc.status == 404:  # gone from Graph: the plan makes it again
                    self.subscriptions.pop(sub_id, None)
                    self.store.delete_subscription(sub_id)
                    replan = True
                    continue
                self.reason = f"renewing a subscription failed: {exc.message}"
                continue
            except PresencectlError as exc:
                self._fail(member, f"renewing its subscription failed: {exc.message}", exc)
                replan = True
                continue
            row = SubscriptionRow(
                row.id, row.side, row.created_at, expires.timestamp(), row.resource, row.detail,
                row.owner,
            )  # fmt: skip
            self.subscriptions[sub_id] = row
            self.store.save_subscription(row)
        retry_due = any(time.monotonic() >= t for _, t in self.failed.values())
        if replan or retry_due or (self.wanted and not self.subscriptions):
            await self._rebalance()
        else:
            self._update_reason()
            self._save()

    async def _maintain_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), MAINTAIN_EVERY)
            self._kick.clear()
            try:
                await self.maintain()
            except Exception:  # the watch goes on polling; the next tick tries again
                log.exception("maintaining Teams notification subscriptions failed")

    def coverage(self) -> str:
        """ "1,993 of 1,993 people by notifications, 3 sync users" (``status``, ``doctor``)."""
        members = len(self.members)
        noun = "sync user" if members == 1 else "sync users"
        text = (
            f"{len(self.covered):,} of {len(self.wanted):,} people by notifications, "
            f"{members} {noun}"
        )
        idle = [m for m in self.members if m not in self.failed and not self.assignment.get(m)]
        parts = [f"{len(idle)} idle"] if idle else []
        parts += [f"{len(self.failed)} failed"] if self.failed else []
        return text + (f" ({', '.join(parts)})" if parts else "")

    def _update_reason(self) -> None:
        if not self.subscriptions:
            return
        missing = len(self.wanted - self.covered)
        if missing:
            self.reason = (
                f"notifications cover {len(self.covered)} of {len(self.wanted)} users (one "
                f"subscription of at most {SUBSCRIPTION_IDS_MAX} per sync user, "
                f"{len(self.members)} in the pool); polling every {self.interval:g} s for all"
            )
        else:
            self.reason = (
                f"notifications active; reconciling every {self.options.reconcile_interval:g} s"
            )

    def member_summary(self) -> list[dict[str, Any]]:
        """Each pool member: active (holds a subscription), idle, pending or failed, and why."""
        out: list[dict[str, Any]] = []
        for member in self.members:
            row = self._member_sub(member)
            failed = self.failed.get(member)
            people = len(self._ids_of(row)) if row is not None else 0
            state = (
                "failed" if failed else "active" if row is not None
                else "pending" if self.assignment.get(member) else "idle"
            )  # fmt: skip
            out.append({
                "username": member,
                "state": state,
                "people": people,
                "subscription": row.id if row is not None else None,
                "reason": failed[0] if failed else None,
            })  # fmt: skip
        return out

    # -- the encryption certificate -------------------------------------------------------------

    def _token_checker(self) -> Any:
        """The receiver's check of each batch's validationTokens (rich notifications only)."""
        from presencectl.graph.notifications import Untrusted, ValidationTokenChecker

        opts = self.options
        if not opts.rich:
            return None
        if not opts.authority or not opts.app_id:

            async def refuse(doc: Mapping[str, Any]) -> None:
                if doc.get("validationTokens") or any(
                    isinstance(i, Mapping) and i.get("encryptedContent")
                    for i in doc.get("value") or []
                ):
                    raise Untrusted("no app id or authority to check validation tokens against")

            return refuse

        async def fetch(url: str) -> Any:
            from presencectl.transport import HttpSettings, build_async_client

            async with build_async_client(opts.http or HttpSettings()) as client:
                answer = await client.get(url)
                answer.raise_for_status()
                return answer.json()

        return ValidationTokenChecker(opts.authority, opts.app_id, fetch).check

    def _load_certificate(self) -> None:
        from presencectl import secrets as secret_store

        for name in (CERT_PREVIOUS_SECRET, CERT_SECRET):
            text = secret_store.get_secret(self.profile, name)
            if not text:
                continue
            try:
                cert = EncryptionCertificate.from_json(text)
            except (ValueError, KeyError):
                continue
            self._keys[cert.cert_id] = cert.key_pem
            if name == CERT_SECRET:
                self.certificate = cert
        if self.certificate is None or self.certificate.due_for_rotation(datetime.now(UTC)):
            self._rotate_certificate()

    def _rotate_certificate(self) -> None:
        from presencectl import secrets as secret_store

        fresh = new_encryption_certificate(self.profile)
        if self.certificate is not None:
            secret_store.set_secret(self.profile, CERT_PREVIOUS_SECRET, self.certificate.to_json())
        secret_store.set_secret(self.profile, CERT_SECRET, fresh.to_json())
        self.certificate = fresh
        self._keys[fresh.cert_id] = fresh.key_pem
        log.info("new encryption certificate for Teams notifications (%s)", fresh.cert_id)

    # -- status ---------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        counts = self.receiver.counts if self.receiver is not None else None
        ends = [r.expires_at for r in self.subscriptions.values() if r.expires_at]
        renew_at = min(ends) - RENEW_MARGIN.total_seconds() if ends else None
        return {
            "mode": "stopped"
            if self.reason == "stopped"
            else ("notifications" if self.active else "polling"),
            "reason": self.reason,
            "notify_url": self.options.notify_url,
            "listen": self.receiver.url if self.receiver is not None else None,
            "subscriptions": len(self.subscriptions),
            "users_covered": len(self.covered),
            "users_matched": len(self.wanted),
            "users_polled": len(self.wanted - self.covered),
            "coverage": self.coverage(),
            "sync_users": self.member_summary(),
            "leftovers_removed": self.leftovers_removed,
            "next_renewal": _iso(renew_at),
            "received": counts.received if counts else 0,
            "dropped": counts.dropped if counts else 0,
            "dropped_client_state": counts.dropped_client_state if counts else 0,
            "dropped_untrusted": counts.dropped_untrusted if counts else 0,
            "overflows": counts.overflows if counts else 0,
            "last_notification": _iso(counts.last_at if counts else None),
            "poll_interval_s": self.poll_interval(),
            "updated": _iso(time.time()),
        }

    def _save(self) -> None:
        with contextlib.suppress(Exception):
            self.store.set_meta(META_KEY, json.dumps(self.summary()))


def notify_options_for(
    profile: Any,
    notify_url: str | None,
    listen: str,
    listen_cert: str | None,
    listen_key: str | None,
    reconcile_interval: float,
) -> NotifyOptions | None:
    """The watch's notification settings from the flags and the profile; None: poll only."""
    from urllib.parse import urlsplit

    from presencectl.errors import UsageError
    from presencectl.sync.receiver import parse_listen

    url = notify_url or getattr(profile, "notify_url", None)
    if not url:
        return None
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if (
        not parts.netloc
        or parts.scheme not in ("https", "http")
        or (parts.scheme == "http" and not loopback)
    ):
        raise UsageError(
            f"--notify-url {url!r} is not an https URL",
            hint="Graph delivers only to public https:// URLs (http:// only to a local sandbox)",
        )
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. --listen 127.0.0.1:8765") from exc
    if bool(listen_cert) != bool(listen_key):
        raise UsageError("--listen-cert and --listen-key go together", hint="pass both, or neither")
    if reconcile_interval <= 0:
        raise UsageError("--reconcile-interval must be positive", hint="e.g. 60")
    return NotifyOptions(
        notify_url=url,
        profile=getattr(profile, "name", "default"),
        listen=listen,
        listen_cert=listen_cert,
        listen_key=listen_key,
        reconcile_interval=reconcile_interval,
    )


def notifications_summary(store: StateStore) -> dict[str, Any] | None:
    """What the last watch with notifications recorded (``status``)."""
    text = store.get_meta(META_KEY)
    if not text:
        return None
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        return data if isinstance(data, dict) else None
    return None


def _is_sign_in(exc: PresencectlError) -> bool:
    from presencectl.errors import AuthError

    return isinstance(exc, AuthError)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


__all__ = [
    "NotifyOptions",
    "TeamsNotifications",
    "notifications_summary",
    "notify_options_for",
]
