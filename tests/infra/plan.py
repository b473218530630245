"""A queryable view of ``terraform show -json`` of a saved plan (planned values, not HCL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMBER_KEYS = ("member", "members")


@dataclass(frozen=True)
class Resource:
    address: str
    type: str
    values: dict[str, Any]
    unknown: dict[str, Any]  # after_unknown of its change


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None  # plain value (None: unknown at plan time, or a secret)
    secret: str | None  # Secret Manager secret id when it comes from value_source
    unknown: bool = False


def _walk(module: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from module.get("resources", [])
    for child in module.get("child_modules", []):
        yield from _walk(child)


class Plan:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        unknown = {
            c["address"]: (c["change"].get("after_unknown") or {})
            for c in document.get("resource_changes", [])
        }
        self.resources = {
            r["address"]: Resource(
                r["address"], r["type"], r["values"], unknown.get(r["address"], {})
            )
            for r in _walk(document["planned_values"]["root_module"])
            if r.get("mode") == "managed"
        }

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(json.loads(path.read_text()))

    @property
    def variables(self) -> dict[str, Any]:
        return {k: v.get("value") for k, v in self.document["variables"].items()}

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources.values() if r.type == type_]

    def get(self, address: str) -> Resource:
        assert address in self.resources, f"{address} is not in the plan: {sorted(self.resources)}"
        return self.resources[address]

    def grants(self) -> list[tuple[str, str, str, str]]:
        """(resource address, role, member, what it is on) for every IAM member resource."""
        out = []
        for res in self.resources.values():
            if not res.type.endswith("_iam_member"):
                continue
            on = next(
                str(res.values[key])
                for key in ("name", "secret_id", "bucket", "service_account_id", "project")
                if res.values.get(key) is not None
            )
            out.append((res.address, res.values["role"], str(res.values.get("member")), on))
        return out

    def members_anywhere(self) -> list[tuple[str, str]]:
        """(address, member) for every member/members value of every resource."""
        out = []
        for res in self.resources.values():
            for key in MEMBER_KEYS:
                value = res.values.get(key)
                for member in value if isinstance(value, list) else [value]:
                    if member is not None:
                        out.append((res.address, str(member)))
        return out

    def container(self, service_address: str) -> dict[str, Any]:
        containers = self.get(service_address).values["template"][0]["containers"]
        assert len(containers) == 1, f"{service_address}: {len(containers)} containers"
        container: dict[str, Any] = containers[0]
        return container

    def env(self, service_address: str) -> dict[str, EnvVar]:
        res = self.get(service_address)
        container = self.container(service_address)
        unknown_envs = (
            res.unknown.get("template", [{}])[0].get("containers", [{}])[0].get("env", [])
        )
        out: dict[str, EnvVar] = {}
        for i, entry in enumerate(container.get("env") or []):
            source = entry.get("value_source") or []
            secret = source[0]["secret_key_ref"][0]["secret"] if source else None
            unknown = i < len(unknown_envs) and bool(unknown_envs[i].get("value"))
            out[entry["name"]] = EnvVar(entry["name"], entry.get("value"), secret, unknown)
        return out
