"""``terraform init``, ``validate`` and ``plan`` of infra/terraform, offline, for every example.

For each google provider version in :data:`mirror.GOOGLE_VERSIONS` the configuration is
copied to a work directory (with a local backend instead of gcs, so the repository gets no
``.terraform``), initialised from the offline mirror, validated, and planned once per
``infra/terraform/examples/*.tfvars``; each plan is saved as ``terraform show -json`` to
``OUT/google-<version>/<example>.json`` for the plan assertions (tests/infra/test_plan.py).

    bash scripts/terraform-check.sh [--out DIR] [--config DIR] [--validate-only]

Exits 1 on any failure (after trying everything), 2 when terraform or the mirror is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.infra import venvs
from tests.infra.offline_provider import mirror

ROOT = venvs.ROOT
CONFIG = ROOT / "infra" / "terraform"
EXAMPLES = CONFIG / "examples"
DEFAULT_OUT = venvs.CACHE / "tf-check"
BACKEND_OVERRIDE = 'terraform {\n  backend "local" {}\n}\n'


@dataclass
class Step:
    what: str
    ok: bool
    seconds: float
    output: str


def terraform_env(cli_config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "VIRTUAL_ENV"))}
    env.update(
        TF_CLI_CONFIG_FILE=str(cli_config),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",
    )
    return env


def prepare(config: Path, work: Path) -> None:
    """A copy of ``config`` (without state or .terraform) with a local backend."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(
        config,
        work,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"),
    )
    (work / "offline_backend_override.tf").write_text(BACKEND_OVERRIDE)


def run(
    what: str, cmd: list[str], cwd: Path, env: dict[str, str], stdout: Path | None = None
) -> Step:
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if stdout is not None and proc.returncode == 0:
        stdout.parent.mkdir(parents=True, exist_ok=True)
        stdout.write_text(proc.stdout)
        output = proc.stderr
    else:
        output = proc.stdout + proc.stderr
    return Step(what, proc.returncode == 0, time.monotonic() - start, output)


def check(
    terraform: str,
    google: mirror.ProviderBuild,
    config: Path,
    out: Path,
    examples: list[Path],
    validate_only: bool = False,
) -> list[Step]:
    env = terraform_env(mirror.cli_config(google))
    tag = f"google-{google.version}"
    work = out / "work" / tag
    prepare(config, work)
    steps = [run(f"{tag}: init", [terraform, "init", "-no-color", "-input=false"], work, env)]
    if not steps[-1].ok:
        return steps
    steps.append(run(f"{tag}: validate", [terraform, "validate", "-no-color"], work, env))
    if validate_only or not steps[-1].ok:
        return steps
    for example in examples:
        plan_file = work / f"{example.stem}.tfplan"
        steps.append(
            run(
                f"{tag}: plan {example.name}",
                [
                    terraform,
                    "plan",
                    "-no-color",
                    "-input=false",
                    "-lock=false",
                    f"-var-file={example}",
                    f"-out={plan_file}",
                ],
                work,
                env,
            )
        )
        if steps[-1].ok:
            steps.append(
                run(
                    f"{tag}: show {example.name}",
                    [terraform, "show", "-json", "-no-color", str(plan_file)],
                    work,
                    env,
                    stdout=out / tag / f"{example.stem}.json",
                )
            )
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--config", type=Path, default=CONFIG, help="Terraform root module to check"
    )
    parser.add_argument("--examples", type=Path, default=EXAMPLES, help="directory of *.tfvars")
    parser.add_argument("--validate-only", action="store_true")
    parser.add_argument("--google", action="append", help="only these provider versions")
    args = parser.parse_args(argv)
    terraform = shutil.which("terraform")
    if terraform is None:
        print("terraform-check: terraform is not on PATH", file=sys.stderr)
        return 2
    examples = sorted(args.examples.glob("*.tfvars"))
    if not examples and not args.validate_only:
        print(f"terraform-check: no *.tfvars in {args.examples}", file=sys.stderr)
        return 2
    versions = [g for g in mirror.GOOGLE_VERSIONS if not args.google or g.version in args.google]
    started = time.monotonic()
    failed = []
    for google in versions:
        try:
            steps = check(
                terraform,
                google,
                args.config.resolve(),
                args.out.resolve(),
                examples,
                args.validate_only,
            )
        except (mirror.MirrorError, venvs.VenvError) as exc:
            print(
                f"terraform-check: offline provider google {google.version}: {exc}", file=sys.stderr
            )
            return 2
        for step in steps:
            print(f"{'ok  ' if step.ok else 'FAIL'} {step.what} ({step.seconds:.1f} s)")
            if not step.ok:
                failed.append(step.what)
                print(step.output.rstrip(), file=sys.stderr)
    print(f"terraform-check: {time.monotonic() - started:.1f} s, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
