"""``smoothseg_serve``'s page in a real browser (Debian's Chromium, driven by Playwright with the system binary): a
file uploaded through the page is segmented, the overlay is drawn, the slider moves through the real slice count,
clicking a lesion jumps to its largest slice, and the label map downloads, byte for byte the API's. A file name that
tries to inject script runs nothing, under the page's Content-Security-Policy.

CI installs ``chromium`` (``.ci/run``); where it is missing the test is skipped with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="smoothseg_serve needs its extra (pip install -e .[serve])")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing (pip install -e .[test])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing (apt-get install chromium)")

from serve_helpers import phantom_file, start_server, tiny_results  # noqa: E402

HOSTILE_NAME = "<img src=x onerror=alert(1)>.nii.gz"


def test_upload_view_click_a_lesion_and_download_through_the_page(tmp_path: Path) -> None:
    results = tiny_results(tmp_path / "results")
    ct = phantom_file(tmp_path / "inputs" / HOSTILE_NAME, seed=3)
    server = start_server(results, tmp_path / "data", tmp_path / "home")
    dialogs, errors, violations = [], [], []
    try:
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            try:
                page = browser.new_page(accept_downloads=True)
                page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on("console", lambda message: violations.append(message.text)
                        if "Content Security Policy" in message.text else None)
                page.goto(server.url + "/")
                page.wait_for_selector("#model:has-text('TinyModels')")  # (no eval: the page's CSP forbids it)
                page.set_input_files("#file", str(ct))
                page.click("#submit")
                page.wait_for_selector("#result:not([hidden])", timeout=120_000)
                page.wait_for_selector("#view[data-drawn]")

                # the overlay is drawn on the first lesion's largest axial slice
                rows = page.locator("#lesions tbody tr")
                assert rows.count() >= 1
                job_id = page.evaluate("location.hash.slice(5)")
                with server.client() as client:
                    largest = client.get(f"/api/jobs/{job_id}/view").json()["lesions"][0]["largest_axial_slice"]
                assert page.get_attribute("#view", "data-drawn") == f"axial:{largest}"
                assert int(page.get_attribute("#view", "data-tumour-pixels")) > 0

                # the slider spans the real slice count and redraws
                assert page.get_attribute("#slice", "max") == str(24 - 1)
                page.locator("#slice").fill("0")
                page.wait_for_selector("#view[data-drawn='axial:0']")
                assert page.inner_text("#slice-label") == "axial slice 0 of 0-23 (0 = feet)"
                page.click("button.plane[data-plane='coronal']")
                assert page.get_attribute("#slice", "max") == str(64 - 1)
                page.wait_for_selector("#view[data-drawn^='coronal:']")

                # clicking a lesion jumps to its largest axial slice
                rows.first.click()
                page.wait_for_selector(f"#view[data-drawn='axial:{largest}']")
                assert page.input_value("#slice") == str(largest)

                # the hostile file name is shown, as text, never as markup
                assert page.inner_text("#job-name") == HOSTILE_NAME
                assert page.locator("img[src='x']").count() == 0
                assert "Lesion 1:" in page.inner_text("#findings")

                # the label map downloads, identical to the API's file
                with page.expect_download() as download:
                    page.click("#downloads a[download='labels.nii.gz']")
                saved = tmp_path / "downloaded.nii.gz"
                download.value.save_as(saved)
            finally:
                browser.close()
        with server.client() as client:
            assert client.get(f"/api/jobs/{job_id}").json()["upload_name"] == HOSTILE_NAME
            assert saved.read_bytes() == client.get(f"/api/jobs/{job_id}/files/labels.nii.gz").content
    finally:
        server.stop()
    assert dialogs == [] and errors == [] and violations == []
