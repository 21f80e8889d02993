"""Detection-aware scoring of tumour operating points: the per-case candidate rows behind the FROC table, and its plot.

:func:`candidate_rows` scores one validation case at every candidate operating point of
:mod:`smoothseg.inference.operating_point` (a probability threshold or argmax, and a minimum lesion volume) with the
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

from smoothseg.atomic import atomic_write
from smoothseg.evaluation.metrics import LESION_SIZE_BINS, lesion_detection
from smoothseg.inference.lesion_filter import CANDIDATES_ML, remove_small_lesions
from smoothseg.inference.operating_point import THRESHOLDS, candidate_key, threshold_value, tumour_mask
from smoothseg.labels import LIVER, TUMOR
from smoothseg.masks.box import bounding_box
from smoothseg.masks.measures import binary_dice

__all__ = ["candidate_rows", "plot_froc"]


def candidate_rows(labels: np.ndarray, probability: np.ndarray | None, reference_tumour: np.ndarray,
                   spacing_zyx: Sequence[float], thresholds: Sequence[str | float] = THRESHOLDS,
                   volumes_ml: Sequence[float] = CANDIDATES_ML) -> dict[str, dict[str, Any]]:
    """The counts of one case at every candidate ``(threshold, min volume)`` (see the module docstring).

    ``labels`` is the cascade's label map before post-processing (0/1/2), ``probability`` its tumour probability map
    on the same grid (only argmax is scored without one), ``reference_tumour`` the reference tumour mask.
    """
    labels = np.asarray(labels)
    reference_tumour = np.asarray(reference_tumour, dtype=bool)
    if probability is None:
        thresholds = [t for t in thresholds if threshold_value(t) is None]
    box = bounding_box((labels > 0) | reference_tumour)  # every candidate's tumour lies inside the liver
    if box is not None:
        labels, reference_tumour = labels[box], reference_tumour[box]
        probability = None if probability is None else np.asarray(probability)[box]
    rows: dict[str, dict[str, Any]] = {}
    for threshold in thresholds:
        tumour = tumour_mask(labels, probability, threshold_value(threshold))
        at_threshold = np.where(tumour, TUMOR, np.minimum(labels, LIVER)).astype(np.uint8)
        for ml in volumes_ml:
            kept, _ = remove_small_lesions(at_threshold, spacing_zyx, ml)
            predicted = kept == TUMOR
            detection = lesion_detection(reference_tumour, predicted, spacing_zyx, with_diameters=False)
            row: dict[str, Any] = {"tp": detection.tp, "fp": detection.fp, "fn": detection.fn,
                                   "n_ref": len(detection.reference_lesions),
                                   "n_pred": len(detection.predicted_lesions),
                                   "dice": binary_dice(predicted, reference_tumour)}
            for key, _, low, high in LESION_SIZE_BINS:
                members = [lesion for lesion in detection.reference_lesions if low <= lesion.volume_ml < high]
                row[f"ref_{key}"] = len(members)
                row[f"det_{key}"] = sum(lesion.matched for lesion in members)
            rows[candidate_key(threshold_value(threshold), ml)] = row
    return rows


def plot_froc(table: Sequence[dict[str, Any]], path: Path, title: str = "FROC of the fold validation") -> Path:
    """Lesion sensitivity against false-positive lesions per case, one line per minimum lesion volume over the
    thresholds (argmax as a separate marker), the chosen operating point circled; written atomically as PNG."""
    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for ml in sorted({row["min_lesion_volume_ml"] for row in table}):
        rows = [r for r in table if r["min_lesion_volume_ml"] == ml and r["threshold"] != "argmax"]
        rows.sort(key=lambda r: r["threshold"])
        line, = ax.plot([r["fp_per_case"] for r in rows], [r["sensitivity"] for r in rows], marker=".",
                        label=f">= {ml:g} ml")
        for r in table:
            if r["min_lesion_volume_ml"] == ml and r["threshold"] == "argmax":
                ax.plot([r["fp_per_case"]], [r["sensitivity"]], marker="s", color=line.get_color(), linestyle="none")
    for r in table:
        if r.get("chosen"):
            label = f"chosen: {r['threshold']}, >= {r['min_lesion_volume_ml']:g} ml"
            ax.plot([r["fp_per_case"]], [r["sensitivity"]], marker="o", markersize=14, markerfacecolor="none",
                    color="black", linestyle="none", label=label)
    ax.set_xlabel("false-positive lesions per case")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}\n(squares: argmax; lines: P(tumour) >= 0.2 ... 0.9)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    return Path(path)
