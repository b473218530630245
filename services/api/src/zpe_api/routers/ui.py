"""The web UI: four static pages and their assets, served by the API itself.

Plain HTML, CSS and JavaScript from the package's ``static/`` folder: no build
step and nothing fetched from elsewhere at page load. The pages talk to the
user API (``/calc/zpe/*``) from the browser.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from zpe_core import __version__

router = APIRouter(include_in_schema=False)

ASSET_PREFIX = "/ui"

# The pages load only their own scripts and styles and talk only to this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=8)
def _page_html(name: str) -> str:
    """A page from ``static/``, its asset links tagged with the version (cache busting)."""
    text = (resources.files("zpe_api") / "static" / name).read_text(encoding="utf-8")
    return text.replace("{{version}}", __version__)


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(_page_html(name), headers=SECURITY_HEADERS)


@router.get("/", response_class=HTMLResponse)
def submit_page() -> HTMLResponse:
    """Paste or upload a pw.x input, pick mobile atoms and options, submit."""
    return _page("index.html")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page() -> HTMLResponse:
    """The caller's jobs, newest first."""
    return _page("jobs.html")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str) -> HTMLResponse:
    """Progress of one job and, once done, its result (the script reads the id from the URL)."""
    del job_id
    return _page("job.html")


@router.get("/compare", response_class=HTMLResponse)
def compare_page() -> HTMLResponse:
    """Finished jobs side by side (``?ids=a,b,...``), with differences to the first."""
    return _page("compare.html")


def mount_assets(app: FastAPI) -> None:
    """Serve ``static/`` (scripts, styles) under :data:`ASSET_PREFIX`."""
    app.mount(ASSET_PREFIX, StaticFiles(packages=[("zpe_api", "static")]), name="ui-assets")
