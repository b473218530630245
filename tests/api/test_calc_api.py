"""``POST /calc/zpe/parse``, ``GET /calc/zpe/config`` and the UI pages, through TestClient."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import SAMPLES, make_settings
from tests.api.test_jobs_api import assert_problem
from zpe_api.main import create_app

STATIC = Path(__file__).resolve().parents[2] / "services/api/src/zpe_api/static"


def parse(client: TestClient, text: str, **extra: Any) -> Any:
    return client.post("/calc/zpe/parse", json={"input_text": text, **extra})


def job_count(client: TestClient) -> int:
    return len(client.get("/calc/zpe/jobs").json()["jobs"])


@pytest.fixture
def slab_input() -> str:
    return (SAMPLES / "cu_slab_co.in").read_text()


@pytest.fixture
def small_client() -> Iterator[TestClient]:
    """Only the mock engine, at most one mobile atom, small inputs."""
    settings = make_settings(allowed_engines="mock", max_mobile_atoms=1, max_input_bytes=4096)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# --- /calc/zpe/config -------------------------------------------------------------------


def test_config_reports_engines_limits_and_defaults(client: TestClient) -> None:
    response = client.get("/calc/zpe/config")
    assert response.status_code == 200
    body = response.json()
    assert body["engines"] == ["qe", "mock"]
    assert body["default_engine"] == "mock"
    assert body["limits"]["max_input_bytes"] == 1024 * 1024
    assert body["limits"]["max_mobile_atoms"] == 64
    assert body["limits"]["delta"] == {"gt": 0.0, "ge": None, "lt": None, "le": 0.1}
    assert body["limits"]["temperature"]["le"] == 5000.0
    assert body["limits"]["nfree"] == [2, 4]
    assert body["defaults"] == {"delta": 0.01, "temperature": 298.15, "nfree": 2}
    assert body["poll_retry_after_seconds"] >= 1


def test_config_follows_the_settings(small_client: TestClient) -> None:
    body = small_client.get("/calc/zpe/config").json()
    assert body["engines"] == ["mock"]
    assert body["limits"]["max_mobile_atoms"] == 1
    assert body["limits"]["max_input_bytes"] == 4096


# --- /calc/zpe/parse: valid inputs -------------------------------------------------------


def test_parse_h2_shows_atoms_cell_species_and_tasks(client: TestClient, h2_input: str) -> None:
    response = parse(client, h2_input)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["natoms"] == 2
    assert body["formula"] == "H2"
    assert [a["element"] for a in body["atoms"]] == ["H", "H"]
    assert body["atoms"][0]["position"] == pytest.approx([5.0, 5.0, 4.625])
    assert body["atoms"][1]["position"] == pytest.approx([5.0, 5.0, 5.375])
    assert [a["fixed"] for a in body["atoms"]] == [False, False]
    assert [a["mobile_default"] for a in body["atoms"]] == [True, True]
    assert body["mobile_default"] == body["mobile"] == [0, 1]
    assert [x for row in body["cell"] for x in row] == pytest.approx([10, 0, 0, 0, 10, 0, 0, 0, 10])
    assert body["kpoints"] == {"mode": "gamma", "grid": None, "shift": [0, 0, 0]}
    assert body["species"] == [
        {"label": "H", "element": "H", "mass": 1.00794, "pseudopotential": "H.pbe-kjpaw.UPF"}
    ]
    assert body["ecutwfc"] == 50.0 and body["ecutrho"] == 400.0
    assert body["engine"] == "mock"
    assert body["free_molecule"] is True
    assert body["tasks"] == 13  # the reference + 2 atoms x 3 axes x 2 signs
    assert body["tasks_symmetric"] == 4  # D4h in the cubic box: 9 points are images
    assert body["spacegroup"] == "P4/mmm (123)" and body["symmetry_operations"] == 16
    assert parse(client, h2_input, symmetry="off").json()["tasks_symmetric"] == 13
    assert body["warnings"] == []
    assert job_count(client) == 0  # parsing stores nothing


def test_parse_slab_marks_fixed_atoms_and_kpoints(client: TestClient, slab_input: str) -> None:
    body = parse(client, slab_input).json()
    assert body["natoms"] == 10
    assert [a["index"] for a in body["atoms"] if a["fixed"]] == list(range(8))
    assert body["mobile_default"] == [8, 9]
    assert [a["element"] for a in body["atoms"][8:]] == ["C", "O"]
    assert body["kpoints"] == {"mode": "automatic", "grid": [2, 2, 1], "shift": [0, 0, 0]}
    assert body["cell"][2][2] == pytest.approx(18.0)
    assert body["free_molecule"] is False
    assert body["tasks"] == 13
    assert body["tasks_symmetric"] == 7  # C4v of the top site: C and O each x/y, z+, z-


def test_parse_with_a_mobile_list_and_nfree(client: TestClient, slab_input: str) -> None:
    body = parse(client, slab_input, mobile=[9], nfree=4).json()
    assert body["mobile"] == [9]
    assert body["mobile_default"] == [8, 9]
    assert [a["index"] for a in body["atoms"] if a["mobile"]] == [9]
    assert body["tasks"] == 1 + 3 * 4
    assert body["tasks_symmetric"] == 1 + 6  # O alone (C4v): x/y by delta, by 2 delta; 4 along z


def test_parse_warns_when_the_default_selection_is_over_the_limit(
    small_client: TestClient, h2_input: str
) -> None:
    body = parse(small_client, h2_input).json()
    assert body["mobile"] == [0, 1]
    assert [w["code"] for w in body["warnings"]] == ["too_many_mobile"]
    assert "at most 1" in body["warnings"][0]["message"]
    # An explicit selection is checked like a submission.
    assert_problem(parse(small_client, h2_input, mobile=[0, 1]), 422, "too_many_mobile")
    assert parse(small_client, h2_input, mobile=[1]).json()["tasks"] == 7


def test_parse_warns_about_partly_fixed_atoms(client: TestClient, h2_input: str) -> None:
    text = h2_input.replace("5.375000", "5.375000 1 1 0")
    body = parse(client, text).json()
    assert body["atoms"][1]["partially_fixed"] is True
    assert body["atoms"][1]["mobile_default"] is True
    assert body["free_molecule"] is False
    assert any("partly fixed" in w["message"] for w in body["warnings"])


# --- /calc/zpe/parse: errors, the same as a submission's --------------------------------

H2 = (SAMPLES / "h2_zpe.in").read_text()
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("no nat", {"input_text": "&control\n/\n&system\n ibrav=0\n/\n"}, 422, "bad_namelist", "nat"),
    (
        "no k-points",
        {"input_text": H2.replace("K_POINTS gamma", "")},
        422,
        "missing_block",
        "K_POINTS",
    ),
    (
        "unknown species",
        {"input_text": H2.replace("  H  5.000000  5.000000  5.375000", "  X 5 5 5.375")},
        422,
        "unknown_species",
        "'X'",
    ),
    ("empty", {"input_text": "  \n"}, 422, "empty_input", "empty"),
    ("mobile out of range", {"input_text": H2, "mobile": [2]}, 422, "mobile_out_of_range", "2"),
    ("mobile twice", {"input_text": H2, "mobile": [0, 0]}, 422, "mobile_duplicate", "[0]"),
    ("no mobile", {"input_text": H2, "mobile": []}, 422, "mobile_empty", "empty"),
    ("unknown engine", {"input_text": H2, "engine": "vasp"}, 422, "unknown_engine", "vasp"),
    ("bad delta", {"input_text": H2, "delta": 0.5}, 422, "invalid_request", "delta"),
    ("extra field", {"input_text": H2, "atoms": []}, 422, "invalid_request", "atoms"),
    (
        "label not an element",
        {"input_text": H2.replace("  H  1.00794", "  H1 1.00794").replace("  H  5.", "  H1 5.")},
        422,
        "unsupported_species_label",
        "H1",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "phrase"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_parse_rejects_what_a_submission_rejects(
    client: TestClient, body: dict[str, Any], status: int, code: str, phrase: str
) -> None:
    problem = assert_problem(client.post("/calc/zpe/parse", json=body), status, code)
    assert phrase in problem["detail"]
    assert_problem(client.post("/calc/zpe/jobs", json=body), status, code)
    assert job_count(client) == 0


def test_parse_of_a_fixed_atom_in_the_mobile_list(client: TestClient, slab_input: str) -> None:
    problem = assert_problem(parse(client, slab_input, mobile=[0, 8]), 422, "mobile_fixed")
    assert "[0]" in problem["detail"]


def test_parse_of_an_input_over_the_size_limit(small_client: TestClient, h2_input: str) -> None:
    big = h2_input + "!" + "x" * 5000 + "\n"
    assert_problem(parse(small_client, big), 413, "input_too_large")
    assert job_count(small_client) == 0


# --- the UI pages ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/jobs", "/jobs/j0123456789abcdef"])
def test_ui_pages_are_served_with_their_assets(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assets = re.findall(r'(?:src|href)="(/ui/[^"]+)"', response.text)
    assert any(a.endswith(".js?v=" + a.split("?v=")[-1]) for a in assets)
    assert "{{version}}" not in response.text
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert got.content


def test_ui_routes_do_not_shadow_the_api(client: TestClient) -> None:
    assert client.get("/calc/zpe/jobs").headers["content-type"].startswith("application/json")
    assert_problem(client.get("/calc/zpe/jobs/nope"), 404, "not_found")
    assert client.get("/ui/nothing-here.js").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/calc/zpe/parse" in paths and "/calc/zpe/config" in paths
    assert "/" not in paths and "/jobs/{job_id}" not in paths


def test_ui_loads_nothing_from_other_origins() -> None:
    files = [p for p in STATIC.iterdir() if p.suffix in (".html", ".js", ".css")]
    assert {p.name for p in files} >= {"index.html", "job.html", "jobs.html", "common.js"}
    for path in files:
        text = path.read_text()
        urls = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", text, flags=re.I)
        external = [u for u in urls if u != "http://www.w3.org/2000/svg"]  # a namespace
        assert not external, f"{path.name} refers to {external}"
        assert "innerHTML" not in text, f"{path.name}: build DOM nodes, never parse HTML"
