"""The chaos suite, small enough for CI (``bench/chaos.py`` is the full run: 200 jobs).

Real processes on loopback: ``zpe serve`` in http-pull mode on a Redis store with its
append-only file on, three ``zpe-worker pull`` processes SIGKILLed and restarted every
few seconds, the API restarted, Redis restarted, the store down for a few seconds (503s);
then the Cloud Tasks emulator with every task enqueued three times and pushed four times
at once. Fails if a job is lost, created twice or failed, a task is committed twice, a
result differs from a clean in-process run, or a fault was not actually injected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import check_pull, check_push, report_pull, report_push, run_all
from tests.conftest import require_or_skip
from tests.fixtures.cloud_tasks import tasks_emulator_for
from tests.fixtures.servers import RedisServer, server_runtime

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_no_job_lost_or_committed_twice_under_chaos(tmp_path: Path) -> None:
    runtime = server_runtime()  # ZPE_TEST_SERVERS: local processes or containers
    require_or_skip(RedisServer(runtime).available(), f"redis-server ({runtime})")
    require_or_skip(tasks_emulator_for(runtime).available(), f"gcloud-tasks-emulator ({runtime})")
    pull, push, problems = run_all(
        tmp_path,
        jobs=16,
        push_jobs=3,
        seed=7,
        outage=4.0,
        kill_every=(2.5, 4.0),
        in_flight=8,
        timeout=300.0,
    )
    print(report_pull(pull))
    assert push is not None
    print(report_push(push))
    assert check_pull(pull) == [] and check_push(push) == [], (problems, pull.failures)
    assert pull.lost == 0 and pull.tasks_committed_twice == 0 and pull.result_mismatches == 0
    assert pull.kills >= 3 and pull.api_restarts == 1 and pull.redis_restarts == 2
    assert push.lost == 0 and push.tasks_committed_twice == 0 and push.done == 3
