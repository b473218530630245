"""``zpe-worker``: the compute plane's entry point.

``zpe-worker run-task TASK_ID`` claims and runs one task against the store of
``ZPE_STORE_URL`` with exactly the code the in-process pool runs
(``zpe_core.runner.run_task``); the push and pull modes build on it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from zpe_core.logs import configure_logging
from zpe_core.runner import Outcome, run_task
from zpe_core.service import JobService
from zpe_core.settings import Settings
from zpe_core.store import open_store


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def cmd_run_task(args: argparse.Namespace) -> int:
    settings = Settings()
    store = open_store(settings.store_url, max_artifact_bytes=settings.max_artifact_bytes)
    outcome = run_task(JobService(store, None, settings), args.task_id, args.worker_id)
    print(outcome.value)
    return 0 if outcome in (Outcome.COMMITTED, Outcome.SKIPPED, Outcome.ABANDONED) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpe-worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run-task", help="claim and run one task by id")
    run.add_argument("task_id")
    run.add_argument("--worker-id", default=default_worker_id())
    run.set_defaults(func=cmd_run_task)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging(os.environ.get("ZPE_LOG_LEVEL", "INFO"))
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
