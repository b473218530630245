"""Build the offline provider mirror: schemas from PyPI, the plugin, a CLI config per version.

Everything goes under ``.cache/`` (gitignored): the CDKTF wheels (downloaded once with pip,
about 85 MB), the extracted schemas (``tf-schemas/*.json.gz``, a few hundred KB each), and
one filesystem mirror plus ``TF_CLI_CONFIG_FILE`` per google provider version, so
``terraform init`` resolves ``hashicorp/google ~> 6.0`` to exactly that version offline.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.infra import venvs
from tests.infra.offline_provider import schema_extract

CACHE = venvs.CACHE
WHEELS = CACHE / "tf-wheels"
SCHEMAS = CACHE / "tf-schemas"
MIRRORS = CACHE / "tf-mirror"
PLUGIN = Path(__file__).with_name("plugin.py")


@dataclass(frozen=True)
class ProviderBuild:
    name: str  # hashicorp/<name>
    version: str  # the provider version the package was generated from
    package: str  # the CDKTF prebuilt package on PyPI
    package_version: str

    @property
    def wheel(self) -> Path:
        dist = self.package.replace("-", "_")
        return WHEELS / f"{dist}-{self.package_version}-py3-none-any.whl"

    @property
    def schema(self) -> Path:
        return SCHEMAS / f"{self.name}-{self.version}.json.gz"


# The newest google 6.x with a prebuilt package, and the oldest of versions.tf's "~> 6.0".
GOOGLE_VERSIONS = (
    ProviderBuild("google", "6.50.0", "cdktf-cdktf-provider-google", "16.12.1"),
    ProviderBuild("google", "6.1.0", "cdktf-cdktf-provider-google", "14.0.0"),
)
RANDOM = ProviderBuild("random", "3.7.2", "cdktf-cdktf-provider-random", "12.0.1")


class MirrorError(RuntimeError):
    """The mirror could not be built (no network for PyPI, no uv, ...)."""


def _target() -> str:
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    return f"{sys.platform}_{machine}"


def _download(build: ProviderBuild, python: Path) -> None:
    if build.wheel.exists():
        return
    WHEELS.mkdir(parents=True, exist_ok=True)
    spec = f"{build.package}=={build.package_version}"
    proc = subprocess.run(
        [str(python), "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(WHEELS), spec],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0 or not build.wheel.exists():
        raise MirrorError(f"cannot download {spec}: {proc.stderr[-2000:]}")


def _extract(build: ProviderBuild) -> None:
    if build.schema.exists():
        return
    schema = schema_extract.Extractor(schema_extract.load_assembly(build.wheel)).schema()
    if schema["provider_version"] != build.version:
        raise MirrorError(
            f"{build.wheel.name} is {build.name} {schema['provider_version']}, not {build.version}"
        )
    schema_extract.write(schema, build.schema)


def _install(build: ProviderBuild, python: Path, mirror: Path) -> None:
    target = mirror / "registry.terraform.io" / "hashicorp" / build.name / build.version / _target()
    target.mkdir(parents=True, exist_ok=True)
    exe = target / f"terraform-provider-{build.name}_v{build.version}"
    exe.write_text(f'#!/bin/sh\nexec "{python}" "{PLUGIN}" --schema "{build.schema}" "$@"\n')
    exe.chmod(0o755)


def cli_config(google: ProviderBuild) -> Path:
    """A ``TF_CLI_CONFIG_FILE`` that installs google ``google.version`` and random offline."""
    python = venvs.ensure_venv(venvs.TFPLUGIN)
    mirror = MIRRORS / f"google-{google.version}"
    for build in (google, RANDOM):
        _download(build, python)
        _extract(build)
        _install(build, python, mirror)
    config = MIRRORS / f"google-{google.version}.tfrc"
    config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n'
        '  direct {\n    exclude = ["registry.terraform.io/hashicorp/*"]\n  }\n'
        "}\n"
    )
    return config


def main() -> int:
    for google in GOOGLE_VERSIONS:
        try:
            print(f"TF_CLI_CONFIG_FILE={cli_config(google)}")
        except (MirrorError, venvs.VenvError) as exc:
            print(f"google {google.version}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    os.environ.pop("VIRTUAL_ENV", None)
    sys.exit(main())
