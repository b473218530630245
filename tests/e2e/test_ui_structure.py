"""The submit page as a chemist meets it (issue 18), in headless Chromium.

The structure is drawn on a canvas and clicking an atom changes the mobile set that is
submitted; the user's ticks survive an edit of the text; Back restores the form; a
refused upload leaves nothing to submit; the parse warnings appear; the job page names
the job; finished jobs can be compared; the phone layout has no horizontal scroll.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS, SAMPLES
from tests.e2e.test_ui_browser import JOB_URL, paste

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

H2 = (SAMPLES / "h2_zpe.in").read_text()
SLAB = (SAMPLES / "cu_slab_co.in").read_text()


def drawn_pixels(page: Page) -> int:
    """How many pixels of the structure canvas differ from its background."""
    count: int = page.evaluate(
        """() => {
          const c = document.getElementById('structure-view');
          const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < data.length; i += 4) {
            const d = Math.abs(data[i] - 0xf7) + Math.abs(data[i + 1] - 0xf8)
              + Math.abs(data[i + 2] - 0xfa);
            if (d > 30) n++;
          }
          return n;
        }"""
    )
    return count


def click_atom(page: Page, index: int) -> None:
    point: dict[str, float] = page.evaluate(
        "(i) => document.getElementById('structure-view').zpeViewer.project(i)", index
    )
    box = page.locator("#structure-view").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])


def checked(page: Page) -> list[bool]:
    boxes = page.locator("#atoms-table input.mobile")
    return [boxes.nth(i).is_checked() for i in range(boxes.count())]


def test_canvas_is_drawn_and_clicking_an_atom_changes_what_is_submitted(
    page: Page, api_url: str
) -> None:
    paste(page, SLAB)
    page.locator("#atoms-table input.mobile").first.wait_for()
    assert drawn_pixels(page) > 2000, "the structure canvas is blank"
    assert checked(page) == [False] * 8 + [True] * 2
    click_atom(page, 9)  # O: no longer mobile
    assert checked(page) == [False] * 8 + [True, False]
    click_atom(page, 0)  # a fixed Cu: cannot be chosen
    assert checked(page) == [False] * 8 + [True, False]
    page.select_option("#engine", "mock")
    page.fill("#label", "C only")
    page.click("#submit-button")
    page.wait_for_url(JOB_URL)
    match = JOB_URL.search(page.url)
    assert match is not None
    status = httpx.get(f"{api_url}/calc/zpe/jobs/{match.group(1)}").json()
    assert status["mobile_indices"] == [8]
    assert status["label"] == "C only"
    page.locator("#formula", has_text="C Cu8 O").wait_for()
    assert "C only" in page.title()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.go_back()
    page.locator("#atoms-table input.mobile").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "ui-submit.png"), full_page=True)


def test_ticks_survive_an_edit_and_a_lost_choice_is_said(page: Page) -> None:
    paste(page, SLAB)
    page.locator("#atoms-table input.mobile").first.wait_for()
    click_atom(page, 9)
    assert checked(page)[8:] == [True, False]
    # An edit that keeps the atoms: the choice stays.
    page.fill("#input-text", SLAB.replace("conv_thr    = 1.0d-8", "conv_thr    = 1.0d-9"))
    page.locator("#parse-status", has_text="Read 10 atoms").wait_for()
    page.wait_for_function("() => !document.getElementById('submit-button').disabled")
    assert checked(page)[8:] == [True, False]
    assert not page.locator("#selection-note").is_visible()
    # Fixing atom 8 (C) in the text: its tick had to go, and the page says so.
    lines = SLAB.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ATOMIC_POSITIONS"))
    c_line = next(i for i in range(at, len(lines)) if lines[i].strip().startswith("C "))
    lines[c_line] = " ".join(lines[c_line].split()[:4]) + " 0 0 0"
    page.fill("#input-text", "\n".join(lines))
    page.locator("#selection-note", has_text="8").wait_for()
    assert checked(page)[8:] == [False, False]


def test_back_restores_the_form(page: Page) -> None:
    paste(page, H2)
    page.locator("#atoms-table input.mobile").first.wait_for()
    page.fill("#delta", "0.02")
    page.fill("#temperature", "400")
    page.select_option("#nfree", "4")
    page.select_option("#engine", "mock")
    page.fill("#label", "restored?")
    page.locator("#atoms-table input.mobile").nth(1).uncheck()
    page.click("#submit-button")
    page.wait_for_url(JOB_URL)
    page.go_back()
    page.locator("#atoms-table input.mobile").first.wait_for()
    assert page.input_value("#input-text") == H2
    assert page.input_value("#delta") == "0.02"
    assert page.input_value("#temperature") == "400"
    assert page.input_value("#nfree") == "4"
    assert page.input_value("#engine") == "mock"
    assert page.input_value("#label") == "restored?"
    assert checked(page) == [True, False]


def test_edit_and_resubmit_prefills_everything(page: Page, api_url: str) -> None:
    created = httpx.post(
        f"{api_url}/calc/zpe/jobs",
        json={"input_text": SLAB, "mobile": [9], "delta": 0.015, "nfree": 4, "engine": "mock",
              "temperature": 350, "label": "O only"},
    ).json()  # fmt: skip
    page.goto(f"/jobs/{created['job_id']}")
    page.click("#resubmit-link")
    page.locator("#atoms-table input.mobile").first.wait_for()
    assert page.input_value("#input-text") == SLAB
    assert (page.input_value("#delta"), page.input_value("#nfree")) == ("0.015", "4")
    assert page.input_value("#temperature") == "350"
    assert page.input_value("#label") == "O only"
    assert checked(page) == [False] * 9 + [True]


def test_a_refused_upload_leaves_nothing_to_submit(page: Page, tmp_path: Path) -> None:
    paste(page, H2)
    page.locator("#atoms-table input.mobile").first.wait_for()
    page.wait_for_function("() => !document.getElementById('submit-button').disabled")
    big = tmp_path / "big.in"
    big.write_text("! padding\n" * 150_000)  # 1.5 MB, over the 1 MiB default
    page.set_input_files("#input-file", str(big))
    error = page.locator("#parse-error")
    error.wait_for(state="visible")
    assert "1.4 MB" in error.inner_text() and "1.0 MB" in error.inner_text()
    assert page.input_value("#input-text") == ""
    assert page.is_disabled("#submit-button")
    assert not page.locator("#structure").is_visible()


@pytest.mark.parametrize(
    ("edit", "extra", "code"),
    [
        (lambda t: t.replace("5.375000", "4.700000"), {}, "atoms_overlap"),
        (lambda t: t.replace("1.0d-10", "1.0d-6"), {"engine": "qe"}, "loose_conv_thr"),
        (lambda t: t.replace("'scf'", "'relax'"), {"engine": "qe"}, "calculation_overridden"),
        (lambda t: t, {"delta": "0.002"}, "small_delta"),
        (lambda t: t, {"delta": "0.05"}, "large_delta"),
        (lambda t: t.replace("H.pbe-kjpaw.UPF", "H.nowhere.UPF"), {"engine": "qe"},
         "missing_pseudopotential"),
    ],
)  # fmt: skip
def test_warnings_appear_before_submission(
    page: Page, edit: Any, extra: dict[str, str], code: str
) -> None:
    page.goto("/")
    if "engine" in extra:
        page.select_option("#engine", extra["engine"])
    if "delta" in extra:
        page.fill("#delta", extra["delta"])
    page.fill("#input-text", edit(H2))
    item = page.locator(f"#warnings li[data-code='{code}']")
    item.wait_for()
    assert item.inner_text().strip()


@pytest.mark.parametrize("where", ["submit", "job", "jobs"])
def test_phone_layout_has_no_horizontal_scroll(browser: Browser, api_url: str, where: str) -> None:
    context = browser.new_context(base_url=api_url, viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        job = httpx.post(
            f"{api_url}/calc/zpe/jobs",
            json={"input_text": SLAB, "engine": "mock", "label": "phone layout check"},
        ).json()
        url = {"submit": "/", "job": f"/jobs/{job['job_id']}", "jobs": "/jobs"}[where]
        page.goto(url)
        if where == "submit":
            page.fill("#input-text", SLAB)
            page.locator("#atoms-table input.mobile").first.wait_for()
        elif where == "job":
            page.locator("#state", has_text="done").wait_for(timeout=60_000)
        else:
            page.locator("#jobs-table tbody tr").first.wait_for()
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{where} page scrolls sideways by {overflow} px at 390 px"
        if where == "job":
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui-job-phone.png"), full_page=True)
    finally:
        context.close()


def test_compare_two_finished_jobs(page: Page, api_url: str) -> None:
    ids = []
    for label, mobile in (("both", [8, 9]), ("C only", [8])):
        created = httpx.post(
            f"{api_url}/calc/zpe/jobs",
            json={"input_text": SLAB, "engine": "mock", "label": label, "mobile": mobile},
        ).json()
        ids.append(created["job_id"])
    for job_id in ids:
        for _ in range(300):
            if httpx.get(f"{api_url}/calc/zpe/jobs/{job_id}").json()["state"] == "done":
                break
            page.wait_for_timeout(200)
    page.goto("/jobs?q=only")
    rows = page.locator("#jobs-table tbody tr")
    rows.first.wait_for()
    assert all("only" in text for text in rows.all_inner_texts())
    page.goto("/jobs")
    for job_id in ids:
        page.locator(f"tr[data-job-id='{job_id}'] input.compare").check()
    page.click("#compare-button")
    page.wait_for_url("**/compare?ids=*")
    table = page.locator("#compare-table")
    table.locator("tbody tr").first.wait_for()
    zpes = [float(httpx.get(f"{api_url}/calc/zpe/jobs/{i}/result").json()["zpe_ev"]) for i in ids]
    text = table.inner_text()
    assert f"{zpes[0]:.4f}" in text and f"{zpes[1]:.4f}" in text
    diff_mev = (zpes[1] - zpes[0]) * 1000
    assert f"{abs(diff_mev):.1f}" in text


def test_a_mode_animates_on_the_job_page(page: Page, api_url: str) -> None:
    created = httpx.post(
        f"{api_url}/calc/zpe/jobs",
        json={"input_text": (SAMPLES / "h2o_zpe.in").read_text(), "engine": "mock"},
    ).json()
    page.goto(f"/jobs/{created['job_id']}")
    page.locator("#result").wait_for(state="visible")
    canvas = page.locator("#mode-view")
    canvas.wait_for(state="visible")
    still = [canvas.evaluate("c => c.toDataURL()") for _ in range(2)]
    assert still[0] == still[1], "the structure moves before a mode is chosen"
    counted = page.locator("#modes-table tr.counted").first
    counted.click()
    assert "playing" in (counted.get_attribute("class") or "")
    frames = []
    for _ in range(4):
        page.wait_for_timeout(180)
        frames.append(canvas.evaluate("c => c.toDataURL()"))
    assert len(set(frames)) > 1, "the picture does not change while the mode plays"
    assert page.evaluate("document.getElementById('mode-view').zpeViewer.animating")
    assert "cm⁻¹" in page.inner_text("#mode-caption")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-mode-animating.png"), full_page=True)


def test_a_too_large_paste_says_its_size_in_mb(page: Page) -> None:
    page.goto("/")
    page.wait_for_function("() => document.getElementById('engine').options.length > 0")
    big = H2 + "! padding\n" * 120_000  # about 1.2 MB, over the 1 MiB default
    # As a paste does: one input event with the whole text (fill() types it slowly).
    page.evaluate(
        """(text) => {
          const area = document.getElementById('input-text');
          area.value = text;
          area.dispatchEvent(new Event('input', { bubbles: true }));
        }""",
        big,
    )
    error = page.locator("#parse-error")
    error.wait_for(state="visible")
    assert "MB" in error.inner_text() and "1.0 MB" in error.inner_text()
    assert "bytes" not in error.inner_text()
    assert page.is_disabled("#submit-button")


def test_degenerate_sticks_are_marked_and_fields_say_they_are_invalid(
    page: Page, api_url: str
) -> None:
    created = httpx.post(
        f"{api_url}/calc/zpe/jobs",
        json={"input_text": (SAMPLES / "nh3_zpe.in").read_text(), "engine": "mock"},
    ).json()
    page.goto(f"/jobs/{created['job_id']}")
    page.locator("#result").wait_for(state="visible")
    result = httpx.get(f"{api_url}/calc/zpe/jobs/{created['job_id']}/result").json()
    counted = sorted(m["frequency_cm"] for m in result["modes"] if m["counted"])
    pairs = sum(1 for a, b in itertools.pairwise(counted) if b - a < 1)
    assert pairs >= 1, counted  # NH3 (C3v): the E modes come in pairs
    assert page.locator("#spectrum text.degeneracy", has_text="×2").count() == pairs
    assert page.locator("a.skip-link").count() == 1
    page.goto("/")
    page.wait_for_function("() => document.getElementById('engine').options.length > 0")
    page.fill("#delta", "0.5")
    page.fill("#input-text", H2)
    page.locator("#atoms-table input.mobile").first.wait_for()
    assert page.get_attribute("#delta", "aria-invalid") == "true"
    page.fill("#delta", "0.01")
    assert page.get_attribute("#delta", "aria-invalid") == "false"


def test_atoms_and_modes_can_be_counted_from_one(page: Page, api_url: str) -> None:
    paste(page, SLAB)
    first = page.locator("#atoms-table tbody tr td.atom-index").first
    first.wait_for()
    assert first.inner_text() == "0"
    page.check("#one-based")
    assert first.inner_text() == "1"
    page.reload()  # remembered in this browser
    page.locator("#atoms-table tbody tr td.atom-index").first.wait_for()
    assert page.locator("#atoms-table tbody tr td.atom-index").first.inner_text() == "1"
    assert page.is_checked("#one-based")
    created = httpx.post(
        f"{api_url}/calc/zpe/jobs", json={"input_text": SLAB, "engine": "mock", "mobile": [9]}
    ).json()
    page.goto(f"/jobs/{created['job_id']}")
    page.locator("#result").wait_for(state="visible")
    assert page.inner_text("#mobile").startswith("10 ")  # atom 9 of the API, the 10th atom
    assert page.locator("td.mode-index").first.inner_text() == "1"
    page.uncheck("#one-based")
    assert page.locator("td.mode-index").first.inner_text() == "0"
    assert page.inner_text("#mobile").startswith("9 ")
