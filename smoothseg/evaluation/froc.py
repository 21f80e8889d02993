"""Detection-aware scoring of tumour operating points: the per-case candidate rows behind the FROC table, and its plot.

:func:`candidate_rows` scores one validation case at every candidate operating point of
:mod:`smoothseg.inference.operating_point` (a voxel threshold or argmax, a lesion confidence and a minimum lesion
volume) with the
evaluation's own lesion matching (:func:`~smoothseg.evaluation.metrics.lesion_detection`, the same criterion as
``metrics.json``): per candidate ``tp``, ``fp``, ``fn``, ``n_ref``, ``n_pred``, the tumour ``dice`` (None when both
masks are empty), and ``ref_<bin>``/``det_<bin>`` reference and detected lesions per size bin of
:data:`~smoothseg.evaluation.metrics.LESION_SIZE_BINS`. :func:`plot_froc` draws the pooled table: lesion sensitivity
against false-positive lesions per case, one curve per minimum lesion volume, the chosen point marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from smoothseg.atomic import atomic_write
from smoothseg.evaluation.metrics import LESION_SIZE_BINS, component_pairs, match_components
from smoothseg.inference.lesion_filter import CANDIDATES_ML, min_lesion_voxels
from smoothseg.inference.operating_point import CONFIDENCES, THRESHOLDS, candidate_key, threshold_value, tumour_mask
from smoothseg.masks.box import bounding_box
from smoothseg.masks.components import connected_lesions
from smoothseg.masks.measures import voxel_volume_ml

__all__ = ["candidate_rows", "plot_froc"]


def candidate_rows(labels: np.ndarray, probability: np.ndarray | None, reference_tumour: np.ndarray,
                   spacing_zyx: Sequence[float], thresholds: Sequence[str | float] = THRESHOLDS,
                   confidences: Sequence[float] = CONFIDENCES,
                   volumes_ml: Sequence[float] = CANDIDATES_ML) -> dict[str, dict[str, Any]]:
    """The counts of one case at every candidate operating point ``(threshold, confidence, min volume)`` (see the
    module docstring).

    ``labels`` is the cascade's label map before post-processing (0/1/2), ``probability`` its tumour probability map
    on the same grid (without one only argmax with every lesion is scored), ``reference_tumour`` the reference
    tumour mask. The tumour components of each threshold are labelled once; each (confidence, volume) then keeps
    those with a high enough peak probability and size, and its counts are those of
    :func:`~smoothseg.evaluation.metrics.lesion_detection` on the kept mask (the same matching rule, from the
    component overlaps).
    """
    labels = np.asarray(labels)
    reference_tumour = np.asarray(reference_tumour, dtype=bool)
    if probability is None:
        thresholds, confidences = [t for t in thresholds if threshold_value(t) is None], [0.0]
    box = bounding_box((labels > 0) | reference_tumour)  # every candidate's tumour lies inside the liver
    if box is not None:
        labels, reference_tumour = labels[box], reference_tumour[box]
        probability = None if probability is None else np.asarray(probability, dtype=np.float32)[box]
    voxel_ml = voxel_volume_ml(spacing_zyx)
    ref_labels, n_ref = connected_lesions(reference_tumour)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1).astype(np.float64)
    ref_sizes[0] = 0.0
    ref_bins = [(key, (ref_sizes[1:] * voxel_ml >= low) & (ref_sizes[1:] * voxel_ml < high))
                for key, _, low, high in LESION_SIZE_BINS]
    n_reference_voxels = float(ref_sizes.sum())
    rows: dict[str, dict[str, Any]] = {}
    for threshold in thresholds:
        # components once per threshold; each (confidence, volume) keeps whole components, so the detection counts
        # follow from the component overlaps by the evaluation's own matching rule (match_components)
        components, n = connected_lesions(tumour_mask(labels, probability, threshold_value(threshold)))
        sizes = np.bincount(components.ravel(), minlength=n + 1).astype(np.float64)
        sizes[0] = 0.0
        peaks = np.ones(n + 1)
        if probability is not None and n:
            peaks[1:] = ndimage.maximum(probability, components, np.arange(1, n + 1))
        pairs, pair_counts = component_pairs(ref_labels, components)
        overlap = np.bincount(pairs[:, 1], weights=pair_counts, minlength=n + 1)  # tumour voxels per component
        for confidence in confidences:
            for ml in volumes_ml:
                keep = (peaks >= confidence) & (sizes >= min_lesion_voxels(ml, spacing_zyx)) & (sizes > 0)
                kept_sizes = np.where(keep, sizes, 0.0)
                detected, matched, _ = match_components(ref_sizes, kept_sizes, pairs, pair_counts)
                tp, n_pred = int(detected.sum()), int(keep.sum())
                predicted_voxels = float(kept_sizes.sum())
                total = n_reference_voxels + predicted_voxels
                row: dict[str, Any] = {"tp": tp, "fp": n_pred - int(matched.sum()), "fn": n_ref - tp,
                                       "n_ref": n_ref, "n_pred": n_pred,
                                       "dice": None if total == 0 else 2.0 * float(overlap[keep].sum()) / total}
                for key, members in ref_bins:
                    row[f"ref_{key}"] = int(members.sum())
                    row[f"det_{key}"] = int((detected[1:] & members).sum())
                rows[candidate_key(threshold_value(threshold), confidence, ml)] = row
    return rows


def plot_froc(table: Sequence[dict[str, Any]], path: Path, title: str = "FROC of the fold validation") -> Path:
    """The FROC curves: lesion sensitivity against false-positive lesions per case as the lesion confidence sweeps
    0 ... 0.95, one curve per voxel threshold, at the chosen minimum volume (and, dashed, without one); the chosen
    operating point circled. Written atomically as PNG."""
    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    chosen = next((r for r in table if r.get("chosen")), None)
    volumes = sorted({0.0, chosen["min_lesion_volume_ml"]} if chosen else {0.0})
    thresholds = list(dict.fromkeys(r["threshold"] for r in table))
    for threshold in thresholds:
        color = None
        for ml in volumes:
            rows = sorted((r for r in table if r["threshold"] == threshold and r["min_lesion_volume_ml"] == ml),
                          key=lambda r: r["min_lesion_confidence"])
            if not rows:
                continue
            label = f"voxels: {threshold}, >= {ml:g} ml" if ml == volumes[-1] else None  # dashed: no minimum
            line, = ax.plot([r["fp_per_case"] for r in rows], [r["sensitivity"] for r in rows], marker=".",
                            color=color, linestyle="-" if ml == volumes[-1] else "--", label=label)
            color = line.get_color()
    if chosen is not None:
        label = (f"chosen: {chosen['threshold']}, confidence >= {chosen['min_lesion_confidence']:g}, "
                 f">= {chosen['min_lesion_volume_ml']:g} ml")
        ax.plot([chosen["fp_per_case"]], [chosen["sensitivity"]], marker="o", markersize=14, markerfacecolor="none",
                color="black", linestyle="none", label=label)
    ax.set_xlabel("false-positive lesions per case")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}\n(each curve: lesion confidence 0 ... 0.95, right to left)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    return Path(path)
