"""What a prediction run reads: the cases of an input folder (or one file), and the part of a cohort this run takes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smoothseg.dataset.cases import parse_image_name
from smoothseg.dataset.io import IMAGE_ENDINGS
from smoothseg.errors import SmoothSegError

__all__ = ["InputCase", "find_input_cases", "normalise_ending", "select_part"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputCase:
    """One image to predict: its case id, its file and that file's ending."""

    case_id: str
    path: Path
    ending: str


def find_input_cases(input_path: str | Path) -> list[InputCase]:
    """The cases in a folder (or one image file), sorted by case id.

    ``<case>_0000<ending>`` files (nnU-Net naming) give case ``<case>``; any other image file gives the case named
    by its file name without the ending. Other files are ignored. Several files for one case id, or channels other
    than ``_0000`` (the models read one CT channel), are errors.
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise SmoothSegError(f"{input_path}: input not found")
    files = [input_path] if input_path.is_file() else sorted(input_path.iterdir())
    by_id: dict[str, list[Path]] = {}
    cases: dict[str, InputCase] = {}
    for path in files:
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
                             f"an ending among {', '.join(IMAGE_ENDINGS)})")
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
    if ending.lower() not in IMAGE_ENDINGS:
        raise SmoothSegError(f"--output-format {ending} is not supported; use one of {', '.join(IMAGE_ENDINGS)}")
    return ending.lower()
