#!/usr/bin/env bash
# terraform init + validate + plan of infra/terraform for every example in
# infra/terraform/examples/*.tfvars, against google 6.50.0 and 6.1.0, offline: the providers
# are a schema-only plugin built from the CDKTF packages on PyPI (tests/infra/offline_provider).
# Plans land in .cache/tf-check/google-<version>/<example>.json. Non-zero exit on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
exec uv run --quiet python -m tests.infra.terraform_check "$@"
