#!/usr/bin/env bash
# Container engine and images for tibridge: docker where an engine answers, else podman, set up here.
#
#   bash scripts/containers.sh images [--if-possible]   build the five images (tibridge-<name>:local)
#   bash scripts/containers.sh engine                   print the engine to use, or why there is none (exit 3)
#   bash scripts/containers.sh env                      the podman settings (NAME=value lines) tests and you need
#   bash scripts/containers.sh sizes                    each image's size
#
# Podman (Debian's) is installed when no Docker engine answers and we are root with apt-get, configured for
# machines like CI's: runc (crun fails on hybrid cgroups), cgroupfs, no default ulimits (the sandbox refuses
# setrlimit), events to a file, host networking for builds. No image registry needs to be reachable: the base
# image is made from Debian's packages with mmdebstrap and handed to the Dockerfiles as PYTHON_IMAGE.
# Everything kept lives under TIBRIDGE_CACHE_DIR (default ~/.cache/tibridge), which a CI machine may keep:
# the base image's tarball and podman's storage, with the build layers, so a rebuild reuses what is unchanged.
# With --if-possible, a machine that can run no engine says why and exits 0 (the container test then skips).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR=${TIBRIDGE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tibridge}
PODMAN_DIR=$CACHE_DIR/podman
# Debian bookworm's Python is 3.11, as the services need; python-is-python3 puts `python` on PATH.
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python-is-python3,ca-certificates
BASE_TAG=$(printf '%s %s v1' "$BASE_SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)
BASE_IMAGE=localhost/tibridge-python:$BASE_SUITE-$BASE_TAG
BASE_TARBALL=$CACHE_DIR/base/tibridge-python-$BASE_SUITE-$BASE_TAG.tar
# name, Dockerfile: the compose files and the container test use these tags.
IMAGES=(
  "collector services/collector/Dockerfile"
  "scorer services/scorer/Dockerfile"
  "publisher services/publisher/Dockerfile"
  "sandbox sandbox/Dockerfile"
  "sbdouble tests/sbdouble/Dockerfile"
)
TAG=local

log() { echo "containers.sh: $*" >&2; }

docker_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

podman_env() {
  export CONTAINERS_CONF=$PODMAN_DIR/containers.conf
  export CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
}

# Why podman cannot be set up here, or nothing.
podman_impossible() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || echo "podman is installed but this is not root (the set-up here is for rootful podman)"
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "no Docker engine answers and podman is not installed (installing it needs root and apt-get)"
  fi
}

install_podman() {
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    log "installing podman, runc and mmdebstrap from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends podman runc mmdebstrap uidmap catatonit conmon >/dev/null
  fi
  mkdir -p "$PODMAN_DIR/storage"
  cat >"$PODMAN_DIR/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
  # The run root is per boot; the graph root (images, layers, build cache) is the part worth keeping.
  cat >"$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "/run/tibridge-podman"
EOF
  podman_env
}

base_image() {
  podman_env
  if podman image exists "$BASE_IMAGE"; then
    return 0
  fi
  if [ ! -s "$BASE_TARBALL" ]; then
    log "making the base image from Debian $BASE_SUITE packages ($BASE_PACKAGES)"
    mkdir -p "$(dirname "$BASE_TARBALL")"
    # Documentation, manuals and translations left out; copyright files kept.
    mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      "$BASE_SUITE" "$BASE_TARBALL.partial"
    mv "$BASE_TARBALL.partial" "$BASE_TARBALL"
  fi
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' \
    "$BASE_TARBALL" "$BASE_IMAGE" >/dev/null
}

engine() {
  if docker_answers; then
    echo docker
    return 0
  fi
  local reason
  reason=$(podman_impossible)
  if [ -n "$reason" ]; then
    echo "$reason"
    return 3
  fi
  echo podman
}

build_images() {
  local engine_name=$1 started=$SECONDS
  local -a build
  if [ "$engine_name" = docker ]; then
    build=(docker build)
  else
    install_podman
    base_image
    # docker format keeps HEALTHCHECK; host networking because no bridge is set up for builds.
    build=(podman build --format docker --network host --layers --build-arg "PYTHON_IMAGE=$BASE_IMAGE")
    if [ -n "${SSL_CERT_FILE:-}" ] && [ -f "$SSL_CERT_FILE" ]; then
      local certs
      certs=$(dirname "$(realpath "$SSL_CERT_FILE")")
      build+=(--volume "$certs:$certs:ro" --build-arg "SSL_CERT_FILE=$SSL_CERT_FILE")
      [ "$certs" = "$(dirname "$SSL_CERT_FILE")" ] || build+=(--volume "$(dirname "$SSL_CERT_FILE"):$(dirname "$SSL_CERT_FILE"):ro")
    fi
  fi
  for entry in "${IMAGES[@]}"; do
    read -r name dockerfile <<<"$entry"
    log "building tibridge-$name:$TAG with $engine_name"
    "${build[@]}" --quiet -f "$dockerfile" -t "tibridge-$name:$TAG" . >/dev/null
  done
  log "built ${#IMAGES[@]} images in $((SECONDS - started)) s"
  sizes "$engine_name"
}

sizes() {
  local engine_name=$1
  [ "$engine_name" = podman ] && podman_env
  for entry in "${IMAGES[@]}"; do
    read -r name _ <<<"$entry"
    "$engine_name" image inspect --format "tibridge-$name:$TAG {{.Size}}" "tibridge-$name:$TAG" |
      awk '{ printf "%-26s %4.0f MB\n", $1, $2 / 1e6 }'
  done
}

case "${1:-}" in
  images)
    if ! found=$(engine); then
      if [ "${2:-}" = --if-possible ]; then
        log "not building the images: $found"
        exit 0
      fi
      log "$found"
      exit 3
    fi
    build_images "$found"
    ;;
  engine)
    engine
    ;;
  env)
    echo "CONTAINERS_CONF=$PODMAN_DIR/containers.conf"
    echo "CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf"
    ;;
  sizes)
    found=$(engine) || { log "$found"; exit 3; }
    sizes "$found"
    ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
