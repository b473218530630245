"""The submit page as a chemist meets it (issue 18), in headless Chromium.

The structure is drawn on a canvas and clicking an atom changes the mobile set that is
submitted; the user's ticks survive an edit of the text; Back restores the form; a
refused upload leaves nothing to submit; the parse warnings appear; the job page names
the job; finished jobs can be compared; the phone layout (390 px) has no horizontal scroll,
the job list shows state and ZPE there, and the plots' labels keep their size and do not overlap.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS, SAMPLES
from tests.e2e.test_ui_browser import JOB_URL, _fulfil_json, _status, _submit_and_wait, paste

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

pytestmark = pytest.mark.slow

H2 = (SAMPLES / "h2_zpe.in").read_text()
SLAB = (SAMPLES / "cu_slab_co.in").read_text()
PHONE = {"width": 390, "height": 844}
# A label as long as the API allows, in one unbreakable word: it must wrap, not widen the page.
LONG_LABEL = "CO-on-Cu(100)_top-site_2x2_ecutwfc50_k221_" + "x" * 150
SIDEWAYS_SCROLLS = """() => {
  const found = {};
  const page = document.documentElement;
  if (page.scrollWidth > page.clientWidth) found.page = page.scrollWidth - page.clientWidth;
  for (const wrap of document.querySelectorAll('.table-wrap')) {
    const table = wrap.querySelector('table');
    if (wrap.scrollWidth > wrap.clientWidth) found[table.id] = wrap.scrollWidth - wrap.clientWidth;
  }
  return found;
}"""


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


def ring_pixels(page: Page) -> int:
    """Pixels of the structure canvas in the red (#dc2626) of the ring around overlapping atoms."""
    count: int = page.evaluate(
        """() => {
          const c = document.getElementById('structure-view');
          const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < data.length; i += 4) {
            const d = Math.abs(data[i] - 0xdc) + Math.abs(data[i + 1] - 0x26)
              + Math.abs(data[i + 2] - 0x26);
            if (d < 40) n++;
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
    shot = ARTIFACTS / "ui-submit.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


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


def test_values_typed_before_the_options_arrive_are_kept(page: Page) -> None:
    """The server's defaults fill only the fields the user has not touched yet."""
    held: list[Route] = []
    page.route("**/calc/zpe/config", lambda route: held.append(route))  # answered later
    page.goto("/")
    page.fill("#delta", "0.05")
    page.select_option("#nfree", "4")
    for _ in range(200):  # until the held request has reached the handler
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_function("() => document.getElementById('engine').options.length > 0")
    assert page.input_value("#delta") == "0.05"
    assert page.input_value("#nfree") == "4"
    assert page.input_value("#temperature") == "298.15"  # untouched: the server's default


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
    if code == "atoms_overlap":  # both atoms visible at once: ringed in red on the canvas
        page.wait_for_function(
            "() => document.getElementById('structure-view').zpeViewer.overlaps().length === 2"
        )
        assert ring_pixels(page) > 50


def test_overlapping_atoms_are_ringed_only_when_they_overlap(page: Page) -> None:
    paste(page, H2)
    page.locator("#atoms-table input.mobile").first.wait_for()
    assert drawn_pixels(page) > 500
    assert ring_pixels(page) == 0
    assert page.locator("#warnings li").count() == 0


def test_a_partly_frozen_free_molecule_is_warned_before_submission(page: Page) -> None:
    """The warning depends on the ticks, so it must follow them, not only the text."""
    paste(page, H2)
    page.select_option("#engine", "mock")
    page.locator("#atoms-table input.mobile").first.wait_for()
    item = page.locator("#warnings li[data-code='partial_free_molecule']")
    page.wait_for_function("() => !document.getElementById('submit-button').disabled")
    assert item.count() == 0
    click_atom(page, 1)  # H2 with one H frozen: no atom is fixed in the input
    assert checked(page) == [True, False]
    item.wait_for()
    assert "[1] are not mobile" in item.inner_text()
    page.locator("#atoms-table input.mobile").nth(1).check()
    item.wait_for(state="detached")


@pytest.fixture(scope="module")
def finished_slab(api_url: str) -> str:
    """A finished job on the slab (imaginary modes, thermochemistry) with a very long label."""
    return _submit_and_wait(api_url, "cu_slab_co.in", mobile=[8, 9], label=LONG_LABEL)


@pytest.fixture
def phone(browser: Browser, api_url: str) -> Iterator[Page]:
    """A 390 px wide page; an uncaught script error fails the test."""
    context = browser.new_context(base_url=api_url, viewport=PHONE)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def within_the_window(page: Page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not shown"
    return box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] and box["width"] > 0


@pytest.mark.parametrize("where", ["submit", "job", "jobs", "failed"])
def test_phone_layout_has_no_horizontal_scroll(
    phone: Page, api_url: str, finished_slab: str, where: str
) -> None:
    if where == "submit":
        phone.goto("/")
        phone.fill("#label", LONG_LABEL)
        phone.fill("#input-text", SLAB)
        phone.locator("#atoms-table input.mobile").first.wait_for()
    elif where == "job":
        phone.goto(f"/jobs/{finished_slab}")
        phone.locator("#result").wait_for(state="visible")
        phone.locator("#thermo-plot path.curve").wait_for()
        assert LONG_LABEL in phone.inner_text("h1")
        # A value and its unit stay on one line (the thermochemistry cells, the ZPE headline).
        split: list[str] = phone.evaluate(
            """() => Array.from(document.querySelectorAll('#thermo-table td, .headline .value'))
              .filter((cell) => {
                const range = document.createRange();
                range.selectNodeContents(cell);
                const tops = Array.from(range.getClientRects(), (r) => Math.round(r.top));
                return new Set(tops).size > 1;
              })
              .map((cell) => cell.textContent)"""
        )
        assert split == [], f"split from their units at 390 px: {split}"
    elif where == "jobs":
        phone.goto("/jobs")
        row = f"#jobs-table tr[data-job-id='{finished_slab}']"
        phone.locator(row).wait_for()
        # The list shows the state and the ZPE in the window, not behind a sideways scroll.
        for cell in ("td.state .badge", "td.zpe"):
            assert within_the_window(phone, f"{row} {cell}"), f"{cell} is outside the window"
        assert phone.inner_text(f"{row} td.state") == "done"
        zpe = httpx.get(f"{api_url}/calc/zpe/jobs/{finished_slab}/result").json()["zpe_ev"]
        assert f"{zpe:.6f}" in phone.inner_text(f"{row} td.zpe")
    else:  # a failed job whose message is one long unbreakable line
        job_id = "jscriptedlongfail"
        error = {
            "code": "engine_failed",
            "message": "pw.x stopped: /scratch/" + "very_long_directory_name/" * 12 + "pw.out",
            "source": "compute",
            "detail": "last lines of the output\n" + "=" * 400,
            "retryable": False,
        }
        phone.route(
            f"**/calc/zpe/jobs/{job_id}",
            lambda r: _fulfil_json(r, _status(job_id, "failed", 4, error=error), ETag='"f"'),
        )
        phone.route(f"**/calc/zpe/jobs/{job_id}/tasks", lambda r: _fulfil_json(r, {"states": {}}))
        phone.goto(f"/jobs/{job_id}")
        phone.locator("#state", has_text="failed").wait_for()
        phone.click("#error-detail summary")
        phone.locator("#error-detail-text").wait_for(state="visible")
    # Neither the page nor a table inside it scrolls sideways (px by which each would).
    assert phone.evaluate(SIDEWAYS_SCROLLS) == {}, f"the {where} page at 390 px"
    if where == "job":
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "ui-job-phone.png"
        phone.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000


PLOT_TEXT = """(id) => {
  const plot = document.getElementById(id);
  const box = plot.getBoundingClientRect();
  const texts = Array.from(plot.querySelectorAll('text'), (t) => {
    const r = t.getBoundingClientRect();
    return { text: t.textContent, tick: t.classList.contains('tick-label'),
             left: r.left, right: r.right, top: r.top, bottom: r.bottom, height: r.height };
  });
  return { box: { left: box.left, right: box.right, top: box.top, bottom: box.bottom }, texts };
}"""


@pytest.mark.parametrize("width", [390, 1100])
@pytest.mark.parametrize("sample", ["cu_slab_co.in", "h2o_zpe.in"])
def test_the_plots_stay_legible_at_any_width(
    browser: Browser, api_url: str, finished_slab: str, sample: str, width: int
) -> None:
    """Tick labels keep their size, do not overlap and stay inside the plot at any width."""
    job_id = finished_slab if sample == "cu_slab_co.in" else _submit_and_wait(api_url, sample)
    context = browser.new_context(base_url=api_url, viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"/jobs/{job_id}")
        page.locator("#result").wait_for(state="visible")
        page.locator("#thermo-plot path.curve").wait_for()
        page.locator("#spectrum text.tick-label").first.wait_for()
        for plot in ("spectrum", "thermo-plot"):
            drawn: dict[str, Any] = page.evaluate(PLOT_TEXT, plot)
            box, texts = drawn["box"], drawn["texts"]
            ticks = [t for t in texts if t["tick"]]
            assert len(ticks) >= 4, (plot, ticks)
            for t in texts:
                assert t["height"] >= 11, f"{plot}: {t['text']!r} is {t['height']:.1f} px tall"
                assert box["left"] <= t["left"] and t["right"] <= box["right"] + 0.5, (plot, t)
                assert box["top"] <= t["top"] and t["bottom"] <= box["bottom"] + 0.5, (plot, t)
            for a, b in itertools.combinations(ticks, 2):
                apart = (
                    a["right"] + 1 <= b["left"] or b["right"] + 1 <= a["left"]
                    or a["bottom"] <= b["top"] or b["bottom"] <= a["top"]
                )  # fmt: skip
                assert apart, f"{plot}: tick labels {a['text']!r} and {b['text']!r} overlap"
            if plot == "spectrum":  # imaginary sticks: a labelled tick on the negative side
                assert page.locator("#spectrum line.imag-stick").count() > 0
                negative = [t["text"] for t in ticks if t["text"].endswith("i")]
                assert negative and all(n != "0i" for n in negative), negative
        if width == PHONE["width"]:  # the frequency and thermochemistry tables fit too
            assert page.evaluate(SIDEWAYS_SCROLLS) == {}
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
    shot = ARTIFACTS / "ui-mode-animating.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


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
