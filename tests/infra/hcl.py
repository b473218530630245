"""A queryable view of the parsed Terraform (python-hcl2 JSON, see hcl2_dump.py).

Also a tiny evaluator for the ``count`` conditions this configuration uses
(``local.X ? 1 : 0`` with locals built from ``var.execution_mode`` / ``var.store`` and
``&&``, ``||``, ``!``, ``==``, ``!=``), so tests can say what each mode creates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Block:
    file: str
    kind: str  # resource type, or "module"
    name: str
    body: dict[str, Any]

    @property
    def module_dir(self) -> str:
        """'' for the root module, else e.g. 'modules/worker_service'."""
        parts = self.file.split("/")
        return "/".join(parts[:2]) if parts[0] == "modules" else ""

    @property
    def address(self) -> str:
        where = f"{self.module_dir}:" if self.module_dir else ""
        return f"{where}{self.kind}.{self.name} ({self.file})"


def _items(section: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for entry in section or []:
        yield from entry.items()


class Config:
    def __init__(self, files: Mapping[str, Any]) -> None:
        self.files = dict(files)

    def _in(self, module_dir: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        for path, doc in self.files.items():
            parts = path.split("/")
            here = "/".join(parts[:2]) if parts[0] == "modules" else ""
            if module_dir is None or module_dir == here:
                yield path, doc

    def resources(self, kind: str | None = None, module_dir: str | None = None) -> list[Block]:
        found = []
        for path, doc in self._in(module_dir):
            for rtype, named in _items(doc.get("resource")):
                for name, body in named.items():
                    if kind is None or rtype == kind:
                        found.append(Block(path, rtype, name, body))
        return found

    def resource(self, kind: str, name: str, module_dir: str = "") -> Block:
        matches = [b for b in self.resources(kind, module_dir) if b.name == name]
        assert len(matches) == 1, f"expected one {kind}.{name} in {module_dir or 'root'}"
        return matches[0]

    def modules(self, module_dir: str = "") -> dict[str, Block]:
        found = {}
        for path, doc in self._in(module_dir):
            for name, body in _items(doc.get("module")):
                found[name] = Block(path, "module", name, body)
        return found

    def variables(self, module_dir: str | None = None) -> list[Block]:
        found = []
        for path, doc in self._in(module_dir):
            for name, body in _items(doc.get("variable")):
                found.append(Block(path, "variable", name, body))
        return found

    def outputs(self, module_dir: str | None = None) -> list[Block]:
        found = []
        for path, doc in self._in(module_dir):
            for name, body in _items(doc.get("output")):
                found.append(Block(path, "output", name, body))
        return found

    def locals(self, module_dir: str = "") -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for _path, doc in self._in(module_dir):
            for entry in doc.get("locals") or []:
                merged.update(entry)
        return merged

    def terraform_blocks(self) -> list[dict[str, Any]]:
        return [t for _p, doc in self._in("") for t in doc.get("terraform") or []]


def expr(value: Any) -> str:
    """The HCL expression text of an attribute value (``${...}`` stripped)."""
    text = str(value).strip()
    if text.startswith("${") and text.endswith("}"):
        return text[2:-1].strip()
    return text


_COUNT = re.compile(r"^(?P<cond>.+?)\s*\?\s*1\s*:\s*0$", re.S)
_TOKEN = re.compile(r'local\.(\w+)|var\.(\w+)|"([^"]*)"|&&|\|\||!=|==|!|\(|\)|true|false|\s+')


def evaluate(condition: str, env: Mapping[str, Any], local_defs: Mapping[str, Any]) -> bool:
    """Evaluate a boolean HCL condition over ``var.*`` values in ``env`` and ``local.*``."""
    out: list[str] = []
    pos = 0
    text = condition.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot evaluate {condition!r} at {text[pos:]!r}")
        tok = m.group(0)
        if m.group(1):
            out.append(repr(evaluate(expr(local_defs[m.group(1)]), env, local_defs)))
        elif m.group(2):
            if m.group(2) not in env:
                raise KeyError(f"no value for var.{m.group(2)} in {condition!r}")
            out.append(repr(env[m.group(2)]))
        elif m.group(3) is not None:
            out.append(repr(m.group(3)))
        elif tok == "&&":
            out.append(" and ")
        elif tok == "||":
            out.append(" or ")
        elif tok == "!":
            out.append(" not ")
        elif tok in ("true", "false"):
            out.append(tok.capitalize())
        else:
            out.append(tok)
        pos = m.end()
    return bool(eval("".join(out), {"__builtins__": {}}, {}))  # our own tokens only


def count_of(block: Block, env: Mapping[str, Any], local_defs: Mapping[str, Any]) -> int:
    """How many instances a block has: 1 without ``count``, else its ``cond ? 1 : 0``."""
    if "count" not in block.body:
        return 1
    raw = expr(block.body["count"])
    m = _COUNT.match(raw)
    if not m:
        raise AssertionError(f"{block.address}: count {raw!r} is not of the form 'cond ? 1 : 0'")
    return 1 if evaluate(m.group("cond"), env, local_defs) else 0
