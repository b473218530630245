"""Structural rules over the parsed Terraform. Each returns a list of violations, each naming
the offending block, so a test failure says what to fix (and the negative tests can show the
rules do catch a bad configuration)."""

from __future__ import annotations

import re
from typing import Any

from tests.infra.hcl import Config, expr

PUBLIC = ("allUsers", "allAuthenticatedUsers")
SECRET_NAME = re.compile(
    r"token|secret|passw|credential|private_key|api_key|auth(?!_mode$)", re.I
)  # auth_mode is a mode, not a secret
# Module inputs that carry Secret Manager secret ids (references), never secret values.
SECRET_REFERENCES = {"secret_env", "secret_files"}


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _walk(value, f"{path}[{index}]")
    else:
        found.append((path, node))
    return found


def variables_documented(cfg: Config) -> list[str]:
    bad = []
    for var in cfg.variables():
        for key in ("description", "type"):
            if not str(var.body.get(key, "")).strip():
                bad.append(f"{var.address}: no {key}")
    return bad


def secret_variables_sensitive(cfg: Config) -> list[str]:
    """A variable whose name looks like a secret and that can hold one must be sensitive."""
    bad = []
    for var in cfg.variables():
        type_ = expr(var.body.get("type", ""))
        if type_ in ("bool", "number") or (var.module_dir and var.name in SECRET_REFERENCES):
            continue
        if SECRET_NAME.search(var.name) and var.body.get("sensitive") is not True:
            bad.append(f"{var.address}: looks like a secret but is not sensitive = true")
    return bad


def no_public_members(cfg: Config, module_dir: str) -> list[str]:
    bad = []
    for block in cfg.resources(module_dir=module_dir):
        for path, value in _walk(block.body):
            if isinstance(value, str) and any(p in value for p in PUBLIC):
                bad.append(f"{block.address}: {path} = {value!r}")
    return bad


def public_grants(cfg: Config) -> list[str]:
    """Addresses of every block anywhere that mentions allUsers / allAuthenticatedUsers."""
    found = []
    for block in cfg.resources():
        if any(isinstance(v, str) and any(p in v for p in PUBLIC) for _p, v in _walk(block.body)):
            found.append(f"{block.module_dir}:{block.kind}.{block.name}")
    return found


def run_invokers(cfg: Config, module_dir: str) -> list[str]:
    """member of every roles/run.invoker grant in a module."""
    members = []
    for kind in (
        "google_cloud_run_v2_service_iam_member",
        "google_cloud_run_v2_service_iam_binding",
        "google_cloud_run_v2_service_iam_policy",
        "google_cloud_run_service_iam_member",
    ):
        for block in cfg.resources(kind, module_dir):
            if kind.endswith("_policy") or block.body.get("role") == "roles/run.invoker":
                members.append(str(block.body.get("member", block.body.get("members"))))
    return members


def secrets_by_reference_only(cfg: Config) -> list[str]:
    """secret_data only in secret versions; outputs expose no secret material unless sensitive."""
    bad = []
    for block in cfg.resources():
        for path, value in _walk(block.body):
            if path.split(".")[-1] == "secret_data" and (
                block.kind != "google_secret_manager_secret_version"
            ):
                bad.append(f"{block.address}: secret_data outside a secret version ({value!r})")
    leaky = re.compile(r"random_password|secret_data|auth_string|redis_url|secret_version")
    for out in cfg.outputs():
        value = str(out.body.get("value", ""))
        if leaky.search(value) and out.body.get("sensitive") is not True:
            bad.append(f"{out.address}: exposes {leaky.search(value).group(0)}")  # type: ignore[union-attr]
    for var in cfg.variables(""):
        default = str(var.body.get("default", ""))
        if SECRET_NAME.search(var.name) and len(default) > 16 and " " not in default:
            bad.append(f"{var.address}: secret-looking default")
    return bad


def no_project_level_grants(cfg: Config) -> list[str]:
    return [
        b.address
        for b in cfg.resources()
        if b.kind
        in ("google_project_iam_member", "google_project_iam_binding", "google_project_iam_policy")
    ]
