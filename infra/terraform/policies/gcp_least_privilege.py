"""Custom checkov checks: the job-store bucket is private, the queue retries explicitly,
and nothing is granted at project level (every grant is on one resource)."""

from __future__ import annotations

from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck


def _first(conf: dict[str, Any], key: str) -> Any:
    value = conf.get(key)
    if isinstance(value, list):
        return value[0] if value else None
    return value


class BucketPrivate(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Buckets enforce public access prevention and uniform bucket-level access",
            id="CKV_ZPE_6",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["google_storage_bucket"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        if _first(conf, "public_access_prevention") != "enforced":
            return CheckResult.FAILED
        if _first(conf, "uniform_bucket_level_access") is not True:
            return CheckResult.FAILED
        return CheckResult.PASSED

    def get_evaluated_keys(self) -> list[str]:
        return ["public_access_prevention", "uniform_bucket_level_access"]


class QueueExplicitRetry(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Cloud Tasks queues set retry_config (max attempts, backoff) and rate_limits",
            id="CKV_ZPE_7",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["google_cloud_tasks_queue"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        retry = _first(conf, "retry_config")
        limits = _first(conf, "rate_limits")
        if not isinstance(retry, dict) or not isinstance(limits, dict):
            return CheckResult.FAILED
        needed = ("max_attempts", "min_backoff", "max_backoff", "max_doublings")
        if any(retry.get(key) in (None, [], [None]) for key in needed):
            return CheckResult.FAILED
        return CheckResult.PASSED

    def get_evaluated_keys(self) -> list[str]:
        return ["retry_config", "rate_limits"]


class NoProjectLevelGrants(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="No project-level IAM grants: roles are bound on single resources",
            id="CKV_ZPE_8",
            categories=[CheckCategories.IAM],
            supported_resources=[
                "google_project_iam_member",
                "google_project_iam_binding",
                "google_project_iam_policy",
            ],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        return CheckResult.FAILED


check_bucket_private = BucketPrivate()
check_queue_retry = QueueExplicitRetry()
check_no_project_grants = NoProjectLevelGrants()
