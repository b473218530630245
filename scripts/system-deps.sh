#!/usr/bin/env bash
# Install what the project needs from outside PyPI, once: uv, and on Debian/Ubuntu
# the packages given as arguments (e.g. quantum-espresso quantum-espresso-data redis-server).
# Sourced by scripts/run-h2.sh and scripts/test.sh.
set -euo pipefail

ensure_uv() {
  if ! command -v uv >/dev/null 2>&1; then
    echo "==> installing uv (pip install --user uv)"
    python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
    export PATH="$HOME/.local/bin:$PATH"
  fi
}

ensure_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]}; this is not a Debian/Ubuntu system, install them (pw.x 6.x and its pseudopotentials) by hand" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "==> apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Cloud Tasks emulator (gcloud-tasks-emulator) pins protobuf<5, so it gets a virtualenv
# of its own under .cache/ (the tests' fixture does the same when it is missing).
ensure_tasks_emulator() {
  local venv="${ZPE_TASKS_EMULATOR_VENV:-.cache/tasks-emulator-venv}"
  [ -x "$venv/bin/gcloud-tasks-emulator" ] && return 0
  echo "==> installing gcloud-tasks-emulator into $venv"
  uv venv --quiet --allow-existing "$venv"
  uv pip install --quiet --python "$venv/bin/python" gcloud-tasks-emulator
}

# pw.x from Debian is an MPI build; Open MPI refuses to start as root unless told.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
