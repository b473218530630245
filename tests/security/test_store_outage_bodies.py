"""Attack: read the deployment's internals from 503 answers during a store outage.

Before the fix a 503 quoted the store's own message: the file store's
directory, the bucket and prefix, the Redis host and port. Now the answer says
``store_unavailable`` and a generic reason; the message goes to the log.
Each store is made unavailable for real: a file store whose directory is
replaced by a file, a Redis server stopped, a GCS bucket that does not exist
and a GCS server stopped.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_settings
from tests.fixtures.servers import GcsServer, RedisServer
from zpe_api.main import create_app

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
JOB = "/calc/zpe/jobs/j" + "0" * 32


def _probe(
    client: TestClient,
    secrets: list[str],
    caplog: pytest.LogCaptureFixture,
    *,
    reads: tuple[str, ...] = (JOB, "/calc/zpe/jobs", "/readyz"),
) -> None:
    """Reads and writes answer a generic 503; the details are in the log only."""
    caplog.clear()
    body = {"input_text": (SAMPLES / "h2_zpe.in").read_text(), "engine": "mock"}
    answers = [client.post("/calc/zpe/jobs", json=body), *(client.get(path) for path in reads)]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "store_unavailable"
        assert "unavailable" in answer.json()["detail"]
        assert answer.headers["Retry-After"]
        leaked = [s for s in secrets if s in answer.text or s in str(answer.headers)]
        assert not leaked, f"{answer.request.url} answered {leaked}: {answer.text}"
    logged = " ".join(str(getattr(r, "error", "")) for r in caplog.records)
    assert any(s in logged for s in secrets), "the reason must still reach the log"


def test_file_store_outage_hides_the_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "private-store-dir"
    settings = make_settings(store_url=f"file://{root}", execution_mode="http-pull")
    caplog.set_level(logging.ERROR, logger="zpe.api")
    with TestClient(create_app(settings)) as client:
        assert client.get("/calc/zpe/jobs").status_code == 200
        shutil.rmtree(root)
        root.write_text("")  # the store's directory is now a file: every access fails
        # (A listing of a directory that is not one is empty, and the file is writable:
        # the list and /readyz still answer 200 here.)
        _probe(client, [str(tmp_path), "private-store-dir"], caplog, reads=(JOB,))


def _outage(
    server: RedisServer | GcsServer,
    store_url: str,
    secrets: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(store_url=store_url, execution_mode="http-pull")
    caplog.set_level(logging.ERROR, logger="zpe.api")
    with TestClient(create_app(settings)) as client:
        assert client.get("/calc/zpe/jobs").status_code == 200
        server.stop()
        try:
            _probe(client, secrets, caplog)
        finally:
            server.start()
        assert client.get("/readyz").status_code == 200


def test_redis_outage_hides_the_host(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = f"ns-{uuid.uuid4().hex[:10]}"
    url = f"{redis_server.url}?namespace={namespace}"
    _outage(redis_server, url, [f":{redis_server.port}", "redis://"], caplog)


def test_gcs_outage_hides_bucket_and_host(
    gcs_server: GcsServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"pfx-{uuid.uuid4().hex[:10]}"
    _outage(gcs_server, f"gs://{gcs_server.bucket}/{prefix}", [gcs_server.bucket, prefix], caplog)


def test_missing_gcs_bucket_is_not_named(
    gcs_server: GcsServer, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = f"private-bucket-{uuid.uuid4().hex[:10]}"  # never created
    settings = make_settings(store_url=f"gs://{bucket}/zpe", execution_mode="http-pull")
    caplog.set_level(logging.ERROR, logger="zpe.api")
    with TestClient(create_app(settings)) as client:
        # (A record read from a bucket that does not exist finds nothing: 404, not 503.)
        _probe(client, [bucket], caplog, reads=("/calc/zpe/jobs", "/readyz"))
