"""The web UI in a real browser: headless Chromium (Playwright) against a real API process.

The fixtures (the API process, Chromium, a fresh page) are in ``conftest.py``.

The finished job page is saved as ``ui-job-done.png`` under ``ZPE_TEST_ARTIFACTS``
(default ``artifacts/`` at the repository root).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS, SAMPLES, WAIT_MS

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request, Route

JOB_URL = re.compile(r"/jobs/(j[0-9a-f]+)$")
STATUS_PATH = re.compile(r"/calc/zpe/jobs/([^/?]+)$")
MALFORMED = "&CONTROL\n  calculation = 'scf'\n/\n&SYSTEM\n  ibrav = 0\n/\n"

pytestmark = pytest.mark.slow


def api_jobs(api_url: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = httpx.get(f"{api_url}/calc/zpe/jobs?limit=100").json()["jobs"]
    return jobs


def paste(page: Page, text: str) -> None:
    page.goto("/")
    page.fill("#input-text", text)


def record_requests(page: Page, pattern: re.Pattern[str]) -> list[tuple[float, Request]]:
    """Every request whose path matches ``pattern``, with its time."""
    seen: list[tuple[float, Request]] = []

    def on_request(request: Request) -> None:
        if pattern.search(request.url.split("?")[0]):
            seen.append((time.monotonic(), request))

    page.on("request", on_request)
    return seen


# --- a real job, start to finish -------------------------------------------------------------


def test_h2_from_paste_to_result_plot_and_csv(page: Page, api_url: str) -> None:
    paste(page, (SAMPLES / "h2_zpe.in").read_text())
    rows = page.locator("#atoms-table tbody tr")
    rows.first.wait_for()
    assert rows.count() == 2
    assert rows.locator("td:nth-child(3)").all_inner_texts() == ["H", "H"]
    boxes = page.locator("#atoms-table input.mobile")
    assert [boxes.nth(i).is_checked() for i in range(2)] == [True, True]
    assert "2 mobile atoms → 13 SCF calculations" in page.inner_text("#mobile-summary")
    # The server's plan: 4 of the 13 points with symmetry, shown before anything runs.
    page.locator("#mobile-summary", has_text="without symmetry, 4 with it").wait_for()
    assert "Γ point" in page.inner_text("#structure-facts")
    page.select_option("#engine", "mock")

    polls = record_requests(page, STATUS_PATH)
    page.click("#submit-button")
    page.wait_for_url(JOB_URL)
    match = JOB_URL.search(page.url)
    assert match is not None
    job_id = match.group(1)

    page.locator("#state", has_text="done").wait_for()
    assert page.inner_text("#progress-text").startswith("4 / 4")
    page.locator("#task-states", has_text="4 done").wait_for()
    page.locator("#result").wait_for(state="visible")

    result = httpx.get(f"{api_url}/calc/zpe/jobs/{job_id}/result").json()
    shown = page.locator("#zpe-ev")
    assert float(shown.get_attribute("data-value") or "nan") == result["zpe_ev"]
    assert float(shown.inner_text()) == pytest.approx(result["zpe_ev"], abs=5e-5)  # 4 decimals
    assert float(page.inner_text("#zpe-kjmol")) == pytest.approx(result["zpe_kjmol"], abs=5e-3)
    kcal = result["zpe_kjmol"] / 4.184
    assert float(page.inner_text("#zpe-kcalmol")) == pytest.approx(kcal, abs=5e-3)
    assert float(page.inner_text("#s-vib")) == pytest.approx(result["s_vib_jmol_k"], abs=5e-5)

    modes = result["modes"]
    real = [m for m in modes if not m["imaginary"]]
    counted = [m for m in modes if m["counted"]]
    assert len(counted) == 1  # H2: one stretch; five translations/rotations left out
    assert page.locator("#spectrum line.stick").count() == len(real)
    assert page.locator("#spectrum line.stick.counted").count() == len(counted)
    assert page.locator("#spectrum line.imag-stick").count() == len(modes) - len(real)
    table = page.locator("#modes-table tbody tr")
    assert table.count() == len(modes)
    counted_row = page.locator("#modes-table tr.counted")
    assert counted_row.count() == 1
    assert f"{counted[0]['frequency_cm']:.2f}" in counted_row.inner_text()
    assert "counted" in counted_row.inner_text()

    with page.expect_download() as download_info:
        page.click("#download-csv")
    download = download_info.value
    assert download.suggested_filename == f"{job_id}-freqs.csv"
    csv_text = Path(download.path()).read_text()
    assert csv_text == httpx.get(f"{api_url}/calc/zpe/jobs/{job_id}/files?kind=freqs").text
    table_rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(table_rows) == len(modes)
    assert [r["counted"] for r in table_rows].count("true") == 1
    assert float(next(r for r in table_rows if r["counted"] == "true")["frequency_cm"]) == (
        pytest.approx(counted[0]["frequency_cm"], abs=1e-3)
    )
    for link, kind in (("#download-summary", "summary"), ("#download-json", "result")):
        href = page.get_attribute(link, "href")
        assert href == f"/calc/zpe/jobs/{job_id}/files?kind={kind}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "ui-job-done.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Polling: every poll after the first asks If-None-Match with the last ETag.
    status_polls = [r for _, r in polls if r.method == "GET" and job_id in r.url]
    assert status_polls, "the job page never asked for the job's status"
    for request in status_polls[1:]:
        assert request.headers.get("if-none-match", "").startswith('"')
    assert not page.locator("#cancel-button").is_visible()

    # The jobs page lists it, newest first, with its ZPE.
    page.goto("/jobs")
    first = page.locator("#jobs-table tbody tr").first
    first.wait_for()
    assert first.get_attribute("data-job-id") == job_id
    assert "done" in first.inner_text()
    assert float(first.locator("td.zpe").inner_text()) == pytest.approx(result["zpe_ev"], abs=5e-7)
    first.locator("a").click()
    page.wait_for_url(f"**/jobs/{job_id}")
    page.locator("#result").wait_for(state="visible")


def test_slab_fixed_atoms_are_not_mobile_and_the_selection_is_sent(
    page: Page, api_url: str
) -> None:
    paste(page, (SAMPLES / "cu_slab_co.in").read_text())
    boxes = page.locator("#atoms-table input.mobile")
    boxes.first.wait_for()
    assert boxes.count() == 10
    assert [boxes.nth(i).is_checked() for i in range(10)] == [False] * 8 + [True] * 2
    assert [boxes.nth(i).is_disabled() for i in range(10)] == [True] * 8 + [False] * 2
    assert page.locator("#atoms-table tr.fixed").count() == 8
    assert "automatic 2 × 2 × 1" in page.inner_text("#structure-facts")
    assert "2 mobile atoms → 13" in page.inner_text("#mobile-summary")

    boxes.nth(8).uncheck()
    assert "1 mobile atom → 7" in page.inner_text("#mobile-summary")
    boxes.nth(9).uncheck()
    assert page.locator("#submit-button").is_disabled()
    assert "at least one" in page.inner_text("#submit-hint")
    boxes.nth(9).check()
    page.click("#submit-button")
    page.wait_for_url(JOB_URL)
    match = JOB_URL.search(page.url)
    assert match is not None
    status = httpx.get(f"{api_url}/calc/zpe/jobs/{match.group(1)}").json()
    assert status["mobile_indices"] == [9]
    assert status["progress"]["total"] == 4  # 7 points; C4v of the top site rebuilds 3
    page.locator("#state", has_text="done").wait_for()
    # An adsorbate: every real mode of O counts, nothing is a translation/rotation.
    assert page.locator("#modes-table tbody tr").count() == 3


def test_an_uploaded_file_is_read_like_a_pasted_one(page: Page) -> None:
    page.goto("/")
    page.set_input_files("#input-file", str(SAMPLES / "h2o_zpe.in"))
    page.locator("#parse-status", has_text="Read 3 atoms").wait_for()
    assert page.input_value("#input-text") == (SAMPLES / "h2o_zpe.in").read_text()
    assert page.locator("#atoms-table tbody tr").count() == 3
    assert "3 mobile atoms → 19 SCF calculations" in page.inner_text("#mobile-summary")
    assert page.locator("#submit-button").is_enabled()


# --- bad input --------------------------------------------------------------------------------


def test_malformed_input_shows_its_error_and_submits_nothing(page: Page, api_url: str) -> None:
    before = len(api_jobs(api_url))
    posts = record_requests(page, re.compile(r"/calc/zpe/jobs$"))
    paste(page, MALFORMED)
    error = page.locator("#parse-error")
    error.wait_for(state="visible")
    assert "&SYSTEM must set nat" in error.inner_text()
    assert "(code: bad_namelist)" in error.inner_text()
    assert page.locator("#structure").is_hidden()
    assert page.locator("#submit-button").is_disabled()

    # Submitting anyway (Enter, a script) sends nothing and says why.
    page.evaluate("document.getElementById('submit-form').requestSubmit()")
    page.locator("#submit-error", has_text="Nothing was submitted").wait_for()

    # A valid input replaced by a broken one and submitted before the re-parse: still nothing.
    page.fill("#input-text", (SAMPLES / "h2_zpe.in").read_text())
    page.locator("#atoms-table tbody tr").first.wait_for()
    page.fill("#input-text", (SAMPLES / "h2_zpe.in").read_text().replace("K_POINTS gamma", ""))
    page.evaluate("document.getElementById('submit-form').requestSubmit()")
    page.locator("#parse-error", has_text="K_POINTS card is missing").wait_for()
    page.locator("#parse-error", has_text="(code: missing_block)").wait_for()
    page.wait_for_timeout(500)

    assert [r for _, r in posts if r.method == "POST"] == []
    assert len(api_jobs(api_url)) == before


# --- polling, failures and cancel, on scripted API answers ----------------------------------


def _status(job_id: str, state: str, done: int, **extra: Any) -> dict[str, Any]:
    base = f"/calc/zpe/jobs/{job_id}"
    body: dict[str, Any] = {
        "job_id": job_id,
        "state": state,
        "engine": "mock",
        "progress": {"done": done, "total": 13, "fraction": done / 13, "reused": 0},
        "natoms": 2,
        "mobile_indices": [0, 1],
        "created_at": time.time() - 5,
        "started_at": None if state == "queued" else time.time() - 4,
        "finished_at": time.time() if state in ("done", "failed", "cancelled") else None,
        "elapsed_seconds": None if state == "queued" else 4.0,
        "error": None,
        "summary": None,
        "links": {"self": base},
    }
    body.update(extra)
    return body


def _result(job_id: str) -> dict[str, Any]:
    """A made-up result with a real imaginary mode, two rigid-body modes and two counted."""
    modes = [
        {"index": 0, "frequency_cm": -350.0, "imaginary": True, "counted": False},
        {"index": 1, "frequency_cm": 2.0, "imaginary": False, "counted": False},
        {"index": 2, "frequency_cm": -1.0, "imaginary": True, "counted": False},
        {"index": 3, "frequency_cm": 1200.0, "imaginary": False, "counted": True},
        {"index": 4, "frequency_cm": 3000.0, "imaginary": False, "counted": True},
    ]
    for mode in modes:
        mode["excluded"] = mode["index"] in (1, 2)
        mode["energy_ev"] = 0.0 if mode["imaginary"] else 1.239841984e-4 * mode["frequency_cm"]
    zpe = 0.5 * 1.239841984e-4 * 4200.0
    return {
        "job_id": job_id,
        "modes": modes,
        "excluded_modes": 2,
        "mode_selection": "scripted",
        "zpe_ev": zpe,
        "zpe_kjmol": zpe * 96.48533212331002,
        "s_vib_jmol_k": 1.5,
        "temperature": 298.15,
    }


def _fulfil_json(route: Route, body: Any, status: int = 200, **headers: str) -> None:
    route.fulfill(
        status=status, body=json.dumps(body), content_type="application/json", headers=headers
    )


def test_polling_uses_etags_honours_retry_after_and_stops_when_done(page: Page) -> None:
    job_id = "jscripted0001"
    wait = {"Retry-After": "1"}
    answers: list[Callable[[Route], None]] = [
        lambda r: _fulfil_json(r, _status(job_id, "queued", 0), ETag='"v1"', **wait),
        lambda r: r.fulfill(status=304, headers={"ETag": '"v1"', **wait}),
        lambda r: _fulfil_json(r, _status(job_id, "running", 6), ETag='"v2"', **wait),
        lambda r: _fulfil_json(r, _status(job_id, "done", 13), ETag='"v3"'),
    ]
    polls: list[tuple[float, str | None]] = []

    def status_route(route: Route) -> None:
        polls.append((time.monotonic(), route.request.headers.get("if-none-match")))
        answers[min(len(polls), len(answers)) - 1](route)

    page.route(f"**/calc/zpe/jobs/{job_id}", status_route)
    page.route(
        f"**/calc/zpe/jobs/{job_id}/tasks",
        lambda r: _fulfil_json(r, {"job_id": job_id, "states": {"done": 6, "leased": 2}}),
    )
    page.route(f"**/calc/zpe/jobs/{job_id}/result", lambda r: _fulfil_json(r, _result(job_id)))
    page.goto(f"/jobs/{job_id}")
    page.locator("#state", has_text="done").wait_for()
    page.locator("#result").wait_for(state="visible")
    page.wait_for_timeout(2500)  # long enough for two more polls, had polling not stopped

    assert len(polls) == 4, polls
    assert [inm for _, inm in polls] == [None, '"v1"', '"v1"', '"v2"']
    assert page.inner_text("#task-states") == "6 done · 2 running"  # "leased" reads "running"
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(polls)]
    assert gaps[0] >= 0.95  # Retry-After: 1
    assert gaps[1] >= 1.4  # no change (304): backed off to 1.5 s
    assert gaps[2] >= 0.95  # a change resets the back-off to Retry-After

    # The result: the imaginary vibration is flagged, rigid-body modes marked, counted ones too.
    rows = page.locator("#modes-table tbody tr")
    assert rows.count() == 5
    assert "350.00i" in rows.nth(0).inner_text()
    assert "imaginary — not counted" in rows.nth(0).inner_text()
    assert "translation/rotation" in rows.nth(2).inner_text()
    assert page.locator("#modes-table tr.counted").count() == 2
    assert page.locator("#modes-table tr.imaginary").count() == 1
    assert "350.00i" in page.inner_text("#imaginary-note")
    assert page.locator("#spectrum line.stick").count() == 3  # the real modes
    assert page.locator("#spectrum line.imag-stick").count() == 2
    assert page.locator("#spectrum line.imag-stick.excluded").count() == 1


def test_a_failed_job_is_explained_and_cancel_asks_the_server(page: Page) -> None:
    failed = "jscriptedfail"
    error = {
        "code": "scf_not_converged",
        "message": "pw.x did not converge in 100 iterations",
        "source": "compute",
        "detail": None,
        "retryable": False,
    }
    page.route(
        f"**/calc/zpe/jobs/{failed}",
        lambda r: _fulfil_json(r, _status(failed, "failed", 4, error=error), ETag='"f"'),
    )
    page.route(f"**/calc/zpe/jobs/{failed}/tasks", lambda r: _fulfil_json(r, {"states": {}}))
    page.goto(f"/jobs/{failed}")
    page.locator("#state", has_text="failed").wait_for()
    text = page.inner_text("#job-error")
    assert "pw.x did not converge in 100 iterations" in text
    assert "code: scf_not_converged" in text
    assert page.locator("#error-detail").is_hidden()  # no engine output to disclose
    assert page.locator("#result").is_hidden()
    assert page.locator("#cancel-button").is_hidden()

    running = "jscriptedrun"
    cancelled: list[str] = []

    def status_route(route: Route) -> None:
        state = "cancelled" if cancelled else "running"
        headers = {"ETag": f'"{state}"'} | ({} if cancelled else {"Retry-After": "30"})
        _fulfil_json(route, _status(running, state, 3), **headers)

    def cancel_route(route: Route) -> None:
        cancelled.append(route.request.method)
        _fulfil_json(route, _status(running, "cancelled", 3))

    page.route(f"**/calc/zpe/jobs/{running}", status_route)
    page.route(f"**/calc/zpe/jobs/{running}/tasks", lambda r: _fulfil_json(r, {"states": {}}))
    page.route(f"**/calc/zpe/jobs/{running}/cancel", cancel_route)
    page.goto(f"/jobs/{running}")
    page.locator("#state", has_text="running").wait_for()
    assert "3 / 13" in page.inner_text("#progress-text")
    assert page.inner_text("#eta").startswith("about")
    # Cancel asks first, and says that finished SCFs are kept for a resubmission.
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        if len(asked) == 1:
            dialog.dismiss()
        else:
            dialog.accept()

    page.on("dialog", answer)
    page.click("#cancel-button")
    assert len(asked) == 1 and "reuses" in asked[0]
    assert cancelled == []  # dismissed: nothing sent
    page.click("#cancel-button")
    page.locator("#state", has_text="cancelled").wait_for()
    assert cancelled == ["POST"]
    assert page.locator("#cancel-button").is_hidden()


def test_an_unknown_job_says_so(page: Page) -> None:
    page.goto("/jobs/jdoesnotexist")
    page.locator("#job-error", has_text="code: not_found").wait_for()
    assert page.inner_text("#state") == "error"


# --- thermochemistry (issue 15) ------------------------------------------------------------


def _submit_and_wait(api_url: str, sample: str, **extra: Any) -> str:
    body = {"input_text": (SAMPLES / sample).read_text(), "engine": "mock", **extra}
    job_id: str = httpx.post(f"{api_url}/calc/zpe/jobs", json=body).json()["job_id"]
    deadline = time.monotonic() + WAIT_MS / 1000
    while httpx.get(f"{api_url}/calc/zpe/jobs/{job_id}").json()["state"] != "done":
        assert time.monotonic() < deadline, f"job {job_id} did not finish"
        time.sleep(0.2)
    return job_id


@pytest.mark.parametrize(
    ("sample", "extra", "model", "free_key", "symbol"),
    [
        ("h2o_zpe.in", {}, "ideal_gas", "gibbs_energy_ev", "G"),
        ("cu_slab_co.in", {"mobile": [8, 9]}, "harmonic", "helmholtz_energy_ev", "F"),
    ],
    ids=["free-h2o", "cu-co-adsorbate"],
)
def test_thermochemistry_table_plot_and_warnings(
    page: Page,
    api_url: str,
    sample: str,
    extra: dict[str, Any],
    model: str,
    free_key: str,
    symbol: str,
) -> None:
    job_id = _submit_and_wait(api_url, sample, **extra)
    result = httpx.get(f"{api_url}/calc/zpe/jobs/{job_id}/result").json()
    thermo = result["thermochemistry"]
    assert thermo["model"] == model
    page.goto(f"/jobs/{job_id}")
    page.locator("#thermo").wait_for(state="visible")
    row = page.locator(f"#thermo-table tr[data-key='{free_key}'] td")
    assert float(row.inner_text().split()[0]) == pytest.approx(thermo[free_key], abs=5e-7)
    energy = page.locator("#thermo-table tr[data-key='potential_energy_plus_zpe_ev'] td")
    assert float(energy.inner_text().split()[0]) == pytest.approx(
        thermo["potential_energy_plus_zpe_ev"], abs=5e-7
    )
    # The plot: one curve through every row of thermo.csv, a dot at the job's temperature.
    csv_rows = list(
        csv.DictReader(
            io.StringIO(httpx.get(f"{api_url}/calc/zpe/jobs/{job_id}/files?kind=thermo").text)
        )
    )
    page.locator("#thermo-plot path.curve").wait_for()
    assert page.get_attribute("#thermo-plot", "data-points") == str(len(csv_rows))
    assert page.locator("#thermo-plot circle.here").count() == 1
    assert f"{symbol} (eV)" in (page.text_content("#thermo-plot") or "")
    for kind in ("thermo", "vibrations", "modes"):
        href = page.get_attribute(f"#download-{kind}", "href")
        assert href == f"/calc/zpe/jobs/{job_id}/files?kind={kind}"
    warnings = page.locator("#result-warnings li")
    assert warnings.count() == len(result["warnings"])
    if model == "harmonic":  # the mock's CO is not at a minimum: said in words
        assert "relax it first" in page.inner_text("#result-warnings")
        assert "Harmonic" in page.inner_text("#thermo-model")
    else:
        assert page.locator("#result-warnings").is_hidden()
        assert "symmetry number 2" in page.inner_text("#thermo-model")
        assert page.locator("#other-set-col").is_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui-job-thermo.png"), full_page=True)
