#!/usr/bin/env bash
# The main job: set everything up, then compute a real pw.x ZPE of samples/h2_zpe.in
# through the API (`zpe serve`) on the embedded defaults (file store, in-process
# dispatch) with `zpe submit --wait`, and print it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system-deps.sh
ensure_uv
ensure_debian_packages quantum-espresso quantum-espresso-data
echo "==> uv sync"
uv sync --all-packages --quiet

export ZPE_STORE_URL="${ZPE_STORE_URL:-file://$PWD/.zpe-data/store}"
port="${ZPE_PORT:-8000}"
export ZPE_API_URL="http://127.0.0.1:$port"
mkdir -p .zpe-data
echo "==> zpe serve on $ZPE_API_URL (store $ZPE_STORE_URL; log .zpe-data/api.log)"
uv run zpe serve --port "$port" > .zpe-data/api.log 2>&1 &
server=$!
# Stop the server on the way out, keeping the script's own exit status: under `set -e`
# the `wait` for the SIGTERMed server (143) would otherwise end the script with it.
trap 'status=$?; kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; exit $status' EXIT
for _ in $(seq 1 60); do
  uv run python -c "import httpx, sys; sys.exit(httpx.get('$ZPE_API_URL/readyz').status_code != 200)" \
    >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat .zpe-data/api.log; exit 1; }
  sleep 0.5
done
echo "==> zpe submit samples/h2_zpe.in --engine qe --wait"
uv run zpe submit samples/h2_zpe.in --engine qe --wait
