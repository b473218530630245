"""Parse every ``.tf`` file under a directory (and optionally YAML files) to one JSON document.

Runs inside ``.cache/hcl2-venv`` (python-hcl2, PyYAML), never in the project venv::

    .cache/hcl2-venv/bin/python tests/infra/hcl2_dump.py infra/terraform [--yaml cloudbuild.yaml]

Output: ``{"tf": {"<relative path>": <parsed>}, "yaml": {"<path>": <parsed>}}``. python-hcl2
keeps HCL's quotes on labels and literal strings (``"\\"worker\\""``) and adds ``__is_block__``
/ ``__comments__`` markers; both are normalised away here so tests see plain values: a literal
string as its text, an expression as ``${...}``, a block as a list of dicts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import hcl2  # type: ignore[import-not-found]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def normalise(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            _unquote(str(key)): normalise(value)
            for key, value in node.items()
            if key not in ("__is_block__", "__comments__", "__inline_comments__")
        }
    if isinstance(node, list):
        return [normalise(item) for item in node]
    if isinstance(node, str):
        return _unquote(node)
    return node


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--yaml", action="append", default=[])
    args = parser.parse_args()
    root = Path(args.directory)
    out: dict[str, Any] = {"tf": {}, "yaml": {}}
    for path in sorted(root.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        with path.open(encoding="utf-8") as handle:
            try:
                out["tf"][path.relative_to(root).as_posix()] = normalise(hcl2.load(handle))
            except Exception as exc:
                print(f"{path}: {exc}", file=sys.stderr)
                return 2
    if args.yaml:
        import yaml

        for name in args.yaml:
            with open(name, encoding="utf-8") as handle:
                out["yaml"][name] = yaml.safe_load(handle)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
