"""The review page: every case in the table and in a slice scroller, self-contained, with the right numbers."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from dicom_builders import make_ct_series, write_datasets
from PIL import Image

from smoothseg.dataset.io import Geometry, read_image, write_image
from smoothseg.evaluation.review import write_review


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.sources: list[str] = []
        self.links: list[str] = []
        self.ranges: list[dict] = []
        self._row: list[str] | None = None
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._row = []
        elif tag == "td":
            self._in_td = True
            self._row.append(attrs.get("data-v", ""))
        elif tag == "img":
            self.sources.append(attrs["src"])
        elif tag in ("a", "link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))
        elif tag == "input" and attrs.get("type") == "range":
            self.ranges.append(attrs)

    def handle_endtag(self, tag):
        if tag == "tr" and self._row:
            self.rows.append(self._row)
            self._row = None


def _cohort(tmp_path: Path) -> tuple[Path, Path, Path]:
    images, predictions, references = tmp_path / "images", tmp_path / "pred", tmp_path / "ref"
    shape = (20, 48, 40)
    for i, flipped in enumerate((False, True)):
        ct = np.full(shape, -800, np.int16)
        liver = np.zeros(shape, np.uint8)
        liver[4:16, 10:40, 8:30] = 1
        ct[liver > 0] = 100
        liver[8:11, 20:26, 12:18] = 2
        reference = liver.copy()
        reference[8:11, 20:26, 12:15] = 1  # the reference's tumour is half the prediction's
        direction = (-1, 0, 0, 0, 1, 0, 0, 0, 1) if flipped else (1, 0, 0, 0, 1, 0, 0, 0, 1)
        geometry = Geometry((0.8, 0.8, 2.5), (0.0, 0.0, 0.0), direction)
        write_image(ct, geometry, images / f"case{i}_0000.nii.gz")
        write_image(liver, geometry, predictions / f"case{i}.nii.gz")
        write_image(reference, geometry, references / f"case{i}.nii.gz")
    return images, predictions, references


def test_review_page_shows_every_case_self_contained(tmp_path: Path) -> None:
    images, predictions, references = _cohort(tmp_path)
    # smoothseg_predict's report beside case0's label map gives its lowest lesion confidence; case1 has none
    (predictions / "case0_report.json").write_text('{"lesions": [{"confidence": 0.9}, {"confidence": 0.41}]}')
    page_path = write_review(images, predictions, tmp_path / "review.html", references_dir=references,
                             max_slices=6)
    text = page_path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert [row[0] for row in page.rows] == ["case0", "case1"]
    for row in page.rows:
        liver_ml, tumour_ml, tlvr, lesions = (float(v) for v in row[1:5])
        assert liver_ml == pytest.approx(12 * 30 * 22 * 1.6 / 1000, rel=1e-6)
        assert tumour_ml == pytest.approx(3 * 6 * 6 * 1.6 / 1000, rel=1e-6)
        assert tlvr == pytest.approx(tumour_ml / liver_ml, rel=1e-6) and lesions == 1
        dice_liver, dice_tumour = (float(v) for v in row[7:9])
        assert dice_liver == 1.0 and dice_tumour == pytest.approx(2 * 54 / (108 + 54))
    assert [row[6] for row in page.rows] == ["0.41", ""]  # the lowest confidence, sortable
    assert len(page.ranges) == 2 and all(r["max"] == "5" for r in page.ranges)  # 6 slices through the liver
    assert all(src.startswith("data:image/jpeg;base64,") for src in page.sources)
    assert all(link.startswith("#") for link in page.links)  # nothing outside the file
    frames = re.search(r'<script type="application/json" id="frames">(.*?)</script>', text, flags=re.DOTALL).group(1)
    assert "Content-Security-Policy" in text and "onclick" not in text and "oninput" not in text
    assert frames.count("data:image/jpeg;base64,") == 12
    first = Image.open(io.BytesIO(base64.b64decode(page.sources[0].split(",", 1)[1])))
    assert first.width > first.height  # prediction and reference side by side
    uris = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", frames)
    pixels = np.concatenate([np.asarray(Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB")).reshape(-1, 3)
                             for u in uris]).astype(int)
    green = (pixels[:, 1] > 150) & (pixels[:, 0] < 120) & (pixels[:, 2] < 120)
    red = (pixels[:, 0] > 150) & (pixels[:, 1] < 100) & (pixels[:, 2] < 100)
    assert green.any() and red.any()  # liver and tumour outlines


def test_review_cli_without_references(tmp_path: Path) -> None:
    images, predictions, _ = _cohort(tmp_path)
    result = run_cli("review", "-i", str(images), "-p", str(predictions), "-o", str(tmp_path / "r.html"),
                     home=tmp_path)
    assert result.returncode == 0, result.stderr
    page = _Page()
    page.feed((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert len(page.rows) == 2 and all(len(row) == 7 for row in page.rows)  # no Dice columns
    missing = run_cli("review", "-i", str(tmp_path / "nowhere"), "-p", str(predictions), "-o", str(tmp_path / "x.html"),
                      home=tmp_path)
    assert missing.returncode == 2 and "nowhere: input not found" in missing.stderr
    (images / "case1_0000.nii.gz").unlink()
    lacking = run_cli("review", "-i", str(images), "-p", str(predictions), "-o", str(tmp_path / "x.html"),
                      home=tmp_path)
    assert lacking.returncode == 2 and "no image for case case1" in lacking.stderr


def test_review_reads_dicom_series_folders_as_predict_does(tmp_path: Path) -> None:
    """A folder of DICOM series (one sub-folder per case, files out of slice order, as smoothseg_predict takes it)
    works as the image input; the table is that of the NIfTI copy of the same image."""
    images, predictions, _ = _cohort(tmp_path)
    ct, geometry = read_image(images / "case0_0000.nii.gz")  # axial, unflipped
    datasets = make_ct_series("case0", ct, origin=geometry.origin, pixel_spacing=geometry.spacing[:2][::-1],
                              slice_step=geometry.spacing[2])
    write_datasets(datasets, tmp_path / "dicom" / "case0", order=list(reversed(range(len(datasets)))))
    write_image(ct, geometry, tmp_path / "nifti" / "case0_0000.nii.gz")
    only = tmp_path / "pred0"
    only.mkdir()
    (only / "case0.nii.gz").write_bytes((predictions / "case0.nii.gz").read_bytes())
    rows = []
    for source in ("dicom", "nifti"):
        page = _Page()
        page.feed(write_review(tmp_path / source, only, tmp_path / f"{source}.html", max_slices=4)
                  .read_text(encoding="utf-8"))
        rows.append(page.rows)
    assert rows[0] == rows[1] and rows[0][0][0] == "case0" and float(rows[0][0][1]) > 0
