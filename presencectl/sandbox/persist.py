"""The world of ``sandbox serve`` kept across restarts: its home directory and its snapshot.

Owns ``SandboxHome`` (``state_dir()/sandbox/<port>-<profile>/``, 0700: the CA and its key, the
world's snapshot ``world.json``, 0600, written atomically) and the snapshot's two halves,
``snapshot(world)`` and ``restore(world, data)``. A real tenant does not forget its app
registrations, secrets, consents, users, passwords, presence, subscriptions or the key of its
own OIDC issuer (federated credentials) when a front end restarts; neither does a sandbox that
keeps its home. What starts afresh on each start: request statistics, fault keys, throttle
windows and pending device codes (all of a process's life).

The secrets in the snapshot are the sandbox's own fakes (client secrets it minted, its token
signing key, the simulated people's passwords); they are written to the 0600 file only and
never logged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from presencectl.sandbox.people import Person
from presencectl.sandbox.world import RefreshGrant, World

FORMAT = 1
WORLD_FILE = "world.json"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVING_LOCK = "serving.lock"  # held by the process serving this home (see config.sandbox_serving)

_PERSON_FIELDS = [f.name for f in fields(Person) if not f.name.startswith("_")]


class SandboxHome:
    """Where one ``sandbox serve --port N [--write-profile NAME]`` keeps its world."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_serve(cls, port: int, profile: str | None) -> SandboxHome:
        from presencectl.config import SANDBOX_DIR_PREFIX, state_dir

        name = profile or "no-profile"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        # The prefix marks the directory as a sandbox's (config.sandbox_serving looks for it).
        return cls(state_dir() / "sandbox" / f"{SANDBOX_DIR_PREFIX}{port}-{safe}")

    @property
    def world_file(self) -> Path:
        return self.path / WORLD_FILE

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def wipe(self) -> None:
        """``--fresh``: the stored world and CA are dropped (the home itself stays)."""
        for name in (WORLD_FILE, CA_FILE, CA_KEY_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def load(self) -> dict[str, Any] | None:
        """The stored snapshot, or None when there is none; a damaged one raises ValueError."""
        try:
            text = self.world_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{self.world_file} is not a sandbox world of format {FORMAT}")
        return data

    def save(self, data: dict[str, Any]) -> bool:
        """Write the snapshot atomically (0600); False when it equals the stored one."""
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        with contextlib.suppress(FileNotFoundError):
            if self.world_file.read_text(encoding="utf-8") == text:
                return False
        write_private(self.world_file, text.encode("utf-8"))
        return True


def hold_serving_lock(directory: Path) -> int:
    """Take ``directory/serving.lock`` for this process's life; its descriptor (closing it
    releases the lock, and so does the kernel when the process ends, however it ends).

    Raises ``already_running`` (exit 3) when another process serves that directory.
    """
    import sys
    from datetime import UTC, datetime

    from presencectl.errors import ConfigError

    path = directory / SERVING_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    if sys.platform != "win32":
        import fcntl
        import time

        for attempt in range(10):  # a probe (config.sandbox_serving) holds it for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 9:
                    time.sleep(0.05)
        else:
            os.close(fd)
            try:
                holder = json.loads(path.read_text(encoding="utf-8") or "{}")
            except (OSError, ValueError):
                holder = {}
            raise ConfigError(
                f"the sandbox in {directory} is already served by PID {holder.get('pid', '?')}",
                hint="stop that sandbox first, or pick another --port or --write-profile",
                code="already_running",
            ) from None
    text = json.dumps({"pid": os.getpid(), "since": datetime.now(UTC).isoformat()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)
    return fd


def write_private(path: Path, blob: bytes) -> None:
    """``path`` replaced atomically by ``blob``, 0600 from its first byte."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- snapshot


def snapshot(world: World) -> dict[str, Any]:
    """Everything a restart must keep, as JSON-ready data. Run it on the server's event loop."""
    from presencectl.sandbox.connect_api import ConnectFeed
    from presencectl.sandbox.graph_notifications import PresenceNotifier

    notifier = world.extra.get("graph_presence_notifier")
    feed = world.extra.get("connect_feed")
    return {
        "format": FORMAT,
        "seed": world.seed,
        "tenant_id": world.tenant_id,
        "connect_client_id": world.connect_client_id,
        "connect_client_secret": world.connect_client_secret,
        "signing_key": base64.b64encode(world.signing_key).decode("ascii"),
        "clock_offset": world.clock.offset,
        "people": [_person(p) for p in world.people],
        "applications": world.applications,
        "service_principals": world.service_principals,
        "graph_sp_id": world.graph_sp_id,
        "app_role_assignments": world.app_role_assignments,
        "permission_grants": world.permission_grants,
        "app_secrets": world.app_secrets,
        "refresh_tokens": {
            token: {**asdict(grant), "scopes": sorted(grant.scopes)}
            for token, grant in world.refresh_tokens.items()
        },
        "graph_subscriptions": (
            [_graph_subscription(s) for s in notifier.live()]
            if isinstance(notifier, PresenceNotifier)
            else []
        ),
        "connect_subscriptions": (
            [asdict(s) for s in feed.live()] if isinstance(feed, ConnectFeed) else []
        ),
        "oidc_issuer_key": _issuer_key_pem(world),
    }


def _issuer_key_pem(world: World) -> str | None:
    """The key of the sandbox's own OIDC issuer (federated credentials), once it was made:
    a workload token minted before a restart must still verify after it."""
    auth = world.client_auth
    key = getattr(auth, "_issuer_key", None) if auth is not None else None
    if key is None:
        return None
    from cryptography.hazmat.primitives import serialization

    blob: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return blob.decode("ascii")


def restore(world: World, data: dict[str, Any]) -> None:
    """Put a snapshot back into a world just built (before its server starts)."""
    world.tenant_id = str(data["tenant_id"])
    world.connect_client_id = str(data["connect_client_id"])
    world.connect_client_secret = str(data["connect_client_secret"])
    world.signing_key = base64.b64decode(data["signing_key"])
    world.clock.offset = float(data.get("clock_offset", 0.0))
    world.replace_people([_person_from(row) for row in data["people"]])
    world.applications.clear()
    world.service_principals.clear()
    for app in data["applications"].values():
        world.add_application(app)
    for sp in data["service_principals"].values():
        world.add_service_principal(sp)
    world.graph_sp_id = str(data["graph_sp_id"])
    world.app_role_assignments = dict(data["app_role_assignments"])
    world.permission_grants = dict(data["permission_grants"])
    world.app_secrets = {k: list(v) for k, v in data["app_secrets"].items()}
    world.refresh_tokens = {
        token: RefreshGrant(**{**grant, "scopes": set(grant["scopes"])})
        for token, grant in data["refresh_tokens"].items()
    }
    issuer_key = data.get("oidc_issuer_key")
    if issuer_key:
        from cryptography.hazmat.primitives import serialization

        from presencectl.sandbox.client_assertions import client_auth_of

        auth = client_auth_of(world)
        auth._issuer_key = serialization.load_pem_private_key(issuer_key.encode(), None)
    # Subscriptions come back once the server's loop runs (restore_subscriptions).
    world.extra["restored_subscriptions"] = (
        list(data.get("graph_subscriptions", [])),
        list(data.get("connect_subscriptions", [])),
    )


async def restore_subscriptions(world: World) -> tuple[int, int]:
    """On the server's loop: the stored Graph and Connect subscriptions live again."""
    from presencectl.sandbox.connect_api import ConnectFeed, ConnectSubscription
    from presencectl.sandbox.graph_notifications import (
        PresenceSubscription,
        load_encryption_certificate,
        notifier,
    )

    graph_rows, connect_rows = world.extra.pop("restored_subscriptions", ([], []))
    now = world.clock.now()
    graph = 0
    for row in graph_rows:
        if row["expires_at"] <= now:
            continue
        sub = PresenceSubscription(**row)
        if sub.certificate:
            sub.public_key, sub.thumbprint = load_encryption_certificate(sub.certificate)
        notifier(world).add(sub)
        graph += 1
    connect = 0
    if connect_rows:
        feed = world.extra.get("connect_feed")
        if not isinstance(feed, ConnectFeed):
            feed = world.extra["connect_feed"] = ConnectFeed(world, world.extra.get("hub"))
        for row in connect_rows:
            if row["expires_at"] > now:
                feed.subscriptions[row["id"]] = ConnectSubscription(**row)
                connect += 1
    return graph, connect


def _graph_subscription(sub: Any) -> dict[str, Any]:
    row = {f.name: getattr(sub, f.name) for f in fields(sub)}
    row.pop("public_key", None)  # made again from the certificate
    row.pop("thumbprint", None)
    row.pop("last_seq", None)  # add() reads the current sequence numbers
    return row


def _person(person: Person) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(person, name) for name in _PERSON_FIELDS}
    row["flags"] = sorted(person.flags)
    row["roles"] = sorted(person.roles)
    teams = person._teams
    if teams is not None:
        row["teams"] = {
            "client": list(teams.client),
            "client_set_at": teams.client_set_at,
            "out_of_office": teams.out_of_office,
            "sessions": {sid: asdict(s) for sid, s in teams.sessions.items()},
            "preferred": asdict(teams.preferred) if teams.preferred is not None else None,
            "seq": teams._seq,
            "last": list(teams._last) if teams._last is not None else None,
        }
    connect = person._connect
    if connect is not None:
        row["connect"] = {
            "resources": {name: asdict(r) for name, r in connect.resources.items()},
            "mode": connect.mode,
            "seq": connect._seq,
            "last": connect._last,
        }
    return row


def _person_from(row: dict[str, Any]) -> Person:
    from presencectl.sandbox.connect_presence import ConnectPresenceState, ConnectResource
    from presencectl.sandbox.teams_presence import (
        AppSession,
        PreferredPresence,
        TeamsPresenceState,
    )

    person = Person(**{name: row[name] for name in _PERSON_FIELDS if name in row})
    person.flags = set(row.get("flags", ()))
    person.roles = set(row.get("roles", ()))
    person.proxy_addresses = list(row.get("proxy_addresses", ()))
    teams = row.get("teams")
    if teams is not None:
        state = TeamsPresenceState()
        state.client = (teams["client"][0], teams["client"][1])
        state.client_set_at = float(teams["client_set_at"])
        state.out_of_office = bool(teams["out_of_office"])
        state.sessions = {sid: AppSession(**s) for sid, s in teams["sessions"].items()}
        preferred = teams.get("preferred")
        state.preferred = PreferredPresence(**preferred) if preferred else None
        state._seq = int(teams["seq"])
        last = teams.get("last")
        state._last = (last[0], last[1], bool(last[2])) if last else None
        person._teams = state
    connect = row.get("connect")
    if connect is not None:
        cstate = ConnectPresenceState()
        cstate.resources = {n: ConnectResource(**r) for n, r in connect["resources"].items()}
        cstate.mode = str(connect["mode"])
        cstate._seq = int(connect["seq"])
        cstate._last = str(connect["last"])
        person._connect = cstate
    return person
