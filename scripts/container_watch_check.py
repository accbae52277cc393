"""A containerised `sync --watch --listen` against a sandbox on the host answers /healthz and
/readyz, and stops cleanly on SIGTERM (called by scripts/container_check.sh).

On the host: `presencectl sandbox serve` on a free loopback port, then the setup an admin does
(setup-azure, the sync user's first-login password change, sync-user set and validate, enable)
in a fresh config dir. The container gets that config dir and a fresh state dir as its volume
(owned by the image's non-root user), the sandbox's CA file at the same path, and the host's
network; it runs the image's own entry point with `sync --watch --listen 127.0.0.1:PORT`.
Every address is loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

IMAGE_UID = 10001
NEW_PASSWORD = "Container-check-1!"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def presencectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "presencectl", "--profile", "sandbox", "--no-input", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"`presencectl {' '.join(args)}` failed ({done.returncode}): {done.stderr}")
    return done.stdout


def get(url: str) -> tuple[int, dict[str, object]] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_for(url: str, status: int, deadline_s: float) -> dict[str, object]:
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = get(url)
        if last is not None and last[0] == status:
            return last[1]
        time.sleep(0.5)
    sys.exit(f"{url} never answered {status} within {deadline_s:.0f} s (last: {last})")


def control(base: str, path: str, body: dict[str, object], ca: str) -> None:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(request, timeout=10, context=context):
        pass


def _set_ca_bundle(config_file: Path, profile: str, ca_bundle: str) -> None:
    import tomllib

    import tomli_w

    doc = tomllib.loads(config_file.read_text())
    doc["profiles"][profile]["ca_bundle"] = ca_bundle
    config_file.write_text(tomli_w.dumps(doc))
    os.chmod(config_file, 0o600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--podman", default="podman --runtime runc")
    args = parser.parse_args()
    podman = shlex.split(args.podman)

    work = Path(tempfile.mkdtemp(prefix="presencectl-container-"))
    config, state = work / "config", work / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCECTL_")}
    env.update(
        PRESENCECTL_CONFIG_DIR=str(config),
        PRESENCECTL_STATE_DIR=str(work / "host-state"),
        PRESENCECTL_SECRETS_BACKEND="file",  # the container reads the same secrets file
    )
    sandbox_port, listen_port = free_port(), free_port()
    name = f"presencectl-check-{os.getpid()}"
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "presencectl", "--no-input", "sandbox", "serve",
         "--port", str(sandbox_port), "--users", "12", "--write-profile", "sandbox",
         "--auto-approve", "admin@contoso.example"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    container_started = False
    try:
        assert sandbox.stdout is not None
        started = json.loads(sandbox.stdout.readline())
        base, ca = started["base_url"], started["ca_bundle"]
        context = ssl.create_default_context(cafile=ca)
        with urllib.request.urlopen(base + "/_sandbox/profile", context=context, timeout=10) as r:
            info = json.loads(r.read())
        presencectl(env, "setup-azure")
        sync_user = str(info["sync_user"])
        control(base, f"/_sandbox/users/{sync_user}/password", {"password": NEW_PASSWORD}, ca)
        presencectl(env, "sync-user", "set", "--username", str(info["sync_user"]),
                    "--password-stdin", stdin=NEW_PASSWORD + "\n")  # fmt: skip
        presencectl(env, "sync-user", "validate")
        presencectl(env, "enable", "--direction", "both")

        # The container trusts the sandbox's CA as a deployment trusts a private CA: a copy next
        # to its config (the sandbox's own folder, 0700 and root's, is not the container's to
        # read; a CA outside it also keeps "is that sandbox still serving?" out of the picture).
        container_ca = "/etc/presencectl-ca/ca.pem"
        ca_copy = work / "ca.pem"
        shutil.copyfile(ca, ca_copy)
        os.chmod(ca_copy, 0o644)
        _set_ca_bundle(config / "config.toml", "sandbox", container_ca)
        state.mkdir()
        for path in (config, state):
            for root, dirs, files in os.walk(path):
                for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(entry, IMAGE_UID, IMAGE_UID)
        subprocess.run(
            [*podman, "run", "-d", "--name", name, "--no-healthcheck", "--network", "host",
             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             "-v", f"{config}:/var/lib/presencectl/config",
             "-v", f"{state}:/var/lib/presencectl/state",
             "-v", f"{ca_copy}:{container_ca}:ro",
             "-e", "PRESENCECTL_PROFILE=sandbox",
             args.image, "-o", "json", "sync", "--watch", "--interval", "2",
             "--listen", f"127.0.0.1:{listen_port}"],
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        container_started = True
        base_probe = f"http://127.0.0.1:{listen_port}"
        try:
            alive = wait_for(f"{base_probe}/healthz", 200, 120)
            ready = wait_for(f"{base_probe}/readyz", 200, 180)
        except SystemExit:
            logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True)
            print("container stderr (last 3,000 characters):", logs.stderr[-3000:], file=sys.stderr)
            raise
        metrics = urllib.request.urlopen(f"{base_probe}/metrics", timeout=5).read().decode()
        if 'presencectl_cycles_total{profile="sandbox"}' not in metrics:
            sys.exit("/metrics has no cycle count")
        print(f"   /healthz {alive}, /readyz {ready}, /metrics ok")
        subprocess.run([*podman, "stop", "--time", "40", name], check=True,
                       capture_output=True, timeout=90)  # fmt: skip
        code = subprocess.run(
            [*podman, "inspect", name, "--format", "{{.State.ExitCode}}"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        if code != "0":
            logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True)
            sys.exit(f"the containerised watch exited {code} on SIGTERM: {logs.stderr[-2000:]}")
        print("   SIGTERM: the watch exited 0")
        return 0
    finally:
        if container_started:
            subprocess.run([*podman, "rm", "-f", name], capture_output=True, timeout=60)
        sandbox.terminate()
        try:
            sandbox.wait(30)
        except subprocess.TimeoutExpired:
            sandbox.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
