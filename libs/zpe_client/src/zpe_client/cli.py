"""``zpe``: submit jobs, follow them and print results (and ``zpe serve`` where the API is).

Every command but ``serve`` talks to the API over HTTP (``ZPE_API_URL``,
default ``http://127.0.0.1:8000``; ``ZPE_API_KEY``), so it works the same
against a local server and a deployed one. ``serve`` runs the API itself: it is
``zpe-api serve`` and needs the ``zpe-api`` package installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from zpe_client.http import ApiClient, ApiError
from zpe_client.models import JobRequest, JobState, JobStatus
from zpe_client.report import draw_progress, result_lines, scf_count
from zpe_client.settings import ClientSettings

#: ``zpe submit`` options that are fields of the request, as given on the command line.
REQUEST_OPTIONS = (
    "engine",
    "delta",
    "temperature",
    "nfree",
    "pressure",
    "symmetry_number",
    "frequency_set",
    "label",
    "symmetry",
)


class CliError(Exception):
    """A failure to report to the user (exit code 1)."""


def _settings(args: argparse.Namespace) -> ClientSettings:
    return ClientSettings.load(args.api, getattr(args, "api_key", None))


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient.from_settings(_settings(args))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API (``zpe_api.cli.serve``), if this environment has it."""
    try:
        api_cli = importlib.import_module("zpe_api.cli")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "zpe_api":
            raise
        raise CliError(
            "`zpe serve` runs the API, which is not installed here: install zpe-api "
            "(the client alone talks to a running API, see --api)"
        ) from exc
    code: int = api_cli.serve(args.host, args.port)
    return code


def _request(args: argparse.Namespace) -> JobRequest:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    body: dict[str, Any] = {"input_text": text}
    if args.mobile:
        try:
            body["mobile"] = [int(x) for x in args.mobile.split(",") if x.strip()]
        except ValueError as exc:
            raise CliError(f"--mobile takes comma-separated atom indices: {exc}") from exc
    body.update({f: getattr(args, f) for f in REQUEST_OPTIONS if getattr(args, f) is not None})
    # Not validated here: the API checks it and answers what is wrong with a stable code.
    return JobRequest.model_construct(**body)


def cmd_submit(args: argparse.Namespace) -> int:
    request = _request(args)
    with _client(args) as client:
        # What it costs, before anything runs (the same checks as the submission).
        sys.stderr.write(scf_count(client.preview(request)) + "\n")
        created = client.submit(request, idempotency_key=args.idempotency_key)
        job_id = created.job_id
        print(job_id if not args.wait else f"submitted job {job_id}", flush=True)
        if not args.wait:
            return 0
        status = _follow(client, job_id, timeout=args.timeout)
        if status.state != JobState.DONE:
            error = status.error
            reason = f"{error.code} {error.message}" if error else ""
            raise CliError(f"job {job_id} {status.state.value}: {reason}".rstrip())
        _print_result(client.result(job_id))
    return 0


def _follow(client: ApiClient, job_id: str, *, timeout: float) -> JobStatus:
    """Follow the job to its end, drawing a progress bar on stderr."""
    try:
        status = client.follow(
            job_id, timeout=timeout, on_status=lambda s: draw_progress(s, sys.stderr)
        )
    except TimeoutError as exc:
        raise CliError(str(exc)) from exc
    sys.stderr.write("\n")
    return status


def _print_result(result: dict[str, Any]) -> None:
    for line in result_lines(result):
        print(line)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.call("GET", f"/calc/zpe/jobs/{args.job_id}").json()
    print(json.dumps(status, indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_jobs(query=args.query, limit=args.limit)
    if args.json:
        print(json.dumps(page.model_dump(mode="json"), indent=2))
        return 0
    for job in page.jobs:
        zpe = f"{job.summary.zpe_ev:.4f} eV" if job.summary else "-"
        label = job.label or ""
        print(f"{job.job_id}  {job.state.value:<9}  {job.formula:<12}  {zpe:>11}  {label}")
    if page.next_cursor:
        print(f"(more: GET /calc/zpe/jobs?cursor={page.next_cursor})")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.result(args.job_id)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_result(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpe", description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="API base URL (default: $ZPE_API_URL or 127.0.0.1:8000)")
    parser.add_argument("--api-key", help="bearer API key (default: $ZPE_API_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API on the current settings (needs zpe-api)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    submit = sub.add_parser("submit", help="submit a pw.x input")
    submit.add_argument("file")
    submit.add_argument("--mobile", help="comma-separated 0-based atom indices to displace")
    submit.add_argument("--engine", choices=["qe", "mock"])
    submit.add_argument("--delta", type=float, help="displacement in Angstrom (default 0.01)")
    submit.add_argument("--temperature", type=float, help="K, for the entropy (default 298.15)")
    submit.add_argument("--nfree", type=int, choices=[2, 4])
    submit.add_argument("--label", help="free text to tell this job apart (searchable)")
    submit.add_argument(
        "--symmetry",
        choices=["auto", "off"],
        help="auto (default): compute only the symmetry-independent points",
    )
    submit.add_argument("--pressure", type=float, help="Pa, ideal-gas thermochemistry (101325)")
    submit.add_argument(
        "--symmetry-number", type=int, help="rotational symmetry number (default: point group)"
    )
    submit.add_argument(
        "--frequency-set",
        choices=["raw", "projected"],
        help="free molecule: count ASE's raw or the Eckart-projected frequencies (default raw)",
    )
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="follow the job and print the result")
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to --wait")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show a job's status")
    status.add_argument("job_id")
    status.set_defaults(func=cmd_status)

    listing = sub.add_parser("list", help="list your jobs, newest first")
    listing.add_argument("-q", "--query", help="only jobs whose label, formula or id contains it")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    result = sub.add_parser("result", help="print a finished job's result")
    result.add_argument("job_id")
    result.add_argument("--json", action="store_true")
    result.set_defaults(func=cmd_result)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (CliError, ApiError) as exc:
        print(f"zpe: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"zpe: cannot reach the API at {_settings(args).api_url}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
