"""The study report in a real headless browser (Debian's Chromium, driven by Playwright).

The report is opened from ``file://``; the page must raise no console or page errors, load
nothing but itself, decode every picture to the same pixels PIL reads from its data URI, show
the claims table with coloured verdicts, and render to a screenshot that is not blank and
contains the pictures. A negative control proves the checks catch a broken picture and a
script error.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pivotlab.study.report import write_report

REQUIRE_ENV = "PIVOTLAB_REQUIRE_BROWSER"
# A fresh profile and no background services: the closed network otherwise fills the run with
# refused connections (updates, sync, QUIC probes).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The pictures the fixture's study makes: the VQA chart, two saliency pairs, one PCA view.
EXPECTED_IMAGES = 1 + 4 + 1
SALIENCY_RED = (200, 0, 0)

# Each decoded <img>: its size and mean RGB, read back through a canvas.
IMAGES_JS = """() => Array.from(document.images, (img) => {
  const out = {complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
               mean: null, inFigure: img.closest('figure') !== null};
  if (img.naturalWidth > 0) {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const sums = [0, 0, 0];
    for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sums[c] += data[i + c];
    out.mean = sums.map((s) => s / (data.length / 4));
  }
  return out;
})"""
# The claims table (the one with a Verdict column): its rows and each verdict cell's colour.
CLAIMS_JS = """() => {
  const table = Array.from(document.querySelectorAll('table')).find(
    (t) => Array.from(t.querySelectorAll('th'), (th) => th.textContent).includes('Verdict'));
  if (!table) return null;
  return Array.from(table.querySelectorAll('tbody tr'), (row) => {
    const cell = row.cells[row.cells.length - 1];
    return {claim: row.cells[0].textContent, verdict: cell.textContent,
            background: getComputedStyle(cell).backgroundColor};
  });
}"""


@dataclass
class PageCheck:
    """What the browser saw on one page."""

    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    claims: list[dict] | None = None
    screenshot: np.ndarray | None = None

    def broken_images(self) -> list[int]:
        """Indices of <img>s the browser could not decode."""
        return [i for i, img in enumerate(self.images) if not img["complete"] or img["width"] == 0]


def _chromium() -> str:
    """The Chromium to drive, or a skip (a fail where ``PIVOTLAB_REQUIRE_BROWSER`` is set, as
    in CI) when it or Playwright is missing: the check must never pass by not running."""
    executable = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package (pip install -e '.[test]')"
    else:
        missing = None if executable else "Chromium (apt-get install chromium)"
    if missing is None:
        return executable
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{missing} is not installed and {REQUIRE_ENV} is set")
    pytest.skip(f"{missing} is not installed; set {REQUIRE_ENV}=1 to make this a failure")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One headless Chromium with a fresh profile for the module's pages."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture
def report(study: dict, tmp_path: Path) -> tuple[dict, Path]:
    """The constructed study and the report.html written from it."""
    return study, write_report(tmp_path / "run", study)[1]


def _open(browser, page_path: Path) -> PageCheck:
    """Load ``page_path`` from file:// and record what the browser saw."""
    check = PageCheck()
    page = browser.new_page()
    page.on("console", lambda m: check.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: check.errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: check.requests.append(r.url))
    page.goto(page_path.as_uri(), wait_until="load")
    check.images = page.evaluate(IMAGES_JS)
    check.claims = page.evaluate(CLAIMS_JS)
    with Image.open(io.BytesIO(page.screenshot(full_page=True))) as shot:
        check.screenshot = np.asarray(shot.convert("RGB"))
    page.close()
    return check


def _embedded_pictures(page_path: Path) -> list[Image.Image]:
    """The pictures of the page's data URIs in document order, decoded by PIL."""
    sources = re.findall(r'<img src="data:image/png;base64,([^"]*)"', page_path.read_text())
    return [Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB") for s in sources]


def test_report_renders_without_errors_and_shows_its_charts(browser, report: tuple) -> None:
    constructed, page_path = report
    check = _open(browser, page_path)

    assert check.errors == []
    assert check.requests == [page_path.as_uri()]  # self-contained: nothing else is fetched
    # Every picture report.py wrote under figures/ is on the page, decoded by the browser to
    # the size and colours PIL reads from the same bytes.
    written = list((page_path.parent / "figures").glob("*.png"))
    assert len(check.images) == len(written) == EXPECTED_IMAGES
    assert check.broken_images() == []
    assert sum(img["inFigure"] for img in check.images) == 1  # the VQA chart
    for seen, picture in zip(check.images, _embedded_pictures(page_path), strict=True):
        assert (seen["width"], seen["height"]) == picture.size
        expected = np.asarray(picture, dtype=float).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(seen["mean"], expected, atol=1.0)
    chart = check.images[0]
    assert chart["inFigure"] and chart["width"] >= 400 and chart["height"] >= 300

    # The claims table, with the stylesheet's verdict colours applied.
    assert [c["claim"] for c in check.claims] == [c["claim"] for c in constructed["claims"]]
    colours = {c["verdict"]: c["background"] for c in check.claims}
    assert colours["holds"] == "rgb(227, 244, 225)"  # #e3f4e1
    assert colours["reversed"] == "rgb(248, 222, 222)"  # #f8dede

    # The screenshot is not blank, and the saliency pictures are visible in it.
    shot = check.screenshot
    assert shot.shape[0] > 900 and shot.std() > 20
    assert (shot == SALIENCY_RED).all(axis=-1).sum() >= 2 * 24 * 16


def test_the_checks_catch_a_broken_picture_and_a_script_error(browser, report: tuple) -> None:
    text = report[1].read_text()
    sources = re.findall(r'src="data:image/png;base64,([^"]*)"', text)
    # Keep the PNG signature, scramble the rest of the second picture (the first saliency one).
    broken = sources[1][:12] + "A" * (len(sources[1]) - 12)
    damaged = report[1].with_name("damaged.html")
    damaged.write_text(
        text.replace(sources[1], broken, 1).replace(
            "</body>", "<script>undefinedFunction();</script></body>"
        )
    )
    check = _open(browser, damaged)

    assert check.broken_images() == [1]
    assert any("undefinedFunction" in error for error in check.errors)
