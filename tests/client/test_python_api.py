"""The Python API's logic against a scripted API (the real server: test_fresh_venv.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ase.build import molecule
from ase.constraints import FixAtoms
from ase.io.jsonio import encode
from ase.vibrations import VibrationsData

from zpe_client import ApiError, Client, JobFailed
from zpe_client.models import JobStatus

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def status(state: str, done: int, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return JobStatus.model_validate(
        {
            "job_id": "j1",
            "state": state,
            "engine": "mock",
            "label": None,
            "formula": "H2",
            "delta": 0.01,
            "nfree": 2,
            "temperature": 298.15,
            "progress": {"done": done, "total": 4, "fraction": done / 4, "reused": 0},
            "natoms": 2,
            "mobile_indices": [0, 1],
            "created_at": 1.0,
            "started_at": 1.0,
            "finished_at": None,
            "elapsed_seconds": 0.5,
            "error": error,
            "summary": None,
            "links": {},
        }
    ).model_dump(mode="json")


class FakeApi:
    """Answers the user API from a script; records what was sent."""

    def __init__(self, states: list[dict[str, Any]], files: dict[str, bytes] | None = None):
        self.states = states
        self.files = files or {}
        self.submitted: list[dict[str, Any]] = []
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/calc/zpe/jobs" and request.method == "POST":
            self.submitted.append(json.loads(request.content))
            body = {"job_id": "j1", "state": "queued", "created": True, "links": {}}
            return httpx.Response(201, json=body)
        if path == "/calc/zpe/jobs/j1":
            self.polls += 1
            current = self.states[min(self.polls, len(self.states)) - 1]
            return httpx.Response(200, json=current, headers={"Retry-After": "0"})
        if path == "/calc/zpe/jobs/j1/result":
            modes = [
                {"index": 0, "frequency_cm": 4400.0, "imaginary": False, "counted": True},
                {"index": 1, "frequency_cm": -30.0, "imaginary": True, "counted": False},
            ]
            result = {"zpe_ev": 0.27, "zpe_kjmol": 26.1, "temperature": 298.15,
                      "s_vib_jmol_k": 0.0, "modes": modes}  # fmt: skip
            return httpx.Response(200, json=result)
        if path == "/calc/zpe/jobs/j1/files":
            return httpx.Response(200, content=self.files[request.url.params["kind"]])
        return httpx.Response(404, json={"code": "not_found", "detail": path})


def client(api: FakeApi) -> Client:
    return Client("http://api", api_key="zpe_key_x", transport=httpx.MockTransport(api))


def test_submit_a_path_wait_with_progress_and_read_the_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeApi([status("queued", 0), status("running", 2), status("done", 4)])
    job = client(api).submit(SAMPLES / "h2_zpe.in", mobile=[0, 1], engine="mock", delta=0.02)
    final = job.wait(progress=True, timeout=30)
    assert final.state == "done" and api.polls == 3
    sent = api.submitted[0]
    assert sent == {
        "input_text": (SAMPLES / "h2_zpe.in").read_text(),
        "mobile": [0, 1],
        "engine": "mock",
        "delta": 0.02,
    }  # only what was given: the server's defaults apply to the rest
    bar = capsys.readouterr().err
    assert "2/4 tasks" in bar and "4/4 tasks" in bar and bar.endswith("\n")
    result = job.result()
    assert result.zpe_ev == 0.27 and result.frequencies_cm == [4400.0]
    assert result.imaginary_cm == [30.0]
    assert str(result).startswith("ZPE = 0.2700 eV")


def test_text_is_sent_verbatim_and_a_missing_path_raises() -> None:
    api = FakeApi([status("done", 4)])
    text = (SAMPLES / "h2_zpe.in").read_text()
    client(api).submit(text)
    assert api.submitted == [{"input_text": text}]
    with pytest.raises(FileNotFoundError):
        client(api).submit("no-such-file.in")


def test_a_bad_option_raises_before_anything_is_sent() -> None:
    api = FakeApi([])
    with pytest.raises(ValueError, match="delta"):
        client(api).submit(SAMPLES / "h2_zpe.in", delta=5.0)
    with pytest.raises(TypeError, match=r"ase\.Atoms"):
        client(api).submit(SAMPLES / "h2_zpe.in", pseudopotentials={"H": "H.UPF"})
    assert api.submitted == []


def test_wait_raises_job_failed_with_the_reason() -> None:
    error = {"code": "scf_not_converged", "message": "SCF did not converge", "source": "compute"}
    api = FakeApi([status("running", 1), status("failed", 1, error=error)])
    with pytest.raises(JobFailed, match="scf_not_converged") as caught:
        client(api).submit(SAMPLES / "h2_zpe.in").wait()
    assert caught.value.status.error is not None
    with pytest.raises(ApiError, match="not_found"):
        client(api).job("j2").status()


def test_an_atoms_is_written_as_a_pw_input_with_its_fixed_atoms() -> None:
    api = FakeApi([])
    atoms = molecule("CO")
    atoms.center(vacuum=4.0)
    atoms.set_constraint(FixAtoms(indices=[0]))
    client(api).submit(
        atoms,
        engine="mock",
        input_data={"system": {"ecutwfc": 30.0}},
        pseudopotentials={"C": "C.pbe-n-kjpaw_psl.1.0.0.UPF", "O": "O.pbe-n-kjpaw_psl.0.1.UPF"},
    )
    text = api.submitted[0]["input_text"]
    from ase.io.espresso import read_espresso_in

    back = read_espresso_in(io.StringIO(text))
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-8)
    assert [c.get_indices().tolist() for c in back.constraints] == [[0]]
    assert "ecutwfc" in text and "C.pbe-n-kjpaw_psl.1.0.0.UPF" in text
    assert "&FCP" not in text and "&RISM" not in text  # empty, and unknown to pw.x 6
    with pytest.raises(ValueError, match="no file for O"):
        client(api).submit(atoms, pseudopotentials={"C": "C.UPF"})


def test_vibrations_are_ase_vibrations_data() -> None:
    atoms = molecule("H2")
    hessian = np.eye(6).reshape(2, 3, 2, 3) * 30.0
    vib = VibrationsData(atoms, hessian)
    api = FakeApi([status("done", 4)], files={"vibrations": encode(vib).encode()})
    result = client(api).job("j1").result()
    assert isinstance(result.vibrations, VibrationsData)
    np.testing.assert_allclose(result.vibrations.get_hessian(), hessian)
