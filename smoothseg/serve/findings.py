"""The findings text of a served job: a fixed template filled from the job's report JSON, and nothing else.

No language model writes it: every number in the text is a number of the report (a test reads them back), so the
text can be checked against the measurements, and it says plainly what it is not (a diagnosis). The model's
validation figures come from its fold validations (``postprocessing.json``: the operating point's pooled FROC row),
recorded in the report as ``model_validation``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smoothseg.inference.operating_point import pooled_best, validation_sections

__all__ = ["NOT_FOR_DIAGNOSIS", "findings_text", "model_validation"]

NOT_FOR_DIAGNOSIS = ("Not for diagnosis: automated measurements by a research model; every finding must be checked "
                     "on the images by a qualified reader.")


def model_validation(tumour_fold_folders: Iterable[Path]) -> dict[str, Any] | None:
    """The tumour model's validation figures at its chosen operating point, pooled over its folds (None when its
    fold validations have no operating-point table, e.g. an untrained or older model)."""
    folders = list(tumour_fold_folders)
    sections = validation_sections(folders)
    if len(sections) != len(folders):  # the model applies the pooled choice only when every fold has one
        return None
    best = pooled_best(sections)
    if best is None:
        return None
    keys = ("n_cases", "n_tumour_free", "mean_dice", "sensitivity", "precision", "f1", "fp_per_tumour_free",
            "sensitivity_lt1ml", "sensitivity_1to10ml", "sensitivity_ge10ml", "objective", "folds")
    return {key: best.get(key) for key in keys}


def _n(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _lesion_line(lesion: dict[str, Any]) -> str:
    lo, hi = lesion["axial_slice_range"]
    x, y, z = lesion["centroid_mm"]
    confidence = "" if lesion.get("confidence") is None else f", confidence {lesion['confidence']:.2f}"
    return (f"  Lesion {lesion['lesion']}: {lesion['volume_ml']:.2f} ml, longest axial diameter "
            f"{lesion['max_axial_diameter_mm']:.1f} mm (in three dimensions {lesion['max_diameter_mm']:.1f} mm), "
            f"axial slices {lo}-{hi} "
            f"(largest {lesion['largest_axial_slice']}), centre at x {x:.1f}, y {y:.1f}, z {z:.1f} mm{confidence}.")


def findings_text(report: dict[str, Any]) -> str:
    """The findings of one job's report (a :func:`~smoothseg.inference.report.case_report` with ``model_validation``
    and ``model`` added by the serve worker)."""
    lines = ["SMOOTHSEG FINDINGS (automated liver and liver-tumour segmentation)", NOT_FOR_DIAGNOSIS, ""]
    if not report.get("liver_found"):
        lines += ["Liver: not found. No tumour was searched; check that the image is an abdominal CT in HU.", ""]
    else:
        lines.append(f"Liver (including tumour): {report['liver_volume_ml']:.1f} ml.")
        lesions = report.get("lesions") or []
        if lesions:
            lines.append(f"Tumour: {len(lesions)} lesion(s), {report['tumour_volume_ml']:.2f} ml in total, "
                         "largest first:")
            lines += [_lesion_line(lesion) for lesion in lesions]
        else:
            lines.append("Tumour: no lesion found.")
        clinical = report.get("clinical_tlvr_prediction")
        lines.append(f"Tumour-to-liver volume ratio (TLVR): measured {_n(report.get('tlvr'), 4)}; "
                     + ("predicted from the clinical values " + _n(clinical, 4) if clinical is not None
                        else "no clinical prediction (no clinical values given, or the model has no regression)")
                     + ".")
        lines.append("Positions are patient coordinates (x right-to-left, y front-to-back, z feet-to-head, mm); "
                     "axial slices are counted from the feet, as in the viewer.")
        lines.append("")
    model = report.get("model") or {}
    lines.append(f"Model: {model.get('dataset', 'unknown dataset')}, model id {model.get('model_id', 'unknown')}.")
    validation = report.get("model_validation")
    if validation:
        lines.append(
            f"Validation ({validation['n_cases']} cross-validation cases, {validation['n_tumour_free']} of them "
            f"tumour-free): mean tumour Dice {_n(validation['mean_dice'], 3)}, lesion sensitivity "
            f"{_n(validation['sensitivity'], 2)} (lesions under one ml {_n(validation['sensitivity_lt1ml'], 2)}, "
            f"one to ten ml {_n(validation['sensitivity_1to10ml'], 2)}, "
            f"ten ml and more {_n(validation['sensitivity_ge10ml'], 2)}), "
            f"{_n(validation['fp_per_tumour_free'], 2)} false-positive lesions per tumour-free liver.")
    else:
        lines.append("Validation: none recorded for this model (no fold validation with an operating point).")
    return "\n".join(lines) + "\n"
