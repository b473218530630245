"""Custom checkov checks for Cloud Run v2 that checkov's built-in policies miss.

Built-in CKV_GCP_102 covers only the v1 ``google_cloud_run_service_iam_*`` resources, and
nothing checks a v2 service's ingress, identity or CPU allocation. Loaded with
``checkov --external-checks-dir infra/terraform/policies`` (tests/infra/test_checkov.py).
The worker is recognised by its ``component = "worker"`` label.
"""

from __future__ import annotations

from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}
INTERNAL_INGRESS = {"INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"}


def _first(conf: dict[str, Any], key: str) -> Any:
    value = conf.get(key)
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _component(conf: dict[str, Any]) -> str | None:
    labels = _first(conf, "labels")
    if isinstance(labels, dict):
        value = labels.get("component")
        return value[0] if isinstance(value, list) and value else value
    return None


def _containers(conf: dict[str, Any]) -> list[dict[str, Any]]:
    template = _first(conf, "template")
    if not isinstance(template, dict):
        return []
    containers = template.get("containers") or []
    return [c for c in containers if isinstance(c, dict)]


class CloudRunV2NotPublic(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Cloud Run v2 services are not invokable by allUsers or allAuthenticatedUsers",
            id="CKV_ZPE_1",
            categories=[CheckCategories.IAM],
            supported_resources=[
                "google_cloud_run_v2_service_iam_member",
                "google_cloud_run_v2_service_iam_binding",
            ],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        members: list[Any] = []
        for key in ("member", "members"):
            value = conf.get(key) or []
            for item in value:
                members.extend(item if isinstance(item, list) else [item])
        if any(str(m) in PUBLIC_MEMBERS for m in members):
            return CheckResult.FAILED
        return CheckResult.PASSED

    def get_evaluated_keys(self) -> list[str]:
        return ["member", "members"]


class CloudRunV2WorkerInternalIngress(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="The Cloud Run v2 worker service accepts internal traffic only",
            id="CKV_ZPE_2",
            categories=[CheckCategories.NETWORKING],
            supported_resources=["google_cloud_run_v2_service"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        if _component(conf) != "worker":
            return CheckResult.UNKNOWN
        ingress = _first(conf, "ingress")
        return CheckResult.PASSED if ingress in INTERNAL_INGRESS else CheckResult.FAILED

    def get_evaluated_keys(self) -> list[str]:
        return ["ingress", "labels"]


class CloudRunV2WorkerCpuAlwaysAllocated(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="The Cloud Run v2 worker keeps CPU allocated (cpu_idle = false) for heartbeats",
            id="CKV_ZPE_3",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["google_cloud_run_v2_service"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        if _component(conf) != "worker":
            return CheckResult.UNKNOWN
        containers = _containers(conf)
        if not containers:
            return CheckResult.FAILED
        for container in containers:
            resources = _first(container, "resources")
            if not isinstance(resources, dict) or _first(resources, "cpu_idle") is not False:
                return CheckResult.FAILED
        return CheckResult.PASSED

    def get_evaluated_keys(self) -> list[str]:
        return ["template/[0]/containers/[0]/resources/[0]/cpu_idle"]


class CloudRunV2OwnServiceAccount(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Cloud Run v2 services run as a dedicated service account, not the default one",
            id="CKV_ZPE_4",
            categories=[CheckCategories.IAM],
            supported_resources=["google_cloud_run_v2_service"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        template = _first(conf, "template")
        account = _first(template, "service_account") if isinstance(template, dict) else None
        if not account or "-compute@developer.gserviceaccount.com" in str(account):
            return CheckResult.FAILED
        return CheckResult.PASSED

    def get_evaluated_keys(self) -> list[str]:
        return ["template/[0]/service_account"]


class CloudRunV2SecretsByReference(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Cloud Run v2 env values that look like secrets come from Secret Manager",
            id="CKV_ZPE_5",
            categories=[CheckCategories.SECRETS],
            supported_resources=["google_cloud_run_v2_service"],
        )

    SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "PRIVATE_KEY")

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        for container in _containers(conf):
            for env in container.get("env") or []:
                if not isinstance(env, dict):
                    continue
                name = str(_first(env, "name") or "").upper()
                if any(word in name for word in self.SECRET_WORDS) and env.get("value"):
                    return CheckResult.FAILED
        return CheckResult.PASSED

    def get_evaluated_keys(self) -> list[str]:
        return ["template/[0]/containers/[0]/env"]


check_not_public = CloudRunV2NotPublic()
check_worker_ingress = CloudRunV2WorkerInternalIngress()
check_worker_cpu = CloudRunV2WorkerCpuAlwaysAllocated()
check_own_sa = CloudRunV2OwnServiceAccount()
check_secret_env = CloudRunV2SecretsByReference()
