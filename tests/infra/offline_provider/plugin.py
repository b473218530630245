"""A Terraform provider plugin that serves an extracted schema and plans creates (no API calls).

Runs in ``.cache/tfplugin-venv`` (the ``tf`` package from PyPI: go-plugin handshake, AutoMTLS
certificate, tfplugin6 stubs)::

    python plugin.py --schema .cache/tf-schemas/google-6.50.0.json.gz

Terraform itself checks a configuration against the schema (unknown arguments and blocks,
missing required ones, value types, block counts); this plugin only has to hand the schema
over and answer plans: a create is planned as the proposed state with every computed-only
attribute unknown ("known after apply"), and optional arguments left unset stay null, except
the few attributes in :data:`DERIVED` that Google derives from the arguments alone (a service
account's email, a queue's id): those are planned with the value apply will give them, where
the real provider would say "known after apply", so tests can say who holds which role.
``apply`` is refused: nothing here talks to Google.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-not-found]
import tf.provider  # type: ignore[import-not-found]
from tf.gen import tfplugin_pb2 as pb  # type: ignore[import-not-found]
from tf.gen import tfplugin_pb2_grpc as rpc
from tf.runner import run_provider  # type: ignore[import-not-found]

UNKNOWN = msgpack.ExtType(0, b"")
_NESTING = {"single": 1, "list": 2, "set": 3, "map": 4, "group": 5}


def _ext_hook(code: int, data: bytes) -> Any:
    return msgpack.ExtType(code, data)  # unknowns (refined or not) pass through unchanged


def decode(value: Any) -> Any:
    if value.msgpack:
        return msgpack.unpackb(value.msgpack, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    if value.json:
        return json.loads(value.json)
    return None


def encode(value: Any) -> Any:
    return pb.DynamicValue(msgpack=msgpack.packb(value, use_bin_type=True))


def block_pb(block: dict[str, Any]) -> Any:
    return pb.Schema.Block(
        attributes=[
            pb.Schema.Attribute(
                name=name,
                type=json.dumps(attr["type"]).encode(),
                required=attr.get("required", False),
                optional=attr.get("optional", False),
                computed=attr.get("computed", False),
                sensitive=attr.get("sensitive", False),
            )
            for name, attr in sorted(block.get("attributes", {}).items())
        ],
        block_types=[
            pb.Schema.NestedBlock(
                type_name=name,
                block=block_pb(nested["block"]),
                nesting=_NESTING[nested["nesting_mode"]],
                min_items=nested.get("min_items", 0),
                max_items=nested.get("max_items", 0),
            )
            for name, nested in sorted(block.get("block_types", {}).items())
        ],
    )


def _sa_email(v: dict[str, Any]) -> str:
    return f"{v['account_id']}@{v['project']}.iam.gserviceaccount.com"


# resource type -> attribute -> its value from the known arguments (Google's naming rules).
DERIVED: dict[str, dict[str, Any]] = {
    "google_service_account": {
        "email": _sa_email,
        "member": lambda v: f"serviceAccount:{_sa_email(v)}",
        "name": lambda v: f"projects/{v['project']}/serviceAccounts/{_sa_email(v)}",
        "id": lambda v: f"projects/{v['project']}/serviceAccounts/{_sa_email(v)}",
    },
    "google_cloud_tasks_queue": {
        "id": lambda v: f"projects/{v['project']}/locations/{v['location']}/queues/{v['name']}",
    },
    "google_secret_manager_secret": {
        "id": lambda v: f"projects/{v['project']}/secrets/{v['secret_id']}",
        "name": lambda v: f"projects/{v['project']}/secrets/{v['secret_id']}",
    },
}


def derive(type_name: str, planned: dict[str, Any]) -> dict[str, Any]:
    """Fill the :data:`DERIVED` attributes whose inputs are all known strings."""
    out = dict(planned)
    for name, rule in DERIVED.get(type_name, {}).items():
        if name not in out:
            continue
        try:
            value = rule({k: v for k, v in planned.items() if isinstance(v, str)})
        except KeyError:  # an input is unknown or unset: leave it unknown
            continue
        out[name] = value
    return out


def plan_block(block: dict[str, Any], value: Any) -> Any:
    """The planned value of a new object: computed-only attributes (and an unset id) unknown."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, attr in block.get("attributes", {}).items():
        computed_only = attr.get("computed") and not attr.get("optional")
        if out.get(name) is None and (computed_only or name == "id"):
            out[name] = UNKNOWN
    for name, nested in block.get("block_types", {}).items():
        items = out.get(name)
        if isinstance(items, list):
            out[name] = [plan_block(nested["block"], item) for item in items]
    return out


class SchemaProvider(rpc.ProviderServicer):  # type: ignore[misc]
    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.resources: dict[str, Any] = schema["resource_schemas"]
        self.data_sources: dict[str, Any] = schema["data_source_schemas"]

    def GetMetadata(self, request: Any, context: Any) -> Any:
        return pb.GetMetadata.Response(
            server_capabilities=pb.ServerCapabilities(plan_destroy=True),
            resources=[pb.GetMetadata.ResourceMetadata(type_name=n) for n in self.resources],
            data_sources=[
                pb.GetMetadata.DataSourceMetadata(type_name=n) for n in self.data_sources
            ],
        )

    def GetProviderSchema(self, request: Any, context: Any) -> Any:
        def schema_pb(body: dict[str, Any]) -> Any:
            return pb.Schema(version=body.get("version", 0), block=block_pb(body["block"]))

        return pb.GetProviderSchema.Response(
            provider=schema_pb(self.schema["provider"]),
            resource_schemas={n: schema_pb(b) for n, b in self.resources.items()},
            data_source_schemas={n: schema_pb(b) for n, b in self.data_sources.items()},
            server_capabilities=pb.ServerCapabilities(plan_destroy=True),
        )

    def ValidateProviderConfig(self, request: Any, context: Any) -> Any:
        return pb.ValidateProviderConfig.Response()

    def ValidateResourceConfig(self, request: Any, context: Any) -> Any:
        return pb.ValidateResourceConfig.Response()

    def ValidateDataResourceConfig(self, request: Any, context: Any) -> Any:
        return pb.ValidateDataResourceConfig.Response()

    def ConfigureProvider(self, request: Any, context: Any) -> Any:
        return pb.ConfigureProvider.Response()

    def UpgradeResourceState(self, request: Any, context: Any) -> Any:
        state = json.loads(request.raw_state.json) if request.raw_state.json else None
        return pb.UpgradeResourceState.Response(upgraded_state=encode(state))

    def ReadResource(self, request: Any, context: Any) -> Any:
        return pb.ReadResource.Response(new_state=request.current_state, private=request.private)

    def PlanResourceChange(self, request: Any, context: Any) -> Any:
        proposed = decode(request.proposed_new_state)
        prior = decode(request.prior_state)
        if proposed is None or prior is not None:  # destroy, or an update: as proposed
            return pb.PlanResourceChange.Response(planned_state=request.proposed_new_state)
        planned = plan_block(self.resources[request.type_name]["block"], proposed)
        planned = derive(request.type_name, planned)
        return pb.PlanResourceChange.Response(planned_state=encode(planned))

    def ApplyResourceChange(self, request: Any, context: Any) -> Any:
        diag = pb.Diagnostic(
            severity=pb.Diagnostic.ERROR,
            summary="offline schema provider",
            detail="This provider only serves the schema for validate and plan; it cannot apply.",
        )
        return pb.ApplyResourceChange.Response(diagnostics=[diag])

    def ReadDataSource(self, request: Any, context: Any) -> Any:
        config = decode(request.config)
        planned = plan_block(self.data_sources[request.type_name]["block"], config)
        return pb.ReadDataSource.Response(state=encode(planned))

    def StopProvider(self, request: Any, context: Any) -> Any:
        return pb.StopProvider.Response()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema", type=Path, required=True)
    args, _rest = parser.parse_known_args()
    raw = args.schema.read_bytes()
    schema = json.loads(gzip.decompress(raw) if args.schema.suffix == ".gz" else raw)
    servicer = SchemaProvider(schema)
    # run_provider does the go-plugin handshake (AutoMTLS, tfplugin6 over a unix socket,
    # controller and stdio services) around tf's own servicer; ours replaces it.
    tf.provider.ProviderServicer = lambda _app: servicer
    run_provider(None, [sys.argv[0]])


if __name__ == "__main__":
    main()
