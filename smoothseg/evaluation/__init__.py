"""Evaluation: per-case metrics (:mod:`.metrics`), case matching (:mod:`.matching`), folder evaluation
(:mod:`.evaluate`), size strata (:mod:`.strata`), the replication protocol (:mod:`.replication`) and overlay pictures
(:mod:`.overlay`, :mod:`.overlay_files`)."""

from smoothseg.evaluation.evaluate import evaluate, evaluate_folders
from smoothseg.evaluation.matching import match_cases, to_task_labels
from smoothseg.evaluation.metrics import (
    Lesion,
    LesionDetection,
    OverlapCounts,
    SurfaceDistances,
    evaluate_case,
    lesion_detection,
    overlap_counts,
    overlap_metrics,
    pool_counts,
    pooled_overlap_metrics,
    surface_distances,
)
from smoothseg.evaluation.overlay import draw_overlay, save_overlay, select_slices
from smoothseg.evaluation.overlay_files import plot_overlay_files
from smoothseg.evaluation.replication import summarize_replications, write_replication_summary
from smoothseg.evaluation.strata import STRATA, assign_strata, load_clinical_sizes, per_case_aggregate
from smoothseg.masks.measures import max_diameter_mm, volume_ml

__all__ = [
    "Lesion", "LesionDetection", "OverlapCounts", "SurfaceDistances", "evaluate_case", "lesion_detection",
    "max_diameter_mm", "overlap_counts", "overlap_metrics", "pool_counts", "pooled_overlap_metrics",
    "surface_distances", "volume_ml",
    "STRATA", "assign_strata", "draw_overlay", "evaluate", "evaluate_folders", "load_clinical_sizes", "match_cases",
    "per_case_aggregate", "plot_overlay_files", "save_overlay", "select_slices", "summarize_replications",
    "to_task_labels", "write_replication_summary",
]
