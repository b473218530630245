"""Extract a Terraform provider schema from a prebuilt CDKTF provider's jsii assembly.

The CDKTF packages (``cdktf-cdktf-provider-google`` etc.) are generated from the provider's own
schema: for each resource a ``<X>Config`` struct lists its arguments and blocks (optional flag,
type, and the Terraform name as the anchor of the registry link in its docs), and the ``<X>``
class has one getter per attribute; getters without a matching ``<name>Input`` are the
computed-only attributes. What jsii does not carry:

- whether an optional argument is also computed: every optional argument is served as
  optional+computed (a plan then shows unset ones as "known after apply", never a wrong value);
- list vs set nesting of blocks: every block is a list (``max_items = 1`` when the struct is
  single);
- sensitivity: :data:`SENSITIVE` lists the attributes this configuration depends on being
  sensitive, as the real providers mark them.

Runs in any Python 3.11 (standard library only)::

    python -m tests.infra.offline_provider.schema_extract WHEEL OUT.json
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

# (resource type, attribute) -> sensitive, as in the real providers.
SENSITIVE: frozenset[tuple[str, str]] = frozenset(
    {
        ("random_password", "result"),
        ("random_password", "bcrypt_hash"),
        ("google_redis_instance", "auth_string"),
        ("google_secret_manager_secret_version", "secret_data"),
        ("google_service_account_key", "private_key"),
    }
)

_LINK = re.compile(
    r"\{@link \S+/providers/[\w-]+/[\w-]+/([\w.]+)/docs/(resources|data-sources)/\S+ (\w+)\}"
)
_ANCHOR = re.compile(r"\{@link \S+#(\w+) \w+#\w+\}")
_RESOLVABLE = "cdktf.IResolvable"
_PRIMITIVE = {"string": "string", "number": "number", "boolean": "bool", "any": "dynamic"}
_MAPS = {
    "cdktf.StringMap": ["map", "string"],
    "cdktf.NumberMap": ["map", "number"],
    "cdktf.BooleanMap": ["map", "bool"],
    "cdktf.AnyMap": ["map", "dynamic"],
    "cdktf.StringMapList": ["list", ["map", "string"]],
}


def load_assembly(wheel: Path) -> dict[str, Any]:
    """The ``.jsii`` JSON inside the wheel's ``_jsii/*.jsii.tgz``."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(zf.read(name)), mode="r:gz") as tar:
            member = tar.extractfile("package/.jsii")
            assert member is not None, f"{wheel}: no package/.jsii"
            data: dict[str, Any] = json.load(member)
    return data


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def tf_name(prop: dict[str, Any]) -> str:
    m = _ANCHOR.search(prop.get("docs", {}).get("remarks", ""))
    return m.group(1) if m else snake(prop["name"])


class Extractor:
    def __init__(self, assembly: dict[str, Any]) -> None:
        self.types: dict[str, dict[str, Any]] = assembly["types"]

    # --- arguments and blocks (Config structs) ----------------------------------------------

    def _struct_of(self, jtype: dict[str, Any]) -> tuple[str, bool] | None:
        """(struct fqn, is_list) when a property's type is a nested block."""
        if "fqn" in jtype and self.types.get(jtype["fqn"], {}).get("datatype"):
            return jtype["fqn"], False
        for option in jtype.get("union", {}).get("types", []):
            coll = option.get("collection")
            if coll and coll["kind"] == "array" and "fqn" in coll["elementtype"]:
                fqn = coll["elementtype"]["fqn"]
                if self.types.get(fqn, {}).get("datatype"):
                    return fqn, True
        return None

    def value_type(self, jtype: dict[str, Any]) -> Any:
        if "primitive" in jtype:
            return _PRIMITIVE[jtype["primitive"]]
        if "union" in jtype:
            options = [t for t in jtype["union"]["types"] if t.get("fqn") != _RESOLVABLE]
            if not options:
                return "bool"  # a getter typed IResolvable is a boolean attribute
            return self.value_type(options[0])
        if "collection" in jtype:
            coll = jtype["collection"]
            kind = "list" if coll["kind"] == "array" else "map"
            return [kind, self.value_type(coll["elementtype"])]
        fqn = jtype["fqn"]
        if fqn == _RESOLVABLE:
            return "bool"
        if fqn in _MAPS:
            return _MAPS[fqn]
        if fqn.endswith("List") and fqn[:-4] + "OutputReference" in self.types:
            return ["list", self.object_type(fqn[:-4] + "OutputReference")]
        if fqn.endswith("Map") and fqn[:-3] + "OutputReference" in self.types:
            return ["map", self.object_type(fqn[:-3] + "OutputReference")]
        if fqn.endswith("OutputReference"):
            return ["list", self.object_type(fqn)]
        if self.types.get(fqn, {}).get("datatype"):
            return ["list", self.object_type(fqn)]
        return "dynamic"

    def object_type(self, fqn: str) -> list[Any]:
        attrs = {}
        for prop in self.types[fqn].get("properties", []):
            if prop["name"] in ("internalValue", "fqn", "creationStack") or prop.get("static"):
                continue
            if prop["name"].endswith("Input"):
                continue
            attrs[tf_name(prop)] = self.value_type(prop["type"])
        return ["object", attrs]

    def computed(self, class_fqn: str | None) -> dict[str, Any]:
        """Computed-only attributes: getters of the class without a ``<name>Input``."""
        if class_fqn is None or class_fqn not in self.types:
            return {}
        props = self.types[class_fqn].get("properties", [])
        names = {p["name"] for p in props}
        out = {}
        for prop in props:
            name = prop["name"]
            if prop.get("static") or name.endswith("Input") or f"{name}Input" in names:
                continue
            if name in ("internalValue", "fqn", "creationStack", "terraformResourceType"):
                continue
            if not prop.get("immutable"):
                continue
            out[snake(name)] = {"type": self.value_type(prop["type"]), "computed": True}
        return out

    def block(self, struct_fqn: str, class_fqn: str | None, resource: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        block_types: dict[str, Any] = {}
        for prop in self.types[struct_fqn].get("properties", []):
            name = tf_name(prop)
            nested = self._struct_of(prop["type"])
            if nested is not None:
                fqn, is_list = nested
                block_types[name] = {
                    "nesting_mode": "list",
                    "block": self.block(fqn, fqn + "OutputReference", resource),
                    **({} if prop.get("optional") else {"min_items": 1}),
                    **({} if is_list else {"max_items": 1}),
                }
                continue
            attr: dict[str, Any] = {"type": self.value_type(prop["type"])}
            if prop.get("optional"):
                attr.update(optional=True, computed=True)
            else:
                attr["required"] = True
            attributes[name] = attr
        for name, attr in self.computed(class_fqn).items():
            if name not in attributes and name not in block_types:
                attributes[name] = attr
        for name, attr in attributes.items():
            if (resource, name) in SENSITIVE:
                attr["sensitive"] = True
        return {"attributes": attributes, "block_types": block_types}

    def schema(self) -> dict[str, Any]:
        resources: dict[str, Any] = {}
        data_sources: dict[str, Any] = {}
        provider: dict[str, Any] | None = None
        versions: set[str] = set()
        for fqn, jtype in self.types.items():
            if jtype.get("kind") != "class":
                continue
            m = _LINK.search(jtype.get("docs", {}).get("summary", ""))
            config = fqn + "Config"
            if jtype.get("base") == "cdktf.TerraformProvider" and config in self.types:
                block = self.block(config, None, "provider")
                block["attributes"].pop("alias", None)
                provider = block
            elif m and config in self.types:
                versions.add(m.group(1))
                target = resources if m.group(2) == "resources" else data_sources
                target[m.group(3)] = {"version": 0, "block": self.block(config, fqn, m.group(3))}
        assert provider is not None, "no provider class in the assembly"
        for body in (*resources.values(), *data_sources.values()):
            body["block"]["attributes"].setdefault(
                "id", {"type": "string", "optional": True, "computed": True}
            )
        assert len(versions) == 1, f"the assembly documents provider versions {versions}"
        return {
            "provider_version": versions.pop(),
            "provider": {"version": 0, "block": provider},
            "resource_schemas": resources,
            "data_source_schemas": data_sources,
        }


def write(schema: dict[str, Any], out: Path) -> None:
    """Write ``schema`` as JSON (gzip when ``out`` ends in .gz)."""
    text = json.dumps(schema, sort_keys=True).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(text) if out.suffix == ".gz" else text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out", type=Path, help="schema JSON (gzip if it ends in .gz)")
    args = parser.parse_args()
    schema = Extractor(load_assembly(args.wheel)).schema()
    write(schema, args.out)
    print(
        f"{args.out}: {len(schema['resource_schemas'])} resources, "
        f"{len(schema['data_source_schemas'])} data sources",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
