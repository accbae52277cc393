"""Teams → Connect by Graph presence change notifications, with polling as the safety net.

Owns :class:`TeamsNotifications`, which ``SyncEngine.watch`` starts when the profile has a
``notify_url``:

- the receiver (``sync/receiver.py``) on ``--listen``; the items it accepts go into a bounded
  queue (``QUEUE_MAX``); an overflow drops the items and asks for one full Teams poll instead, so
  the receiver's answer never waits;
- the subscriptions, created with the **sync user's delegated token** (presence subscriptions are
  delegated-only): the matched users' ids in chunks of at most 650, each user in exactly one;
  Microsoft documents one presence subscription per user per application, so one sync user covers
  at most 650 people and the rest stay on polling (``status`` says so). They are renewed
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
from dataclasses import dataclass
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
    chunk_ids,
    create_presence_subscription,
    delete_subscription,
    renew_subscription,
)
from presencectl.sync.state import SubscriptionRow

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
        graph: GraphClient,
        store: StateStore,
        profile: str,
        interval: float,
        wake: Any = None,
    ) -> None:
        self.options = options
        self.graph = graph
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
        self.certificate: EncryptionCertificate | None = None
        self._keys: dict[str, str] = {}
        self._woken = False
        self._overflow = False
        self._reauth: set[str] = set()
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
        """Make the subscriptions cover ``user_ids`` (each in one), rebuilding when they changed."""
        wanted = set(user_ids)
        if wanted == self.wanted and self.subscriptions and self.covered <= wanted:
            return
        self.wanted = wanted
        for sub_id in list(self.subscriptions):
            await self._delete(sub_id)
        self.covered = set()
        if self.receiver is None or not wanted:
            self.reason = "no matched users" if self.receiver is not None else self.reason
            self._save()
            return
        for chunk in chunk_ids(sorted(wanted), SUBSCRIPTION_IDS_MAX):
            if not await self._create(chunk):
                break
        self._update_reason()
        self._save()

    async def _create(self, ids: list[str]) -> bool:
        cert = self.certificate
        try:
            sub = await create_presence_subscription(
                self.graph,
                ids,
                self.options.notify_url,
                client_state=self.client_state,
                lifetime=LIFETIME,
                lifecycle_url=self.options.notify_url,
                encryption_certificate=cert.graph_value() if cert else None,
                encryption_certificate_id=cert.cert_id if cert else None,
            )
        except PresencectlError as exc:
            self.signed_in = not _is_sign_in(exc)
            self.reason = f"Graph refused the subscription: {exc.message}"
            # With some subscriptions held this is the documented one-per-user limit: expected.
            level = logging.INFO if self.subscriptions else logging.WARNING
            log.log(level, "Teams notifications: %s", self.reason)
            return False
        self.signed_in = True
        row = SubscriptionRow(
            sub.id, SIDE, time.time(), sub.expires_at.timestamp(), sub.resource[:200],
            {"users": len(ids), "user_ids": ids},
        )  # fmt: skip
        self.store.save_subscription(row)
        self.subscriptions[sub.id] = row
        self.covered.update(ids)
        return True

    async def _delete(self, sub_id: str) -> None:
        with contextlib.suppress(PresencectlError):
            await delete_subscription(self.graph, sub_id)
        self.subscriptions.pop(sub_id, None)
        self.store.delete_subscription(sub_id)

    async def _forget_recorded(self) -> None:
        """Delete what a previous run left (a crash): one subscription per user per app."""
        for row in self.store.subscriptions():
            if row.side == SIDE:
                await self._delete(row.id)

    async def maintain(self) -> None:
        """Renew what ends within RENEW_MARGIN or was asked to reauthorize; recreate what is gone;
        rotate the certificate when it is due."""
        now = datetime.now(UTC)
        rotated = False
        if self.options.rich and self.certificate and self.certificate.due_for_rotation(now):
            self._rotate_certificate()
            rotated = True
        for sub_id, row in list(self.subscriptions.items()):
            ends = row.expires_at or 0.0
            due = ends - time.time() < RENEW_MARGIN.total_seconds()
            if not (due or rotated or sub_id in self._reauth):
                continue
            self._reauth.discard(sub_id)
            try:
                cert = self.certificate if rotated else None
                expires = await renew_subscription(
                    self.graph,
                    sub_id,
                    lifetime=LIFETIME,
                    encryption_certificate=cert.graph_value() if cert else None,
                    encryption_certificate_id=cert.cert_id if cert else None,
                )
            except ApiError as exc:
                if exc.status == 404:
                    ids = list((row.detail or {}).get("user_ids") or [])
                    self.subscriptions.pop(sub_id, None)
                    self.store.delete_subscription(sub_id)
                    self.covered.difference_update(ids)
                    if ids:
                        await self._create(ids)
                    continue
                self.reason = f"renewing a subscription failed: {exc.message}"
                continue
            except PresencectlError as exc:
                self.signed_in = not _is_sign_in(exc)
                self.reason = f"renewing a subscription failed: {exc.message}"
                continue
            row = SubscriptionRow(
                row.id, row.side, row.created_at, expires.timestamp(), row.resource, row.detail
            )
            self.subscriptions[sub_id] = row
            self.store.save_subscription(row)
        if self.subscriptions or not self.wanted:
            self._update_reason()
        elif self.receiver is not None and self.wanted:
            wanted, self.wanted = sorted(self.wanted), set()  # nothing held: try again
            await self.sync_subscriptions(wanted)
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

    def _update_reason(self) -> None:
        if not self.subscriptions:
            return
        missing = len(self.wanted - self.covered)
        if missing:
            self.reason = (
                f"notifications cover {len(self.covered)} of {len(self.wanted)} users (one "
                f"subscription of at most {SUBSCRIPTION_IDS_MAX} per sync user); polling every "
                f"{self.interval:g} s for all"
            )
        else:
            self.reason = (
                f"notifications active; reconciling every {self.options.reconcile_interval:g} s"
            )

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
            "mode": "stopped" if self.reason == "stopped" else (
                "notifications" if self.active else "polling"
            ),
            "reason": self.reason,
            "notify_url": self.options.notify_url,
            "listen": self.receiver.url if self.receiver is not None else None,
            "subscriptions": len(self.subscriptions),
            "users_covered": len(self.covered),
            "users_matched": len(self.wanted),
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
    if not parts.netloc or parts.scheme not in ("https", "http") or (
        parts.scheme == "http" and not loopback
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
        raise UsageError(
            "--listen-cert and --listen-key go together", hint="pass both, or neither"
        )
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
