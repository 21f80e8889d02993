"""Segmentation metrics for one case: overlap, surface distances, lesion detection, sizes in millimetres.

This module owns the *definitions* of every number the evaluation reports for a single case, and the pooling of
per-case voxel counts into global (LiTS-style) overlap metrics. It is pure NumPy/SciPy and does no I/O: reading
label maps, walking prediction folders, size strata and reports live elsewhere in :mod:`smoothseg.evaluation`.

Conventions that hold throughout
--------------------------------
* Arrays are in NumPy order ``(z, y, x)`` and ``spacing`` is in the **same** order, in mm. (Note that
  :class:`smoothseg.dataset.Geometry` stores spacing as ``(x, y, z)``; reverse it before calling in here.)
* Volumes are in millilitres: ``n_voxels * prod(spacing) / 1000``.
* A ratio whose denominator is zero is **NaN** (undefined), never 0 or 1. In particular Dice and IoU are NaN
  when reference and prediction are both empty (the nnU-Net convention). Per-case means must therefore be taken
  with ``nanmean`` and reported together with the number of cases that contributed; the pooled (global) metrics
  from :func:`pooled_overlap_metrics` need no such care, because an all-empty case simply adds zero counts.
* Surface distances are NaN when both masks are empty (no surface to measure) and ``inf`` when exactly one is
  empty (the distance from a point to the empty set is the infimum over nothing, +inf). ``inf`` is deliberate:
  a missed or hallucinated structure must not silently drop out of a ``nanmean``.
* The surface of a mask is its boundary voxels: the mask minus its binary erosion with the **face-connected**
  structuring element (6-neighbourhood in 3D); voxels on the array border count as surface (outside = background).
  This is the MONAI ``get_mask_edges`` definition.
* Lesions are connected components with **26-connectivity** in 3D (``connectivity=3``) unless stated otherwise.
* Per-case/pooled: every function here works on one case; :func:`pool_counts` / :func:`pooled_overlap_metrics`
  are the only places where cases are combined, and they pool voxel counts (not per-case ratios).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from smoothseg.masks.box import bounding_box
from smoothseg.masks.components import connected_lesions
from smoothseg.masks.measures import check_spacing, max_diameter_mm, surface_voxels, volume_ml, voxel_volume_ml

__all__ = [
    "Lesion", "LesionDetection", "OverlapCounts", "SurfaceDistances",
    "accuracy", "assd", "component_pairs", "connected_lesions", "counts_from_case", "dice", "evaluate_case", "hd95",
    "iou", "LESION_DIAMETER_BINS", "LESION_SIZE_BINS", "lesion_detection", "lesions_by_size", "match_components",
    "max_diameter_mm", "overlap_counts", "overlap_metrics", "pool_counts", "pooled_overlap_metrics", "precision",
    "sensitivity", "specificity", "surface_distances", "surface_voxels", "volume_ml",
]

#: Default minimal Dice between a reference lesion and the union of the predicted components that overlap it for
#: the lesion to count as detected (see :func:`lesion_detection`).
DEFAULT_LESION_MIN_DICE: float = 0.1


# ----------------------------------------------------------------------------------------------------------------
# Input checking and small geometric helpers
# ----------------------------------------------------------------------------------------------------------------

def _check_pair(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference and prediction must have the same shape, got {reference.shape} (reference) "
                         f"and {prediction.shape} (prediction); resample the prediction onto the reference grid")
    return reference.astype(bool, copy=False), prediction.astype(bool, copy=False)


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


# ----------------------------------------------------------------------------------------------------------------
# Overlap metrics from voxel counts
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OverlapCounts:
    """Voxel confusion counts of one binary structure in one case (or pooled over cases), plus volumes in ml.

    ``tp = |R & P|``, ``fp = |~R & P|``, ``fn = |R & ~P|``, ``tn = |~R & ~P|`` for reference R and prediction P.
    The volumes are kept in ml next to the counts because pooled cases can have different voxel sizes.
    """

    tp: int
    fp: int
    fn: int
    tn: int
    reference_volume_ml: float
    prediction_volume_ml: float


def overlap_counts(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> OverlapCounts:
    """Confusion counts of two binary masks of equal shape; volumes from ``spacing`` (mm, array axis order)."""
    reference, prediction = _check_pair(reference, prediction)
    voxel_ml = voxel_volume_ml(check_spacing(spacing, reference.ndim))
    tp = int(np.count_nonzero(reference & prediction))
    n_ref = int(np.count_nonzero(reference))
    n_pred = int(np.count_nonzero(prediction))
    fp, fn = n_pred - tp, n_ref - tp
    tn = reference.size - tp - fp - fn
    return OverlapCounts(tp, fp, fn, tn, n_ref * voxel_ml, n_pred * voxel_ml)


def dice(counts: OverlapCounts) -> float:
    """Dice = 2 TP / (2 TP + FP + FN). Both masks empty: NaN. Exactly one empty: 0."""
    return _safe_ratio(2 * counts.tp, 2 * counts.tp + counts.fp + counts.fn)


def iou(counts: OverlapCounts) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN) = Dice / (2 - Dice). Both masks empty: NaN. Exactly one empty: 0."""
    return _safe_ratio(counts.tp, counts.tp + counts.fp + counts.fn)


def sensitivity(counts: OverlapCounts) -> float:
    """Sensitivity (recall, true-positive rate) = TP / (TP + FN). Empty reference: NaN (whatever the prediction)."""
    return _safe_ratio(counts.tp, counts.tp + counts.fn)


def precision(counts: OverlapCounts) -> float:
    """Precision (positive predictive value) = TP / (TP + FP). Empty prediction: NaN (whatever the reference)."""
    return _safe_ratio(counts.tp, counts.tp + counts.fp)


def specificity(counts: OverlapCounts) -> float:
    """Specificity (true-negative rate) = TN / (TN + FP). Reference covers the whole array: NaN."""
    return _safe_ratio(counts.tn, counts.tn + counts.fp)


def accuracy(counts: OverlapCounts) -> float:
    """Voxel accuracy = (TP + TN) / (TP + FP + FN + TN). Zero-size array: NaN.

    Dominated by background in CT; reported for completeness, not for ranking.
    """
    return _safe_ratio(counts.tp + counts.tn, counts.tp + counts.fp + counts.fn + counts.tn)


def overlap_metrics(counts: OverlapCounts) -> dict[str, float | int]:
    """All overlap metrics of :class:`OverlapCounts` as a flat dict (ratios with the NaN conventions above)."""
    return {
        "dice": dice(counts), "iou": iou(counts), "sensitivity": sensitivity(counts),
        "precision": precision(counts), "specificity": specificity(counts), "accuracy": accuracy(counts),
        "tp": counts.tp, "fp": counts.fp, "fn": counts.fn, "tn": counts.tn,
        "volume_ref_ml": counts.reference_volume_ml, "volume_pred_ml": counts.prediction_volume_ml,
    }


def pool_counts(counts: Iterable[OverlapCounts]) -> OverlapCounts:
    """Sum per-case counts (voxel counts and ml volumes) into one pooled :class:`OverlapCounts`.

    Voxel counts are summed as they are (LiTS "Dice global"), so cases with more voxels weigh more.
    No cases: all-zero counts, whose ratios are NaN.
    """
    tp = fp = fn = tn = 0
    ref_ml = pred_ml = 0.0
    for c in counts:
        tp, fp, fn, tn = tp + c.tp, fp + c.fp, fn + c.fn, tn + c.tn
        ref_ml, pred_ml = ref_ml + c.reference_volume_ml, pred_ml + c.prediction_volume_ml
    return OverlapCounts(tp, fp, fn, tn, ref_ml, pred_ml)


def pooled_overlap_metrics(counts: Iterable[OverlapCounts]) -> dict[str, float | int]:
    """Global overlap metrics over cases, e.g. global Dice = sum 2 TP / sum (2 TP + FP + FN).

    This is a *pooled* statistic and differs from the mean of per-case Dice; report which one is meant.
    """
    return overlap_metrics(pool_counts(counts))


def counts_from_case(case: Mapping[str, float | int], structure: str) -> OverlapCounts:
    """Rebuild the :class:`OverlapCounts` of ``structure`` (``"liver"``/``"tumor"``) from an :func:`evaluate_case`
    dict (e.g. after a JSON round trip), for pooling."""
    try:
        return OverlapCounts(
            int(case[f"{structure}_tp"]), int(case[f"{structure}_fp"]), int(case[f"{structure}_fn"]),
            int(case[f"{structure}_tn"]), float(case[f"{structure}_volume_ref_ml"]),
            float(case[f"{structure}_volume_pred_ml"]),
        )
    except KeyError as err:
        raise ValueError(f"case result has no {err.args[0]!r}; was it made by evaluate_case?") from None


# ----------------------------------------------------------------------------------------------------------------
# Surface distances
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SurfaceDistances:
    """Symmetric surface-distance summaries in mm (see :func:`surface_distances` for definitions)."""

    hd95_mm: float
    assd_mm: float
    hd_mm: float


def _directed_distances(reference: np.ndarray, prediction: np.ndarray,
                        spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each reference surface voxel to the prediction surface, and vice versa.

    Both masks must be non-empty. Works on the joint bounding box plus one voxel: every surface voxel lies inside
    it, so the distances are identical to those on the full array.
    """
    box = bounding_box(reference | prediction, 1)
    surf_ref = surface_voxels(reference[box])
    surf_pred = surface_voxels(prediction[box])
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)
    to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=spacing)
    return to_pred[surf_ref], to_ref[surf_pred]


def surface_distances(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], *,
                      percentile: float = 95.0, hd_convention: Literal["union", "max"] = "union") -> SurfaceDistances:
    """HD95, ASSD and the Hausdorff distance between the surfaces of two binary masks, in mm.

    Let ``d(R->P)`` be, for every surface voxel of R, the Euclidean distance (voxel centres, scaled by the
    anisotropic ``spacing``) to the nearest surface voxel of P, and ``D = d(R->P) ∪ d(P->R)`` (concatenated).

    * ``hd95_mm`` with ``hd_convention="union"`` (default): ``percentile_95(D)``, NumPy's linear interpolation,
      the 95th percentile of the union of both directed sets (MedPy's ``hd95``). With ``"max"``:
      ``max(percentile_95(d(R->P)), percentile_95(d(P->R)))``, MONAI's ``HausdorffDistanceMetric`` convention.
    * ``assd_mm``: ``mean(D) = (sum d(R->P) + sum d(P->R)) / (|dR| + |dP|)``.
    * ``hd_mm``: ``max(D)``, the classical Hausdorff distance between the surfaces.

    Edge cases: both masks empty: all NaN. Exactly one empty: all ``inf``.
    """
    reference, prediction = _check_pair(reference, prediction)
    spacing = check_spacing(spacing, reference.ndim)
    has_ref, has_pred = bool(reference.any()), bool(prediction.any())
    if not has_ref and not has_pred:
        return SurfaceDistances(math.nan, math.nan, math.nan)
    if not has_ref or not has_pred:
        return SurfaceDistances(math.inf, math.inf, math.inf)
    d_ref, d_pred = _directed_distances(reference, prediction, spacing)
    union = np.concatenate([d_ref, d_pred])
    if hd_convention == "union":
        hd_p = float(np.percentile(union, percentile))
    elif hd_convention == "max":
        hd_p = max(float(np.percentile(d_ref, percentile)), float(np.percentile(d_pred, percentile)))
    else:
        raise ValueError(f"hd_convention must be 'union' or 'max', got {hd_convention!r}")
    return SurfaceDistances(hd_p, float(union.mean()), float(union.max()))


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the union of both directed surface-distance sets, in mm (see :func:`surface_distances`).

    Both empty: NaN. Exactly one empty: inf.
    """
    return surface_distances(reference, prediction, spacing).hd95_mm


def assd(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm: mean of the union of both directed surface-distance sets.

    Both empty: NaN. Exactly one empty: inf.
    """
    return surface_distances(reference, prediction, spacing).assd_mm


# ----------------------------------------------------------------------------------------------------------------
# Lesion-wise detection
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lesion:
    """One connected component of a reference or predicted tumour mask.

    ``label`` is its id in the component map (1..n). For a reference lesion ``matched`` means *detected* and
    ``dice`` is its Dice with the union of the predicted components that overlap it (0 when none does). For a
    predicted component ``matched`` means it overlaps a detected reference lesion (otherwise it is a false
    positive) and ``dice`` is its Dice with the union of the reference lesions it overlaps.
    """

    label: int
    volume_ml: float
    max_diameter_mm: float
    matched: bool
    dice: float


@dataclass(frozen=True)
class LesionDetection:
    """Lesion-wise detection result of one case (see :func:`lesion_detection`)."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    reference_lesions: tuple[Lesion, ...]
    predicted_lesions: tuple[Lesion, ...]
    #: LiTS-style: reference lesions overlapped by any prediction (IoU > 0), and those whose IoU with the union of the
    #: predicted components overlapping them exceeds 0.5; predicted components overlapping two or more reference
    #: lesions (merges), reference lesions overlapped by two or more predicted components (splits).
    found_iou0: int = 0
    found_iou50: int = 0
    merges: int = 0
    splits: int = 0


def _union_dice(sizes_a: np.ndarray, sizes_b: np.ndarray, pairs: np.ndarray, pair_counts: np.ndarray,
                axis: int) -> np.ndarray:
    """For each component i of A: Dice of A_i with the union of the B components overlapping it.

    ``pairs`` holds (a, b) label pairs (axis 0 = A, 1 = B) of overlapping components and ``pair_counts`` their
    intersection sizes. Components of B are disjoint, so the intersection with the union is the sum over pairs.
    """
    a, b = pairs[:, axis], pairs[:, 1 - axis]
    inter = np.bincount(a, weights=pair_counts, minlength=len(sizes_a))
    union_b = np.bincount(a, weights=sizes_b[b], minlength=len(sizes_a))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes_a > 0, 2.0 * inter / (sizes_a + union_b), 0.0)


def _lesion_table(labels: np.ndarray, n: int, sizes: np.ndarray, voxel_ml: float, spacing: tuple[float, ...],
                  matched: np.ndarray, dices: np.ndarray, with_diameters: bool) -> tuple[Lesion, ...]:
    boxes = ndimage.find_objects(labels, max_label=n)
    lesions = []
    for i in range(1, n + 1):
        diameter = max_diameter_mm(labels[boxes[i - 1]] == i, spacing) if with_diameters else math.nan
        lesions.append(Lesion(i, float(sizes[i]) * voxel_ml, diameter, bool(matched[i]), float(dices[i])))
    return tuple(lesions)


def component_pairs(ref_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The overlapping (reference, predicted) component label pairs ``(k, 2)`` and their shared voxel counts."""
    both = (ref_labels > 0) & (pred_labels > 0)
    pairs, pair_counts = np.unique(np.stack([ref_labels[both], pred_labels[both]], axis=1), axis=0,
                                   return_counts=True)
    return pairs.reshape(-1, 2).astype(np.int64), pair_counts.astype(np.float64)


def match_components(ref_sizes: np.ndarray, pred_sizes: np.ndarray, pairs: np.ndarray, pair_counts: np.ndarray,
                     min_dice: float = DEFAULT_LESION_MIN_DICE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matching rule of :func:`lesion_detection` on component sizes (index 0: background, size 0) and overlap
    pairs: ``(detected reference lesions, matched predicted components, each reference lesion's union Dice)``, as
    boolean / float arrays indexed by label. A predicted component of size 0 (e.g. filtered out) matches nothing."""
    keep = pred_sizes[pairs[:, 1]] > 0
    pairs, pair_counts = pairs[keep], pair_counts[keep]
    ref_dice = _union_dice(ref_sizes, pred_sizes, pairs, pair_counts, axis=0)
    overlapped = np.zeros(len(ref_sizes), dtype=bool)
    overlapped[pairs[:, 0]] = True
    detected = overlapped & (ref_dice >= min_dice)
    detected[0] = False
    pred_matched = np.zeros(len(pred_sizes), dtype=bool)
    pred_matched[pairs[detected[pairs[:, 0]], 1]] = True
    return detected, pred_matched, ref_dice


def lesion_detection(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], *,
                     min_dice: float = DEFAULT_LESION_MIN_DICE, connectivity: int = 3,
                     with_diameters: bool = True) -> LesionDetection:
    """Lesion-wise detection between binary tumour masks.

    Lesions are connected components (``connectivity`` as in :func:`connected_lesions`, default 26-connected).
    Criterion: a reference lesion r is **detected** when at least one predicted component overlaps it (>= 1 shared
    voxel) and ``Dice(r, union of the predicted components overlapping r) >= min_dice`` (default 0.1: a huge blob
    that merely touches a lesion does not detect it; ``min_dice=0`` means "any overlap").

    * ``tp`` = detected reference lesions, ``fn`` = reference lesions not detected,
    * ``fp`` = predicted components that overlap no detected reference lesion (a component that only grazes a missed
      lesion counts as a false positive too),
    * precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn).

    A predicted component that merges two reference lesions detects both (tp = 2, fp = 0); a reference lesion split
    into two predicted components is one tp. Besides, as LiTS counts detection: ``found_iou0`` (reference lesions with
    any overlap), ``found_iou50`` (IoU with the union of the overlapping predicted components > 0.5), ``merges``
    (predicted components overlapping >= 2 reference lesions) and ``splits`` (reference lesions overlapped by >= 2
    predicted components). Edge cases: no reference lesions: recall NaN, precision 0 if anything
    is predicted else NaN; no predicted components: precision NaN, recall 0 if any lesion exists; F1 is NaN only when
    there are no lesions in either mask, otherwise 0 whenever tp = 0.
    """
    reference, prediction = _check_pair(reference, prediction)
    spacing = check_spacing(spacing, reference.ndim)
    if min_dice < 0 or min_dice > 1:
        raise ValueError(f"min_dice must be in [0, 1], got {min_dice}")
    box = bounding_box(reference | prediction)  # components lie inside the joint box, so cropping is exact
    if box is not None:
        reference, prediction = reference[box], prediction[box]
    ref_labels, n_ref = connected_lesions(reference, connectivity)
    pred_labels, n_pred = connected_lesions(prediction, connectivity)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1).astype(np.float64)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1).astype(np.float64)
    ref_sizes[0] = pred_sizes[0] = 0.0  # label 0 is background, never a lesion

    pairs, pair_counts = component_pairs(ref_labels, pred_labels)
    detected, pred_matched, ref_dice = match_components(ref_sizes, pred_sizes, pairs, pair_counts, min_dice)
    pred_dice = _union_dice(pred_sizes, ref_sizes, pairs, pair_counts, axis=1)

    preds_per_ref = np.bincount(pairs[:, 0], minlength=n_ref + 1)[1:]
    refs_per_pred = np.bincount(pairs[:, 1], minlength=n_pred + 1)[1:]
    ref_iou = ref_dice[1:] / np.maximum(2.0 - ref_dice[1:], 1e-12)
    tp = int(detected.sum())
    fn = n_ref - tp
    fp = n_pred - int(pred_matched[1:].sum())
    voxel_ml = voxel_volume_ml(spacing)
    return LesionDetection(
        tp=tp, fp=fp, fn=fn,
        precision=_safe_ratio(tp, tp + fp), recall=_safe_ratio(tp, tp + fn), f1=_safe_ratio(2 * tp, 2 * tp + fp + fn),
        reference_lesions=_lesion_table(ref_labels, n_ref, ref_sizes, voxel_ml, spacing, detected, ref_dice,
                                        with_diameters),
        predicted_lesions=_lesion_table(pred_labels, n_pred, pred_sizes, voxel_ml, spacing, pred_matched, pred_dice,
                                        with_diameters),
        found_iou0=int(np.count_nonzero(preds_per_ref >= 1)), found_iou50=int(np.count_nonzero(ref_iou > 0.5)),
        merges=int(np.count_nonzero(refs_per_pred >= 2)), splits=int(np.count_nonzero(preds_per_ref >= 2)),
    )


# ----------------------------------------------------------------------------------------------------------------
# One case, flat dict
# ----------------------------------------------------------------------------------------------------------------

def _structure_metrics(prefix: str, reference: np.ndarray, prediction: np.ndarray,
                       spacing: tuple[float, ...]) -> dict[str, float | int]:
    out = {f"{prefix}_{k}": v for k, v in overlap_metrics(overlap_counts(reference, prediction, spacing)).items()}
    distances = surface_distances(reference, prediction, spacing)
    out[f"{prefix}_hd95_mm"] = distances.hd95_mm
    out[f"{prefix}_assd_mm"] = distances.assd_mm
    out[f"{prefix}_hd_mm"] = distances.hd_mm
    return out


def _largest_diameter(lesions: Sequence[Lesion]) -> float:
    return max((lesion.max_diameter_mm for lesion in lesions), default=math.nan)


#: Lesion size bins of the detection-by-size summary: (key, label, lower ml inclusive, upper ml exclusive).
LESION_SIZE_BINS = (("lt1ml", "< 1 ml", 0.0, 1.0), ("1to10ml", "1-10 ml", 1.0, 10.0),
                    ("ge10ml", ">= 10 ml", 10.0, math.inf))


#: Lesion diameter bins (largest diameter, mm) of the detection-by-diameter summary, as :data:`LESION_SIZE_BINS`.
LESION_DIAMETER_BINS = (("lt10mm", "< 10 mm", 0.0, 10.0), ("10to20mm", "10-20 mm", 10.0, 20.0),
                        ("ge20mm", ">= 20 mm", 20.0, math.inf))


def lesions_by_size(lesions: Sequence[Lesion]) -> dict[str, int]:
    """Reference lesions and detected ones per size bin: ``tumor_lesions_ref_<bin>``, ``tumor_lesions_detected_<bin>``
    for each bin of :data:`LESION_SIZE_BINS` (volume) and of :data:`LESION_DIAMETER_BINS` (largest diameter; lesions
    without a measured diameter are not counted there)."""
    out: dict[str, int] = {}
    for bins, size in ((LESION_SIZE_BINS, "volume_ml"), (LESION_DIAMETER_BINS, "max_diameter_mm")):
        for key, _, low, high in bins:
            members = [lesion for lesion in lesions if low <= getattr(lesion, size) < high]
            out[f"tumor_lesions_ref_{key}"] = len(members)
            out[f"tumor_lesions_detected_{key}"] = sum(lesion.matched for lesion in members)
    return out


def _lesion_metrics(detection: LesionDetection) -> dict[str, float | int]:
    return {
        **lesions_by_size(detection.reference_lesions),
        "tumor_lesion_tp": detection.tp, "tumor_lesion_fp": detection.fp, "tumor_lesion_fn": detection.fn,
        "tumor_lesion_precision": detection.precision, "tumor_lesion_recall": detection.recall,
        "tumor_lesion_f1": detection.f1,
        "tumor_lesions_found_iou0": detection.found_iou0, "tumor_lesions_found_iou50": detection.found_iou50,
        "tumor_lesion_merges": detection.merges, "tumor_lesion_splits": detection.splits,
        "tumor_n_lesions_ref": len(detection.reference_lesions),
        "tumor_n_lesions_pred": len(detection.predicted_lesions),
        "tumor_max_diameter_ref_mm": _largest_diameter(detection.reference_lesions),
        "tumor_max_diameter_pred_mm": _largest_diameter(detection.predicted_lesions),
    }


def evaluate_case(reference_labels: np.ndarray, predicted_labels: np.ndarray, spacing: Sequence[float], *,
                  liver_labels: Sequence[int] = (1, 2), tumor_labels: Sequence[int] = (2,),
                  lesion_min_dice: float = DEFAULT_LESION_MIN_DICE,
                  lesion_connectivity: int = 3) -> dict[str, float | int]:
    """Liver and tumour metrics of one case as a flat, JSON-able dict (NaN and inf allowed, counts as int).

    ``reference_labels`` and ``predicted_labels`` are integer label maps of equal shape in (z, y, x) order,
    ``spacing`` is (z, y, x) in mm. The liver region is ``isin(labels, liver_labels)`` (liver includes tumour by
    default), the tumour region ``isin(labels, tumor_labels)``. For each of ``liver`` and ``tumor`` the keys are
    ``<s>_{dice, iou, sensitivity, precision, specificity, accuracy, tp, fp, fn, tn, volume_ref_ml, volume_pred_ml,
    hd95_mm, assd_mm, hd_mm}``; the tumour also gets lesion-wise keys ``tumor_lesion_{tp, fp, fn, precision, recall,
    f1}``, ``tumor_n_lesions_{ref, pred}`` and ``tumor_max_diameter_{ref, pred}_mm`` (the largest per-lesion
    diameter, NaN without lesions). All metrics follow the per-case conventions in the module docstring.

    Raises ``ValueError`` when the shapes differ or the spacing does not fit.
    """
    reference_labels = np.asarray(reference_labels)
    predicted_labels = np.asarray(predicted_labels)
    if reference_labels.shape != predicted_labels.shape:
        raise ValueError(f"reference and predicted label maps differ in shape: {reference_labels.shape} vs "
                         f"{predicted_labels.shape}; resample the prediction onto the reference grid first")
    spacing = check_spacing(spacing, reference_labels.ndim)
    result: dict[str, float | int] = {}
    for prefix, labels in (("liver", liver_labels), ("tumor", tumor_labels)):
        ref = np.isin(reference_labels, list(labels))
        pred = np.isin(predicted_labels, list(labels))
        result.update(_structure_metrics(prefix, ref, pred, spacing))
        if prefix == "tumor":
            detection = lesion_detection(ref, pred, spacing, min_dice=lesion_min_dice, connectivity=lesion_connectivity)
            result.update(_lesion_metrics(detection))
    return result
