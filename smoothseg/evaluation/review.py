"""A review page for a cohort's predictions: one self-contained HTML file a radiologist opens from a USB stick.

``smoothseg_review -i IMAGES -p PREDICTIONS [-r REFERENCES] -o review.html`` writes:

* a case table (sortable by clicking a column): liver and tumour volume (ml), TLVR, lesion count, largest lesion
  diameter (mm), the lowest lesion confidence (from the ``<case>_report.json`` that ``smoothseg_predict`` wrote
  beside the label map: sort by it to read the doubtful lesions first), and the liver and tumour Dice when
  references are given;
* per case, an axial slice scroller (a slider) over the slices that hold liver, with the liver (green) and tumour
  (red) outlines drawn on the windowed CT; the prediction and, when given, the reference side by side; and one
  coronal view through the liver.

Everything is inside the file (JPEG slices as base64 data, a few lines of JavaScript; no server, no network).
Slices are shown in the radiological convention: the arrays are brought to the canonical orientation
(:class:`~smoothseg.dataset.orientation.Orientation`, patient left on the viewer's right, anterior up), at most
``max_slices`` per case and ``max_size`` pixels a side, so a 100-case cohort stays in the tens of MB.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from smoothseg.atomic import write_text
from smoothseg.dataset.dataset_json import TaskRegions
from smoothseg.dataset.io import Geometry, read_image
from smoothseg.dataset.orientation import Orientation
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.matching import list_label_files, regions_for, to_task_labels
from smoothseg.inference.inputs import find_input_cases
from smoothseg.inference.report import case_report
from smoothseg.labels import LIVER, TUMOR
from smoothseg.logging_setup import progress_bar
from smoothseg.masks.measures import binary_dice

__all__ = ["ReviewCase", "write_review"]

logger = logging.getLogger(__name__)

WINDOW = (-150.0, 250.0)
LIVER_RGB, TUMOUR_RGB = (60, 220, 60), (235, 40, 40)


@dataclass(frozen=True)
class ReviewCase:
    """One row of the table and its pictures."""

    case_id: str
    report: dict
    dice: dict[str, float | None]
    axial: list[str]  # data URIs, one per shown slice
    coronal: str
    slices: list[int]
    lowest_confidence: float | None = None  # of the lesions in smoothseg_predict's report, when there is one


def _to_uint8(ct: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip((ct - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _outlines(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    for value, colour in ((LIVER, LIVER_RGB), (TUMOR, TUMOUR_RGB)):
        mask = labels >= value if value == LIVER else labels == value
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        rgb[edge] = colour
    return rgb


def _panel(ct: np.ndarray, labels: np.ndarray, aspect: float, max_size: int) -> Image.Image:
    """One picture: CT in grey, outlines on top, scaled to ``max_size`` with the pixel aspect ratio kept."""
    grey = _to_uint8(ct)
    rgb = _outlines(np.stack([grey] * 3, axis=-1), labels)
    height, width = rgb.shape[:2]
    scale = max_size / max(height * aspect, width)
    size = (max(1, round(width * scale)), max(1, round(height * aspect * scale)))
    return Image.fromarray(rgb).resize(size, Image.NEAREST)


def _side_by_side(panels: Sequence[Image.Image]) -> Image.Image:
    gap = 6
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), (0, 0, 0))
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + gap
    return out


def _data_uri(image: Image.Image, quality: int) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def review_case(case_id: str, image: np.ndarray, geometry: Geometry, prediction: np.ndarray,
                reference: np.ndarray | None, *, max_slices: int = 16, max_size: int = 192,
                quality: int = 60) -> ReviewCase:
    """The table row and pictures of one case (``prediction`` and ``reference`` as 0/1/2 label maps)."""
    report = case_report(case_id, image, prediction, geometry)
    dice = {}
    if reference is not None:
        dice = {"liver": binary_dice(prediction > 0, reference > 0),
                "tumor": binary_dice(prediction == TUMOR, reference == TUMOR)}
    orient = Orientation.from_direction(geometry.direction)
    ct, pred = orient.to_canonical(image), orient.to_canonical(prediction)
    ref = orient.to_canonical(reference) if reference is not None else None
    spacing_zyx = orient.canonical_tuple(geometry.spacing_zyx)
    region = (pred > 0) | (ref > 0 if ref is not None else False)
    z_hits = np.flatnonzero(region.any(axis=(1, 2)))
    z_range = np.arange(ct.shape[0]) if z_hits.size == 0 else np.arange(z_hits[0], z_hits[-1] + 1)
    shown = sorted({int(z) for z in np.linspace(z_range[0], z_range[-1], min(max_slices, len(z_range))).round()})
    axial = []
    for z in shown[::-1]:  # superior first
        panels = [_panel(ct[z], pred[z], spacing_zyx[1] / spacing_zyx[2], max_size)]
        if ref is not None:
            panels.append(_panel(ct[z], ref[z], spacing_zyx[1] / spacing_zyx[2], max_size))
        axial.append(_data_uri(_side_by_side(panels), quality))
    y = int(np.flatnonzero(region.any(axis=(0, 2))).mean()) if region.any() else ct.shape[1] // 2
    coronal_panels = [_panel(ct[::-1, y], pred[::-1, y], spacing_zyx[0] / spacing_zyx[2], max_size)]
    if ref is not None:
        coronal_panels.append(_panel(ct[::-1, y], ref[::-1, y], spacing_zyx[0] / spacing_zyx[2], max_size))
    return ReviewCase(case_id, report, dice, axial, _data_uri(_side_by_side(coronal_panels), quality), shown[::-1])


def _fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


_SCRIPT = """
const FRAMES = JSON.parse(document.getElementById('frames').textContent);
function sortTable(col) {
  const table = document.getElementById('cases'), body = table.tBodies[0];
  const rows = Array.from(body.rows), asc = table.dataset.col != col || table.dataset.dir != 'asc';
  rows.sort((a, b) => {
    const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
    const c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
  table.dataset.col = col; table.dataset.dir = asc ? 'asc' : 'desc';
}
function show(index, k) {
  const frames = FRAMES[index];
  document.getElementById('img-' + index).src = frames[k];
  document.getElementById('pos-' + index).textContent = (Number(k) + 1) + ' / ' + frames.length;
}
document.querySelectorAll('#cases th').forEach(th => th.addEventListener('click', () => sortTable(th.dataset.col)));
document.querySelectorAll('input.slices').forEach(
  input => input.addEventListener('input', () => show(input.dataset.case, input.value)));
"""


def _json_for_html(value) -> str:
    """JSON that cannot close the ``<script>`` element it is embedded in (``<``, ``>`` and ``&`` escaped)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp(script: str, style: str) -> str:
    """A Content-Security-Policy that allows this page's own script and style (by hash) and data-URI images, and
    nothing else: no other script, no inline event handler, no network."""
    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"
    return (f"default-src 'none'; script-src {digest(script)}; style-src {digest(style)}; img-src data:; "
            "base-uri 'none'; form-action 'none'")


_STYLE = """
body { font-family: sans-serif; background: #111; color: #ddd; margin: 1.5em; }
table { border-collapse: collapse; } th, td { padding: 4px 10px; border-bottom: 1px solid #333; text-align: right; }
th { cursor: pointer; background: #222; } td:first-child, th:first-child { text-align: left; }
a { color: #8cf; } .case { margin: 2em 0; padding-top: 1em; border-top: 2px solid #333; }
.views { display: flex; gap: 1.5em; align-items: flex-start; } .key { font-size: 90%; color: #aaa; }
.liver { color: rgb(60, 220, 60); } .tumor { color: rgb(235, 40, 40); }
"""


def render_page(cases: Sequence[ReviewCase], title: str, with_reference: bool) -> str:
    """The HTML page (see the module docstring).

    No value from a case (ids come from file and folder names, i.e. patient identifiers) enters JavaScript source or
    an event handler: elements are addressed by the case's position, handlers are attached by the page's own script,
    the slices travel as JSON in a ``<script type="application/json">`` element, and a Content-Security-Policy allows
    only the page's own script and style (by hash) and data-URI images."""
    columns = ["case", "liver (ml)", "tumour (ml)", "TLVR", "lesions", "largest lesion (mm)", "lowest confidence"]
    if with_reference:
        columns += ["Dice liver", "Dice tumour"]
    head = "".join(f'<th data-col="{i}">{html.escape(c)}</th>' for i, c in enumerate(columns))
    rows = []
    for index, case in enumerate(cases):
        r = case.report
        largest = r["lesions"][0]["max_diameter_mm"] if r["lesions"] else None
        values = [(case.case_id, f'<a href="#case-{index}">{html.escape(case.case_id)}</a>'),
                  (r["liver_volume_ml"], _fmt(r["liver_volume_ml"])),
                  (r["tumour_volume_ml"], _fmt(r["tumour_volume_ml"])),
                  (r["tlvr"], _fmt(r["tlvr"], 3)), (r["lesion_count"], str(r["lesion_count"])),
                  (largest, _fmt(largest)), (case.lowest_confidence, _fmt(case.lowest_confidence, 2))]
        if with_reference:
            values += [(case.dice.get(k), _fmt(case.dice.get(k), 3)) for k in ("liver", "tumor")]
        cells = "".join(f'<td data-v="{html.escape("" if v is None else str(v))}">{text}</td>' for v, text in values)
        rows.append(f"<tr>{cells}</tr>")
    frames = [case.axial for case in cases]
    sections = []
    side = " (left: prediction, right: reference)" if with_reference else ""
    for index, case in enumerate(cases):
        name = html.escape(case.case_id)
        n = len(case.axial)
        sections.append(
            f'<div class="case" id="case-{index}"><h2>{name}</h2>'
            f'<p class="key">axial{side}; <span class="liver">liver</span>, <span class="tumor">tumour</span> '
            f'outlines; slide from superior (left end) to inferior</p><div class="views"><div>'
            f'<img id="img-{index}" src="{case.axial[n // 2]}" alt="axial slices of {name}"><br>'
            f'<input class="slices" type="range" min="0" max="{n - 1}" value="{n // 2}" data-case="{index}"> '
            f'<span id="pos-{index}">{n // 2 + 1} / {n}</span></div>'
            f'<div><img src="{case.coronal}" alt="coronal view of {name}"><br><span class="key">coronal, through the '
            f'liver</span></div></div></div>')
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_csp(_SCRIPT, _STYLE)}">'
            f"<title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(cases)} case(s). Click a column to sort; click a case to see it.</p>"
            f'<table id="cases"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f"{''.join(sections)}"
            f'<script type="application/json" id="frames">{_json_for_html(frames)}</script>'
            f"<script>{_SCRIPT}</script></body></html>\n")


def _lowest_confidence(report: Path) -> float | None:
    """The lowest lesion ``confidence`` in a ``smoothseg_predict`` report (None without report or confidences)."""
    try:
        lesions = json.loads(report.read_text()).get("lesions", []) if report.is_file() else []
        values = [float(lesion["confidence"]) for lesion in lesions if lesion.get("confidence") is not None]
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None
    return min(values) if values else None


def _labels_by_case(folder: Path) -> dict[str, Path]:
    files, problems = list_label_files(folder)
    if problems:
        raise SmoothSegError("\n".join(problems))
    return files


def write_review(images_dir: str | Path, predictions_dir: str | Path, output: str | Path, *,
                 references_dir: str | Path | None = None, dataset: str | None = None, title: str | None = None,
                 max_slices: int = 16, max_size: int = 192) -> Path:
    """Write the review page of every prediction in ``predictions_dir`` (see the module docstring).

    Images are found in ``images_dir`` exactly as ``smoothseg_predict`` finds its inputs
    (:func:`~smoothseg.inference.inputs.find_input_cases`: ``<case>_0000<ending>``, ``<case><ending>`` or a DICOM
    series sub-folder named by the case); references (optional) are mapped to 0/1/2 with ``dataset``'s
    ``task_regions`` (default liver {1, 2}, tumour {2}).
    """
    predictions = _labels_by_case(Path(predictions_dir))
    if not predictions:
        raise SmoothSegError(f"{predictions_dir}: no predicted label maps")
    inputs = {case.case_id: case.path for case in find_input_cases(images_dir)}  # what smoothseg_predict reads
    references = _labels_by_case(Path(references_dir)) if references_dir is not None else {}
    regions: TaskRegions = regions_for(dataset)
    cases = []
    for case_id, path in progress_bar(sorted(predictions.items()), desc="review", unit="case"):
        image_path = inputs.get(case_id)
        if image_path is None:
            raise SmoothSegError(f"{images_dir}: no image for case {case_id}")
        image, geometry = read_image(image_path)
        prediction, _ = read_image(path)
        reference = None
        if references_dir is not None:
            if case_id not in references:
                raise SmoothSegError(f"{references_dir}: no reference for case {case_id}")
            reference = to_task_labels(read_image(references[case_id])[0], regions)
        case = review_case(case_id, image, geometry, prediction, reference, max_slices=max_slices, max_size=max_size)
        cases.append(replace(case, lowest_confidence=_lowest_confidence(path.parent / f"{case_id}_report.json")))
    page = render_page(cases, title or f"smoothseg review: {Path(predictions_dir).name}", references_dir is not None)
    write_text(page, output)
    logger.info("review page with %d case(s): %s (%.1f MB)", len(cases), output, len(page) / 1e6)
    return Path(output)
