"""The file store is safe across processes: concurrent read-modify-writes lose nothing."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from zpe_client.models import JobRequest
from zpe_core.jobs.models import Job, StructureInfo
from zpe_core.store import FileJobStore, open_store


def _job(job_id: str) -> Job:
    structure = StructureInfo(
        natoms=1,
        symbols=["H"],
        mobile_indices=[0],
        fixed_indices=[],
        kpts=None,
        koffset=[0, 0, 0],
        ecutwfc=None,
        ecutrho=None,
        pseudo_dir=None,
        free_molecule=True,
    )
    return Job(
        job_id=job_id,
        owner="o",
        request=JobRequest(input_text="x"),
        engine="mock",
        structure=structure,
        tasks=[],
        fingerprint="f",
    )


def _append_many(url: str, job_id: str, worker: int, count: int) -> None:
    store = open_store(url)
    for i in range(count):

        def change(job: Job, i: int = i) -> Job:
            job.done_task_ids.append(f"w{worker}-{i}")
            return job

        store.mutate_job(job_id, change)


def test_two_processes_updating_one_job_lose_no_update(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    store = FileJobStore(tmp_path)
    store.create_job(_job("jshared"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(url, "jshared", w, 150)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    found = store.get_job("jshared")
    assert found is not None
    ids = found.value.done_task_ids
    assert len(ids) == 300
    assert len(set(ids)) == 300


def test_file_store_create_never_overwrites(tmp_path: Path) -> None:
    store = FileJobStore(tmp_path)
    store.create_job(_job("jone"))
    other = _job("jone")
    other.owner = "intruder"
    try:
        store.create_job(other)
    except Exception as exc:  # AlreadyExists
        assert type(exc).__name__ == "AlreadyExists"
    else:
        raise AssertionError("second create succeeded")
    found = store.get_job("jone")
    assert found is not None and found.value.owner == "o"
