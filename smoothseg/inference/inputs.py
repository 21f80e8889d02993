"""What a prediction run reads: the cases of an input folder (or one file), and the part of a cohort this run takes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smoothseg.dataset.cases import parse_image_name
from smoothseg.dataset.io import IMAGE_ENDINGS, is_dicom_folder
from smoothseg.errors import SmoothSegError
from smoothseg.inference.writers import DICOM_SEG, OUTPUT_ENDINGS

__all__ = ["InputCase", "check_output_format", "find_input_cases", "normalise_ending", "select_part"]

logger = logging.getLogger(__name__)

#: The default output ending of a DICOM series input.
DICOM_DEFAULT_ENDING = ".nii.gz"


@dataclass(frozen=True)
class InputCase:
    """One image to predict: its case id, its file (or DICOM series folder) and the ending of its outputs by default
    (the file's own; ``.nii.gz`` for a DICOM series)."""

    case_id: str
    path: Path
    ending: str
    allow_non_ct: bool = False  # read a DICOM series whose Modality is not CT (smoothseg_predict --allow-non-ct)
    resample_irregular: bool = False  # resample a DICOM series with gaps or shear (--resample-irregular)

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()


def find_input_cases(input_path: str | Path) -> list[InputCase]:
    """The cases in a folder (or one image file, or one DICOM series folder), sorted by case id.

    ``<case>_0000<ending>`` files (nnU-Net naming) give case ``<case>``; any other image file gives the case named
    by its file name without the ending; a sub-folder holding a DICOM CT series gives the case named by the folder
    (a folder with several series is refused when it is read, naming them). Other files are ignored. Several inputs
    for one case id, or channels other than ``_0000`` (the models read one CT channel), are errors.
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise SmoothSegError(f"{input_path}: input not found")
    if is_dicom_folder(input_path):
        return [InputCase(input_path.name, input_path, DICOM_DEFAULT_ENDING)]
    files = [input_path] if input_path.is_file() else sorted(input_path.iterdir())
    by_id: dict[str, list[Path]] = {}
    cases: dict[str, InputCase] = {}
    for path in files:
        if path.is_dir() and not path.name.startswith(".") and is_dicom_folder(path):
            by_id.setdefault(path.name, []).append(path)
            cases[path.name] = InputCase(path.name, path, DICOM_DEFAULT_ENDING)
            continue
        parsed = parse_image_name(path.name) if path.is_file() else None
        if parsed is None:
            if input_path.is_file():
                raise SmoothSegError(f"{path}: not an image file; use one of {', '.join(IMAGE_ENDINGS)}")
            logger.debug("ignoring %s (not an image file)", path)
            continue
        if parsed.channel not in (None, 0):
            raise SmoothSegError(f"{path}: channel {parsed.channel:04d} found, but the models read one CT channel "
                                 f"(<case>_0000{parsed.ending} only)")
        by_id.setdefault(parsed.case_id, []).append(path)
        cases[parsed.case_id] = InputCase(parsed.case_id, path, parsed.ending)
    duplicates = {cid: paths for cid, paths in by_id.items() if len(paths) > 1}
    if duplicates:
        listing = "; ".join(f"{cid}: {', '.join(p.name for p in paths)}" for cid, paths in sorted(duplicates.items()))
        raise SmoothSegError(f"{input_path}: several images for one case id ({listing})")
    if not cases:
        raise SmoothSegError(f"{input_path}: no images found (expected <case>_0000<ending> or <case><ending> with "
                             f"an ending among {', '.join(IMAGE_ENDINGS)}, or sub-folders of DICOM series)")
    return [cases[cid] for cid in sorted(cases)]


def select_part(cases: Sequence[InputCase], num_parts: int = 1, part_id: int = 0) -> list[InputCase]:
    """Every ``num_parts``-th case (sorted by id) starting at ``part_id``: the parts partition the cohort."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise SmoothSegError(f"--part-id must lie in [0, --num-parts), got part {part_id} of {num_parts}")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]


def normalise_ending(ending: str | None) -> str | None:
    """``--output-format``: ``nii.gz`` or ``.nii.gz`` -> ``.nii.gz``; None stays None (the input's ending)."""
    if ending is None:
        return None
    ending = ending if ending.startswith(".") else f".{ending}"
    if ending.lower() not in OUTPUT_ENDINGS:
        raise SmoothSegError(f"--output-format {ending} is not supported; use one of {', '.join(OUTPUT_ENDINGS)}")
    return ending.lower()


def check_output_format(cases: Sequence[InputCase], ending: str | None) -> None:
    """A DICOM SEG output needs DICOM inputs: refuse the others before anything is computed (see
    :mod:`smoothseg.inference.writers`)."""
    if ending == DICOM_SEG:
        not_dicom = [c.path.name for c in cases if not c.is_dicom]
        if not_dicom:
            raise SmoothSegError(f"--output-format dcm writes DICOM SEG objects that reference their source DICOM "
                                 f"series; {len(not_dicom)} input(s) are not DICOM series ({', '.join(not_dicom[:5])}"
                                 f"). Use a NIfTI/NRRD output (e.g. .seg.nrrd for 3D Slicer) for those")
