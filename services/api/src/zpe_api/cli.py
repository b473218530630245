"""``zpe``: start the API, submit jobs, follow them and print results.

Every command but ``serve`` talks to the API over HTTP (``ZPE_API_URL``,
default ``http://127.0.0.1:8000``), so it works the same against a local
server and a deployed one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"done", "failed", "cancelled"}


class CliError(Exception):
    """A failure to report to the user (exit code 1)."""


def _api_url(args: argparse.Namespace) -> str:
    url: str = args.api or os.environ.get("ZPE_API_URL") or "http://127.0.0.1:8000"
    return url.rstrip("/")


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            message = f"{body.get('code', response.status_code)}: {body.get('detail', body)}"
        except ValueError:
            message = f"HTTP {response.status_code}: {response.text[:500]}"
        raise CliError(message)
    return response.json()


def _client(args: argparse.Namespace) -> httpx.Client:
    key = getattr(args, "api_key", None) or os.environ.get("ZPE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=_api_url(args), timeout=30.0, headers=headers)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from zpe_api.listen import check_listen_address
    from zpe_api.main import create_app
    from zpe_core.errors import ConfigurationError
    from zpe_core.observability.logs import configure_logging
    from zpe_core.settings import get_settings

    configure_logging(os.environ.get("ZPE_LOG_LEVEL", "INFO"))
    try:
        check_listen_address(get_settings(), args.host)
    except ConfigurationError as exc:
        print(f"zpe serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(), host=args.host, port=args.port, log_config=None)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
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
    for field in (
        "engine",
        "delta",
        "temperature",
        "nfree",
        "pressure",
        "symmetry_number",
        "frequency_set",
        "label",
        "symmetry",
    ):
        value = getattr(args, field)
        if value is not None:
            body[field] = value
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with _client(args) as client:
        try:
            # What it costs, before anything runs (the same checks as the submission).
            preview = _check(client.post("/calc/zpe/parse", json=body))
            sys.stderr.write(_scf_count(preview) + "\n")
            created = _check(client.post("/calc/zpe/jobs", json=body, headers=headers))
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the API at {_api_url(args)}: {exc}") from exc
        job_id = created["job_id"]
        print(job_id if not args.wait else f"submitted job {job_id}", flush=True)
        if not args.wait:
            return 0
        status = _follow(client, job_id, timeout=args.timeout)
        if status["state"] != "done":
            error = status.get("error") or {}
            reason = f"{error.get('code', '')} {error.get('message', '')}".strip()
            raise CliError(f"job {job_id} {status['state']}: {reason}")
        result = _check(client.get(f"/calc/zpe/jobs/{job_id}/result"))
        _print_result(result)
    return 0


def _scf_count(preview: dict[str, Any]) -> str:
    """``10 SCFs with symmetry (Pmm2 (25)), 19 without``, from a parse preview."""
    full, reduced = preview["tasks"], preview["tasks_symmetric"]
    group = f" ({preview['spacegroup']})" if preview.get("spacegroup") else ""
    if reduced == full:
        return f"{full} SCFs (symmetry saves none{group})"
    return f"{reduced} SCFs with symmetry{group}, {full} without"


def _follow(client: httpx.Client, job_id: str, *, timeout: float) -> dict[str, Any]:
    """Poll with ETags until the job ends, drawing a progress bar on stderr."""
    deadline = time.monotonic() + timeout
    etag: str | None = None
    status: dict[str, Any] = {}
    while True:
        headers = {"If-None-Match": etag} if etag else {}
        response = client.get(f"/calc/zpe/jobs/{job_id}", headers=headers)
        if response.status_code == 429:  # polling too fast: wait as told
            time.sleep(min(30.0, float(response.headers.get("Retry-After", "5"))))
            continue
        if response.status_code != 304:
            status = _check(response)
            etag = response.headers.get("ETag")
            _draw(status)
        if status.get("state") in TERMINAL:
            sys.stderr.write("\n")
            return status
        if time.monotonic() > deadline:
            raise CliError(f"gave up waiting for job {job_id} after {timeout:.0f} s")
        time.sleep(min(2.0, float(response.headers.get("Retry-After", "1"))))


def _draw(status: dict[str, Any]) -> None:
    progress = status["progress"]
    width = 30
    filled = int(width * progress["fraction"])
    bar = "#" * filled + "-" * (width - filled)
    elapsed = status.get("elapsed_seconds") or 0.0
    sys.stderr.write(
        f"\r[{bar}] {progress['done']}/{progress['total']} tasks  "
        f"{status['state']:<9} {elapsed:7.1f} s"
    )
    sys.stderr.flush()


def _print_result(result: dict[str, Any]) -> None:
    print(f"ZPE = {result['zpe_ev']:.4f} eV ({result['zpe_kjmol']:.2f} kJ/mol)")
    print(f"S_vib({result['temperature']:g} K) = {result['s_vib_jmol_k']:.3f} J/mol/K")
    freqs = []
    imaginary = 0
    for mode in result["modes"]:
        if mode.get("excluded"):  # translations/rotations of a free molecule
            continue
        if mode["imaginary"]:
            imaginary += 1
            freqs.append(f"{abs(mode['frequency_cm']):.1f}i")
        elif mode["counted"]:
            freqs.append(f"{mode['frequency_cm']:.1f}")
    print("frequencies (cm^-1, counted and imaginary): " + ", ".join(freqs))
    if result.get("excluded_modes"):
        print(f"({result['mode_selection']})")
    if result.get("frequency_set_note"):
        print(f"frequency set: {result['frequency_set']} ({result['frequency_set_note']})")
    if result.get("thermochemistry"):
        from zpe_core.physics.artifacts import thermo_lines  # the summary's wording; heavy, so lazy

        for line in thermo_lines(result["thermochemistry"]):
            print(line)
    if imaginary:
        print(f"warning: {imaginary} imaginary mode(s), not in the ZPE")
    for warning in result.get("warnings") or []:
        print(f"warning: {warning}")


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = _check(client.get(f"/calc/zpe/jobs/{args.job_id}"))
    print(json.dumps(status, indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.query:
        params["q"] = args.query
    with _client(args) as client:
        page = _check(client.get("/calc/zpe/jobs", params=params))
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    for job in page["jobs"]:
        zpe = f"{job['summary']['zpe_ev']:.4f} eV" if job.get("summary") else "-"
        label = job.get("label") or ""
        print(f"{job['job_id']}  {job['state']:<9}  {job['formula']:<12}  {zpe:>11}  {label}")
    if page.get("next_cursor"):
        print(f"(more: GET /calc/zpe/jobs?cursor={page['next_cursor']})")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = _check(client.get(f"/calc/zpe/jobs/{args.job_id}/result"))
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

    serve = sub.add_parser("serve", help="run the API on the current settings")
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
    except CliError as exc:
        print(f"zpe: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"zpe: cannot reach the API at {_api_url(args)}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
