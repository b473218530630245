#!/usr/bin/env bash
# The test command: install what the tests need, then lint, type-check and run every suite.
# With CI=true a test whose server or binary is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system-deps.sh
ensure_uv
ensure_debian_packages quantum-espresso quantum-espresso-data redis-server
echo "==> uv sync"
uv sync --all-packages --quiet
echo "==> ruff"
uv run ruff check .
uv run ruff format --check .
echo "==> mypy"
uv run mypy
echo "==> pytest"
uv run pytest "$@"
