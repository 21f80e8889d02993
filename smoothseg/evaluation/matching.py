"""Which files to evaluate against which: label files by case id, case matching with every refusal collected, and the
mapping of reference labels onto the output convention (0 background, 1 liver, 2 tumour)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smoothseg.dataset.dataset_json import TaskRegions
from smoothseg.dataset.io import IMAGE_ENDINGS, image_ending, read_header
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.labels import BACKGROUND, LIVER, TUMOR

__all__ = ["DEFAULT_REGIONS", "PREDICTION_LABELS", "CasePair", "list_label_files", "match_cases", "regions_for",
           "to_task_labels"]

#: Liver region and tumour labels of a reference when no dataset is named.
DEFAULT_REGIONS = TaskRegions(liver=(LIVER, TUMOR), tumor=(TUMOR,))
#: Labels a prediction may hold: 0 background, 1 liver, 2 tumour.
PREDICTION_LABELS: tuple[int, ...] = (BACKGROUND, LIVER, TUMOR)


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate: its id and its reference and predicted label files."""

    case_id: str
    reference: Path
    prediction: Path

def list_label_files(folder: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Label files of a folder by case id (file name minus its image ending), and the problems found.

    Hidden files, sub-folders and files without an image ending (``summary.json``, CSVs, ``.npz``) are ignored.
    Two files of the same case id with different endings are a problem (the case is ambiguous).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}, [f"{folder}: folder does not exist"]
    files: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        ending = image_ending(path)
        if path.name.startswith(".") or not path.is_file() or ending is None:
            continue
        case_id = path.name[: -len(ending)]  # a label file's whole stem: label names carry no channel
        if case_id in files:
            problems.append(f"{folder}: case '{case_id}' is ambiguous: {files[case_id].name} and {path.name}")
            continue
        files[case_id] = path
    return files, problems


def _geometry_problems(pair: CasePair) -> list[str]:
    try:
        ref, pred = read_header(pair.reference), read_header(pair.prediction)
    except SmoothSegError as exc:
        return [f"[{pair.case_id}] {exc}"]
    problems = []
    for header in (ref, pred):
        if header.dimension != 3 or header.components != 1:
            problems.append(f"[{pair.case_id}] {header.path}: not a 3D single-channel label map "
                            f"({header.dimension}D, {header.components} component(s))")
    if problems:
        return problems
    differences = []
    if ref.size != pred.size:
        differences.append(f"size {ref.size} vs {pred.size}")
    differences += ref.geometry.differences(pred.geometry)
    if differences:
        problems.append(f"[{pair.case_id}] prediction {pair.prediction.name} does not match the reference grid "
                        f"(reference vs prediction): " + "; ".join(differences))
    return problems


def short_list(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def match_cases(reference_dir: str | Path, prediction_dir: str | Path) -> list[CasePair]:
    """Pair reference and prediction files by case id and check their grids; refuse on any problem.

    Raises one :class:`SmoothSegError` listing every problem: missing folders, no reference cases, missing
    predictions, extra predictions, ambiguous case ids, unreadable headers, and grid mismatches (size, spacing,
    origin, direction). Only headers are read.
    """
    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    references, problems = list_label_files(reference_dir)
    predictions, pred_problems = list_label_files(prediction_dir)
    problems += pred_problems
    if reference_dir.is_dir() and not references:
        problems.append(f"{reference_dir}: holds no label maps (endings {', '.join(IMAGE_ENDINGS)})")
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing and prediction_dir.is_dir():
        problems.append(f"{len(missing)} missing prediction(s) in {prediction_dir}: {short_list(missing)}")
    if extra and reference_dir.is_dir():
        problems.append(f"{len(extra)} extra prediction(s) without a reference in {reference_dir}: "
                        f"{short_list(extra)}")
    pairs = [CasePair(cid, references[cid], predictions[cid]) for cid in sorted(set(references) & set(predictions))]
    for pair in pairs:
        problems += _geometry_problems(pair)
    if problems:
        raise SmoothSegError(f"refusing to evaluate {prediction_dir} against {reference_dir}; "
                             f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return pairs


def to_task_labels(labels: np.ndarray, regions: TaskRegions) -> np.ndarray:
    """Map raw labels to 0/1/2: liver region -> 1, tumour -> 2 (tumour wins), everything else -> 0."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[np.isin(labels, list(regions.liver))] = LIVER
    out[np.isin(labels, list(regions.tumor))] = TUMOR
    return out


def regions_for(dataset: str | None) -> TaskRegions:
    """The named dataset's ``task_regions``, or :data:`DEFAULT_REGIONS` without a dataset."""
    if dataset is None:
        return DEFAULT_REGIONS
    return RawDataset.find(dataset).spec.task_regions
