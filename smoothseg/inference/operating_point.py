"""The tumour operating point, chosen on the fold validation for detection: which voxels may be tumour (a probability
threshold), which lesions are kept (their confidence) and how small a lesion may be (a minimum volume).

Argmax over the tumour stage's classes and a fixed minimum lesion volume chosen for mean per-case Dice delete the
small lesions on purpose: one false-positive speck costs a tumour-free case its whole Dice, while a missed 0.5 ml
lesion barely moves a mean Dice. The fold validation (:func:`smoothseg.workflows.validation.validate_fold`) therefore
keeps the tumour probabilities and scores every candidate triple

* voxel threshold: ``argmax`` (the network's own decision) or P(tumour) >= t inside the predicted liver, t in
  :data:`THRESHOLDS` (below the argmax's ~0.5, so that a doubtful small lesion can appear);
* lesion confidence: each lesion (26-connected tumour component) is kept only if its highest P(tumour) reaches c in
  :data:`CONFIDENCES` (0: all). This removes doubtful lesions whole, without shrinking the kept ones, the way a
  detector's score threshold does (a higher voxel threshold would shave every lesion's border too);
* minimum lesion volume: :data:`~smoothseg.inference.lesion_filter.CANDIDATES_ML` (smaller lesions become liver),

by lesion-level counts per case (``tp`` reference lesions detected, ``fp`` predicted components that detect none,
``fn``, ``n_pred``, ``n_ref``, reference and detected lesions per size bin, and the tumour Dice; computed by
:func:`smoothseg.evaluation.froc.candidate_rows`). Pooled over the validation cases these give a FROC table
(sensitivity against false-positive lesions per case). The chosen triple maximises the ``objective``:

* ``f1`` (default): pooled lesion F1 = 2 tp / (2 tp + fp + fn), ties broken by the mean per-case Dice;
* ``dice``: the mean per-case tumour Dice (a case with neither reference nor predicted tumour counts 1, as in
  :mod:`smoothseg.inference.lesion_filter`), ties broken by F1;

subject to at most ``max_fp_per_tumour_free`` (default 0.5) false-positive lesions per tumour-free validation liver
where the validation has tumour-free cases (when no candidate meets it, the ones with the fewest such false
positives compete). Remaining ties go to the smaller volume, the lower confidence and then to the earlier threshold
in :data:`THRESHOLDS` (argmax first), so nothing changes unless it helped on validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from smoothseg.errors import SmoothSegError
from smoothseg.inference.lesion_filter import min_lesion_volume_from_folders, read_fold_choices
from smoothseg.labels import TUMOR
from smoothseg.masks.components import connected_lesions

__all__ = ["ARGMAX", "CONFIDENCES", "FORMAT", "MAX_FP_PER_TUMOUR_FREE", "OBJECTIVES", "THRESHOLDS", "OperatingPoint",
           "candidate_key", "choose_operating_point", "froc_table", "objective_of", "operating_point_from_folders",
           "parse_key", "pooled_choice", "remove_doubtful_lesions", "threshold_value", "tumour_at", "tumour_mask"]

ARGMAX = "argmax"
THRESHOLDS: tuple[str | float, ...] = (ARGMAX, 0.2, 0.3, 0.4)
CONFIDENCES: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
OBJECTIVES = ("f1", "dice")
MAX_FP_PER_TUMOUR_FREE = 0.5
#: Version of the candidate keys in ``postprocessing.json``'s ``operating_point`` section.
FORMAT = 2


@dataclass(frozen=True)
class OperatingPoint:
    """Voxel threshold (None: argmax), minimum lesion confidence (0: all) and minimum lesion volume (ml)."""

    threshold: float | None = None
    confidence: float = 0.0
    min_volume_ml: float = 0.0

    @property
    def key(self) -> str:
        return candidate_key(self.threshold, self.confidence, self.min_volume_ml)


def candidate_key(threshold: str | float | None, confidence: float, min_volume_ml: float) -> str:
    """``"<threshold>|<confidence>|<ml>"``, e.g. ``"argmax|0|0"`` or ``"0.3|0.8|0.25"`` (None: argmax)."""
    t = ARGMAX if threshold is None or threshold == ARGMAX else f"{float(threshold):g}"
    return f"{t}|{float(confidence):g}|{float(min_volume_ml):g}"


def parse_key(key: str) -> OperatingPoint:
    """The :class:`OperatingPoint` of a :func:`candidate_key`."""
    t, confidence, ml = key.split("|")
    return OperatingPoint(None if t == ARGMAX else float(t), float(confidence), float(ml))


def _order(key: str) -> tuple[float, float, float]:
    """Candidate order: argmax first, then ascending thresholds; then ascending confidence and volume."""
    point = parse_key(key)
    return (-1.0 if point.threshold is None else point.threshold), point.confidence, point.min_volume_ml


def tumour_mask(labels: np.ndarray, probability: np.ndarray | None, threshold: float | None) -> np.ndarray:
    """The tumour of a cascade label map at an operating point: ``labels == TUMOR`` for argmax (None), else
    P(tumour) >= ``threshold`` inside the label map's liver region."""
    if threshold is None:
        return labels == TUMOR
    if probability is None:
        raise SmoothSegError("a tumour probability threshold needs the tumour probability map")
    return (np.asarray(probability) >= threshold) & (labels > 0)


def remove_doubtful_lesions(tumour: np.ndarray, probability: np.ndarray | None, min_confidence: float,
                            ) -> tuple[np.ndarray, int]:
    """``tumour`` without its lesions (26-connected components) whose highest P(tumour) is below
    ``min_confidence``; and how many were removed (0 and the mask itself when ``min_confidence`` is 0)."""
    if min_confidence <= 0 or not tumour.any():
        return tumour, 0
    if probability is None:
        raise SmoothSegError("a minimum lesion confidence needs the tumour probability map")
    components, n = connected_lesions(tumour)
    peak = np.asarray(ndimage.maximum(probability, components, index=np.arange(1, n + 1)), dtype=float)
    doubtful = np.concatenate([[False], peak < min_confidence])
    return (tumour & ~doubtful[components]) if doubtful.any() else tumour, int(doubtful.sum())


def tumour_at(labels: np.ndarray, probability: np.ndarray | None, point: OperatingPoint) -> np.ndarray:
    """The tumour of a cascade label map at ``point``'s voxel threshold and lesion confidence (its minimum volume is
    applied after the active contours, by :func:`~smoothseg.inference.lesion_filter.remove_small_lesions`)."""
    tumour, _ = remove_doubtful_lesions(tumour_mask(labels, probability, point.threshold), probability,
                                        point.confidence)
    return tumour


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def summarise(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]], key: str) -> dict[str, Any]:
    """One FROC row: candidate ``key``'s counts pooled over the cases."""
    rows = [case[key] for case in per_case.values()]
    tp, fp, fn = (sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn"))
    free = [r for r in rows if int(r["n_ref"]) == 0]
    point = parse_key(key)
    out = {
        "key": key, "threshold": ARGMAX if point.threshold is None else point.threshold,
        "min_lesion_confidence": point.confidence, "min_lesion_volume_ml": point.min_volume_ml,
        "sensitivity": _ratio(tp, tp + fn), "precision": _ratio(tp, tp + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "fp_per_case": _ratio(fp, len(rows)),
        "fp_per_tumour_free": _ratio(sum(int(r["n_pred"]) for r in free), len(free)),
        "mean_dice": float(np.mean([1.0 if r["dice"] is None else float(r["dice"]) for r in rows])) if rows else
        math.nan,
        "tp": tp, "fp": fp, "fn": fn, "n_cases": len(rows), "n_tumour_free": len(free),
    }
    bins = sorted({k[4:] for r in rows for k in r if k.startswith("ref_")})  # the per-case rows' size bins
    for bin_key in bins:
        n_ref = sum(int(r.get(f"ref_{bin_key}", 0)) for r in rows)
        out[f"sensitivity_{bin_key}"] = _ratio(sum(int(r.get(f"det_{bin_key}", 0)) for r in rows), n_ref)
    return out


def froc_table(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """A row (:func:`summarise`) per candidate scored in every case, in candidate order (threshold, then volume)."""
    if not per_case:
        return []
    keys = set.intersection(*(set(case) for case in per_case.values()))
    return [summarise(per_case, key) for key in sorted(keys, key=_order)]


def _nan_low(value: float) -> float:
    return -math.inf if value is None or math.isnan(value) else float(value)


def choose_operating_point(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]], objective: str = "f1",
                           max_fp_per_tumour_free: float = MAX_FP_PER_TUMOUR_FREE,
                           ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The chosen FROC row (None without candidates) and the whole table, each row marked ``chosen`` and
    ``feasible`` (see the module docstring)."""
    objective = objective_of(objective)
    table = froc_table(per_case)
    if not table:
        return None, table
    for row in table:
        row["feasible"] = row["n_tumour_free"] == 0 or row["fp_per_tumour_free"] <= max_fp_per_tumour_free + 1e-9
    pool = [r for r in table if r["feasible"]]
    if not pool:
        fewest = min(r["fp_per_tumour_free"] for r in table)
        pool = [r for r in table if r["fp_per_tumour_free"] <= fewest + 1e-9]
    first, second = ("f1", "mean_dice") if objective == "f1" else ("mean_dice", "f1")
    best = max(pool, key=lambda r: (round(_nan_low(r[first]), 9), round(_nan_low(r[second]), 9),
                                    -r["min_lesion_volume_ml"], -r["min_lesion_confidence"],
                                    tuple(-v for v in _order(r["key"]))))
    for row in table:
        row["chosen"] = row is best
    return best, table


def objective_of(value: str | None) -> str:
    """A validated objective name (None: ``f1``)."""
    value = value or "f1"
    if value not in OBJECTIVES:
        raise SmoothSegError(f"post-processing objective: choose {', '.join(OBJECTIVES)}, got {value!r}")
    return value


def threshold_value(value: str | float | None) -> float | None:
    """A threshold as stored or given (``argmax``/None -> None, else a float in (0, 1))."""
    if value is None or value == ARGMAX:
        return None
    t = float(value)
    if not (0.0 < t < 1.0):
        raise SmoothSegError(f"a tumour probability threshold lies strictly between 0 and 1, got {value}")
    return t


def pooled_best(tables: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any] | None:
    """The candidate row (its FROC figures on the pooled cases, plus ``objective`` and ``folds``) chosen again on the
    pooled per-case tables of several folds' ``operating_point`` sections (``(fold, section)`` pairs); None when
    none has one."""
    per_case: dict[str, Mapping[str, Any]] = {}
    objectives, limits, used = set(), set(), []
    for fold, section in tables:
        per_case.update({f"{fold}/{case}": rows for case, rows in section["per_case"].items()})
        objectives.add(section.get("objective", "f1"))
        limits.add(float(section.get("max_fp_per_tumour_free", MAX_FP_PER_TUMOUR_FREE)))
        used.append(fold)
    if not per_case:
        return None
    objective = sorted(objectives)[0] if len(objectives) == 1 else "f1"
    best, _ = choose_operating_point(per_case, objective, min(limits))
    return None if best is None else {**best, "objective": objective, "folds": used}


def pooled_choice(tables: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[OperatingPoint, str] | None:
    """The operating point chosen again on the pooled per-case tables of several folds (:func:`pooled_best`)."""
    best = pooled_best(tables)
    if best is None:
        return None
    return parse_key(best["key"]), (f"chosen for {best['objective']} on {best['n_cases']} validation case(s) of "
                                    f"{', '.join(best['folds'])} (lesion F1 {best['f1']:.3f}, sensitivity "
                                    f"{best['sensitivity']:.3f}, {best['fp_per_tumour_free']:.2f} FP per tumour-free "
                                    "liver)")


def validation_sections(fold_folders: Iterable[Path]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(fold, operating_point section)`` of every tumour fold folder whose validation has one of this format."""
    return [(fold, data["operating_point"]) for fold, data in read_fold_choices([Path(f) for f in fold_folders])
            if isinstance(data.get("operating_point"), dict) and data["operating_point"].get("per_case")
            and data["operating_point"].get("format") == FORMAT]


def operating_point_from_folders(fold_folders: Iterable[Path]) -> tuple[OperatingPoint, str]:
    """``(operating point, why)`` for the given tumour fold folders: chosen again on their pooled
    ``operating_point`` tables when every fold validation has one of this smoothseg's format; otherwise (validations
    of an older smoothseg) argmax, every lesion, and the pooled Dice choice of the minimum volume."""
    fold_folders = [Path(f) for f in fold_folders]
    folds = read_fold_choices(fold_folders)
    sections = validation_sections(fold_folders)
    if folds and len(sections) == len(folds):
        pooled = pooled_choice(sections)
        if pooled is not None:
            return pooled
    ml, why = min_lesion_volume_from_folders(fold_folders)
    return OperatingPoint(None, 0.0, ml), f"argmax; minimum volume {why}"
