"""The review page in a real browser (Debian's Chromium, driven by Playwright with the system binary): case names
that try to inject script run nothing, the page loads under its Content-Security-Policy, and the slider works.

CI installs ``chromium`` (``.ci/run``); where it is missing the test is skipped with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from smoothseg.dataset.io import Geometry, write_image
from smoothseg.evaluation.review import write_review

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing (pip install -e .[test])")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing (apt-get install chromium)")

#: File and folder names are legal with these characters; case ids come from them.
HOSTILE = ["x');alert(1);('", "<img src=x onerror=alert(1)>", "\"><svg onload=alert(1)>"]


def _cohort(tmp_path: Path) -> tuple[Path, Path]:
    images, predictions = tmp_path / "images", tmp_path / "pred"
    shape = (12, 32, 32)
    for i, name in enumerate(HOSTILE):
        ct = np.full(shape, -800, np.int16)
        labels = np.zeros(shape, np.uint8)
        labels[2:10, 6:26, 6:26] = 1
        labels[4:7, 12:16, 12:16] = 2
        ct[labels > 0] = 100 + 10 * i
        geometry = Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        write_image(ct, geometry, images / f"{name}_0000.nii.gz")
        write_image(labels, geometry, predictions / f"{name}.nii.gz")
    return images, predictions


def test_hostile_case_names_run_nothing_and_the_slider_works(tmp_path: Path) -> None:
    images, predictions = _cohort(tmp_path)
    page_path = write_review(images, predictions, tmp_path / "review.html", max_slices=6)
    dialogs, errors, violations = [], [], []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: violations.append(message.text)
                    if "Content Security Policy" in message.text else None)
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            # every hostile name is shown as text, in the table and as a heading
            assert sorted(page.locator("#cases tbody tr td:first-child").all_inner_texts()) == sorted(HOSTILE)
            assert sorted(page.locator("h2").all_inner_texts()) == sorted(HOSTILE)
            assert page.locator("svg").count() == 0 and page.locator("img[src='x']").count() == 0
            for index in range(len(HOSTILE)):
                before = page.get_attribute(f"#img-{index}", "src")
                page.locator(f"input[data-case='{index}']").fill("0")  # moves the range input, fires 'input'
                assert page.get_attribute(f"#img-{index}", "src") != before
                assert page.inner_text(f"#pos-{index}").startswith("1 / ")
            page.click("#cases th[data-col='1']")  # sorting works too (liver volume)
            page.wait_for_timeout(200)
        finally:
            browser.close()
    assert dialogs == [] and errors == [] and violations == []
