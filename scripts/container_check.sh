#!/usr/bin/env bash
# The container recipe, built and run (CI calls this from .ci/run; docs/running-as-a-service.md).
#
# 1. podman, runc and debootstrap from Debian when missing;
# 2. a local base image (debootstrap minbase with python3, venv, pip, CA certificates), because
#    no container registry is reachable here; made once per machine, then reused;
# 3. the wheels of presencectl and its dependencies, built on the host (the build needs no network);
# 4. the image, from Containerfile with --build-arg BASE=<that base>;
# 5. inside the image, as its non-root user: `presencectl demo --duration 5 -o json` exits 0;
# 6. a containerised `sync --watch --listen` against a sandbox on the host answers /healthz and
#    /readyz (scripts/container_watch_check.py drives it).
#
# Containers run with `--runtime runc --network host` and explicit ulimits: on this kind of
# machine crun's cgroup setup and raising rlimits are refused.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
BASE_IMAGE="${PRESENCECTL_BASE_IMAGE:-localhost/presencectl-base:bookworm}"
IMAGE="${PRESENCECTL_IMAGE:-localhost/presencectl:check}"
SUITE="${PRESENCECTL_BASE_SUITE:-bookworm}"
PODMAN=(podman --runtime runc)
# --no-healthcheck: podman schedules HEALTHCHECK with systemd timers, which a CI container lacks;
# the watch check below calls /healthz itself.
RUN_FLAGS=(--rm --no-healthcheck --network host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

have() { command -v "$1" >/dev/null 2>&1; }

if ! have podman || ! have runc || ! have debootstrap; then
  echo "== installing podman, runc, debootstrap"
  if [[ $(id -u) -ne 0 ]]; then
    echo "podman, runc and debootstrap are missing and this is not root: install them first" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi

if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  echo "== base image $BASE_IMAGE (debootstrap $SUITE minbase)"
  rootfs="$(mktemp -d /var/tmp/presencectl-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# The wheels must fit the base's Python.
host_py="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
base_py="$("${PODMAN[@]}" run "${RUN_FLAGS[@]}" "$BASE_IMAGE" \
  python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$host_py" != "$base_py" ]]; then
  echo "the base image has Python $base_py, the wheels would be built for $host_py:" \
    "set PYTHON to a python$base_py" >&2
  exit 1
fi

echo "== wheels (Python $host_py)"
rm -rf build/wheels
mkdir -p build
if ! "$PYTHON" -m pip wheel --quiet --disable-pip-version-check . -w build/wheels >build/wheels.log 2>&1; then
  cat build/wheels.log >&2
  exit 1
fi

echo "== image $IMAGE"
SECONDS=0
"${PODMAN[@]}" build --quiet --format docker --network host \
  --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
  --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE" -f Containerfile . >/dev/null
echo "   built in ${SECONDS} s"

echo "== demo inside the image"
uid="$("${PODMAN[@]}" run "${RUN_FLAGS[@]}" --entrypoint id "$IMAGE" -u)"
if [[ "$uid" == "0" ]]; then
  echo "the image runs as root" >&2
  exit 1
fi
"${PODMAN[@]}" run "${RUN_FLAGS[@]}" "$IMAGE" demo --duration 5 --users 8 -o json >build/container-demo.json
"$PYTHON" - build/container-demo.json <<'PY'
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not lines or any("error" in line for line in lines):
    sys.exit(f"the demo inside the container did not end well: {lines[-1:] }")
print(f"   demo ok as a non-root user: {len(lines)} events")
PY

if [[ -f scripts/container_watch_check.py ]]; then
  echo "== watch inside the image: /healthz and /readyz"
  "$PYTHON" scripts/container_watch_check.py --image "$IMAGE" --podman "${PODMAN[*]}"
fi
echo "== container check passed"
