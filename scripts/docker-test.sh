#!/usr/bin/env bash
# scripts/docker-test.sh: build the production image and test it as a container.
#
# Installs and starts a Docker engine when missing (Debian's docker.io; dockerd in the
# background), makes a local base image from Debian's packages when the default base
# (python:3.11-slim) cannot be pulled (debootstrap, then docker import, with this machine's
# CA bundle so that pip works behind its network), builds docker/Dockerfile, prints the image's
# size, runs the container tests (tests/container, testcontainers) and the compose variant that
# runs here (docker/compose.local.yaml), and prints the pytest summary.
# Without a usable engine it says so and exits 0: the container tests are skipped, not failed.
set -euo pipefail
cd "$(dirname "$0")/.."
image="${HANDLER_IMAGE:-open-bank/command-handler:test}"
local_base="open-bank/python:3.11-local"           # Python with venv and pip: the build stage
local_runtime="open-bank/python:3.11-local-runtime" # the same without pip and venv: the runtime stage
state="${DOCKER_TEST_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/open-bank-docker}"
mkdir -p "$state"

scripts/setup.sh test
packages=()
[ -x /usr/sbin/dockerd ] || packages+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || packages+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
if [ "${#packages[@]}" -gt 0 ]; then
  echo "docker-test: installing from Debian's packages: ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
docker=/usr/bin/docker
[ -x "$docker" ] || docker="$(command -v docker)"

if ! "$docker" info >/dev/null 2>&1; then
  echo "docker-test: starting dockerd (log: $state/dockerd.log)"
  nohup /usr/sbin/dockerd >"$state/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do "$docker" info >/dev/null 2>&1 && break; sleep 1; done
fi
if ! "$docker" info >/dev/null 2>&1; then
  echo "docker-test: skipped: no Docker engine could be started here (see $state/dockerd.log)"
  exit 0
fi

base="python:3.11-slim"
runtime="$base"
if ! "$docker" image inspect "$base" >/dev/null 2>&1 && ! timeout 60 "$docker" pull -q "$base" >/dev/null 2>&1; then
  echo "docker-test: $base cannot be pulled here"
  base="$local_base"
  runtime="$local_runtime"
  if ! "$docker" image inspect "$base" >/dev/null 2>&1 || ! "$docker" image inspect "$runtime" >/dev/null 2>&1; then
    echo "docker-test: making $local_base from Debian's packages (debootstrap)"
    rootfs="$state/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian >"$state/debootstrap.log" 2>&1
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
      "$rootfs"/usr/share/man "$rootfs"/usr/share/locale "$rootfs"/usr/share/info
    tar -C "$rootfs" -c . | "$docker" import - "$local_base" >/dev/null
    chroot "$rootfs" dpkg --purge python3-pip python3-venv python3-setuptools python3-wheel python3-pip-whl \
      python3-setuptools-whl python3.11-venv >>"$state/debootstrap.log" 2>&1
    tar -C "$rootfs" -c . | "$docker" import - "$local_runtime" >/dev/null
    rm -rf "$rootfs"
  fi
fi
echo "docker-test: building $image (build stage on $base, runtime on $runtime)"
"$docker" build --network host --build-arg BASE_IMAGE="$base" --build-arg RUNTIME_IMAGE="$runtime" \
  -f docker/Dockerfile -t "$image" . >"$state/build.log" 2>&1 \
  || { tail -n 30 "$state/build.log"; exit 1; }
size=$("$docker" image inspect "$image" --format '{{.Size}}')
echo "docker-test: image $image is $((size / 1000000)) MB (runtime base $runtime: $(( $("$docker" image inspect "$runtime" --format '{{.Size}}') / 1000000 )) MB)"

HANDLER_IMAGE="$image" LOCAL_BASE="$base" .venv/bin/python -m pytest -q tests/container "$@"
