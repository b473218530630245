"""``zpe-worker``: the compute plane's entry point.

``zpe-worker run-task TASK_ID`` claims and runs one task against the store of
``ZPE_STORE_URL`` with exactly the code the in-process pool runs
(``zpe_core.jobs.runner.run_task``); the push and pull modes build on it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from zpe_core.observability.logs import configure_logging
from zpe_core.settings import (
    CommonSettings,
    ComputeSettings,
    PullWorkerSettings,
    PushWorkerSettings,
)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def cmd_run_task(args: argparse.Namespace) -> int:
    # Imported here: ``zpe-worker pull`` must not load the store or the service.
    from zpe_core.bootstrap import worker_service
    from zpe_core.jobs.runner import Outcome, run_task

    settings = PushWorkerSettings()
    outcome = run_task(worker_service(settings), args.task_id, args.worker_id)
    print(outcome.value)
    return 0 if outcome in (Outcome.COMMITTED, Outcome.SKIPPED, Outcome.ABANDONED) else 1


def _enroll_token(args: argparse.Namespace, settings: PullWorkerSettings) -> str | None:
    if args.enroll_token:
        return str(args.enroll_token)
    token = settings.enroll_token
    return token.get_secret_value() if token is not None else None


def _enroll_from_args(args: argparse.Namespace, settings: PullWorkerSettings, token: str) -> None:
    from zpe_worker.pull import enroll, local_capabilities

    engines = args.engines.split(",") if args.engines else settings.engines
    concurrency = args.concurrency or settings.pull_concurrency
    enroll(
        args.api or settings.api_url,
        token,
        name=args.name or socket.gethostname().split(".")[0],
        token_file=Path(args.token_file),
        capabilities=local_capabilities(settings, engines, concurrency),
        targets=args.targets.split(",") if args.targets else None,
    )


def cmd_enroll(args: argparse.Namespace) -> int:
    from zpe_client.http import ApiError

    settings = PullWorkerSettings()
    token = _enroll_token(args, settings)
    if not token:
        print("an enroll token is required (--enroll-token or ZPE_ENROLL_TOKEN)", file=sys.stderr)
        return 2
    try:
        _enroll_from_args(args, settings, token)
    except (ApiError, OSError) as exc:
        print(f"enrollment failed: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled; worker token saved to {args.token_file}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from zpe_client.http import ApiError
    from zpe_worker.pull import PullWorker, TokenFileMismatch, must_enroll

    settings = PullWorkerSettings()
    token_file = Path(args.token_file)
    token = _enroll_token(args, settings)
    try:
        # Only an API named by the operator counts: the default URL must not make a
        # token file for another API look foreign.
        explicit = "api_url" in settings.model_fields_set
        named_api = args.api or (settings.api_url if explicit else None)
        enroll_first = must_enroll(token_file, named_api, token)
    except TokenFileMismatch as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if enroll_first:
        if not token:
            print(
                f"{token_file} does not exist: enroll first (--enroll-token or ZPE_ENROLL_TOKEN)",
                file=sys.stderr,
            )
            return 2
        try:
            _enroll_from_args(args, settings, token)
        except (ApiError, OSError) as exc:
            print(f"enrollment failed: {exc}", file=sys.stderr)
            return 1
    worker = PullWorker(
        token_file,
        settings,
        api=args.api,
        engines=args.engines.split(",") if args.engines else None,
        concurrency=args.concurrency,
        max_tasks=1 if args.once else args.max_tasks,
        poll_wait_seconds=args.poll_wait,
        idle_max_seconds=args.idle_max,
        grace_seconds=args.grace,
    )
    worker.install_signal_handlers()
    return worker.run(once=args.once)


def _add_pull_options(parser: argparse.ArgumentParser) -> None:
    from zpe_worker.pull import default_token_file

    parser.add_argument("--api", help="API base URL (default: ZPE_API_URL, or the token file's)")
    parser.add_argument(
        "--token-file", default=str(default_token_file()), help="worker token file (0600)"
    )
    parser.add_argument("--enroll-token", help="single-use enroll token (or ZPE_ENROLL_TOKEN)")
    parser.add_argument("--name", help="server name (default: the host name)")
    parser.add_argument("--targets", help="comma-separated targets (default: the token's)")
    parser.add_argument("--engines", help="engines to offer (default: ZPE_ALLOWED_ENGINES)")
    parser.add_argument("--concurrency", type=int, help="tasks at once (ZPE_PULL_CONCURRENCY)")


def cmd_serve(args: argparse.Namespace) -> int:
    from zpe_core.errors import ConfigurationError
    from zpe_worker.serve import serve

    try:
        serve(args.host, args.port)
    except ConfigurationError as exc:
        print(f"zpe-worker serve: {exc.message}", file=sys.stderr)
        return 2
    return 0


def cmd_qe_version(args: argparse.Namespace) -> int:
    """Print this machine's pw.x version (what ZPE_QE_VERSION must be for its tasks)."""
    from zpe_core.engines.qe import engine_version_of

    version = engine_version_of(args.pw_command or ComputeSettings().pw_command)
    if version is None:
        print("cannot read a version from pw.x (is it installed?)", file=sys.stderr)
        return 1
    print(version)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpe-worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run-task", help="claim and run one task by id")
    run.add_argument("task_id")
    run.add_argument("--worker-id", default=default_worker_id())
    run.set_defaults(func=cmd_run_task)
    enroll = sub.add_parser("enroll", help="register this server with an enroll token")
    _add_pull_options(enroll)
    enroll.set_defaults(func=cmd_enroll)
    pull = sub.add_parser("pull", help="lease and run tasks from the API (behind NAT)")
    _add_pull_options(pull)
    pull.add_argument("--once", action="store_true", help="run at most one task, then exit")
    pull.add_argument("--max-tasks", type=int, help="exit after this many tasks")
    pull.add_argument("--poll-wait", type=float, default=20.0, help="lease long-poll seconds")
    pull.add_argument("--idle-max", type=float, default=5.0, help="max pause between empty polls")
    pull.add_argument(
        "--grace", type=float, default=60.0, help="on SIGTERM, seconds to finish before release"
    )
    pull.set_defaults(func=cmd_pull)
    push = sub.add_parser("serve", help="serve the push endpoint (Cloud Tasks, Cloud Run)")
    push.add_argument("--host", default="0.0.0.0")
    push.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    push.set_defaults(func=cmd_serve)
    qe_version = sub.add_parser(
        "qe-version", help="print the pw.x version (ZPE_QE_VERSION; cloudbuild.yaml reads it)"
    )
    qe_version.add_argument("--pw-command", help="pw.x command (default: ZPE_PW_COMMAND)")
    qe_version.set_defaults(func=cmd_qe_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging(CommonSettings().log_level)
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
