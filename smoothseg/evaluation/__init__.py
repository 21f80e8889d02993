"""Evaluation: per-case metrics (:mod:`.metrics`), folder evaluation, size strata and the tumour report."""

from smoothseg.evaluation.metrics import (
    Lesion,
    LesionDetection,
    OverlapCounts,
    SurfaceDistances,
    evaluate_case,
    lesion_detection,
    max_diameter_mm,
    overlap_counts,
    overlap_metrics,
    pool_counts,
    pooled_overlap_metrics,
    surface_distances,
    volume_ml,
)

__all__ = [
    "Lesion", "LesionDetection", "OverlapCounts", "SurfaceDistances", "evaluate_case", "lesion_detection",
    "max_diameter_mm", "overlap_counts", "overlap_metrics", "pool_counts", "pooled_overlap_metrics",
    "surface_distances", "volume_ml",
]
