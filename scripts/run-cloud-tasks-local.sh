#!/usr/bin/env bash
# The cloud-tasks split on one machine: the Cloud Tasks emulator, the worker service
# (zpe-worker serve) and the API (zpe serve, ZPE_EXECUTION_MODE=cloud-tasks) sharing a
# file store. The emulator sends no OIDC token, so the shared-secret header is on.
# Usage: bash scripts/run-cloud-tasks-local.sh   (Ctrl-C stops all three)
# Then:  uv run zpe submit samples/h2o_zpe.in --engine mock --wait
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system-deps.sh
ensure_uv
uv sync --all-packages --quiet
ensure_tasks_emulator

EMULATOR_PORT="${EMULATOR_PORT:-9022}"
WORKER_PORT="${WORKER_PORT:-8081}"
API_PORT="${API_PORT:-8000}"
QUEUE="projects/zpe-local/locations/local/queues/zpe-tasks"

export ZPE_EXECUTION_MODE=cloud-tasks
export ZPE_STORE_URL="${ZPE_STORE_URL:-file://$PWD/.zpe-data/cloud-tasks-store}"
export ZPE_TASKS_QUEUE="$QUEUE"
export ZPE_TASKS_EMULATOR_HOST="127.0.0.1:$EMULATOR_PORT"
export ZPE_WORKER_URL="http://127.0.0.1:$WORKER_PORT"
export ZPE_PUSH_SHARED_SECRET="${ZPE_PUSH_SHARED_SECRET:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')}"
export ZPE_DEFAULT_ENGINE="${ZPE_DEFAULT_ENGINE:-mock}"
export ZPE_TASKS_MAX_ATTEMPTS="${ZPE_TASKS_MAX_ATTEMPTS:-5}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait || true; }
trap cleanup EXIT INT TERM

"${ZPE_TASKS_EMULATOR_VENV:-.cache/tasks-emulator-venv}/bin/gcloud-tasks-emulator" start \
  --port "$EMULATOR_PORT" --default-queue "$QUEUE" --max-retries "$((ZPE_TASKS_MAX_ATTEMPTS - 1))" -q &
pids+=($!)
uv run zpe-worker serve --host 127.0.0.1 --port "$WORKER_PORT" &
pids+=($!)
uv run zpe serve --port "$API_PORT" &
pids+=($!)
echo "==> emulator :$EMULATOR_PORT, worker :$WORKER_PORT, API http://127.0.0.1:$API_PORT"
wait -n
