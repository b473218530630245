"""The chaos suite, small enough for CI (``bench/chaos.py`` is the full run: 200 jobs).

Real processes on loopback, on each store server: redis-server (append-only file on) and
fake-gcs-server (filesystem backend). ``zpe serve`` in http-pull mode, three
``zpe-worker pull`` processes SIGKILLed and restarted every few seconds, the API
SIGKILLed and restarted, the store server SIGKILLed and restarted, the store down for a
few seconds (503s); then the Cloud Tasks emulator with every task enqueued three times
and pushed four times at once. Fails if a job is lost, created twice or failed, a task is
committed twice, a result differs from a clean in-process run, or a fault was not
actually injected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import check_pull, check_push, report_pull, report_push, run_all, store_server
from tests.conftest import require_or_skip
from tests.fixtures.cloud_tasks import tasks_emulator_for
from tests.fixtures.servers import server_runtime

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

#: Jobs through http-pull and through Cloud Tasks per store: GCS requests are slower, so
#: its copy is smaller to stay within a few minutes.
SIZES = {"redis": (16, 3), "gcs": (10, 2)}


@pytest.mark.parametrize("store", ["redis", "gcs"])
def test_no_job_lost_or_committed_twice_under_chaos(store: str, tmp_path: Path) -> None:
    runtime = server_runtime()  # ZPE_TEST_SERVERS: local processes or containers
    require_or_skip(store_server(store).available(), f"{store} store server ({runtime})")
    require_or_skip(tasks_emulator_for(runtime).available(), f"gcloud-tasks-emulator ({runtime})")
    jobs, push_jobs = SIZES[store]
    pull, push, problems = run_all(
        tmp_path,
        store=store,
        jobs=jobs,
        push_jobs=push_jobs,
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
    assert pull.kills >= 3 and pull.api_sigkills == 1 and pull.store_sigkills == 1
    assert pull.store_restarts == 2  # the SIGKILL and the outage
    assert push.lost == 0 and push.tasks_committed_twice == 0 and push.done == push_jobs
