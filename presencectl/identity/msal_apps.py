"""msal applications built one way: the profile's HTTP stack, tenant authority, persisted caches.

Owns: how every msal ``ClientApplication`` of the tool is constructed (``http_client`` from
:func:`presencectl.transport.msal_http_client`, so msal shares the CA bundle and proxy, and gets
back the port it drops from the user-realm URL; ``instance_discovery=False`` for a host that is
not Microsoft's; the tenant-specific authority), the token caches persisted through
:mod:`presencectl.secrets` (one per profile and identity), and the translation of transport
failures raised inside msal into NetworkError.
"""

from __future__ import annotations

import base64
import logging
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from presencectl import secrets
from presencectl.identity.errors import authority_error, network_error, service_error

if TYPE_CHECKING:
    import msal

    from presencectl.config import Profile

log = logging.getLogger(__name__)

T = TypeVar("T")

# Windows Credential Manager refuses blobs over 2,560 bytes, and msal caches holding refresh and id
# tokens are bigger: store the compressed cache in chunks well under that.
_CHUNK = 2000
_FORMAT = "z1:"
_CHUNKED = "chunks:"

ADMIN = "admin"
APP = "app"
SYNC_USER = "sync_user"


def cache_secret_name(identity: str) -> str:
    return f"token_cache:{identity}"


class PersistentTokenCache:
    """An msal ``SerializableTokenCache`` loaded from and saved to the profile's secrets."""

    def __init__(self, profile_name: str, identity: str) -> None:
        import msal

        self.profile_name = profile_name
        self.name = cache_secret_name(identity)
        self.cache = msal.SerializableTokenCache()
        self._lock = threading.Lock()
        state = self._read()
        if state:
            try:
                self.cache.deserialize(state)
            except ValueError:
                log.warning("ignoring an unreadable token cache (%s); signing in afresh", self.name)

    def _read(self) -> str | None:
        head = secrets.get_secret(self.profile_name, self.name)
        if not head:
            return None
        try:
            if head.startswith(_CHUNKED):
                count = int(head[len(_CHUNKED) :])
                parts = [
                    secrets.get_secret(self.profile_name, f"{self.name}:{i}") or ""
                    for i in range(count)
                ]
                head = "".join(parts)
            if head.startswith(_FORMAT):
                return zlib.decompress(base64.b64decode(head[len(_FORMAT) :])).decode("utf-8")
        except (ValueError, zlib.error):
            log.warning("ignoring a damaged token cache (%s)", self.name)
            return None
        return head

    def save(self) -> None:
        """Persist the cache if msal changed it."""
        with self._lock:
            if not self.cache.has_state_changed:
                return
            packed = (
                _FORMAT
                + base64.b64encode(
                    zlib.compress(self.cache.serialize().encode("utf-8"), 9)
                ).decode()
            )
            old_head = secrets.get_secret(self.profile_name, self.name) or ""
            if len(packed) <= _CHUNK:
                secrets.set_secret(self.profile_name, self.name, packed)
            else:
                chunks = [packed[i : i + _CHUNK] for i in range(0, len(packed), _CHUNK)]
                for i, chunk in enumerate(chunks):
                    secrets.set_secret(self.profile_name, f"{self.name}:{i}", chunk)
                secrets.set_secret(self.profile_name, self.name, f"{_CHUNKED}{len(chunks)}")
            if old_head.startswith(_CHUNKED):
                old = int(old_head[len(_CHUNKED) :] or 0)
                new = -(-len(packed) // _CHUNK) if len(packed) > _CHUNK else 0
                for i in range(new, old):
                    secrets.delete_secret(self.profile_name, f"{self.name}:{i}")
            self.cache.has_state_changed = False


def forget_cache(profile_name: str, identity: str) -> bool:
    """Delete a persisted token cache (all of its chunks)."""
    name = cache_secret_name(identity)
    head = secrets.get_secret(profile_name, name) or ""
    if head.startswith(_CHUNKED):
        for i in range(int(head[len(_CHUNKED) :] or 0)):
            secrets.delete_secret(profile_name, f"{name}:{i}")
    return secrets.delete_secret(profile_name, name)


def move_cache(profile_name: str, old_identity: str, new_identity: str) -> None:
    """Store a persisted token cache under another identity (a sync user that becomes the first
    of the pool); the old name is removed."""
    old = PersistentTokenCache(profile_name, old_identity)
    forget_cache(profile_name, new_identity)
    state = old.cache.serialize()
    if secrets.get_secret(profile_name, old.name):
        new = PersistentTokenCache(profile_name, new_identity)
        new.cache.deserialize(state)
        new.cache.has_state_changed = True
        new.save()
    forget_cache(profile_name, old_identity)


def needs_instance_discovery(authority_url: str) -> bool:
    """msal's instance discovery only knows Microsoft's hosts; any other host must skip it."""
    from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

    return (urlsplit(authority_url).hostname or "") in WELL_KNOWN_AUTHORITY_HOSTS


@contextmanager
def msal_errors(where: str) -> Iterator[None]:
    """Turn transport failures raised from inside msal into NetworkError."""
    import httpx
    from msal.exceptions import MsalServiceError

    try:
        yield
    except httpx.TransportError as exc:
        raise network_error(exc, where) from exc
    except MsalServiceError as exc:  # a non-JSON 5xx: msal calls raise_for_status()
        raise service_error(exc, where) from exc


def _common_kwargs(
    profile: Profile, cache: PersistentTokenCache | None, http_cache: dict[str, Any] | None
) -> dict[str, Any]:
    from presencectl.transport import msal_http_client

    kwargs: dict[str, Any] = {
        "authority": profile.authority,
        "http_client": msal_http_client(profile.http_settings()),
        "instance_discovery": needs_instance_discovery(profile.authority_url),
    }
    if cache is not None:
        kwargs["token_cache"] = cache.cache
    if http_cache is not None:
        # We own this mapping so that we can empty msal's 60-second "identical failing request"
        # cache before a new password attempt (see SyncUserTokenProvider).
        kwargs["http_cache"] = http_cache
    return kwargs


def _construct(factory: Callable[[], T], authority: str) -> T:
    with msal_errors(authority):
        try:
            return factory()
        except ValueError as exc:  # msal: "Unable to get authority configuration for …"
            raise authority_error(exc, authority) from exc


def public_app(
    profile: Profile,
    client_id: str,
    cache: PersistentTokenCache | None = None,
    *,
    http_cache: dict[str, Any] | None = None,
) -> msal.PublicClientApplication:
    import msal

    kwargs = _common_kwargs(profile, cache, http_cache)
    return _construct(lambda: msal.PublicClientApplication(client_id, **kwargs), profile.authority)


def confidential_app(
    profile: Profile,
    client_id: str,
    client_credential: str | dict[str, Any],
    cache: PersistentTokenCache | None = None,
) -> msal.ConfidentialClientApplication:
    """``client_credential``: a secret, or a certificate / client assertion as msal takes them
    (identity/app_credentials.py)."""
    import msal

    kwargs = _common_kwargs(profile, cache, None)
    return _construct(
        lambda: msal.ConfidentialClientApplication(
            client_id, client_credential=client_credential, **kwargs
        ),
        profile.authority,
    )
