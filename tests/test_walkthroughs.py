"""The docs' sandbox walk-throughs, followed literally: each ```sh block run by bash as written.

Issue 24: following README and docs literally in a fresh home broke the hour (a sandbox restart
lost the setup, `presencectl` was not on PATH, azure-setup's sandbox note named another tenant).
Here the commands are read out of docs/getting-started.md (section 2), docs/azure-setup.md (its
sandbox note) and docs/running-as-a-service.md ("Try it against the sandbox") and run in a fresh
config dir, state dir and HOME, with `presencectl` on PATH as the README's install leaves it.
The sandbox is restarted in the middle, as a person stopping it for the night would.

The only liberties, each because a test cannot do otherwise: ports 8765/8766 become free ones;
"a second terminal" is a background process; the `CA=…/ca.pem` placeholder gets the path the
sandbox printed; a watch the docs stop with Ctrl-C gets SIGINT (or `--max-cycles` when the docs
then play users "in another terminal" only after it). A comment `exit N` is the exit status the
docs promise; every other command must exit 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not (shutil.which("curl") and shutil.which("jq")),
        reason="the walk-throughs use curl and jq, as the docs do (apt-get install curl jq)",
    ),
]


def sh_blocks(page: str, start: str | None = None, end: str | None = None) -> list[list[str]]:
    """The ```sh blocks of a page (between two headings), each as its commands."""
    text = (DOCS / page).read_text(encoding="utf-8")
    if start is not None:
        text = text[text.index(start) :]
    if end is not None:
        text = text[: text.index(end)]
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
    return [_commands(block) for block in blocks]


def _commands(block: str) -> list[str]:
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.strip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((pending + line).strip())
        pending = ""
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Walk:
    """A fresh person's shell: the variables they set, the sandbox they keep running."""

    def __init__(self, tmp_path: Path) -> None:
        home = tmp_path / "home"
        home.mkdir()
        self.env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "PRESENCECTL_CONFIG_DIR": str(tmp_path / "config"),
            "PRESENCECTL_STATE_DIR": str(tmp_path / "state"),
            # A fresh machine without a keyring daemon: the documented file fallback.
            "PRESENCECTL_SECRETS_BACKEND": "file",
            "LANG": "C.UTF-8",
        }
        self.vars: dict[str, str] = {}
        self.ports = {"8765": str(free_port()), "8766": str(free_port())}
        self.sandbox: subprocess.Popen[str] | None = None
        self.serve_command = ""
        self.started: dict[str, Any] = {}
        self.log: list[tuple[str, int, str, str]] = []

    def _literal(self, command: str) -> str:
        for doc_port, port in self.ports.items():
            command = command.replace(doc_port, port)
        return command

    def _script(self, command: str) -> str:
        assigns = "".join(f"{k}={json.dumps(v)}\n" for k, v in self.vars.items())
        return f"set -o pipefail\n{assigns}{command}\n"

    def run(self, command: str, *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """One command of the docs, with the exit status they promise (0 unless `exit N`)."""
        command = self._literal(command)
        promised = re.search(r"#.*\bexit (\d+)", command)
        expected = int(promised.group(1)) if promised else 0
        assignment = re.match(r"^([A-Z_]+)=(.*)$", command)
        if command.startswith("export "):
            name, _, value = command[len("export ") :].split("#")[0].strip().partition("=")
            self.env[name] = value
            return subprocess.CompletedProcess(command, 0, "", "")
        if assignment and " " not in assignment.group(1):
            name, value = assignment.group(1), assignment.group(2)
            if value.startswith("…/ca.pem"):
                value = self.started["ca_bundle"]  # "the ca_bundle it printed"
            done = self._bash(f'{name}={value}\nprintf %s "${name}"', timeout)
            self.vars[name] = done.stdout
            return done
        done = self._bash(command, timeout)
        self.log.append((command, done.returncode, done.stdout[-2000:], done.stderr[-2000:]))
        assert done.returncode == expected, (command, done.returncode, done.stdout, done.stderr)
        return done

    def _bash(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", self._script(command)], capture_output=True,
                              text=True, env=self.env, timeout=timeout)  # fmt: skip

    def background(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["bash", "-c", self._script("exec " + self._literal(command))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)  # fmt: skip

    def serve(self, command: str) -> dict[str, Any]:
        """`sandbox serve` "in a second terminal": started, its JSON line read."""
        self.stop_sandbox()
        self.serve_command = command
        self.sandbox = self.background(command)
        assert self.sandbox.stdout is not None
        line = self.sandbox.stdout.readline()
        if not line:
            raise AssertionError(self.sandbox.communicate(timeout=30)[1])
        self.started = json.loads(line)
        return self.started

    def stop_sandbox(self) -> None:
        if self.sandbox is not None:
            self.sandbox.send_signal(signal.SIGINT)  # Ctrl-C in its terminal
            _, err = self.sandbox.communicate(timeout=30)
            assert self.sandbox.returncode == 0, err
            self.sandbox = None

    def block(self, commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
        results = []
        for command in commands:
            if " sandbox serve " in f" {command} ":
                self.serve(command)
                results.append(subprocess.CompletedProcess(command, 0, "", ""))
            else:
                results.append(self.run(command))
        return results


@pytest.fixture
def walk(tmp_path: Path) -> Any:
    found = Walk(tmp_path)
    yield found
    if found.sandbox is not None and found.sandbox.poll() is None:
        found.sandbox.kill()
        found.sandbox.communicate()


@pytest.mark.slow  # tens of seconds: run by .ci/run's reliability step
def test_getting_started_and_running_as_a_service_followed_literally(walk: Walk) -> None:
    blocks = sh_blocks("getting-started.md", "## 2. The same, by hand", "## 3. Next")
    by_first = {b[0].split("#")[0].strip(): b for b in blocks}

    def take(prefix: str) -> list[str]:
        return next(b for first, b in by_first.items() if first.startswith(prefix))

    walk.block(take("presencectl sandbox serve"))
    assert walk.started["world"] == "new"
    walk.block(take("CA="))
    walk.block(take("export PRESENCECTL_PROFILE"))
    walk.block(take("presencectl setup-azure"))
    walk.block(take("$SB/_sandbox/profile | jq"))  # sync-user set; validate: exit 4
    walk.block(take("$SB/_sandbox/users/"))  # the password change, validate again
    walk.block(take("presencectl enable"))

    # The night falls: Ctrl-C in the sandbox's terminal, and the same command in the morning.
    walk.stop_sandbox()
    stopped = walk.run("presencectl status", timeout=60)
    assert stopped.returncode == 0
    walk.serve(walk.serve_command)
    assert walk.started["world"] == "loaded"  # every step above still holds

    play = take("U=")
    results = walk.block(play)
    teams = json.loads(results[-1].stdout)
    assert teams["sessions"], teams  # "our session is there, with its expiry"
    watch, *other_terminal = take("presencectl sync --watch")
    walk.run(watch.split("#")[0].strip() + " --max-cycles 3")
    walk.block(other_terminal)

    # running-as-a-service.md, "Try it against the sandbox", on the same sandbox profile.
    service = sh_blocks("running-as-a-service.md", "### Try it against the sandbox",
                        "## Health and monitoring")  # fmt: skip
    serve_block, watch_block, play_block = service
    walk.block(serve_block)
    assert walk.started["world"] == "loaded"  # a restart with another option keeps the world
    (watch_command,) = watch_block
    watching = walk.background(watch_command)
    try:
        _wait_for(lambda: _notifications_active(walk), "the watch's notifications")
        results = walk.block(play_block)
        user = walk.vars["U"]
        onphone = _wait_for(lambda: _connect_resource(walk, user) == "onphone",
                            "Connect to follow the Teams call")  # fmt: skip
        assert onphone
        status = walk.run("presencectl --profile sandbox status -o json")
        notes = json.loads(status.stdout)["teams_notifications"]
        assert notes["mode"] == "notifications" and notes["users_covered"] > 0, notes
        assert results[-1].returncode == 0
    finally:
        watching.send_signal(signal.SIGINT)
        _, err = watching.communicate(timeout=60)
    assert watching.returncode == 0, err

    walk.block(take("presencectl status"))  # status, doctor, disable --yes, logout
    walk.block(take("$SB/_sandbox/faults"))
    walk.stop_sandbox()
    ran = [command for command, *_ in walk.log]
    assert len(ran) >= 25 and any(c.startswith("presencectl disable --yes") for c in ran), ran


@pytest.mark.slow  # tens of seconds: run by .ci/run's reliability step
def test_azure_setup_sandbox_note_followed_literally(walk: Walk) -> None:
    text = (DOCS / "azure-setup.md").read_text(encoding="utf-8")
    note = text[text.index("Try it first with no cloud account") :]
    (block,) = sh_blocks("azure-setup.md", "Try it first with no cloud account",
                         "## Before you start")  # fmt: skip
    assert note  # the note is there, with its block
    results = walk.block(block)
    assert "Admin consent" in results[1].stdout + results[1].stderr
    assert "Presence.ReadWrite.All" in results[2].stdout
    walk.stop_sandbox()


def _wait_for(ready: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"never saw {what}")


def _notifications_active(walk: Walk) -> bool:
    done = subprocess.run(
        ["bash", "-c", "presencectl --profile sandbox status -o json"], capture_output=True,
        text=True, env=walk.env, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        return False
    notes = json.loads(done.stdout).get("teams_notifications") or {}
    return notes.get("mode") == "notifications" and bool(notes.get("users_covered"))


def _connect_resource(walk: Walk, user: str) -> str | None:
    done = walk._bash(f'$SB"/_sandbox/connect/presence?user={user}"', 30)
    data = json.loads(done.stdout or "{}")
    return data.get("status")


def test_the_readme_install_puts_presencectl_on_path_for_every_later_command() -> None:
    """README's first command activates the environment, so the bare `presencectl …` of every
    later command (README, docs, the demo's closing lines) is found."""
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    install = re.search(r"```sh\n(python3 -m venv .*?)\n```", readme).group(1)  # type: ignore[union-attr]
    assert ". .venv/bin/activate" in install and install.endswith("presencectl demo")
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert ". .venv/bin/activate && pip install ." in index
    for page in [DOCS.parent / "README.md", *DOCS.glob("*.md")]:
        text = page.read_text(encoding="utf-8")
        assert ".venv/bin/presencectl demo" not in text, page  # the old, PATH-less install
    assert os.path.basename(sys.executable)  # (the venv runs this very test)


@pytest.mark.slow  # tens of seconds: run by .ci/run's reliability step
def test_getting_started_section_1_the_ci_line_followed_literally(walk: Walk) -> None:
    """The demo's line for CI (the two demo lines above it run for 60 s and 30 s: the demo's
    own tests cover them)."""
    blocks = sh_blocks("getting-started.md", "### In CI, or without a terminal", "## 2.")
    (command,) = [c for block in blocks for c in block]
    assert command.startswith("presencectl demo --duration 10 -o json | tail -1 | jq")
    done = walk.run(command)
    decoder, text, both = json.JSONDecoder(), done.stdout.strip(), []
    while text:  # jq prints the two objects one after the other, pretty
        found, end = decoder.raw_decode(text)
        both.append(found)
        text = text[end:].strip()
    assert len(both) == 2 and all(d["changes"] > 0 for d in both), done.stdout
