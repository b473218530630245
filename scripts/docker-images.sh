#!/usr/bin/env bash
# Build the product images from services/api/Dockerfile and services/worker/Dockerfile with no
# image registry: starts dockerd if none answers (and leaves it running for the tests), makes
# local base images with debootstrap (Debian's python3; for the worker also quantum-espresso),
# the local test images, then zpe-api:local and zpe-worker:local. See docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system-deps.sh
source scripts/docker-deps.sh
ensure_uv
uv sync --all-packages --quiet
start_docker_and_build_images
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^zpe-' | sort
