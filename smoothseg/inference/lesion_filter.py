"""The minimum lesion volume: tiny predicted tumour components are dropped, with the threshold chosen on validation.

An undertrained or uncertain tumour model leaves specks of a few voxels (0.05-2 ml) in the liver; on a tumour-free
liver one speck turns a perfect case into a Dice of 0. As nnU-Net chooses its post-processing on the
cross-validation, smoothseg chooses the threshold on the fold's validation cases, predicted by the whole cascade on
the predicted liver (:func:`smoothseg.workflows.validation.validate_fold`):

1. for each candidate volume in ``CANDIDATES_ML`` (0 = keep everything), tumour components (26-connected, as the
   evaluation counts lesions) below it become liver;
2. the per-case tumour Dice is computed against the reference (``None`` when both are empty);
3. the candidate with the highest mean per-case Dice wins; ties go to the smaller volume, so nothing is removed
   unless it helped on validation. For this choice a case with neither reference nor predicted tumour counts 1 (the
   LiTS convention), so that every candidate is scored on the same cases: a speck removed from a tumour-free liver
   takes that case from 0 to 1. (The evaluation leaves such cases out instead, as nnU-Net does.)

The per-case table and the choice are written to ``postprocessing.json`` in the tumour model's fold folder. With
several folds, the tables of all their folders are pooled and the choice is made again. ``smoothseg_predict
--min-lesion-ml`` overrides it (0 switches it off).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.atomic import write_json
from smoothseg.labels import LIVER, TUMOR
from smoothseg.masks.components import connected_lesions

__all__ = ["CANDIDATES_ML", "POSTPROCESSING_NAME", "candidate_dice", "min_lesion_voxels", "choose_min_lesion_volume",
           "min_lesion_volume_from_folders", "read_fold_choices", "remove_small_lesions", "write_postprocessing"]

logger = logging.getLogger(__name__)

CANDIDATES_ML = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
POSTPROCESSING_NAME = "postprocessing.json"


def min_lesion_voxels(min_volume_ml: float, spacing_zyx) -> int:
    """The fewest voxels a lesion of at least ``min_volume_ml`` has on this grid (0 for no minimum)."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    return int(math.ceil(min_volume_ml / voxel_ml - 1e-9)) if min_volume_ml > 0 else 0


def _tumour_components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected tumour components of a label map and their sizes in voxels (index 0: not tumour)."""
    components, n = connected_lesions(labels == TUMOR)
    return components, np.bincount(components.ravel(), minlength=n + 1)


def remove_small_lesions(labels: np.ndarray, spacing_zyx, min_volume_ml: float) -> tuple[np.ndarray, int]:
    """Label map (0/1/2) with every tumour component under ``min_volume_ml`` turned into liver; and how many."""
    min_voxels = min_lesion_voxels(min_volume_ml, spacing_zyx)
    if min_voxels <= 1 or not (labels == TUMOR).any():
        return labels, 0
    components, sizes = _tumour_components(labels)
    small = sizes < min_voxels
    small[0] = False
    if not small.any():
        return labels, 0
    out = labels.copy()
    out[small[components]] = LIVER
    return out, int(np.count_nonzero(small))


def candidate_dice(prediction: np.ndarray, reference_tumour: np.ndarray, spacing_zyx,
                   candidates: Iterable[float] = CANDIDATES_ML) -> dict[str, float | None]:
    """Tumour Dice of ``prediction`` after each candidate's filtering (``None``: both empty), keyed by ``str(ml)``.

    The components are labelled once; each candidate then keeps those of at least its size, so its Dice comes from
    per-component voxel and overlap counts (the same as filtering with :func:`remove_small_lesions` first).
    """
    reference_tumour = np.asarray(reference_tumour, dtype=bool)
    n_ref = int(np.count_nonzero(reference_tumour))
    components, sizes = _tumour_components(prediction)
    overlap = np.bincount(components[reference_tumour], minlength=sizes.size)
    out: dict[str, float | None] = {}
    for ml in candidates:
        kept = sizes >= min_lesion_voxels(ml, spacing_zyx)
        kept[0] = False
        n_pred, tp = int(sizes[kept].sum()), int(overlap[kept].sum())
        out[_key(ml)] = None if n_ref + n_pred == 0 else 2.0 * tp / (n_ref + n_pred)
    return out


def choose_min_lesion_volume(per_case: Mapping[str, Mapping[str, float | None]]) -> tuple[float, dict[str, float]]:
    """The candidate volume (ml) with the best mean per-case Dice (ties: the smaller), and every candidate's mean.

    A case without reference or predicted tumour (``None``) counts 1; a candidate missing from a row is not scored.
    """
    means: dict[str, float] = {}
    keys = sorted({k for row in per_case.values() for k in row}, key=float)
    for key in keys:
        if all(key in row for row in per_case.values()):
            means[key] = float(np.mean([1.0 if row[key] is None else row[key] for row in per_case.values()]))
    if not means:
        return 0.0, means
    best = max(means.values())
    return min(float(k) for k, v in means.items() if v >= best - 1e-9), means


def write_postprocessing(fold_folder: Path, per_case: Mapping[str, Mapping[str, float | None]],
                         source: str, extra: Mapping[str, Any] | None = None,
                         operating_point: Mapping[str, Any] | None = None) -> float:
    """Write ``postprocessing.json`` into ``fold_folder``: the mean Dice of each candidate volume on ``per_case`` and
    the ``extra`` sections; returns the chosen volume. With an ``operating_point`` section
    (:mod:`smoothseg.inference.operating_point`) its threshold, confidence and volume are the choice; without one the
    volume with the best mean Dice is, at argmax with every lesion (smoothseg's choice before the operating point)."""
    dice_choice, means = choose_min_lesion_volume(per_case)
    chosen = float(operating_point["min_lesion_volume_ml"]) if operating_point else dice_choice
    threshold = operating_point["tumor_threshold"] if operating_point else "argmax"
    confidence = float(operating_point["min_lesion_confidence"]) if operating_point else 0.0
    write_json({"min_lesion_volume_ml": chosen, "tumor_threshold": threshold, "min_lesion_confidence": confidence,
                "candidates_ml": list(CANDIDATES_ML),
                "mean_tumor_dice": means, "n_cases": len(per_case), "source": source, "per_case": dict(per_case),
                **({"operating_point": dict(operating_point)} if operating_point else {}), **(extra or {})},
               Path(fold_folder) / POSTPROCESSING_NAME)
    logger.info("tumour operating point %s, lesion confidence >= %g, minimum lesion volume %.2f ml, chosen on %d "
                "validation case(s); mean tumour Dice by minimum volume at it: %s", threshold, confidence, chosen,
                len(per_case),
                ", ".join(f"{k} ml {v:.4f}" for k, v in means.items()))
    return chosen


def read_fold_choices(fold_folders: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    """``(fold folder name, parsed postprocessing.json)`` of every given tumour fold folder that has a readable one
    (an unreadable one is skipped with a warning). The pooled choices below read their sections from here."""
    found = []
    for folder in fold_folders:
        path = Path(folder) / POSTPROCESSING_NAME
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("%s is unreadable (%s); ignoring it", path, exc)
            continue
        if isinstance(data, dict):
            found.append((Path(folder).name, data))
    return found


def min_lesion_volume_from_folders(fold_folders: Iterable[Path]) -> tuple[float, str]:
    """The pooled Dice choice over the ``per_case`` tables of the given tumour fold folders' ``postprocessing.json``
    (the choice before the operating point); (0, why) if none."""
    per_case: dict[str, Mapping[str, float | None]] = {}
    used = []
    for fold, data in read_fold_choices(fold_folders):
        try:
            rows = {f"{fold}/{case}": dict(row) for case, row in data["per_case"].items()}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            logger.warning("%s/%s lacks a usable per-case table (%s); ignoring it", fold, POSTPROCESSING_NAME, exc)
            continue
        per_case.update(rows)
        used.append(fold)
    if not per_case:
        return 0.0, "no postprocessing.json (no full validation yet): no lesion is removed"
    chosen, _ = choose_min_lesion_volume(per_case)
    return chosen, f"chosen on {len(per_case)} validation case(s) of {', '.join(used)}"


def _key(ml: float) -> str:
    return f"{float(ml):g}"
