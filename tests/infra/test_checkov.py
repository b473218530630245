"""checkov (in its own venv) over infra/terraform, with the custom policies in
infra/terraform/policies: no failed check, and nothing skipped but the explicit, justified
list below (each skip is a ``#checkov:skip=ID:reason`` comment next to its resource).

A second run, in parallel, scans tests/infra/fixtures/bad_terraform, where every custom
policy must fail: the policies can catch what they are for.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import ROOT, TERRAFORM_DIR

POLICIES = TERRAFORM_DIR / "policies"
BAD = Path(__file__).with_name("fixtures") / "bad_terraform"

# (check id, resource) -> why it is acceptable. Must match the #checkov:skip comments.
EXPECTED_SKIPS = {
    ("CKV_GCP_84", "google_artifact_registry_repository.images"): "Google-managed encryption",
    ("CKV_GCP_62", "module.job_store.google_storage_bucket.this"): "Cloud Audit Logs",
    ("CKV_GCP_76", "module.job_store.google_compute_subnetwork.this"): "IPv4-only",
    (
        "CKV_ZPE_1",
        "module.api.google_cloud_run_v2_service_iam_member.public",
    ): "user-facing control plane",
}

CUSTOM_CHECKS = {f"CKV_ZPE_{n}" for n in range(1, 9)}


def _checkov_cmd(checkov_bin: Path, directory: Path) -> list[str]:
    return [
        str(checkov_bin),
        "--directory", str(directory),
        "--framework", "terraform",
        "--external-checks-dir", str(POLICIES),
        "--skip-download",
        "--output", "json",
        "--compact",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reports(checkov_bin: Path) -> dict[str, dict[str, Any]]:
    """checkov over the real configuration and over the bad fixture, both at once."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(
            _checkov_cmd(checkov_bin, directory),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for name, directory in (("infra", TERRAFORM_DIR), ("bad", BAD))
    }
    out: dict[str, dict[str, Any]] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert stdout.strip(), f"checkov printed nothing (rc={proc.returncode}): {stderr[-3000:]}"
        data = json.loads(stdout)
        if isinstance(data, list):
            data = next(d for d in data if d.get("check_type") == "terraform")
        out[name] = data
    out["infra"]["_seconds"] = time.monotonic() - started
    return out


@pytest.fixture(scope="module")
def report(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return reports["infra"]


def _checks(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = report["results"][key]
    return checks


def test_no_parsing_errors(reports: dict[str, dict[str, Any]]) -> None:
    for name, report in reports.items():
        errors = report["results"].get("parsing_errors")
        assert report["summary"]["parsing_errors"] == 0, f"{name}: {errors}"


def test_infra_has_no_failed_checks(report: dict[str, Any]) -> None:
    failed = _checks(report, "failed_checks")
    assert [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in failed] == []


def test_skips_are_the_explicit_justified_list(report: dict[str, Any]) -> None:
    skipped = _checks(report, "skipped_checks")
    found = {
        (c["check_id"], c["resource"]): c.get("check_result", {}).get("suppress_comment", "")
        for c in skipped
    }
    assert set(found) == set(EXPECTED_SKIPS), (
        f"unexpected skips: {set(found) ^ set(EXPECTED_SKIPS)}"
    )
    for key, reason_word in EXPECTED_SKIPS.items():
        assert reason_word in found[key], f"{key}: skip reason {found[key]!r} lacks {reason_word!r}"


def test_custom_policies_pass_on_the_infra(report: dict[str, Any]) -> None:
    passed = _checks(report, "passed_checks")
    ran = {c["check_id"] for c in passed}
    # CKV_ZPE_8 (no project-level grants) has nothing to pass on: there are no such resources.
    assert CUSTOM_CHECKS - {"CKV_ZPE_8"} <= ran, (
        f"custom checks that never ran: {CUSTOM_CHECKS - ran}"
    )
    worker = {
        c["check_id"]
        for c in passed
        if c["resource"] == "module.worker.google_cloud_run_v2_service.this"
    }
    assert {"CKV_ZPE_2", "CKV_ZPE_3", "CKV_ZPE_4", "CKV_ZPE_5"} <= worker


def test_custom_policies_fail_on_a_bad_configuration(reports: dict[str, dict[str, Any]]) -> None:
    failed = _checks(reports["bad"], "failed_checks")
    caught = {c["check_id"] for c in failed}
    assert caught >= CUSTOM_CHECKS, (
        f"custom checks that did not catch the bad fixture: {CUSTOM_CHECKS - caught}"
    )


def test_checkov_summary(report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    passed = _checks(report, "passed_checks")
    failed = _checks(report, "failed_checks")
    skipped = _checks(report, "skipped_checks")
    version = report["summary"]["checkov_version"]
    with capsys.disabled():
        print(
            f"\ncheckov {version} on infra/terraform: {len(passed)} passed, {len(failed)} failed, "
            f"{len(skipped)} skipped ({report['_seconds']:.1f}s)"
        )
    assert len(passed) > 20
