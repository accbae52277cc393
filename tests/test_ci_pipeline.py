"""docs/ci.md's pipeline script, extracted from the page and run as written against the sandbox.

The administrator's one-time part (setup-azure, the sync user's first-login change) happens first,
in another config dir; then the script runs twice in a fresh "runner": a new config dir each run
(holding only the sandbox's endpoints and CA, as a runner image would hold a proxy or another
cloud's URLs), the state dir kept between the runs, every secret from the environment and no OS
keyring — as the GitHub Actions job of the page has it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from presencectl import secrets
from presencectl.config import load_profile

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin@contoso.example"
SYNC_PASSWORD = "N3w-Sync-Passw0rd!"


def pipeline_script() -> str:
    text = (ROOT / "docs" / "ci.md").read_text("utf-8")
    found = re.search(r"```sh\n(#!/bin/sh\n# presence-sync\.sh.*?)```", text, re.S)
    assert found, "docs/ci.md lost its presence-sync.sh block"
    return found.group(1)


def _runner_env(tmp: Path, values: dict[str, str]) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "presencectl"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m presencectl "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCECTL_")}
    env.update(values)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"  # a runner has none
    env["COLUMNS"] = "80"
    return env


def _run(script: Path, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=240
    )


def _files_text(*roots: Path) -> str:
    return "".join(
        p.read_text("utf-8", "replace") for root in roots for p in root.rglob("*") if p.is_file()
    )


def _doc(workdir: Path, name: str) -> Any:
    return json.loads((workdir / name).read_text("utf-8"))


def test_the_documented_pipeline_runs_as_written(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=8, seed=2, auto_approve=ADMIN) as sb:
        # The administrator, once, at a terminal.
        sb.write_profile("admin")
        assert cli("--profile", "admin", "setup-azure", "--no-input").exit_code == 0
        admin = load_profile("admin")
        info = sb.profile_info()
        sb.control.post(
            f"/_sandbox/users/{info['sync_user']}/password", json={"password": SYNC_PASSWORD}
        ).raise_for_status()
        client_secret = secrets.get_secret("admin", secrets.CLIENT_SECRET)
        assert client_secret and admin.client_id

        # The runner: its config dir holds only what the script does not set (the sandbox's
        # endpoints and CA, as a proxy or another cloud's URLs would be).
        config_dir, state_dir, workdir = tmp_path / "ci", tmp_path / "state", tmp_path / "w"
        workdir.mkdir()
        endpoints = (
            "[profiles.default]\n"
            f'authority_url = "{admin.authority_url}"\n'
            f'graph_url = "{admin.graph_url}"\n'
            f'ca_bundle = "{admin.ca_bundle}"\n'
            f'connect_login_url = "{admin.connect_login_url}"\n'
            f'connect_api_url = "{admin.connect_api_url}"\n'
        )

        def fresh_runner() -> None:
            shutil.rmtree(config_dir, ignore_errors=True)
            config_dir.mkdir()
            (config_dir / "config.toml").write_text(endpoints)

        env = _runner_env(
            tmp_path,
            {
                "TENANT_ID": sb.world.tenant_id,
                "CLIENT_ID": admin.client_id,
                "CONNECT_CLIENT_ID": sb.world.connect_client_id,
                "CONNECT_ACCOUNT_EMAIL": ADMIN,
                "PRESENCECTL_CONFIG_DIR": str(config_dir),
                "PRESENCECTL_STATE_DIR": str(state_dir),
                "PRESENCECTL_CLIENT_SECRET": client_secret,
                "PRESENCECTL_SYNC_USERNAME": info["sync_user"],
                "PRESENCECTL_SYNC_PASSWORD": SYNC_PASSWORD,
                "PRESENCECTL_CONNECT_CLIENT_SECRET": sb.world.connect_client_secret,
            },
        )
        script = tmp_path / "presence-sync.sh"
        script.write_text(pipeline_script())

        person = next(
            p
            for p in sb.world.people
            if p.azure_id and p.connect_id and p.email not in (ADMIN, info["sync_user"])
        )
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.email, "status": "onphone"}
        ).raise_for_status()

        fresh_runner()
        first = _run(script, workdir, env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert _doc(workdir, "doctor.json")["worst"] in ("ok", "warn")
        assert _doc(workdir, "consent.json")  # the checks, every one granted
        one = _doc(workdir, "sync.json")
        assert one["failed"] == 0 and one["matched"] > 0
        shown = sb.control.get("/_sandbox/teams/presence", params={"user": person.email}).json()
        assert (shown["availability"], shown["activity"]) == ("Busy", "InACall")

        written = _files_text(config_dir, workdir)
        # The second run starts from the kept state: the call is already mirrored.
        fresh_runner()
        second = _run(script, workdir, env)
        assert second.returncode == 0, second.stdout + second.stderr
        two = _doc(workdir, "sync.json")
        assert two["failed"] == 0
        assert not [a for a in two["actions"] if a["user"] == person.email]

        # Every secret came from the environment: none is written anywhere, and the
        # no-keyring warning (about where secrets would be stored) is not printed.
        for run in (first, second):
            assert "keyring" not in run.stderr.lower(), run.stderr
        # stderr is a log here, not a terminal: one message, one line (never hard-wrapped).
        assert any(
            "Engage" in line and line.endswith("sync first.") for line in first.stderr.splitlines()
        ), first.stderr
        written += _files_text(config_dir, workdir, state_dir)
        for secret in (client_secret, SYNC_PASSWORD, sb.world.connect_client_secret):
            assert secret not in written


def sandbox_walkthrough() -> str:
    text = (ROOT / "docs" / "ci.md").read_text("utf-8")
    found = re.search(r"### Trying the pipeline on the sandbox.*?```sh\n(.*?)```", text, re.S)
    assert found, "docs/ci.md lost its sandbox walk-through"
    return found.group(1)


def test_the_sandbox_walkthrough_runs_the_pipeline_as_written(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24 item 8: getting-started's administrator part on the sandbox, then the page's
    three lines (the environment from `config show --env`, then the script), literally."""
    from presencectl.sandbox import running_sandbox

    # A runner's secrets: the 0600 file, so the shell below reads what the admin stored.
    monkeypatch.setenv("PRESENCECTL_SECRETS_BACKEND", "file")
    with running_sandbox(users=8, seed=2, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")  # what `sandbox serve --write-profile sandbox` does
        assert cli("--profile", "sandbox", "--no-input", "setup-azure").exit_code == 0
        info = sb.profile_info()
        sb.control.post(
            f"/_sandbox/users/{info['sync_user']}/password", json={"password": SYNC_PASSWORD}
        ).raise_for_status()
        stored = cli(
            "--profile",
            "sandbox",
            "sync-user",
            "set",
            "--username",
            info["sync_user"],
            "--password-stdin",
            input=SYNC_PASSWORD + "\n",
        )
        assert stored.exit_code == 0, stored.stderr

        shown = cli("--profile", "sandbox", "config", "show", "--env")
        assert shown.exit_code == 0, shown.stderr
        assert "fake" in shown.stdout and f"export TENANT_ID={sb.world.tenant_id}" in shown.stdout

        workdir, home = tmp_path / "w", tmp_path / "home"
        workdir.mkdir()
        home.mkdir()
        (workdir / "presence-sync.sh").write_text(pipeline_script())
        (workdir / "walkthrough.sh").write_text(sandbox_walkthrough())
        env = _runner_env(
            tmp_path,
            {
                "PRESENCECTL_CONFIG_DIR": os.environ["PRESENCECTL_CONFIG_DIR"],
                "PRESENCECTL_SECRETS_BACKEND": "file",
                "HOME": str(home),
            },
        )
        person = next(
            p
            for p in sb.world.people
            if p.azure_id and p.connect_id and p.email not in (ADMIN, info["sync_user"])
        )
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.email, "status": "onphone"}
        ).raise_for_status()
        ran = _run(workdir / "walkthrough.sh", workdir, env)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        one = _doc(workdir, "sync.json")
        assert one["failed"] == 0 and one["matched"] > 0
        teams = sb.control.get("/_sandbox/teams/presence", params={"user": person.email}).json()
        assert (teams["availability"], teams["activity"]) == ("Busy", "InACall")
        assert (home / "presence-sync-state").is_dir()  # the state dir the page names


def test_config_show_env_never_prints_a_real_profiles_secrets(cli: Any) -> None:
    from presencectl.config import Profile, save_profile

    save_profile(Profile(name="contoso", tenant_id="contoso.onmicrosoft.com", client_id="c1"))
    secrets.set_secret("contoso", secrets.CLIENT_SECRET, "real-secret-value")
    shown = cli("--profile", "contoso", "config", "show", "--env")
    assert shown.exit_code == 0, shown.stderr
    assert "real-secret-value" not in shown.stdout + shown.stderr
    assert "# export PRESENCECTL_CLIENT_SECRET=" in shown.stdout
    assert "export TENANT_ID=contoso.onmicrosoft.com" in shown.stdout
    assert "PRESENCECTL_CONFIG_DIR" not in shown.stdout
