"""The sandbox's Graph presence change notifications: subscriptions and their delivery.

Owns ``POST/GET/PATCH/DELETE /v1.0/subscriptions`` (GET on the collection lists them) and
``POST /v1.0/subscriptions/{id}/reauthorize`` for ``/communications/presences?$filter=id in
(…)`` and ``communications/presences/{id}``, the delivery of change and lifecycle
notifications, and the control route ``POST /_sandbox/certs``.
Written from microsoft-graph-docs-contrib (concepts/changenotifications-for-presence.md,
change-notifications-delivery-webhooks.md, change-notifications-with-resource-data.md,
change-notifications-lifecycle-events.md, api-reference/v1.0/api/subscription-post-subscriptions.md,
resources/subscription.md) and learn.microsoft.com/graph/changenotifications-for-presence:

- delegated tokens only (Presence.Read.All), at most 650 ids, at most 60 minutes, ``changeType``
  ``updated``, ``clientState`` at most 128 characters;
- one presence subscription per creating user per application (Microsoft: "A single user can
  create one presence subscription per unique application"); a second is refused with **409**
  and the body Graph sends (code ``ExtensionError``, "Operation: Create; Exception: [Status
  Code: Conflict; Reason: A subscripton already exists. It must be deleted before a another can
  be made.]", typo included: microsoft-graph-docs-contrib issue 2219, msgraph-sdk-go issue 596,
  msgraph-beta-sdk-dotnet issue 174); and, as the project's contract asks (no public source), a
  user id already in a live subscription of the same application is refused with a 400 naming
  it;
- ``GET /subscriptions`` (subscription-list.md): with a delegated token the subscriptions this
  application created for the signed-in user, with an application token all of this
  application's; ``clientState`` always null ("not returned for security purposes"). A
  subscription lives until it expires or is deleted: the sandbox cannot know that its creator
  died, nor does Graph;
- ``notificationUrl`` (and ``lifecycleNotificationUrl``) must be HTTPS and pass the
  ``validationToken`` handshake within 10 s (200, text/plain, the decoded token). The one
  deviation: a sandbox started with ``allow_http_notifications`` also takes ``http://`` loopback;
- basic notifications carry only the id in ``resourceData``; with ``includeResourceData`` the
  presence travels only in ``encryptedContent``, encrypted with the subscriber's certificate as
  documented (AES-256-CBC/PKCS7, IV = the key's first 16 bytes; ``dataSignature`` =
  HMAC-SHA256 of the encrypted bytes with that key; ``dataKey`` = the key under RSA-OAEP (SHA-1,
  as in the docs' Java sample));
- a delivery that fails or takes more than 3 s is retried with backoff while the subscription
  lives (Graph retries for up to 4 hours);
- fault keys ``notify_drop_rate`` (share of notifications never sent), ``notify_delay_s`` and
  ``lifecycle_reauthorize`` (true: a ``reauthorizationRequired`` lifecycle notification for every
  subscription now; deliveries pause after REAUTH_GRACE sandbox seconds until the subscription is
  renewed or reauthorized, and the changes of the pause are lost, as documented).

Delivery is driven by loop callbacks (a ``teams.presence`` event, a 1 s tick for time-driven
changes such as the Available fade); posts run as tasks that ``close`` cancels.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from presencectl.sandbox.errors import (
    GraphError,
    bad_request,
    bearer_claims,
    read_json_object,
    require,
)

if TYPE_CHECKING:
    from presencectl.sandbox.world import Claims, World

log = logging.getLogger(__name__)

MAX_PRESENCE_IDS = 650
MAX_SUBSCRIPTION_MINUTES = 60
MAX_CLIENT_STATE = 128
VALIDATION_TIMEOUT = 10.0
DELIVERY_TIMEOUT = 3.0
TICK = 1.0
RETRY_FIRST = 0.5
RETRY_MAX = 60.0
RETRY_FOR = 4 * 3600.0
REAUTH_GRACE = 60.0
GRAPH_BASE = "https://graph.microsoft.com/v1.0"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _verify(world: World) -> Any:
    """TLS trust for deliveries: the sandbox CA (receivers use its /_sandbox/certs), else system."""
    import ssl

    if world.ca_bundle:
        return ssl.create_default_context(cafile=world.ca_bundle)
    return True


def _iso(epoch: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    value = text.replace("Z", "+00:00")
    if "." in value:  # Graph writes up to 7 fractional digits; fromisoformat takes 6
        head, _, tail = value.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        value = f"{head}.{digits[:6].ljust(6, '0')}{tail[len(digits) :]}"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_presence_resource(resource: str) -> list[str] | None:
    """User ids of a presence subscription resource, or None if it is not one."""
    text = resource.strip().lstrip("/")
    path, _, query = text.partition("?")
    parts = path.split("/")
    if len(parts) == 3 and parts[0].lower() == "communications" and parts[1].lower() == "presences":
        return [parts[2].strip("'()")] if not query else None
    if path.lower() != "communications/presences":
        return None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "$filter":
            value = value.strip()
            if not value.lower().startswith("id in") or not value.endswith(")"):
                return None
            inner = value[value.index("(") + 1 : -1] if "(" in value else ""
            ids = [item.strip().strip("'\"") for item in inner.split(",")]
            return [i for i in ids if i]
    return None


# --------------------------------------------------------------------------- encryption


def load_encryption_certificate(text: str) -> Any:
    """The RSA public key of a base64 X.509 certificate (DER, or PEM text), or raise
    ValueError: Graph takes RSA keys of 2,048 to 4,096 bits."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    raw = text.strip()
    if raw.startswith("-----BEGIN"):
        cert = x509.load_pem_x509_certificate(raw.encode())
    else:
        cert = x509.load_der_x509_certificate(base64.b64decode(raw, validate=True))
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or not 2048 <= key.key_size <= 4096:
        raise ValueError("the certificate's key must be RSA of 2,048 to 4,096 bits")
    from cryptography.hazmat.primitives import serialization

    der = cert.public_bytes(serialization.Encoding.DER)
    return key, hashlib.sha1(der).hexdigest().upper()


def encrypt_resource(
    public_key: Any, thumbprint: str, cert_id: str, resource: dict[str, Any]
) -> dict[str, str]:
    """``encryptedContent`` for one notification, as change-notifications-with-resource-data.md
    describes the decryption (a fresh symmetric key per item)."""
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.asymmetric import padding as asym
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(32)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(json.dumps(resource).encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    data = encryptor.update(plain) + encryptor.finalize()
    signature = hmac.new(key, data, hashlib.sha256).digest()
    data_key = public_key.encrypt(
        key, asym.OAEP(mgf=asym.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    )
    return {
        "data": base64.b64encode(data).decode(),
        "dataSignature": base64.b64encode(signature).decode(),
        "dataKey": base64.b64encode(data_key).decode(),
        "encryptionCertificateId": cert_id,
        "encryptionCertificateThumbprint": thumbprint,
    }


# --------------------------------------------------------------------------- subscriptions


@dataclass
class PresenceSubscription:
    """One Graph change-notification subscription on presences."""

    id: str
    resource: str
    user_ids: list[str]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires_at: float
    application_id: str
    creator_id: str | None
    include_resource_data: bool = False
    certificate: str | None = None
    certificate_id: str | None = None
    public_key: Any = None
    thumbprint: str = ""
    reauth_due: float | None = None  # sandbox time after which deliveries pause
    last_seq: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "@odata.context": f"{GRAPH_BASE}/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": "updated",
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _iso(self.expires_at),
            "creatorId": self.creator_id,
            "includeResourceData": self.include_resource_data,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": self.certificate,
            "encryptionCertificateId": self.certificate_id,
            "notificationQueryOptions": None,
            "notificationUrlAppId": None,
        }


class PresenceNotifier:
    """Subscriptions of one world and the delivery of their notifications."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.subscriptions: dict[str, PresenceSubscription] = {}
        self.delivered = 0
        self.dropped = 0
        self.retried = 0
        self._by_user: dict[str, set[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self._random = random.Random(world.seed)
        world.events.subscribe(self._on_event)

    # -- bookkeeping
    def add(self, sub: PresenceSubscription) -> None:
        now = self.world.clock.now()
        for user_id in sub.user_ids:
            person = self.world.person_by_azure_id(user_id)
            if person is not None:
                sub.last_seq[user_id] = person.teams.presence(now).sequence_number
            self._by_user.setdefault(user_id, set()).add(sub.id)
        self.subscriptions[sub.id] = sub
        self.ensure_running()

    def remove(self, sub_id: str) -> None:
        sub = self.subscriptions.pop(sub_id, None)
        if sub is not None:
            for user_id in sub.user_ids:
                self._by_user.get(user_id, set()).discard(sub_id)

    def live(self) -> list[PresenceSubscription]:
        now = self.world.clock.now()
        for sub in [s for s in self.subscriptions.values() if s.expires_at <= now]:
            self.remove(sub.id)
        return list(self.subscriptions.values())

    # -- scheduling
    def _on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "teams.presence" and self.subscriptions and self._loop is not None:
            user_id = payload.get("userId")
            self._loop.call_soon(self._deliver, [user_id] if user_id else None)

    def ensure_running(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._timer is None:
            self._timer = self._loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._deliver(None)
        if self.subscriptions and self._loop is not None and not self._loop.is_closed():
            self._timer = self._loop.call_later(TICK, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._posts):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    def _deliver(self, user_ids: list[str] | None) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if self.world.faults.lifecycle_reauthorize:
            self.world.faults.lifecycle_reauthorize = False
            self._reauthorization_required()
        for sub, values in self.collect(user_ids):
            kept = []
            for value in values:
                if self._random.random() < self.world.faults.notify_drop_rate:
                    self.dropped += 1
                else:
                    kept.append(value)
            if kept:
                payload: dict[str, Any] = {"value": kept}
                if sub.include_resource_data:
                    from presencectl.sandbox.validation_tokens import validation_tokens

                    tokens = validation_tokens(self.world, sub.application_id)
                    if tokens is not None:
                        payload["validationTokens"] = tokens
                self._spawn(self._post(sub, sub.notification_url, payload))

    def _reauthorization_required(self) -> None:
        now = self.world.clock.now()
        for sub in self.live():
            sub.reauth_due = now + REAUTH_GRACE
            if not sub.lifecycle_url:
                continue  # Graph sends lifecycle events only to a lifecycleNotificationUrl
            value = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": _iso(sub.expires_at),
                "tenantId": self.world.tenant_id,
                "clientState": sub.client_state,
                "lifecycleEvent": "reauthorizationRequired",
            }
            self._spawn(self._post(sub, sub.lifecycle_url, {"value": [value]}))

    async def _post(self, sub: PresenceSubscription, url: str, payload: dict[str, Any]) -> None:
        import httpx

        delay = self.world.faults.notify_delay_s
        if delay:
            await asyncio.sleep(delay)
        wait = RETRY_FIRST
        started = asyncio.get_running_loop().time()
        async with httpx.AsyncClient(
            timeout=DELIVERY_TIMEOUT, verify=_verify(self.world)
        ) as client:
            while True:
                try:
                    answer = await client.post(url, json=payload)
                    if 200 <= answer.status_code < 300:
                        self.delivered += len(payload["value"])
                        return
                    why = f"HTTP {answer.status_code}"
                except Exception as exc:  # slow (> 3 s) or unreachable: retried, like Graph
                    why = type(exc).__name__
                if sub.id not in self.subscriptions:
                    return
                if asyncio.get_running_loop().time() - started > RETRY_FOR:
                    log.info("notification to %s discarded after retrying: %s", url, why)
                    return
                log.info("notification to %s failed (%s); retrying in %.1f s", url, why, wait)
                self.retried += 1
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX)

    def collect(
        self, user_ids: list[str] | None = None
    ) -> list[tuple[PresenceSubscription, list[dict[str, Any]]]]:
        """The change notifications due now (of ``user_ids``, or of everyone), per subscription."""
        now = self.world.clock.now()
        live = {s.id: s for s in self.live()}
        targets: list[tuple[PresenceSubscription, list[str]]]
        if user_ids is None:
            targets = [(s, s.user_ids) for s in live.values()]
        else:
            targets = [
                (live[sid], [uid])
                for uid in user_ids
                for sid in self._by_user.get(uid, ())
                if sid in live
            ]
        due: list[tuple[PresenceSubscription, list[dict[str, Any]]]] = []
        for sub, ids in targets:
            paused = sub.reauth_due is not None and now > sub.reauth_due
            values = []
            for user_id in ids:
                person = self.world.person_by_azure_id(user_id)
                if person is None or person.azure_id is None:
                    continue
                presence = person.teams.presence(now)
                if sub.last_seq.get(user_id) == presence.sequence_number:
                    continue
                sub.last_seq[user_id] = presence.sequence_number
                if not paused:
                    values.append(self._notification(sub, person.azure_id, presence))
            if values:
                due.append((sub, values))
        return due

    def _notification(
        self, sub: PresenceSubscription, user_id: str, presence: Any
    ) -> dict[str, Any]:
        odata_id = f"users/{user_id}/presence"
        value: dict[str, Any] = {
            "subscriptionId": sub.id,
            "clientState": sub.client_state,
            "changeType": "updated",
            "tenantId": self.world.tenant_id,
            "resource": f"communications/presences/{user_id}",
            "subscriptionExpirationDateTime": _iso(sub.expires_at),
            "resourceData": {
                "@odata.id": odata_id,
                "@odata.type": "#microsoft.graph.presence",
                "id": user_id,
            },
            "organizationId": self.world.tenant_id,
        }
        if sub.include_resource_data and sub.public_key is not None:
            data = presence.graph_json(user_id)
            resource = {
                "@odata.id": odata_id,
                "@odata.type": "#microsoft.graph.presence",
                "id": user_id,
                "availability": data.get("availability"),
                "activity": data.get("activity"),
            }
            value["encryptedContent"] = encrypt_resource(
                sub.public_key, sub.thumbprint, sub.certificate_id or "", resource
            )
        return value


def notifier(world: World) -> PresenceNotifier:
    found = world.extra.get("graph_presence_notifier")
    if found is None:
        found = world.extra["graph_presence_notifier"] = PresenceNotifier(world)
    return found


def notification_stats(world: World) -> dict[str, int]:
    """What ``GET /_sandbox/stats`` adds for notifications."""
    found = world.extra.get("graph_presence_notifier")
    if found is None:
        return {"subscriptions_active": 0, "notifications_delivered": 0, "notifications_dropped": 0}
    return {
        "subscriptions_active": len(found.live()),
        "notifications_delivered": found.delivered,
        "notifications_dropped": found.dropped,  # by ``notify_drop_rate``
    }


def _url_ok(world: World, url: Any) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.netloc:
        return True
    # The documented deviation: `sandbox serve --allow-http-notifications` takes http loopback.
    allowed = bool(world.extra.get("allow_http_notifications"))
    return allowed and parts.scheme == "http" and parts.hostname in LOOPBACK


async def _validate(world: World, url: str) -> bool:
    import httpx

    token = (
        "Validation: Testing client application reachability for subscription "
        f"Request-Id: {uuid.uuid4()}"
    )
    separator = "&" if "?" in url else "?"
    try:
        async with httpx.AsyncClient(timeout=VALIDATION_TIMEOUT, verify=_verify(world)) as client:
            answer = await client.post(
                f"{url}{separator}validationToken={quote(token)}",
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
    except Exception as exc:
        log.info("validation request to %s failed: %s", url, exc)
        return False
    content_type = answer.headers.get("content-type", "")
    return answer.status_code == 200 and "text/plain" in content_type and answer.text == token


def _handlers(world: World) -> dict[str, Callable[[Request], Awaitable[Response]]]:
    def expiry(raw: Any) -> float:
        when = _parse_iso(raw)
        if when is None:
            raise bad_request("Invalid or missing 'expirationDateTime'.")
        now = world.clock.now()
        if when <= now:
            raise bad_request("Subscription expiration date must be in the future.")
        if when > now + MAX_SUBSCRIPTION_MINUTES * 60 + 1:
            raise bad_request(
                "Subscription expiration can only be 60 minutes in the future for presence."
            )
        return when

    def owned(request: Request, claims: Claims) -> PresenceSubscription:
        sub_id = request.path_params["sub_id"]
        sub = {s.id: s for s in notifier(world).live()}.get(sub_id)
        if sub is None or sub.application_id != claims.appid:
            raise GraphError(
                404, "ResourceNotFound", f"The object was not found. Subscription '{sub_id}'."
            )
        return sub

    async def create(request: Request) -> Response:
        claims = bearer_claims(world, request)
        data = await read_json_object(request)
        resource = data.get("resource")
        if not isinstance(resource, str) or not resource:
            raise bad_request("Invalid 'resource'.")
        user_ids = parse_presence_resource(resource)
        if user_ids is None:
            raise bad_request(f"Resource '{resource}' is not supported by this sandbox.")
        if claims.kind != "delegated":
            raise GraphError(
                403,
                "ExtensionError",
                "Operation: Create; Exception: [Status Code: Forbidden; Reason: Application "
                "permissions are not supported for presence subscriptions.]",
            )
        require(claims, (), ("Presence.Read.All",), code="Forbidden")
        if not user_ids:
            raise bad_request("The subscription resource must name at least one id.")
        if len(user_ids) > MAX_PRESENCE_IDS:
            raise bad_request(
                f"Too many ids in the subscription resource ({len(user_ids)}); "
                f"at most {MAX_PRESENCE_IDS} are allowed."
            )
        if str(data.get("changeType", "")).lower() != "updated":
            raise bad_request("Presence subscriptions support changeType 'updated' only.")
        client_state = data.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE
        ):
            raise bad_request("clientState must be a string of at most 128 characters.")
        when = expiry(data.get("expirationDateTime"))
        rich = data.get("includeResourceData") is True
        public_key, thumbprint = None, ""
        certificate, certificate_id = (
            data.get("encryptionCertificate"),
            data.get("encryptionCertificateId"),
        )
        if rich:
            if (
                not isinstance(certificate, str)
                or not isinstance(certificate_id, str)
                or not (0 < len(certificate_id) <= 128)
            ):
                raise bad_request(
                    "encryptionCertificate and encryptionCertificateId are required when "
                    "includeResourceData is true."
                )
            try:
                public_key, thumbprint = load_encryption_certificate(certificate)
            except ValueError as exc:
                raise bad_request(f"Invalid encryptionCertificate: {exc}") from exc
        live = notifier(world).live()
        mine = [s for s in live if s.application_id == claims.appid]
        for sub in mine:
            if sub.creator_id == claims.oid:
                raise GraphError(
                    409, "ExtensionError",
                    "Operation: Create; Exception: [Status Code: Conflict; Reason: A subscripton "
                    "already exists. It must be deleted before a another can be made.]",
                )  # fmt: skip
        taken = {uid for s in mine for uid in s.user_ids}
        for user_id in user_ids:
            if user_id in taken:
                raise bad_request(
                    f"The presence of '{user_id}' is already in a subscription of this application."
                )
        url = data.get("notificationUrl")
        lifecycle = data.get("lifecycleNotificationUrl")
        if not _url_ok(world, url):
            raise bad_request("The notificationUrl must be an https URL.")
        if lifecycle is not None and not _url_ok(world, lifecycle):
            raise bad_request("The lifecycleNotificationUrl must be an https URL.")
        for target in [url, *([lifecycle] if lifecycle else [])]:
            if not await _validate(world, target):
                raise bad_request(
                    "Subscription validation request failed. Response must exactly match "
                    "validationToken query parameter."
                )
        sub = PresenceSubscription(
            id=str(uuid.uuid4()),
            resource=resource,
            user_ids=user_ids,
            notification_url=str(url),
            lifecycle_url=lifecycle,
            client_state=client_state,
            expires_at=when,
            application_id=claims.appid,
            creator_id=claims.oid,
            include_resource_data=rich,
            certificate=certificate if rich else None,
            certificate_id=certificate_id if rich else None,
            public_key=public_key,
            thumbprint=thumbprint,
        )
        notifier(world).add(sub)
        return JSONResponse(sub.to_json(), status_code=201)

    async def get(request: Request) -> Response:
        return JSONResponse(owned(request, bearer_claims(world, request)).to_json())

    async def list_all(request: Request) -> Response:
        claims = bearer_claims(world, request)
        listed = [
            {**s.to_json(), "clientState": None}
            for s in notifier(world).live()
            if s.application_id == claims.appid
            and (claims.kind != "delegated" or s.creator_id == claims.oid)
        ]
        for item in listed:
            item.pop("@odata.context", None)
        return JSONResponse(
            {"@odata.context": f"{GRAPH_BASE}/$metadata#subscriptions", "value": listed}
        )

    async def patch(request: Request) -> Response:
        sub = owned(request, bearer_claims(world, request))
        data = await read_json_object(request)
        sub.expires_at = expiry(data.get("expirationDateTime"))
        if isinstance(data.get("encryptionCertificate"), str):
            try:
                sub.public_key, sub.thumbprint = load_encryption_certificate(
                    data["encryptionCertificate"]
                )
            except ValueError as exc:
                raise bad_request(f"Invalid encryptionCertificate: {exc}") from exc
            sub.certificate = data["encryptionCertificate"]
            sub.certificate_id = data.get("encryptionCertificateId") or sub.certificate_id
        sub.reauth_due = None  # renewing also reauthorizes (lifecycle-events page)
        return JSONResponse(sub.to_json())

    async def reauthorize(request: Request) -> Response:
        sub = owned(request, bearer_claims(world, request))
        sub.reauth_due = None
        return Response(status_code=204)

    async def delete(request: Request) -> Response:
        sub = owned(request, bearer_claims(world, request))
        notifier(world).remove(sub.id)
        return Response(status_code=204)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except GraphError as exc:
                return exc.to_response(request)

        return run

    return {
        name: guarded(h)
        for name, h in {
            "create": create, "get": get, "patch": patch, "delete": delete,
            "reauthorize": reauthorize, "list": list_all,
        }.items()
    }  # fmt: skip


def _loopback_name(hostname: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    import ipaddress

    if hostname.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def _certs_handler(world: World) -> Callable[[Request], Awaitable[Response]]:
    async def certs(request: Request) -> Response:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            data = None
        hostname = data.get("hostname") if isinstance(data, dict) else None
        ca = world.extra.get("ca")
        if not isinstance(hostname, str) or not hostname:
            return JSONResponse(
                {"error": {"code": "invalid_request", "message": 'send {"hostname": "…"}'}},
                status_code=400,
            )
        if not _loopback_name(hostname):
            # The CA is trusted by every profile written for this sandbox: it signs loopback
            # names only, never a name a real site answers to.
            return JSONResponse(
                {"error": {"code": "invalid_request", "message": (
                    f"{hostname!r} is not a loopback name: the sandbox CA signs localhost, "
                    "127.0.0.0/8 and ::1 only"
                )}},
                status_code=400,
            )  # fmt: skip
        if ca is None:
            return JSONResponse(
                {"error": {"code": "no_ca", "message": "this sandbox has no CA"}}, status_code=409
            )
        cert = ca.issue_cert(hostname)
        return JSONResponse(
            {
                "cert_pem": "".join(blob.bytes().decode() for blob in cert.cert_chain_pems),
                "key_pem": cert.private_key_pem.bytes().decode(),
            }
        )

    return certs


def notification_routes(world: World) -> list[BaseRoute]:
    """The Graph subscription routes and ``POST /_sandbox/certs``."""
    subs = _handlers(world)
    one = "/v1.0/subscriptions/{sub_id}"
    return [
        Route("/v1.0/subscriptions", subs["create"], methods=["POST"],
              name="graph.subscriptions.create"),
        Route("/v1.0/subscriptions", subs["list"], methods=["GET"],
              name="graph.subscriptions.list"),
        Route(one, subs["get"], methods=["GET"], name="graph.subscriptions.get"),
        Route(one, subs["patch"], methods=["PATCH"], name="graph.subscriptions.renew"),
        Route(one, subs["delete"], methods=["DELETE"], name="graph.subscriptions.delete"),
        Route(f"{one}/reauthorize", subs["reauthorize"], methods=["POST"],
              name="graph.subscriptions.reauthorize"),
        Route("/_sandbox/certs", _certs_handler(world), methods=["POST"], name="sandbox_certs"),
    ]  # fmt: skip


__all__ = [
    "PresenceNotifier",
    "encrypt_resource",
    "notification_routes",
    "notification_stats",
    "notifier",
    "parse_presence_resource",
]
