"""Convert MSD Task03_Liver (or the LiTS challenge files it came from) to a smoothseg raw dataset.

Accepted inputs:

* **MSD**: ``Task03_Liver/{imagesTr/liver_N.nii.gz, labelsTr/liver_N.nii.gz, imagesTs/liver_N.nii.gz,
  dataset.json}`` (labels 0 background, 1 liver, 2 cancer). macOS ``._*`` companions in the archive are ignored.
* **LiTS**: ``volume-N.nii`` + ``segmentation-N.nii`` (``.nii.gz`` too) in one folder or several (the two training
  batches), and ``test-volume-N.nii`` for the test set. ``volume-N`` becomes case ``liver_N`` (MSD's name for the
  same scan) and ``test-volume-N`` becomes test case ``liver_test_N``.

Output: ``<raw root>/Dataset003_MSDLiver/{imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, imagesTs/,
dataset.json, conversion_report.json, conversion.log}`` with labels background 0, liver 1, tumor 2. There is no
clinical table, so the ``clinical`` key is absent and the TLVR term is off.

Geometry is kept exactly: the image is written with the geometry it was read with, and the label with the image's
geometry. A label whose geometry differs from the image's within :data:`GEOMETRY_TOLERANCE` (float noise of
NIfTI headers) gets the image's geometry copied; one that differs more, or has another size, skips the case.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset_conversion.report import (
    CaseOutcome,
    ConversionError,
    ConversionReport,
    collect_log,
    prepare_output_folder,
)
from smoothseg.dataset.cases import image_path, label_path, parse_image_name
from smoothseg.dataset.dataset_json import DatasetSpec, TaskRegions
from smoothseg.dataset.io import Geometry, read_image, write_image
from smoothseg.dataset.verify import Tolerance
from smoothseg.errors import SmoothSegError
from smoothseg.paths import dataset_folder_name, raw_root

logger = logging.getLogger("smoothseg.conversion.msd_liver")

DATASET_ID = 3
DATASET_NAME = "MSDLiver"
FILE_ENDING = ".nii.gz"
LABELS: dict[str, int] = {"background": 0, "liver": 1, "tumor": 2}
#: How far label geometry may differ from the image's and still be fixed by copying (verify's tolerance).
GEOMETRY_TOLERANCE = Tolerance()
DESCRIPTION = ("Liver and liver-tumour CT (Medical Segmentation Decathlon Task03_Liver / LiTS); converted by "
               "smoothseg")
REFERENCE = "http://medicaldecathlon.com/"

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$", re.IGNORECASE)
_LITS = re.compile(r"^(?P<kind>test-volume|volume|segmentation)-(?P<n>\d+)\.nii(\.gz)?$", re.IGNORECASE)
_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class SourceCase:
    """One case found in the input: its id, split (``Tr``/``Ts``), image and label files."""

    case_id: str
    split: str
    image: Path
    label: Path | None = None


def _nifti_files(folder: Path) -> dict[str, Path]:
    out = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = _NIFTI.match(p.name)
            if m and p.is_file() and not p.name.startswith("."):
                out[m.group("stem")] = p
    return out


def _strip_channel(stem: str) -> str:
    """``<case>_0000`` (an nnU-Net channel suffix) -> ``<case>``; other stems unchanged."""
    parsed = parse_image_name(f"{stem}.nii.gz")
    return parsed.case_id if parsed is not None and parsed.channel == 0 else stem


def find_msd_cases(root: Path) -> tuple[list[SourceCase], list[tuple[str, Path, str]]]:
    """Cases of an MSD task folder, and (case, file, reason) for files that cannot form a case."""
    images = {_strip_channel(k): v for k, v in _nifti_files(root / "imagesTr").items()}
    labels = _nifti_files(root / "labelsTr")
    cases = [SourceCase(cid, "Tr", img, labels.get(cid)) for cid, img in sorted(images.items())]
    problems = [(cid, p, "label without an image in imagesTr") for cid, p in sorted(labels.items())
                if cid not in images]
    cases += [SourceCase(_strip_channel(cid), "Ts", img) for cid, img in
              sorted(_nifti_files(root / "imagesTs").items())]
    return cases, problems


def find_lits_cases(root: Path) -> tuple[list[SourceCase], list[tuple[str, Path, str]]]:
    """Cases of LiTS-named files anywhere under ``root``; duplicates are reported, not guessed between."""
    found: dict[tuple[str, int], list[Path]] = {}
    for p in sorted(root.rglob("*")):
        m = _LITS.match(p.name)
        if m and p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            found.setdefault((m.group("kind").lower(), int(m.group("n"))), []).append(p)
    problems: list[tuple[str, Path, str]] = []

    def one(kind: str, n: int) -> Path | None:
        paths = found.get((kind, n), [])
        for dup in paths[1:]:
            problems.append((f"{dup.name} (duplicate)", dup, f"another {kind}-{n} is converted: {paths[0]}"))
        return paths[0] if paths else None

    cases = []
    for n in sorted({n for kind, n in found if kind == "volume"}):
        cases.append(SourceCase(f"liver_{n}", "Tr", one("volume", n), one("segmentation", n)))
    for n in sorted({n for kind, n in found if kind == "segmentation"} - {n for kind, n in found if kind == "volume"}):
        problems.append((f"liver_{n}", found[("segmentation", n)][0], f"segmentation-{n} without volume-{n}"))
    for n in sorted({n for kind, n in found if kind == "test-volume"}):
        cases.append(SourceCase(f"liver_test_{n}", "Ts", one("test-volume", n)))
    return cases, problems


def find_cases(root: str | Path) -> tuple[str, list[SourceCase], list[tuple[str, Path, str]]]:
    """Layout (``"MSD"`` or ``"LiTS"``), cases and unusable files of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise SmoothSegError(f"{root}: input folder does not exist")
    if (root / "imagesTr").is_dir():
        layout, (cases, problems) = "MSD", find_msd_cases(root)
    else:
        layout, (cases, problems) = "LiTS", find_lits_cases(root)
    if not cases:
        raise SmoothSegError(f"{root}: no MSD (imagesTr/liver_N.nii.gz) or LiTS (volume-N.nii, segmentation-N.nii) "
                             "files found")
    return layout, cases, problems


def _image_array(array: np.ndarray) -> np.ndarray:
    """Float images holding whole numbers within int16 are stored as int16 (lossless, 4x smaller)."""
    if np.issubdtype(array.dtype, np.floating) and array.size:
        lo, hi = float(array.min()), float(array.max())
        if lo >= _INT16.min and hi <= _INT16.max and np.array_equal(array, np.round(array)):
            return array.astype(np.int16)
    return array


def _label_array(label: np.ndarray, path: Path) -> np.ndarray:
    values = np.unique(label)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise ConversionError(f"{path}: label map holds non-integer values")
    unknown = sorted(set(values.astype(np.int64).tolist()) - set(LABELS.values()))
    if unknown:
        raise ConversionError(f"{path}: label values {unknown} are not background 0, liver 1 or tumour 2")
    return label.astype(np.uint8)


def _label_geometry(image_geometry: Geometry, label_geometry: Geometry, path: Path, outcome: CaseOutcome) -> None:
    tol = GEOMETRY_TOLERANCE
    beyond = image_geometry.differences(label_geometry, spacing_tol=tol.spacing, origin_tol_mm=tol.origin_mm,
                                        direction_tol=tol.direction)
    if beyond:
        raise ConversionError(f"{path}: label geometry differs from the image's beyond tolerance: {'; '.join(beyond)}")
    noise = image_geometry.differences(label_geometry, spacing_tol=0.0, origin_tol_mm=0.0, direction_tol=0.0)
    if noise:
        outcome.warn(f"label geometry differed from the image's within tolerance ({'; '.join(noise)}); "
                     "image geometry copied onto the label")


def convert_case(case: SourceCase, folder: Path, outcome: CaseOutcome) -> None:
    """Write one case in nnU-Net v2 layout under ``folder``; raises on any problem."""
    if case.split == "Tr" and case.label is None:
        raise ConversionError(f"{case.image}: no label file for this training image")
    image, geometry = read_image(case.image)
    out_image = image_path(folder, case.split, case.case_id, FILE_ENDING)
    label_out = None
    if case.label is not None:
        label, label_geometry = read_image(case.label)
        if label.shape != image.shape:
            raise ConversionError(f"{case.label}: label size {label.shape[::-1]} differs from the image's "
                                  f"{image.shape[::-1]} ({case.image.name})")
        _label_geometry(geometry, label_geometry, case.label, outcome)
        label_out = _label_array(label, case.label)
        counts = {name: int(np.count_nonzero(label_out == v)) for name, v in LABELS.items() if v}
        outcome.details["voxels"] = counts
    out_label = label_path(folder, case.split, case.case_id, FILE_ENDING)
    try:
        write_image(_image_array(image), geometry, out_image)
        if label_out is not None:
            write_image(label_out, geometry, out_label)
    except BaseException:
        for p in (out_image, out_label):
            p.unlink(missing_ok=True)
        raise
    outcome.details.update({"split": case.split, "image": str(case.image),
                            "label": str(case.label) if case.label else None,
                            "shape_zyx": list(image.shape), "geometry": geometry.to_dict()})


def dataset_spec(num_training: int) -> DatasetSpec:
    """The dataset.json of the converted task: no ``clinical`` key (no clinical data, TLVR off)."""
    return DatasetSpec(channel_names={"0": "CT"}, labels=dict(LABELS), num_training=num_training,
                       file_ending=FILE_ENDING, task_regions=TaskRegions((1, 2), (2,)), name=DATASET_NAME,
                       extra={"description": DESCRIPTION, "reference": REFERENCE})


@dataclass
class ConversionResult:
    folder: Path
    report: ConversionReport


def convert_msd_liver(input_dir: str | Path, *, dataset_id: int = DATASET_ID, name: str = DATASET_NAME,
                      output_root: str | Path | None = None, overwrite: bool = False,
                      progress: bool = True) -> ConversionResult:
    """Convert MSD Task03_Liver or LiTS files to ``<output_root>/DatasetXXX_<name>`` and report every case.

    ``output_root`` defaults to the raw root. A case's own problem (unreadable file, label that does not fit its
    image, unknown label values) skips that case; raises :class:`SmoothSegError` when no training case converts.
    """
    input_dir = Path(input_dir)
    layout, cases, problems = find_cases(input_dir)
    folder = Path(output_root if output_root is not None else raw_root()) / dataset_folder_name(dataset_id, name)
    prepare_output_folder(folder, overwrite)
    report = ConversionReport(folder, input_dir)
    report.facts["layout"] = layout
    with collect_log() as log_lines:
        logger.info("converting %s (%s layout, %d case(s)) into %s", input_dir, layout, len(cases), folder)
        for case_id, path, why in problems:
            report.skip(case_id, path, why)
        for case in tqdm(cases, desc="convert", unit="case", disable=not progress):
            with report.case(case.case_id, case.image) as outcome:
                convert_case(case, folder, outcome)
        n_training = sum(1 for c in report.converted if c.details.get("split") == "Tr")
        if not n_training:
            report.save(log_lines)
            raise SmoothSegError(f"no training case could be converted; reasons in {folder / 'conversion_report.json'}"
                                 "\n" + report.summary())
        dataset_spec(n_training).save(folder / "dataset.json")
        logger.info("%d case(s) converted, %d skipped", len(report.converted), len(report.skipped))
    report.save(log_lines)
    return ConversionResult(folder, report)
