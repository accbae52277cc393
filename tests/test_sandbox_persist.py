"""A sandbox that keeps its world: `sandbox serve --port N` restarted finds its setup again.

Issue 24 items 2 and 9, issue 26 item 7: a restart kept nothing (registrations, secrets, the
sync user's changed password, presence), `demo` took over the profile of a running sandbox, and
`demo --profile "contoso prod"` deleted the state of `contoso_prod`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from presencectl.sandbox.people import ADMIN_EMAIL, SYNC_EMAIL

NEW_PASSWORD = "Changed-Once-2024"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(port: int, *, fresh: bool = False) -> Any:
    from presencectl.sandbox import running_sandbox
    from presencectl.sandbox.persist import SandboxHome

    return running_sandbox(
        users=12,
        port=port,
        auto_approve=ADMIN_EMAIL,
        home=SandboxHome.for_serve(port, "sandbox"),
        fresh=fresh,
    )


def _set_up(sb: Any, cli: Any) -> None:
    """getting-started's section 2, up to `enable`."""
    assert cli("--profile", "sandbox", "setup-azure", "--no-input").exit_code == 0
    first = sb.profile_info()["sync_user_password"]
    args = ("--profile", "sandbox", "sync-user", "set", "--username", SYNC_EMAIL)
    assert cli(*args, "--password-stdin", input=first + "\n").exit_code == 0
    sb.control.post(
        f"/_sandbox/users/{SYNC_EMAIL}/password", json={"password": NEW_PASSWORD}
    ).raise_for_status()
    assert cli(*args, "--password-stdin", input=NEW_PASSWORD + "\n").exit_code == 0
    assert cli("--profile", "sandbox", "sync-user", "validate").exit_code == 0
    assert cli("--profile", "sandbox", "enable").exit_code == 0


def _matched_user(cli: Any) -> str:
    rows = cli("--profile", "sandbox", "-o", "json", "users").json()
    return next(r["email"] for r in rows if r.get("status") == "matched")


def test_a_restarted_sandbox_keeps_its_world_and_the_profile_its_setup(cli: Any) -> None:
    from presencectl.config import load_profile

    port = free_port()
    with _serve(port) as sb:
        assert not sb.loaded
        sb.write_profile("sandbox")
        _set_up(sb, cli)
        user = _matched_user(cli)
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": user, "status": "onphone"}
        ).raise_for_status()
        assert cli("--profile", "sandbox", "sync").exit_code == 0
        before = load_profile("sandbox")
        tenant, ca = sb.world.tenant_id, Path(sb.ca_bundle).read_bytes()
        teams = sb.control.get("/_sandbox/teams/presence", params={"user": user}).json()
        assert teams["sessions"], teams  # our session on Teams: Busy/InACall

    with _serve(port) as sb:
        assert sb.loaded and sb.world.tenant_id == tenant
        assert Path(sb.ca_bundle).read_bytes() == ca  # the profile's ca_bundle stays valid
        sb.write_profile("sandbox")
        after = load_profile("sandbox")
        # The setup survives: app, sync user, direction, what was verified.
        assert after.client_id == before.client_id and after.client_id
        assert after.sync_username == SYNC_EMAIL
        assert after.enabled_direction == "both"
        assert after.verified == before.verified and after.verified.get("sync_user")
        # ... and the world agrees with it: no step has to be redone.
        assert cli("--profile", "sandbox", "sync-user", "validate").exit_code == 0
        again = cli("--profile", "sandbox", "setup-azure", "--no-input")
        assert again.exit_code == 0, again.stderr
        assert "Nothing changed" in again.stdout + again.stderr
        teams = sb.control.get("/_sandbox/teams/presence", params={"user": user}).json()
        assert teams["sessions"], teams  # presence (our session) kept too
        result = cli("--profile", "sandbox", "-o", "json", "sync")
        assert result.exit_code == 0, result.stderr
        assert result.json()["failed"] == 0


def test_fresh_starts_a_new_world_with_a_new_tenant(cli: Any) -> None:
    from presencectl.config import load_profile

    port = free_port()
    with _serve(port) as sb:
        sb.write_profile("sandbox")
        assert cli("--profile", "sandbox", "setup-azure", "--no-input").exit_code == 0
        tenant = sb.world.tenant_id
    with _serve(port, fresh=True) as sb:
        assert not sb.loaded and sb.world.tenant_id != tenant
        assert not sb.world.applications  # the registration went with the old world
        sb.write_profile("sandbox")
        profile = load_profile("sandbox")
        assert profile.tenant_id == sb.world.tenant_id and profile.client_id is None
        # Issue 24 item 1's loop: the admin token cached for the old world cannot match the
        # new tenant, so setup-azure signs in afresh instead of being declined forever.
        again = cli("--profile", "sandbox", "setup-azure", "--no-input")
        assert again.exit_code == 0, again.stderr
        assert "AADSTS" not in again.stderr


def test_two_in_process_sandboxes_get_different_tenants_only_when_serving_a_home() -> None:
    """`sandbox serve` makes a new tenant id per new world (no cached sign-in can match it);
    the tests' in-process sandbox keeps the seed's, as before."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=4) as a, running_sandbox(users=4) as b:
        assert a.world.tenant_id == b.world.tenant_id
    with _serve(free_port()) as c:
        assert c.world.tenant_id != a.world.tenant_id


def test_the_home_is_private_and_written_atomically(tmp_path: Path) -> None:
    port = free_port()
    with _serve(port) as sb:
        home = Path(sb.ca_bundle).parent
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("world.json", "ca.pem", "ca.key", "serving.lock"):
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
        data = json.loads((home / "world.json").read_text())
        assert data["tenant_id"] == sb.world.tenant_id
        assert not sb.save()  # unchanged: not written again
        sb.world.clock.advance(5)
        assert sb.save()
    assert not [p.name for p in home.iterdir() if p.name.startswith(".")]  # no temp file left


def _serve_process(env: dict[str, str], port: int, *extra: str) -> tuple[Any, dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "presencectl", "sandbox", "serve", "--port", str(port),
         "--users", "8", "--write-profile", "sb", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(proc.communicate()[1])
    return proc, json.loads(line)


def _stop(proc: Any) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err


def test_serve_restarted_says_it_loaded_its_world_and_a_stopped_one_is_named(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PRESENCECTL_CONFIG_DIR": str(tmp_path / "cfg"),
        "PRESENCECTL_STATE_DIR": str(tmp_path / "state"),
        "PRESENCECTL_SECRETS_BACKEND": "file",
    }
    port = free_port()
    proc, first = _serve_process(env, port)
    _, err1 = _stop(proc)
    assert proc.returncode == 0, err1
    assert first["world"] == "new" and Path(first["ca_bundle"]).is_file()  # the CA stays

    # Stopped: doctor's remedy says to start it again (not the proxy key).
    doctor = subprocess.run(
        [sys.executable, "-m", "presencectl", "--profile", "sb", "-o", "json", "doctor"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    rows = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    reach = rows["Reach Entra ID"]
    assert reach["code"] == "sandbox_not_running", reach
    assert "sandbox serve --port" in reach["remedy"] and "proxy" not in reach["remedy"]

    proc, second = _serve_process(env, port)
    out2, err2 = _stop(proc)
    assert proc.returncode == 0, err2
    assert second["world"] == "loaded" and second["ca_bundle"] == first["ca_bundle"]
    data = json.loads((Path(second["home"]) / "world.json").read_text())
    fakes = [data["connect_client_secret"], *[s for v in data["app_secrets"].values() for s in v]]
    for text in (out2, err1, err2):
        assert not any(secret in text for secret in fakes)  # fake, yet never printed
    assert "kept in" in err2 and "--fresh" in err2

    proc, third = _serve_process(env, port, "--fresh")
    _stop(proc)
    assert third["world"] == "new"


def test_demo_never_takes_over_a_profile_a_running_sandbox_owns(cli: Any) -> None:
    port = free_port()
    with _serve(port) as sb:
        sb.write_profile("demo")
        config_before = (Path(os.environ["PRESENCECTL_CONFIG_DIR"]) / "config.toml").read_text()
        result = cli("demo", "--duration", "5", "--users", "4")
        assert result.exit_code == 3, result.stderr
        assert "already_running" in cli("-o", "json", "demo", "--duration", "5").stdout
        assert "belongs to the sandbox running at" in result.stderr
        after = (Path(os.environ["PRESENCECTL_CONFIG_DIR"]) / "config.toml").read_text()
        assert after == config_before


def test_demo_uses_its_own_profile_by_default() -> None:
    from presencectl.demo import DEFAULT_PROFILE, DemoOptions

    assert DEFAULT_PROFILE == "demo" and DemoOptions().profile_name == "demo"


def test_demo_never_deletes_a_state_it_did_not_create(cli: Any) -> None:
    from presencectl.sync.state import StateStore, database_path

    with StateStore.for_profile("contoso_prod") as store:  # a sync's state, not the demo's
        store.set_meta("precious", "yes")
    path = database_path("contoso_prod")
    # Issue 26 item 7: `demo --profile "contoso prod"` deleted the state of contoso_prod. The
    # name is refused now (exit 2), and the demo deletes only a state it marked as its own
    # (exit 3, state_not_demo), whatever the name.
    for name, code in (("contoso prod", 2), ("contoso_prod", 3)):
        result = cli("--profile", name, "demo", "--duration", "5", "--users", "4")
        assert result.exit_code == code, result.stderr
        assert path.exists()
        with StateStore(path) as store:
            assert store.get_meta("precious") == "yes"
    assert "state_not_demo" in cli("-o", "json", "--profile", "contoso_prod", "demo").stdout


def test_demo_deletes_the_state_it_made_itself() -> None:
    from presencectl.demo import _forget_previous_run, _mark_state
    from presencectl.errors import ConfigError
    from presencectl.sync.state import StateStore, database_path

    _mark_state("demo")
    assert database_path("demo").exists()
    _forget_previous_run("demo")
    assert not database_path("demo").exists()
    with StateStore.for_profile("mine") as store:  # a sync's state, not the demo's
        store.set_meta("precious", "yes")
    with pytest.raises(ConfigError) as caught:
        _forget_previous_run("mine")
    assert caught.value.code == "state_not_demo"
    assert database_path("mine").exists()


def test_subscriptions_and_issued_tokens_survive_a_restart() -> None:
    """A Graph presence subscription keeps notifying, a Connect feed subscription can be
    renewed, and a token issued before the restart is still accepted (the signing key is
    kept), as across a restart of the real services' front ends."""
    import time

    from test_sandbox_graph_presence import Receiver, set_client, subscription_body, user_token

    from presencectl.sandbox import running_sandbox
    from presencectl.sandbox.persist import SandboxHome

    port = free_port()
    home = SandboxHome.for_serve(port, "sandbox")
    receiver = Receiver()
    try:
        with running_sandbox(users=12, port=port, home=home,
                             allow_http_notifications=True) as sb:  # fmt: skip
            watched = [p for p in sb.world.people if p.azure_id][3]
            headers = user_token(sb, sb.world.sync_user)
            body = subscription_body(sb, receiver.url, [str(watched.azure_id)])
            created = sb.control.post("/v1.0/subscriptions", json=body, headers=headers)
            assert created.status_code == 201, created.text
            graph_id = created.json()["id"]
            form = {"grant_type": "client_credentials", "client_id": sb.world.connect_client_id,
                    "client_secret": sb.world.connect_client_secret,
                    "scope": "api.service.messaging"}  # fmt: skip
            token = sb.control.post("/univerge/login/user/connect/token", data=form).json()
            connect = {"Authorization": f"Bearer {token['access_token']}"}
            subs = "/univerge/api/messaging/v1/subscriptions"
            made = sb.control.post(f"{subs}/accounts/_me/users/_all", headers=connect,
                                   json={"events": ["*"], "ttl": "00:30:00"})  # fmt: skip
            assert made.status_code == 200, made.text
            connect_id = made.json()["id"]

        with running_sandbox(users=12, port=port, home=home,
                             allow_http_notifications=True) as sb:  # fmt: skip
            assert sb.restored_subscriptions == (1, 1)
            # The token issued by the first life still signs in.
            again = sb.control.get(f"/v1.0/subscriptions/{graph_id}", headers=headers)
            assert again.status_code == 200, again.text
            renewed = sb.control.post(f"{subs}/{connect_id}/renew", headers=connect, json={})
            assert renewed.status_code == 200, renewed.text
            before = len(receiver.notifications)
            set_client(sb, watched.email, "Busy", "InAMeeting")
            deadline = time.monotonic() + 30
            while len(receiver.notifications) == before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(receiver.notifications) > before, "the kept subscription did not notify"
            value = receiver.notifications[-1]["value"][0]
            assert value["subscriptionId"] == graph_id
    finally:
        receiver.close()


def test_a_killed_sandbox_keeps_what_it_saved_each_second(tmp_path: Path) -> None:
    """kill -9 gives no chance to save at the end: the world is saved while serving (once a
    second when it changed), so the next start finds the change."""
    import ssl
    import time

    import httpx

    env = {
        **os.environ,
        "PRESENCECTL_CONFIG_DIR": str(tmp_path / "cfg"),
        "PRESENCECTL_STATE_DIR": str(tmp_path / "state"),
        "PRESENCECTL_SECRETS_BACKEND": "file",
    }
    port = free_port()
    proc, started = _serve_process(env, port)
    world_file = Path(started["home"]) / "world.json"
    verify = ssl.create_default_context(cafile=started["ca_bundle"])
    with httpx.Client(base_url=started["base_url"], verify=verify) as control:
        path = f"/_sandbox/users/{SYNC_EMAIL}/password"
        answer = control.post(path, json={"password": "K1lled-9"})
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 30
    while "K1lled-9" not in world_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)  # the saver runs once a second
    proc.kill()  # kill -9: no save at the end
    proc.communicate(timeout=20)
    proc, again = _serve_process(env, port)
    try:
        assert again["world"] == "loaded"
        verify = ssl.create_default_context(cafile=again["ca_bundle"])
        with httpx.Client(base_url=again["base_url"], verify=verify) as control:
            assert control.get("/_sandbox/profile").json()["sync_user_password"] == "K1lled-9"
    finally:
        _stop(proc)


def test_the_sandbox_oidc_issuer_keeps_its_key_across_a_restart() -> None:
    """Federated credentials trust the sandbox's own OIDC issuer: a workload token it minted
    before a restart must verify after it, so its signing key is kept too."""
    from presencectl.sandbox.client_assertions import client_auth_of

    port = free_port()
    with _serve(port) as sb:
        keys = client_auth_of(sb.world).jwks()
    with _serve(port) as sb:
        assert client_auth_of(sb.world).jwks() == keys
    with _serve(port, fresh=True) as sb:
        assert client_auth_of(sb.world).jwks() != keys
