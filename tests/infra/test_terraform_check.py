"""``scripts/terraform-check.sh``: the real terraform validates and plans every mode, offline,
and fails on a typo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import ROOT, TERRAFORM_DIR, CheckRun, terraform_binary
from tests.infra.offline_provider.mirror import GOOGLE_VERSIONS
from tests.infra.terraform_check import EXAMPLES

EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.tfvars"))
VERSIONS = [g.version for g in GOOGLE_VERSIONS]


def test_examples_cover_every_mode_and_store() -> None:
    text = {name: (EXAMPLES / f"{name}.tfvars").read_text() for name in EXAMPLE_NAMES}
    for mode in ("inprocess", "cloud-tasks", "http-pull"):
        assert any(f'execution_mode = "{mode}"' in t for t in text.values()), mode
    for store in ("gcs", "redis"):
        assert any(f'store          = "{store}"' in t for t in text.values()), store


def test_init_validate_plan_pass_for_every_example_and_provider_version(
    terraform_check: CheckRun,
) -> None:
    assert terraform_check.returncode == 0, terraform_check.stdout + terraform_check.stderr
    for version in VERSIONS:
        assert f"ok   google-{version}: validate" in terraform_check.stdout
        for name in EXAMPLE_NAMES:
            assert f"ok   google-{version}: plan {name}.tfvars" in terraform_check.stdout
            plan = terraform_check.plan(version, name)
            assert plan.document["errored"] is False and plan.document["complete"] is True
            assert plan.variables["execution_mode"] in ("inprocess", "cloud-tasks", "http-pull")


# A deliberate mistake in a copy of the HCL: (file, text, replacement, what terraform says).
TYPOS = {
    "misspelled-argument": (
        "modules/api_service/main.tf",
        "  ingress             = var.ingress\n",
        "  ingres              = var.ingress\n",
        'An argument named "ingres" is not expected here',
    ),
    "wrong-type": (
        "modules/worker_service/main.tf",
        "  custom_audiences = [var.audience]\n",
        '  custom_audiences = { audience = "x" }\n',
        "Incorrect attribute value type",
    ),
    "misspelled-block": (
        "modules/task_queue/main.tf",
        "  retry_config {\n",
        "  retry_configs {\n",
        'Blocks of type "retry_configs" are not expected here',
    ),
    "missing-required-argument": (
        "iam.tf",
        '  account_id   = "${var.name_prefix}-api"\n',
        "",
        'The argument "account_id" is required',
    ),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_a_typo_fails_validate(typo: str, tmp_path: Path) -> None:
    terraform_binary()
    relative, text, replacement, message = TYPOS[typo]
    config = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, config, ignore=shutil.ignore_patterns(".terraform*"))
    path = config / relative
    source = path.read_text()
    assert source.count(text) == 1, f"{relative} no longer contains {text!r} once"
    path.write_text(source.replace(text, replacement))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.infra.terraform_check", "--validate-only",
         "--google", VERSIONS[0], "--config", str(config), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if proc.returncode == 2:
        pytest.fail(f"terraform-check could not run: {proc.stderr[-2000:]}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAIL google-{VERSIONS[0]}: validate" in proc.stdout
    assert message in " ".join(proc.stderr.split()), proc.stderr[-3000:]
