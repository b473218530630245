"""Telling jobs apart (label, formula, search, the input again) and the parse warnings.

Why: a list of hashes cannot be told apart, and an input that runs but is probably not
what the user wants must not be accepted without a word.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import SAMPLES, make_settings, wait_for
from tests.api.test_jobs_api import assert_problem
from tests.api.test_users_access import (
    ADMIN,
    bearer,
    issue,
)
from zpe_api.main import create_app
from zpe_core.jobs.models import hill_formula


def submit(client: TestClient, text: str, **extra: Any) -> str:
    response = client.post("/calc/zpe/jobs", json={"input_text": text, **extra})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def codes(client: TestClient, text: str, **extra: Any) -> list[str]:
    response = client.post("/calc/zpe/parse", json={"input_text": text, **extra})
    assert response.status_code == 200, response.text
    return [w["code"] for w in response.json()["warnings"]]


# --- formula, label, search -------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbols", "formula"),
    [
        (["Cu"] * 8 + ["C", "O"], "C Cu8 O"),
        (["O", "H", "H"], "H2 O"),
        (["H", "C", "H", "H", "H"], "C H4"),
        (["N", "H", "H", "H"], "H3 N"),
        (["O", "C", "O"], "C O2"),
        (["Cu"], "Cu"),
    ],
)
def test_hill_formula(symbols: list[str], formula: str) -> None:
    assert hill_formula(symbols) == formula


def test_status_names_the_job(client: TestClient) -> None:
    text = (SAMPLES / "cu_slab_co.in").read_text()
    job_id = submit(client, text, label="CO top site", delta=0.02, nfree=4, temperature=500)
    status = wait_for(client, job_id)
    assert status["label"] == "CO top site"
    assert status["formula"] == "C Cu8 O"
    assert (status["delta"], status["nfree"], status["temperature"]) == (0.02, 4, 500)
    assert status["mobile_indices"] == [8, 9]


def test_label_is_bounded_and_one_line(client: TestClient, h2_input: str) -> None:
    for bad in ["x" * 201, "two\nlines", "bell\x07"]:
        response = client.post("/calc/zpe/jobs", json={"input_text": h2_input, "label": bad})
        assert "label" in assert_problem(response, 422, "invalid_request")["detail"]
    assert len(client.get("/calc/zpe/jobs").json()["jobs"]) == 0


def test_search_by_label_formula_and_id(client: TestClient, h2_input: str) -> None:
    h2o = (SAMPLES / "h2o_zpe.in").read_text()
    a = submit(client, h2_input, label="hydrogen, 50 Ry")
    b = submit(client, h2o, label="water monomer")
    c = submit(client, h2o, label="Water dimer? no")

    def found(q: str, **extra: Any) -> list[str]:
        body = client.get("/calc/zpe/jobs", params={"q": q, **extra}).json()
        return [job["job_id"] for job in body["jobs"]]

    assert found("water") == [c, b]  # newest first, any case
    assert found("H2 O") == [c, b]
    assert found("50 ry") == [a]
    assert found(a[:10]) == [a]
    assert found("nothing like it") == []
    assert found("  ") == [c, b, a]  # a blank query lists everything


def test_search_pages_with_a_cursor(client: TestClient, h2_input: str) -> None:
    ids = [submit(client, h2_input, label=f"scan {i}") for i in range(5)]
    first = client.get("/calc/zpe/jobs", params={"q": "scan", "limit": 2}).json()
    assert [j["job_id"] for j in first["jobs"]] == ids[::-1][:2]
    rest = client.get(
        "/calc/zpe/jobs", params={"q": "scan", "limit": 10, "cursor": first["next_cursor"]}
    ).json()
    assert [j["job_id"] for j in rest["jobs"]] == ids[::-1][2:]


def test_search_sees_only_the_callers_jobs(h2_input: str) -> None:
    settings = make_settings(auth_mode="api-keys", admin_token=SecretStr(ADMIN))
    with TestClient(create_app(settings)) as client:
        search_as_two_users(client, h2_input)


def search_as_two_users(keyed_client: TestClient, h2_input: str) -> None:
    alice, bob = (bearer(issue(keyed_client, o)["key"]) for o in ("alice", "bob"))
    r = keyed_client.post(
        "/calc/zpe/jobs", json={"input_text": h2_input, "label": "secret"}, headers=alice
    )
    assert r.status_code == 201, r.text
    theirs = keyed_client.get("/calc/zpe/jobs", params={"q": "secret"}, headers=bob).json()
    assert theirs == {"jobs": [], "next_cursor": None}
    mine = keyed_client.get("/calc/zpe/jobs", params={"q": "secret"}, headers=alice).json()
    assert [j["label"] for j in mine["jobs"]] == ["secret"]


def test_the_input_can_be_viewed_again_in_any_state(idle_client: TestClient) -> None:
    text = (SAMPLES / "h2_zpe.in").read_text()
    job_id = submit(idle_client, text)
    response = idle_client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "input"})
    assert response.status_code == 200
    assert response.text == text
    assert response.headers["content-type"].startswith("text/plain")
    assert "input" in idle_client.get(f"/calc/zpe/jobs/{job_id}").json()["links"]
    # Other files still wait for the result.
    assert_problem(
        idle_client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "summary"}),
        409,
        "job_not_done",
    )


# --- parse warnings ---------------------------------------------------------------------


def test_no_warning_for_the_samples_on_mock(client: TestClient) -> None:
    for name in ("h2_zpe.in", "h2o_zpe.in", "nh3_zpe.in", "co_zpe.in"):
        assert codes(client, (SAMPLES / name).read_text()) == [], name


def test_atoms_overlap(client: TestClient, h2_input: str) -> None:
    lines = h2_input.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ATOMIC_POSITIONS"))
    doubled = [*lines[: at + 2], lines[at + 1], *lines[at + 2 :]]
    text = "\n".join(doubled).replace("nat     = 2", "nat     = 3")
    response = client.post("/calc/zpe/parse", json={"input_text": text})
    assert response.status_code == 200, response.text
    warning = next(w for w in response.json()["warnings"] if w["code"] == "atoms_overlap")
    assert "0 and 1 (0.00 Å)" in warning["message"]


def test_loose_or_missing_conv_thr(client: TestClient, h2_input: str) -> None:
    assert "loose_conv_thr" in codes(client, h2_input.replace("1.0d-10", "1.0d-6"), engine="qe")
    unset = "\n".join(line for line in h2_input.splitlines() if "conv_thr" not in line)
    assert "loose_conv_thr" in codes(client, unset, engine="qe")
    assert "loose_conv_thr" not in codes(client, h2_input, engine="qe")


def test_calculation_overridden(client: TestClient, h2_input: str) -> None:
    relax = h2_input.replace("calculation = 'scf'", "calculation = 'relax'")
    assert "calculation_overridden" in codes(client, relax, engine="qe")
    assert "calculation_overridden" not in codes(client, h2_input, engine="qe")


def test_small_and_large_delta(client: TestClient, h2_input: str) -> None:
    assert codes(client, h2_input, delta=0.001) == ["small_delta"]
    assert codes(client, h2_input, delta=0.05) == ["large_delta"]
    assert codes(client, h2_input, delta=0.01) == []


def test_missing_pseudopotential_in_the_embedded_mode(tmp_path: Any, h2_input: str) -> None:
    (tmp_path / "H.pbe-kjpaw.UPF").write_text("<UPF/>")
    for pseudo_dir, expected in [(tmp_path, False), (tmp_path / "empty", True)]:
        settings = make_settings(pseudo_dir=str(pseudo_dir))
        with TestClient(create_app(settings)) as client:
            found = "missing_pseudopotential" in codes(client, h2_input, engine="qe")
            assert found is expected
