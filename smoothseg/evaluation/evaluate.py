"""Evaluate a folder of predicted label maps against a folder of reference label maps.

This module owns the folder-level evaluation behind ``smoothseg_evaluate``: matching cases by file name, refusing
mismatched inputs, running :func:`~smoothseg.evaluation.metrics.evaluate_case` per case (in parallel), aggregating
(per-case means and pooled global metrics, lesion detection, the paper's size strata) and writing the outputs:

* ``<stem>.json`` (e.g. ``summary.json``): the summary dict returned by :func:`evaluate_folders`;
* ``<stem>_cases.csv``: one row per case, every metric of ``evaluate_case`` plus the strata columns;
* ``<stem>.md``: the paper-style table and the other aggregates, as markdown;
* ``overlays/`` (with ``png=True``): pictures of the best and the worst case.

**Labels.** Predictions use the output convention 0 background, 1 liver, 2 tumour. References may hold raw dataset
labels; they are mapped to 0/1/2 first: liver region -> 1, tumour -> 2. The regions come from ``dataset.json``'s
``task_regions`` when a dataset is named, and default to liver region {1, 2}, tumour {2} otherwise (so without a
dataset the HCC-TACE-Seg portal vein, label 3, counts as background; pass the dataset to count it as liver).

**Refusals.** Before anything is computed, both folders are listed and every label header is read; missing
predictions, extra predictions, ambiguous case ids, unreadable headers and grids that differ in size, spacing,
origin or direction (beyond :meth:`Geometry.differences`'s tolerances) are all collected and raised as one
:class:`SmoothSegError`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smoothseg.atomic import ensure_writable_folder, json_safe, write_json, write_text
from smoothseg.dataset.dataset_json import TaskRegions
from smoothseg.dataset.io import read_image
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.matching import (
    PREDICTION_LABELS,
    CasePair,
    match_cases,
    regions_for,
    short_list,
    to_task_labels,
)
from smoothseg.evaluation.metrics import (
    DEFAULT_LESION_MIN_DICE,
    LESION_DIAMETER_BINS,
    LESION_SIZE_BINS,
    counts_from_case,
    evaluate_case,
    pooled_overlap_metrics,
)
from smoothseg.evaluation.overlay_files import image_folders, write_overlays
from smoothseg.evaluation.strata import (
    DIAMETER_COLUMN,
    DIAMETER_SOURCE_COLUMN,
    DIAMETER_STRATUM_COLUMN,
    DIAMETER_THRESHOLD_CM,
    NO_STRATUM,
    PAPER_METRICS,
    STRATA,
    VOLUME_STRATUM_COLUMN,
    VOLUME_THRESHOLD_ML,
    assign_strata,
    format_mean_std,
    load_clinical_sizes,
    paper_table_markdown,
    per_case_aggregate,
    stratum_case_ids,
)
from smoothseg.parallel import map_cases

logger = logging.getLogger(__name__)

__all__ = ["SUMMARY_SCHEMA", "OutputPaths", "evaluate", "evaluate_folders", "lesion_detection_summary", "output_paths",
           "summary_markdown", "tumour_burden"]

SUMMARY_SCHEMA = "smoothseg-evaluation-summary/1"
STRUCTURES = ("liver", "tumor")
_RATIO_METRICS = ("dice", "iou", "sensitivity", "precision", "specificity", "accuracy")
_VOXEL_COUNTS = ("tp", "fp", "fn", "tn")

AGGREGATION_NOTES: dict[str, str] = {
    "metrics": "per-case aggregates: mean_per_case / std_per_case (population std, ddof=0) / median / min / max over "
               "the cases whose value is finite; n_nan cases were undefined (e.g. Dice with reference and prediction "
               "both empty) and n_inf cases infinite (surface distances with exactly one mask empty): both are left "
               "out of the statistics and counted",
    "global": "<structure>_<metric>_global: pooled over all voxels of all cases (LiTS 'Dice global'), i.e. the "
              "voxel counts TP/FP/FN/TN are summed over cases before the ratio is taken; larger cases weigh more",
    "lesion_detection": "lesion TP/FP/FN summed over cases, then precision = TP/(TP+FP), recall = TP/(TP+FN), "
                        "F1 = 2TP/(2TP+FP+FN); by_size: reference lesions per volume bin and the detected fraction; "
                        "fp_lesions_per_tumour_free_case: predicted lesions in the cases whose reference has no "
                        "tumour, per such case",
    "strata": "per-case aggregates of the paper's tumour metrics within each stratum, plus the stratum's pooled "
              "tumour Dice",
}


@dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one evaluation go, all derived from the summary JSON's path."""

    summary_json: Path
    cases_csv: Path
    markdown: Path
    overlays: Path


def output_paths(output_json: str | Path) -> OutputPaths:
    """``summary.json`` -> ``summary_cases.csv``, ``summary.md`` and ``overlays/`` in the same folder."""
    output_json = Path(output_json)
    stem = output_json.name[:-5] if output_json.name.lower().endswith(".json") else output_json.name
    folder = output_json.parent
    return OutputPaths(output_json, folder / f"{stem}_cases.csv", folder / f"{stem}.md", folder / "overlays")


# ----------------------------------------------------------------------------------------------------------------
# Per case
# ----------------------------------------------------------------------------------------------------------------

def _evaluate_pair(pair: CasePair, regions: TaskRegions) -> dict[str, Any]:
    """Read, map and evaluate one case. Errors come back as ``{"error": message}`` (pickling-safe)."""
    try:
        reference, geometry = read_image(pair.reference)
        prediction, _ = read_image(pair.prediction)
        unexpected = sorted(set(np.unique(prediction).tolist()) - set(PREDICTION_LABELS))
        if unexpected:
            return {"error": f"[{pair.case_id}] {pair.prediction}: prediction holds label(s) {unexpected}; "
                             f"predictions must use 0 background, 1 liver, 2 tumour"}
        row: dict[str, Any] = {"case_id": pair.case_id}
        row.update(evaluate_case(to_task_labels(reference, regions), prediction, geometry.spacing_zyx))
        row.update({"reference_file": str(pair.reference), "prediction_file": str(pair.prediction)})
        return row
    except (SmoothSegError, ValueError) as exc:
        return {"error": f"[{pair.case_id}] {exc}"}


def _evaluate_star(args: tuple[CasePair, TaskRegions]) -> dict[str, Any]:
    return _evaluate_pair(*args)


def _evaluate_all(pairs: Sequence[CasePair], regions: TaskRegions, num_processes: int) -> list[dict[str, Any]]:
    jobs = [(pair, regions) for pair in pairs]
    rows = map_cases(_evaluate_star, jobs, num_processes, desc="evaluate")
    errors = [row["error"] for row in rows if "error" in row]
    if errors:
        raise SmoothSegError(f"{len(errors)} case(s) could not be evaluated:\n" + "\n".join(f"  - {e}" for e in errors))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------------

def _per_case_metric_keys(rows: Sequence[dict]) -> list[str]:
    """Numeric per-case metrics worth averaging: everything but raw voxel counts, files and strata columns."""
    skip = {f"{s}_{c}" for s in STRUCTURES for c in _VOXEL_COUNTS} | {
        "tumor_lesion_tp", "tumor_lesion_fp", "tumor_lesion_fn", DIAMETER_COLUMN}
    first = rows[0]
    return [k for k, v in first.items()
            if k not in skip and isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)]


def _global_metrics(rows: Sequence[dict]) -> dict[str, float]:
    out = {}
    for structure in STRUCTURES:
        pooled = pooled_overlap_metrics(counts_from_case(row, structure) for row in rows)
        out.update({f"{structure}_{m}_global": pooled[m] for m in _RATIO_METRICS})
    return out


def lesion_detection_summary(rows: Sequence[dict]) -> dict[str, Any]:
    """Lesion detection pooled over per-case rows of ``evaluate_case``: counts, precision, recall, F1, detection
    by reference lesion volume and by largest diameter, LiTS-style detection (any overlap, IoU > 0.5; merges and
    splits) and false-positive lesions per tumour-free case (undefined ratios are NaN)."""
    tp = sum(int(r["tumor_lesion_tp"]) for r in rows)
    fp = sum(int(r["tumor_lesion_fp"]) for r in rows)
    fn = sum(int(r["tumor_lesion_fn"]) for r in rows)

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    def binned(bins) -> dict[str, Any]:
        out = {}
        for key, label, _, _ in bins:
            n_ref = sum(int(r.get(f"tumor_lesions_ref_{key}", 0)) for r in rows)
            found = sum(int(r.get(f"tumor_lesions_detected_{key}", 0)) for r in rows)
            out[key] = {"label": label, "n_reference": n_ref, "n_detected": found, "sensitivity": ratio(found, n_ref)}
        return out

    n_ref = sum(int(r["tumor_n_lesions_ref"]) for r in rows)
    tumour_free = [r for r in rows if int(r["tumor_n_lesions_ref"]) == 0]
    false_positives = sum(int(r["tumor_n_lesions_pred"]) for r in tumour_free)
    return {
        "tp": tp, "fp": fp, "fn": fn,
        "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "by_size": binned(LESION_SIZE_BINS),
        "by_diameter": binned(LESION_DIAMETER_BINS),
        "lits": {"n_reference": n_ref,
                 "sensitivity_iou0": ratio(sum(int(r.get("tumor_lesions_found_iou0", 0)) for r in rows), n_ref),
                 "sensitivity_iou50": ratio(sum(int(r.get("tumor_lesions_found_iou50", 0)) for r in rows), n_ref),
                 "merges": sum(int(r.get("tumor_lesion_merges", 0)) for r in rows),
                 "splits": sum(int(r.get("tumor_lesion_splits", 0)) for r in rows)},
        "n_tumour_free_cases": len(tumour_free),
        "fp_lesions_per_tumour_free_case": ratio(false_positives, len(tumour_free)),
        "criterion": f"a reference lesion (26-connected component) is detected when Dice with the union of the "
                     f"predicted components overlapping it >= {DEFAULT_LESION_MIN_DICE}; a predicted component "
                     f"overlapping no detected lesion is a false positive",
    }


def _tlvr(row: dict, which: str) -> float:
    liver = float(row[f"liver_volume_{which}_ml"])
    return float(row[f"tumor_volume_{which}_ml"]) / liver if liver > 0 else math.nan


def tumour_burden(rows: Sequence[dict], prediction_dir: Path | None = None) -> dict[str, Any]:
    """The tumour burden (TLVR = tumour / liver-region volume) error, as LiTS scores burden: RMSE of the
    segmentation's TLVR against the reference's over the cases, and, side by side on the cases whose report
    (``<case>_report.json`` in ``prediction_dir``) carries a clinical TLVR prediction, the RMSE of that clinical
    regression's prediction and of the segmentation's on the same cases."""
    errors, clinical, segmentation_on_clinical = [], [], []
    for row in rows:
        reference, predicted = _tlvr(row, "ref"), _tlvr(row, "pred")
        if not math.isfinite(reference):
            continue
        if math.isfinite(predicted):
            errors.append(predicted - reference)
        report = Path(prediction_dir) / f"{row['case_id']}_report.json" if prediction_dir is not None else None
        value = _report_value(report, "clinical_tlvr_prediction") if report is not None else None
        if value is not None and math.isfinite(predicted):
            clinical.append(float(value) - reference)
            segmentation_on_clinical.append(predicted - reference)

    def rmse(values: Sequence[float]) -> float:
        return float(np.sqrt(np.mean(np.square(values)))) if values else math.nan

    return {"rmse_segmentation": rmse(errors), "n_cases": len(errors),
            "rmse_clinical": rmse(clinical), "rmse_segmentation_on_clinical_cases": rmse(segmentation_on_clinical),
            "n_clinical_cases": len(clinical),
            "definition": "TLVR = tumour volume / liver-region volume (liver + tumour); RMSE over cases with a "
                          "reference liver"}


def _report_value(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text()).get(key) if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def _strata(rows: Sequence[dict]) -> dict[str, Any]:
    by_id = {r["case_id"]: r for r in rows}
    out: dict[str, Any] = {}
    for stratum in STRATA:
        ids = stratum_case_ids(rows, stratum.key)
        members = [by_id[i] for i in ids]
        entry: dict[str, Any] = {"label": stratum.label, "rule": stratum.rule, "n_cases": len(ids), "case_ids": ids}
        for metric in PAPER_METRICS:
            entry[metric] = per_case_aggregate(r[metric] for r in members)
        entry["tumor_dice_global"] = pooled_overlap_metrics(counts_from_case(r, "tumor") for r in members)["dice"]
        out[stratum.key] = entry
    return out


def _size_sources(rows: Sequence[dict], clinical_csv: Path | None) -> dict[str, Any]:
    sources = [r[DIAMETER_SOURCE_COLUMN] for r in rows]
    return {
        "diameter_threshold_cm": DIAMETER_THRESHOLD_CM, "volume_threshold_ml": VOLUME_THRESHOLD_ML,
        "clinical_csv": str(clinical_csv) if clinical_csv else None,
        "n_diameter_from_clinical": sum(s.startswith("clinical") for s in sources),
        "n_diameter_from_reference": sum(s == "reference" for s in sources),
        "n_without_reference_tumor": sum(s == NO_STRATUM for s in sources),
        "diameter_rule": "largest per-lesion 3D diameter of the reference tumour (mm, real spacing) / 10, unless "
                         "the clinical table gives the case's Tr_Size (cm)",
        "volume_rule": "reference tumour volume in ml (= cm³)",
        "tumour_free_cases": "counted in 'all' only (tumour Dice 0 when tumour is predicted, undefined otherwise)",
    }


def _summarize(rows: list[dict], *, reference_dir: Path, prediction_dir: Path, dataset: str | None,
               regions: TaskRegions, clinical_csv: Path | None) -> dict[str, Any]:
    metric_keys = _per_case_metric_keys(rows)
    return {
        "schema": SUMMARY_SCHEMA,
        "reference_dir": str(reference_dir),
        "prediction_dir": str(prediction_dir),
        "dataset": dataset,
        "regions": {"reference_liver_labels": list(regions.liver), "reference_tumor_labels": list(regions.tumor),
                    "prediction_labels": {"liver_region": [1, 2], "tumor": [2]}},
        "n_cases": len(rows),
        "aggregation": AGGREGATION_NOTES,
        "metrics": {k: per_case_aggregate(r[k] for r in rows) for k in metric_keys},
        "global": _global_metrics(rows),
        "lesion_detection": lesion_detection_summary(rows),
        "tumour_burden": tumour_burden(rows, prediction_dir),
        "size_strata": _size_sources(rows, clinical_csv),
        "strata": _strata(rows),
        "cases": rows,
    }


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------

_FIRST_COLUMNS = ("case_id", DIAMETER_COLUMN, DIAMETER_SOURCE_COLUMN, DIAMETER_STRATUM_COLUMN, VOLUME_STRATUM_COLUMN)


def _cases_csv(rows: Sequence[dict]) -> str:
    frame = pd.DataFrame(list(rows))
    columns = [c for c in _FIRST_COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in _FIRST_COLUMNS]
    return frame[columns].to_csv(index=False, na_rep="nan")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The paper-style strata table followed by liver/tumour aggregates, global metrics and lesion detection."""
    lines = ["# Evaluation summary", "",
             f"Predictions `{summary['prediction_dir']}` against references `{summary['reference_dir']}`: "
             f"{summary['n_cases']} case(s).", "",
             "## Tumour segmentation by size (paper layout; per-case mean ± std)", "",
             paper_table_markdown(summary["strata"]), "",
             "Size strata hold the cases whose reference has tumour; `All` holds every case. Diameter: "
             f"{summary['size_strata']['n_diameter_from_reference']} case(s) from the reference, "
             f"{summary['size_strata']['n_diameter_from_clinical']} from the clinical Tr_Size; "
             f"{summary['size_strata']['n_without_reference_tumor']} case(s) without reference tumour. "
             "`(n=k)`: only k cases had a defined value.", "",
             "## Per-case means (mean ± std over cases with a finite value)", "",
             "| Metric | mean ± std | median | n finite | n NaN | n inf |", "|---|---|---|---|---|---|"]
    for key in ("liver_dice", "liver_iou", "liver_hd95_mm", "liver_assd_mm", "tumor_dice", "tumor_iou",
                "tumor_sensitivity", "tumor_precision", "tumor_hd95_mm", "tumor_assd_mm", "tumor_lesion_f1"):
        agg = summary["metrics"].get(key)
        if agg:
            lines.append(f"| {key} | {format_mean_std(agg['mean_per_case'], agg['std_per_case'])} | "
                         f"{_fmt(agg['median_per_case'])} | {agg['n_finite']} | {agg['n_nan']} | {agg['n_inf']} |")
    glob = summary["global"]
    det = summary["lesion_detection"]
    lines += ["", "## Pooled over all voxels (global)", "",
              "| Structure | Dice | IoU | Sensitivity | Precision |", "|---|---|---|---|---|"]
    for s in STRUCTURES:
        lines.append(f"| {s} | {_fmt(glob[f'{s}_dice_global'])} | {_fmt(glob[f'{s}_iou_global'])} | "
                     f"{_fmt(glob[f'{s}_sensitivity_global'])} | {_fmt(glob[f'{s}_precision_global'])} |")
    lines += ["", "## Lesion detection (pooled over cases)", "",
              f"TP {det['tp']}, FP {det['fp']}, FN {det['fn']}: precision {_fmt(det['precision'])}, "
              f"recall {_fmt(det['recall'])}, F1 {_fmt(det['f1'])}. Criterion: {det['criterion']}.", "",
              "| reference lesion volume | lesions | detected | sensitivity |", "|---|---:|---:|---:|"]
    for entry in det["by_size"].values():
        lines.append(f"| {entry['label']} | {entry['n_reference']} | {entry['n_detected']} | "
                     f"{_fmt(entry['sensitivity'])} |")
    lines += ["", "| reference lesion diameter | lesions | detected | sensitivity |", "|---|---:|---:|---:|"]
    for entry in det.get("by_diameter", {}).values():
        lines.append(f"| {entry['label']} | {entry['n_reference']} | {entry['n_detected']} | "
                     f"{_fmt(entry['sensitivity'])} |")
    lits = det.get("lits")
    if lits:
        lines += ["", f"LiTS-style: {lits['n_reference']} reference lesion(s), found at any overlap (IoU > 0) "
                  f"{_fmt(lits['sensitivity_iou0'])}, at IoU > 0.5 {_fmt(lits['sensitivity_iou50'])}; "
                  f"{lits['merges']} merge(s), {lits['splits']} split(s)."]
    lines += ["", f"False-positive lesions per tumour-free liver: {_fmt(det['fp_lesions_per_tumour_free_case'], 2)} "
              f"({det['n_tumour_free_cases']} case(s) whose reference has no tumour).", ""]
    burden = summary.get("tumour_burden")
    if burden:
        lines += ["## Tumour burden (TLVR)", "",
                  f"RMSE of the segmentation's TLVR: {_fmt(burden['rmse_segmentation'], 4)} "
                  f"({burden['n_cases']} case(s)). Clinical regression, on the {burden['n_clinical_cases']} case(s) "
                  f"whose report has its prediction: RMSE {_fmt(burden['rmse_clinical'], 4)}, the segmentation's on "
                  f"the same cases {_fmt(burden['rmse_segmentation_on_clinical_cases'], 4)}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------

def evaluate(reference_dir: Path, prediction_dir: Path, output_json: Path | None = None, *,
             dataset: str | None = None, clinical_csv: Path | None = None, num_processes: int = 1,
             png: bool = False, images_dir: Path | None = None) -> dict:
    """:func:`evaluate_folders` plus ``images_dir``, the folder of CT images for ``png`` overlays.

    Images for the overlays are looked up in ``images_dir``; without it in the dataset's ``imagesTr``/``imagesTs``
    when ``dataset`` is given; else in the ``images*`` sibling of a ``labels*`` reference folder. Without any, the
    pictures are skipped with a warning.
    """
    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    dataset = None if dataset is None else str(dataset)
    regions = regions_for(dataset)
    clinical_sizes = load_clinical_sizes(clinical_csv) if clinical_csv is not None else None
    pairs = match_cases(reference_dir, prediction_dir)
    if output_json is not None:
        ensure_writable_folder(Path(output_json).parent, "evaluation output folder")
    logger.info("evaluating %d case(s); reference liver region %s, tumour %s", len(pairs), list(regions.liver),
                list(regions.tumor))
    rows = assign_strata(_evaluate_all(pairs, regions, max(1, int(num_processes))), clinical_sizes)
    if clinical_sizes is not None:
        unmatched = [r["case_id"] for r in rows if r["case_id"] not in clinical_sizes]
        if unmatched:
            logger.warning("%d case(s) have no Tr_Size in %s; their diameter comes from the reference: %s",
                           len(unmatched), clinical_csv, short_list(unmatched))
    summary = _summarize(rows, reference_dir=reference_dir, prediction_dir=prediction_dir, dataset=dataset,
                         regions=regions, clinical_csv=clinical_csv)
    summary["overlays"] = []
    if output_json is not None:
        paths = output_paths(output_json)
        if png:
            folders = image_folders(reference_dir, images_dir, dataset)
            if folders:
                summary["overlays"] = write_overlays(rows, folders, paths.overlays, regions)
            else:
                logger.warning("no image folder (give -img IMAGES_DIR or -d DATASET); overlays skipped")
        summary = json_safe(summary)
        write_text(_cases_csv(rows), paths.cases_csv)
        write_text(summary_markdown(summary), paths.markdown)
        write_json(summary, paths.summary_json)
        logger.info("wrote %s, %s and %s", paths.summary_json, paths.cases_csv, paths.markdown)
    elif png:
        logger.warning("png=True needs an output_json to place overlays/ next to; overlays skipped")
    return json_safe(summary)


def evaluate_folders(reference_dir: Path, prediction_dir: Path, output_json: Path | None = None, *,
                     dataset: str | None = None, clinical_csv: Path | None = None, num_processes: int = 1,
                     png: bool = False) -> dict:
    """Evaluate every prediction in ``prediction_dir`` against the reference of the same case id.

    Cases are matched by file name (``<case><ending>``, any SimpleITK ending; other files are ignored). The
    inputs are refused with one :class:`SmoothSegError` listing every problem (missing or extra predictions, grid
    mismatches) before anything is computed. References are mapped to 0/1/2 with ``dataset``'s ``task_regions``
    (default liver {1, 2}, tumour {2}); predictions must hold 0/1/2. ``clinical_csv`` gives maximal tumour diameters
    (``Tr_Size``, cm) that override the reference diameter for the size strata.

    With ``output_json`` the summary is written there, with ``<stem>_cases.csv`` and ``<stem>.md`` beside it, and
    with ``png`` the best and worst case's overlays into ``overlays/`` (images from the dataset or a sibling
    ``images*`` folder; see :func:`evaluate`). Returns the summary dict (plain JSON: non-finite numbers are None);
    ``documentation/evaluation.md`` defines every key.
    """
    return evaluate(reference_dir, prediction_dir, output_json, dataset=dataset, clinical_csv=clinical_csv,
                    num_processes=num_processes, png=png)
