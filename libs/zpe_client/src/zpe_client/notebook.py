"""A Python API for notebooks and scripts.

::

    from zpe_client import Client

    client = Client("http://127.0.0.1:8000", api_key=None)
    job = client.submit("samples/h2o_zpe.in", engine="mock")
    job.wait(progress=True)
    result = job.result()
    result.zpe_ev, result.frequencies_cm
    result.vibrations  # ASE VibrationsData (the ``ase`` extra)

``submit`` takes a path, the text of a pw.x input, or (with the ``ase`` extra) an
ASE ``Atoms`` plus the pw.x parameters (``input_data``, ``pseudopotentials``,
``kpts``), written to a pw.x input by ``ase.io.espresso``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx

from zpe_client.http import ApiClient
from zpe_client.models import JobRequest, JobState, JobStatus
from zpe_client.report import draw_progress, result_lines
from zpe_client.settings import ClientSettings

if TYPE_CHECKING:
    from ase import Atoms
    from ase.vibrations import VibrationsData


class JobFailed(Exception):
    """The job ended failed or cancelled; ``status`` says why (``status.error``)."""

    def __init__(self, status: JobStatus) -> None:
        error = status.error
        reason = f": {error.code}: {error.message}" if error else ""
        super().__init__(f"job {status.job_id} {status.state.value}{reason}")
        self.status = status


class Result:
    """A done job's result document (``data``), with its headline figures as attributes."""

    def __init__(self, job: Job, data: dict[str, Any]) -> None:
        self.job = job
        self.data = data

    @property
    def zpe_ev(self) -> float:
        return float(self.data["zpe_ev"])

    @property
    def zpe_kjmol(self) -> float:
        return float(self.data["zpe_kjmol"])

    @property
    def s_vib_jmol_k(self) -> float:
        return float(self.data["s_vib_jmol_k"])

    @property
    def frequencies_cm(self) -> list[float]:
        """The frequencies in the ZPE (cm^-1; imaginary modes are never counted)."""
        return [float(m["frequency_cm"]) for m in self.data["modes"] if m["counted"]]

    @property
    def imaginary_cm(self) -> list[float]:
        """Imaginary frequencies, as positive numbers (cm^-1)."""
        return [
            abs(float(m["frequency_cm"]))
            for m in self.data["modes"]
            if m["imaginary"] and not m.get("excluded")
        ]

    @property
    def warnings(self) -> list[str]:
        return list(self.data.get("warnings") or [])

    @cached_property
    def vibrations(self) -> VibrationsData:
        """ASE's ``VibrationsData`` of the job (Hessian of the mobile atoms); needs ase."""
        from zpe_client.ase_io import read_vibrations

        return read_vibrations(self.job.file("vibrations"))

    def __str__(self) -> str:
        return "\n".join(result_lines(self.data))

    def __repr__(self) -> str:
        return f"<Result job={self.job.job_id} zpe_ev={self.zpe_ev:.6f}>"


class Job:
    """A submitted job: poll it, wait for it, read its result and files."""

    def __init__(self, api: ApiClient, job_id: str) -> None:
        self.api = api
        self.job_id = job_id

    def status(self) -> JobStatus:
        status = self.api.status(self.job_id).status
        assert status is not None  # no ETag sent, so never 304
        return status

    def wait(self, *, progress: bool = False, timeout: float = 3600.0) -> JobStatus:
        """Block until the job ends; with ``progress``, a progress bar on stderr.

        Returns the final status of a done job; ``JobFailed`` if it failed or was
        cancelled, ``TimeoutError`` after ``timeout`` seconds.
        """

        def show(status: JobStatus) -> None:
            draw_progress(status, sys.stderr)

        status = self.api.follow(self.job_id, timeout=timeout, on_status=show if progress else None)
        if progress:
            sys.stderr.write("\n")
        if status.state != JobState.DONE:
            raise JobFailed(status)
        return status

    def result(self) -> Result:
        """The result of a done job (``ApiError`` 409 while it runs: ``wait`` first)."""
        return Result(self, self.api.result(self.job_id))

    def file(self, kind: str) -> bytes:
        """summary, freqs, result, thermo, vibrations, modes or input."""
        return self.api.file(self.job_id, kind)

    def cancel(self) -> JobStatus:
        return self.api.cancel(self.job_id)

    def __repr__(self) -> str:
        return f"<Job {self.job_id}>"


class Client:
    """The ZPE API at ``url`` (default ``$ZPE_API_URL``) with ``api_key`` (``$ZPE_API_KEY``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = ClientSettings.load(url, api_key)
        self.api = ApiClient(
            settings.api_url, token=settings.api_key, timeout=timeout, transport=transport
        )

    def submit(
        self,
        structure: str | os.PathLike[str] | Atoms,
        *,
        mobile: Sequence[int] | None = None,
        engine: str | None = None,
        idempotency_key: str | None = None,
        input_data: Mapping[str, Any] | None = None,
        pseudopotentials: Mapping[str, str] | None = None,
        kpts: Sequence[int] | None = None,
        koffset: Sequence[int] = (0, 0, 0),
        **options: Any,
    ) -> Job:
        """Submit a ZPE job and return it at once (``Job.wait`` follows it).

        ``structure``: a path to a pw.x input, its text, or an ASE ``Atoms`` (then
        ``input_data``, ``pseudopotentials`` and ``kpts`` are its pw.x parameters).
        ``options``: any other field of the request (``delta``, ``nfree``,
        ``temperature``, ``pressure``, ``symmetry_number``, ``frequency_set``,
        ``label``, ``symmetry``, ``target``); unset ones take the server's defaults.
        """
        request = self.request(
            structure,
            mobile=mobile,
            engine=engine,
            input_data=input_data,
            pseudopotentials=pseudopotentials,
            kpts=kpts,
            koffset=koffset,
            **options,
        )
        created = self.api.submit(request, idempotency_key=idempotency_key)
        return Job(self.api, created.job_id)

    def request(
        self,
        structure: str | os.PathLike[str] | Atoms,
        *,
        mobile: Sequence[int] | None = None,
        engine: str | None = None,
        input_data: Mapping[str, Any] | None = None,
        pseudopotentials: Mapping[str, str] | None = None,
        kpts: Sequence[int] | None = None,
        koffset: Sequence[int] = (0, 0, 0),
        **options: Any,
    ) -> JobRequest:
        """The request ``submit`` sends (validated here: a bad option raises at once)."""
        text = _input_text(structure, input_data, pseudopotentials, kpts, koffset)
        fields: dict[str, Any] = {"input_text": text, **options}
        if mobile is not None:
            fields["mobile"] = list(mobile)
        if engine is not None:
            fields["engine"] = engine
        return JobRequest.model_validate(fields)

    def preview(self, structure: str | os.PathLike[str] | Atoms, **kwargs: Any) -> dict[str, Any]:
        """What the server reads from a submission (atoms, mobile set, SCF count), no job."""
        return self.api.preview(self.request(structure, **kwargs))

    def job(self, job_id: str) -> Job:
        return Job(self.api, job_id)

    def jobs(self, query: str | None = None, *, limit: int = 20) -> list[JobStatus]:
        """Your newest jobs (``query``: label, formula or id contains it)."""
        return self.api.list_jobs(query=query, limit=limit).jobs

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _input_text(
    structure: str | os.PathLike[str] | Atoms,
    input_data: Mapping[str, Any] | None,
    pseudopotentials: Mapping[str, str] | None,
    kpts: Sequence[int] | None,
    koffset: Sequence[int],
) -> str:
    """A pw.x input from a path, an input's text (it has a newline) or an ASE ``Atoms``."""
    if isinstance(structure, str) and "\n" in structure:
        text = structure
    elif isinstance(structure, str | os.PathLike):
        text = Path(structure).read_text(encoding="utf-8")
    else:
        from zpe_client.ase_io import is_atoms, pw_input

        if not is_atoms(structure):
            raise TypeError(f"submit takes a path, a pw.x input or an ase.Atoms, not {structure!r}")
        if pseudopotentials is None:
            raise ValueError("an Atoms needs pseudopotentials: {symbol: file name}")
        return pw_input(
            structure,
            input_data=input_data,
            pseudopotentials=pseudopotentials,
            kpts=kpts,
            koffset=koffset,
        )
    if input_data is not None or pseudopotentials is not None or kpts is not None:
        raise TypeError("input_data, pseudopotentials and kpts go with an ase.Atoms only")
    return text


__all__ = ["Client", "Job", "JobFailed", "Result"]
