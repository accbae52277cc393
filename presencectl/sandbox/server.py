"""Serving the sandbox: a trustme CA, uvicorn over HTTPS in a background thread, a clean stop.

Owns ``SandboxServer`` (start/stop), ``running_sandbox(...)`` (the context manager tests, demo
and bench use) and ``Sandbox`` (what it yields: base URL, CA file, world, a control client, and
``write_profile`` which writes a presencectl profile pointing at the sandbox). With a ``home``
(``sandbox serve --port N``) the CA and the world outlive the process (``persist.py``); without
one they live in a temporary directory removed at stop. Either way the serving process holds
``serving.lock`` next to the CA for its life: that is how other commands tell a running
sandbox from a stopped one (``config.sandbox_serving``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presencectl.sandbox.people import ADMIN_EMAIL
from presencectl.sandbox.world import DEFAULT_TOKEN_LIFETIME, World

if TYPE_CHECKING:
    from presencectl.sandbox.persist import SandboxHome

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class SandboxServer:
    """One HTTPS server for one World, run by uvicorn in its own thread and event loop."""

    def __init__(
        self,
        world: World,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        home: SandboxHome | None = None,
    ) -> None:
        self.world = world
        self.home = home
        self._lock_fd: int | None = None
        self.host = host
        self.port = port
        self.log_level = log_level
        self._tmpdir: str | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket: socket.socket | None = None
        self.base_url = ""
        self.ca_bundle = ""

    def _make_certs(self) -> tuple[str, str]:
        import trustme

        from presencectl.config import SANDBOX_DIR_PREFIX
        from presencectl.sandbox.persist import CA_FILE, CA_KEY_FILE, write_private

        self._tmpdir = tempfile.mkdtemp(prefix=SANDBOX_DIR_PREFIX)
        ca_dir = Path(self._tmpdir)
        ca: Any = None
        if self.home is not None:
            ca_dir = self.home.path
            self._hold_serving_lock(ca_dir)
            with contextlib.suppress(FileNotFoundError):
                ca = trustme.CA.from_pem(
                    (ca_dir / CA_FILE).read_bytes(), (ca_dir / CA_KEY_FILE).read_bytes()
                )
        else:
            self._hold_serving_lock(ca_dir)
        if ca is None:
            ca = trustme.CA(organization_name="presencectl sandbox")
            if self.home is not None:  # the key first: a CA file never exists without its key
                write_private(ca_dir / CA_KEY_FILE, ca.private_key_pem.bytes())
            write_private(ca_dir / CA_FILE, ca.cert_pem.bytes())
        self.world.extra["ca"] = ca  # POST /_sandbox/certs issues receiver certificates with it
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        ca_path = ca_dir / CA_FILE
        # The server's own certificate and key: new each start, in the temporary dir.
        cert_path = Path(self._tmpdir) / "server.pem"
        key_path = Path(self._tmpdir) / "server.key"
        cert.private_key_pem.write_to_path(str(key_path))
        with cert_path.open("wb") as fh:
            for blob in cert.cert_chain_pems:
                fh.write(blob.bytes())
        self.ca_bundle = str(ca_path)
        return str(cert_path), str(key_path)

    def _hold_serving_lock(self, directory: Path) -> None:
        from presencectl.errors import PresencectlError
        from presencectl.sandbox.persist import hold_serving_lock

        try:
            self._lock_fd = hold_serving_lock(directory)
        except PresencectlError:
            self.stop()
            raise

    def snapshot(self) -> dict[str, Any]:
        """The world's snapshot, taken on the server's loop (no route runs meanwhile)."""
        from presencectl.sandbox.persist import snapshot

        async def take() -> dict[str, Any]:
            return snapshot(self.world)

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(take(), self._loop).result(timeout=30)

    def restore_subscriptions(self) -> tuple[int, int]:
        from presencectl.sandbox.persist import restore_subscriptions

        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(restore_subscriptions(self.world), self._loop)
        return future.result(timeout=30)

    def start(self) -> None:
        import uvicorn

        from presencectl.sandbox.app import build_app

        certfile, keyfile = self._make_certs()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit TCP_NODELAY (Linux, BSD). Without it, a TLS answer written as
        # headers + body meets the client's delayed ACK and every response costs ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            self.stop()  # no temporary dir (with server.key) left behind
            from presencectl.errors import UsageError

            raise UsageError(
                f"the sandbox cannot listen on {self.host}:{self.port}: {exc.strerror}",
                hint="pick another --port, or --port 0 for a free one",
                code="port_unavailable",
            ) from exc
        sock.listen(512)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"https://{host}:{self.port}"
        self.world.base_url = self.base_url
        self.world.ca_bundle = self.ca_bundle

        app = build_app(self.world)
        from presencectl.transport import route_uvicorn_logs

        config = uvicorn.Config(
            app,
            log_config=None,  # uvicorn's records go through our handler (route_uvicorn_logs)
            log_level=self.log_level,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            lifespan="off",
            ws=_ws_impl(),
            access_log=self.log_level == "debug",
            timeout_graceful_shutdown=2,
            server_header=False,
            # Idle connections stay open past any Retry-After (Graph's front ends keep them for
            # minutes), so a client's pool survives a throttle pause; and each is known from its
            # TCP accept on (throttle.RetryAfterDelivery needs the ones a request is on its way on).
            timeout_keep_alive=120,
            http=_tracked_h11(self.world),
        )
        route_uvicorn_logs(access=self.log_level == "debug")
        self._server = uvicorn.Server(config)
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(started))
            except BaseException as exc:
                failure.append(exc)
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"sandbox-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT) or failure or not self._server.started:
            self.stop()
            if failure:
                raise RuntimeError(f"sandbox failed to start: {failure[0]}") from failure[0]
            raise RuntimeError("sandbox failed to start in time")
        log.info("sandbox serving on %s", self.base_url)

    async def _reap_idle(self) -> None:
        server = self._server
        for _ in range(100):
            await asyncio.sleep(0.01)
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None and transport.is_closing():
                    transport.abort()
            if not server.server_state.connections:
                return

    async def _serve(self, started: threading.Event) -> None:
        server = self._server
        task = asyncio.ensure_future(server.serve(sockets=[self._socket]))
        while not server.started and not task.done():
            await asyncio.sleep(0.005)
        started.set()
        await task

    def stop(self) -> None:
        notifier = self.world.extra.get("graph_presence_notifier")
        if notifier is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(notifier.close)
        if self._server is not None:
            self._server.should_exit = True
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(
                        lambda: asyncio.ensure_future(self._reap_idle())
                    )
        if self._thread is not None:
            # Idle keep-alive TLS connections of clients that were never closed would hold a
            # graceful shutdown for seconds (TLS close waits for the peer): they are aborted by
            # _reap_idle; in-flight requests get a moment, then the stop is forced.
            self._thread.join(timeout=1.0)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock goes with the descriptor
            self._lock_fd = None


def _tracked_h11(world: World) -> type:
    """uvicorn's h11 protocol, each connection added to ``world.extra["connections"]`` (weak)."""
    import weakref

    from uvicorn.protocols.http.h11_impl import H11Protocol

    from presencectl.sandbox.throttle import CONNECTIONS

    registry: weakref.WeakSet[Any] = world.extra.setdefault(CONNECTIONS, weakref.WeakSet())

    class TrackedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            registry.add(self)

    return TrackedH11Protocol


def _ws_impl() -> str:
    """uvicorn's sans-I/O websockets protocol when available (no deprecation warnings)."""
    try:
        from uvicorn.protocols.websockets import websockets_sansio_impl  # noqa: F401
    except ImportError:
        return "websockets"
    return "websockets-sansio"


class Sandbox:
    """A running sandbox, as ``running_sandbox`` yields it."""

    def __init__(self, server: SandboxServer) -> None:
        import httpx

        self._server = server
        self.world = server.world
        self.base_url = server.base_url
        self.ca_bundle = server.ca_bundle
        self.control = httpx.Client(
            base_url=self.base_url, verify=_ssl_context(self.ca_bundle), timeout=30.0
        )

        self.loaded = False  # the world came from the home's snapshot
        self.restored_subscriptions = (0, 0)  # Graph, Connect

    @property
    def port(self) -> int:
        return self._server.port

    def save(self) -> bool:
        """Store the world in the server's home (atomic, 0600); False if unchanged or no home."""
        home = self._server.home
        if home is None:
            return False
        return home.save(self._server.snapshot())

    def profile_info(self) -> dict[str, Any]:
        response = self.control.get("/_sandbox/profile")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def write_profile(self, name: str = "sandbox") -> Any:
        """Write a presencectl profile pointing at this sandbox (+ its Connect secret); return
        it.

        A profile already written for this very world (a world loaded from its home, same tenant
        id; a new world made from the same seed is another world with the same id) keeps
        its setup — client id, sync user, enabled direction, verified steps — and only has its
        addresses rewritten; any other is replaced whole."""
        from presencectl import secrets as secret_store
        from presencectl.config import Profile, load_profile, read_config, save_profile

        table = read_config().get("profiles", {}).get(name)
        loaded = bool(getattr(self, "loaded", False))  # a world restored from its home
        if loaded and isinstance(table, dict) and table.get("tenant_id") == self.world.tenant_id:
            kept = load_profile(name, check_mapping=False)
            kept.authority_url = self.base_url
            kept.graph_url = f"{self.base_url}/v1.0"
            kept.ca_bundle = self.ca_bundle
            kept.connect_login_url = f"{self.base_url}/univerge/login"
            kept.connect_api_url = f"{self.base_url}/univerge/api"
            kept.connect_client_id = self.world.connect_client_id
            save_profile(kept)
            secret_store.set_secret(
                name, secret_store.CONNECT_CLIENT_SECRET, self.world.connect_client_secret
            )
            return kept
        profile = Profile(
            name=name,
            tenant_id=self.world.tenant_id,
            authority_url=self.base_url,
            graph_url=f"{self.base_url}/v1.0",
            ca_bundle=self.ca_bundle,
            connect_login_url=f"{self.base_url}/univerge/login",
            connect_api_url=f"{self.base_url}/univerge/api",
            connect_client_id=self.world.connect_client_id,
            connect_account_email=ADMIN_EMAIL,
            admin_email=ADMIN_EMAIL,
            # No client-side Connect budget: the sandbox limits only when asked to
            # (fault key connect_throttle_per_min); see docs/performance.md.
            connect_rate_per_min=0,
        )
        save_profile(profile)
        secret_store.set_secret(
            name, secret_store.CONNECT_CLIENT_SECRET, self.world.connect_client_secret
        )
        return profile

    def close(self) -> None:
        self.control.close()


def _ssl_context(ca_bundle: str) -> Any:
    import ssl

    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=ca_bundle)
    return ctx


@contextlib.contextmanager
def running_sandbox(
    *,
    users: int = 25,
    seed: int = 1,
    throttle: int = 1500,
    throttle_window: float = 30.0,
    fault_rate: float = 0.0,
    auto_approve: str | Sequence[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
    log_level: str = "warning",
    allow_http_notifications: bool = False,
    home: SandboxHome | None = None,
    fresh: bool = False,
) -> Iterator[Sandbox]:
    """Run a sandbox for the duration of the ``with`` block.

    ``allow_http_notifications``: Graph subscriptions also accept ``http://`` loopback
    notification URLs (a documented deviation from Graph, for the demo and tests).
    ``home``: the world and CA are loaded from there (unless ``fresh``) and saved there, at
    ``Sandbox.save()`` and at the end; a new world gets a new tenant id, so that no sign-in
    cached for an earlier world can match it."""
    import uuid

    stored: dict[str, Any] | None = None
    if home is not None:
        home.prepare()
        if fresh:
            home.wipe()
        stored = home.load()
    world = World(
        users=users,
        seed=seed,
        throttle=throttle,
        throttle_window=throttle_window,
        fault_rate=fault_rate,
        auto_approve=auto_approve,
        token_lifetime=token_lifetime,
        tenant_id=str(uuid.uuid4()) if home is not None else None,
    )
    if stored is not None:
        from presencectl.sandbox.persist import restore

        restore(world, stored)
    world.extra["allow_http_notifications"] = allow_http_notifications
    server = SandboxServer(world, host=host, port=port, log_level=log_level, home=home)
    server.start()
    sandbox = Sandbox(server)
    sandbox.loaded = stored is not None
    try:
        if stored is not None:
            sandbox.restored_subscriptions = server.restore_subscriptions()
        if home is not None:
            sandbox.save()
        yield sandbox
    finally:
        if home is not None:
            try:
                sandbox.save()
            except Exception:  # the last save failing must not hide why the block ended
                log.warning("the sandbox world could not be saved in %s", home.path)
        sandbox.close()
        server.stop()
