"""The tumour operating point: per-case candidate counts on constructed cases, the choice for lesion F1 under the
false-positive limit (or for Dice), pooling over folds, the FROC plot, and the detection metrics beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import lesion_detection_summary, tumour_burden
from smoothseg.evaluation.froc import candidate_rows, plot_froc
from smoothseg.evaluation.metrics import evaluate_case, lesion_detection
from smoothseg.inference.lesion_filter import candidate_dice, remove_small_lesions, write_postprocessing
from smoothseg.inference.operating_point import (
    FORMAT,
    OperatingPoint,
    choose_operating_point,
    froc_table,
    operating_point_from_folders,
    parse_key,
    remove_doubtful_lesions,
    threshold_value,
    tumour_mask,
)
from smoothseg.masks.measures import binary_dice

SPACING = (1.0, 1.0, 1.0)  # 1 ml = 1000 voxels


def tumour_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label map at argmax, P(tumour), reference tumour): a 27 ml lesion the network is sure of (0.9) and a 0.51 ml
    one it doubts (0.35, below argmax), in a 60^3 liver."""
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[2:62, 2:62, 2:62] = 1
    probability = np.where(labels > 0, 0.05, 0.0).astype(np.float32)
    reference = np.zeros(labels.shape, bool)
    reference[5:35, 5:35, 5:35] = True
    probability[5:35, 5:35, 5:35] = 0.9
    labels[5:35, 5:35, 5:35] = 2
    reference[45:53, 45:53, 45:53] = True  # 512 voxels
    probability[45:53, 45:53, 45:53] = 0.35
    return labels, probability, reference


def clean_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tumour-free liver with a 27-voxel (0.027 ml) speck the network calls tumour (0.6)."""
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[2:38, 2:38, 2:38] = 1
    probability = np.where(labels > 0, 0.05, 0.0).astype(np.float32)
    probability[20:23, 20:23, 20:23] = 0.6
    labels[20:23, 20:23, 20:23] = 2
    return labels, probability, np.zeros(labels.shape, bool)


def rows_of_both() -> dict:
    return {"tumour": candidate_rows(*tumour_case(), SPACING), "clean": candidate_rows(*clean_case(), SPACING)}


def test_candidate_rows_count_lesions_at_every_threshold_and_volume() -> None:
    rows = rows_of_both()
    tumour, clean = rows["tumour"], rows["clean"]
    assert len(tumour) == 4 * 7 * 6 and set(tumour) == set(clean)
    assert tumour["argmax|0|0"] | {"dice": None} == {"tp": 1, "fp": 0, "fn": 1, "n_ref": 2, "n_pred": 1,
                                                    "dice": None, "ref_lt1ml": 1, "det_lt1ml": 0, "ref_1to10ml": 0,
                                                    "det_1to10ml": 0, "ref_ge10ml": 1, "det_ge10ml": 1}
    assert tumour["0.3|0|0"]["tp"] == 2 and tumour["0.3|0|0"]["det_lt1ml"] == 1 and tumour["0.3|0|0"]["dice"] == 1.0
    assert tumour["0.3|0|1"]["tp"] == 1 and tumour["0.3|0|1"]["n_pred"] == 1  # the 0.51 ml lesion removed
    assert tumour["0.3|0.5|0"]["tp"] == 1  # its peak, 0.35, is below the confidence
    assert tumour["0.3|0.5|0"]["dice"] == pytest.approx(2 * 27000 / (27000 + 27512))  # the kept lesion is whole
    assert tumour["0.4|0|0"]["tp"] == 1  # 0.35 < 0.4
    assert clean["argmax|0|0"]["n_pred"] == 1 and clean["argmax|0|0"]["fp"] == 1 and clean["argmax|0|0"]["dice"] == 0
    assert clean["argmax|0|0.1"]["n_pred"] == 0 and clean["argmax|0|0.1"]["dice"] is None
    assert clean["0.2|0.7|0"]["n_pred"] == 0  # the speck's peak 0.6 < 0.7


@pytest.mark.parametrize("key", ["argmax|0|0", "0.3|0|0", "0.3|0.5|0", "0.2|0.7|0.25", "0.4|0.95|2"])
def test_candidate_rows_are_the_evaluations_counts_of_the_filtered_mask(key: str) -> None:
    """Each row equals lesion_detection (and the Dice) of the mask filtered the way the cascade filters it."""
    for labels, probability, reference in (tumour_case(), clean_case()):
        point = parse_key(key)
        tumour, _ = remove_doubtful_lesions(tumour_mask(labels, probability, point.threshold), probability,
                                            point.confidence)
        kept, _ = remove_small_lesions(np.where(tumour, 2, np.minimum(labels, 1)), SPACING, point.min_volume_ml)
        detection = lesion_detection(reference, kept == 2, SPACING)
        row = candidate_rows(labels, probability, reference, SPACING)[key]
        assert (row["tp"], row["fp"], row["fn"], row["n_pred"]) == (detection.tp, detection.fp, detection.fn,
                                                                     len(detection.predicted_lesions))
        assert row["dice"] == binary_dice(kept == 2, reference)


def test_the_chosen_point_finds_the_doubtful_small_lesion_and_drops_the_speck() -> None:
    best, table = choose_operating_point(rows_of_both(), "f1")
    assert best["key"] == "0.2|0|0.1"  # F1 1 from 0.2 to 0.3 with 0.1-0.5 ml: the lowest volume, then threshold
    assert best["f1"] == 1.0 and best["sensitivity_lt1ml"] == 1.0 and best["fp_per_tumour_free"] == 0.0
    argmax = next(r for r in table if r["key"] == "argmax|0|0")
    assert argmax["fp_per_tumour_free"] == 1.0 and not argmax["feasible"]  # the speck breaks the limit
    assert argmax["f1"] == pytest.approx(2 / 4)  # tp 1, fp 1, fn 1
    assert sum(r["chosen"] for r in table) == 1
    dice_best, _ = choose_operating_point(rows_of_both(), "dice")
    assert dice_best["mean_dice"] == 1.0 and dice_best["key"] == "0.2|0|0.1"


def test_a_confident_threshold_drops_a_large_false_lesion_whole_and_keeps_the_true_one_whole() -> None:
    """A 1 ml false lesion (peak 0.6) that no volume filter removes goes with the lowest confidence above its peak;
    the true lesion (peak 0.9) keeps every voxel (a voxel threshold of 0.7 would have shaved its 0.55 rim)."""
    labels, probability, reference = tumour_case()
    probability[45:53, 45:53, 45:53] = 0.05  # no small lesion here
    reference[45:53, 45:53, 45:53] = False
    rim = np.zeros(labels.shape, bool)
    rim[5:35, 5:35, 5:35] = True
    rim[7:33, 7:33, 7:33] = False
    probability[rim] = 0.55
    free_labels, free_probability, free_reference = clean_case()
    free_labels[26:36, 26:36, 26:36] = 2
    free_probability[26:36, 26:36, 26:36] = 0.6
    rows = {"tumour": candidate_rows(labels, probability, reference, SPACING),
            "clean": candidate_rows(free_labels, free_probability, free_reference, SPACING)}
    best, table = choose_operating_point(rows)
    assert best["key"] == "argmax|0.7|0" and best["f1"] == 1.0 and best["mean_dice"] == 1.0  # the speck too
    shaved = next(r for r in table if r["key"] == "argmax|0|0")
    assert shaved["fp_per_tumour_free"] == 2.0


def test_the_false_positive_limit_outranks_f1() -> None:
    """A candidate with the best F1 but 1 false positive per tumour-free liver loses to one within the limit; when
    no candidate is within it, those with the fewest such false positives compete."""
    def row(tp, fp, fn, n_ref, n_pred, dice):
        return {"tp": tp, "fp": fp, "fn": fn, "n_ref": n_ref, "n_pred": n_pred, "dice": dice}
    per_case = {"a": {"argmax|0|0": row(9, 0, 1, 10, 9, 0.8), "0.3|0|0": row(10, 0, 0, 10, 10, 0.9)},
                "free": {"argmax|0|0": row(0, 0, 0, 0, 0, None), "0.3|0|0": row(0, 1, 0, 0, 1, 0.0)}}
    best, _ = choose_operating_point(per_case, "f1", max_fp_per_tumour_free=0.5)
    assert best["key"] == "argmax|0|0"
    best, _ = choose_operating_point(per_case, "f1", max_fp_per_tumour_free=1.0)
    assert best["key"] == "0.3|0|0"
    per_case["free"]["argmax|0|0"] = row(0, 2, 0, 0, 2, 0.0)
    best, table = choose_operating_point(per_case, "f1", max_fp_per_tumour_free=0.5)
    assert not any(r["feasible"] for r in table) and best["key"] == "0.3|0|0"  # 1 FP beats 2
    with pytest.raises(SmoothSegError, match="objective"):
        choose_operating_point(per_case, "accuracy")


def test_without_tumour_free_cases_there_is_no_limit_and_ties_keep_argmax() -> None:
    labels, probability, reference = tumour_case()
    probability[45:53, 45:53, 45:53] = 0.05  # nothing to gain from a threshold
    rows = {"t": candidate_rows(labels, probability, reference, SPACING)}
    best, table = choose_operating_point(rows)
    assert all(r["feasible"] for r in table) and math.isnan(table[0]["fp_per_tumour_free"])
    assert best["key"] == "argmax|0|0"


def test_tumour_mask_at_a_threshold_stays_in_the_liver() -> None:
    labels, probability, _ = tumour_case()
    probability[0, 0, 0] = 0.99  # outside the liver: never tumour
    mask = tumour_mask(labels, probability, 0.3)
    assert not mask[0, 0, 0] and mask[45:53, 45:53, 45:53].all() and mask.sum() == 27000 + 512
    np.testing.assert_array_equal(tumour_mask(labels, None, None), labels == 2)
    with pytest.raises(SmoothSegError, match="probability map"):
        tumour_mask(labels, None, 0.5)
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(SmoothSegError, match="strictly between 0 and 1"):
            threshold_value(bad)
    assert threshold_value("argmax") is None and threshold_value(0.4) == 0.4


def _fold(folder: Path, rows: dict, objective: str = "f1") -> Path:
    best, table = choose_operating_point(rows, objective)
    folder.mkdir(parents=True)
    point = {"format": FORMAT, "objective": objective, "max_fp_per_tumour_free": 0.5,
             "tumor_threshold": best["threshold"], "min_lesion_confidence": best["min_lesion_confidence"],
             "min_lesion_volume_ml": best["min_lesion_volume_ml"], "chosen": best, "froc": table, "per_case": rows}
    dice = {c: candidate_dice(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), bool), SPACING) for c in rows}
    write_postprocessing(folder, dice, "test", operating_point=point)
    return folder


def test_folds_pool_their_tables_and_older_validations_fall_back_to_argmax(tmp_path: Path) -> None:
    both = rows_of_both()
    only_tumour = _fold(tmp_path / "fold_0", {"tumour": both["tumour"]})
    only_clean = _fold(tmp_path / "fold_1", {"clean": both["clean"]})
    post = json.loads((only_tumour / "postprocessing.json").read_text())
    assert post["tumor_threshold"] == 0.2 and post["min_lesion_volume_ml"] == 0.0
    assert operating_point_from_folders([only_tumour])[0] == OperatingPoint(0.2, 0.0, 0.0)
    point, why = operating_point_from_folders([only_tumour, only_clean])  # pooled: the speck must go
    assert point == OperatingPoint(0.2, 0.0, 0.1) and "2 validation case(s) of fold_0, fold_1" in why
    legacy = tmp_path / "fold_2"
    legacy.mkdir()
    (legacy / "postprocessing.json").write_text(json.dumps({"min_lesion_volume_ml": 0.5,
                                                             "per_case": {"c": {"0": 0.2, "0.5": 0.9}}}))
    point, why = operating_point_from_folders([legacy])
    assert point == OperatingPoint(None, 0.0, 0.5) and why.startswith("argmax")
    assert operating_point_from_folders([only_tumour, legacy])[0].threshold is None  # not every fold has a table
    assert operating_point_from_folders([tmp_path / "none"])[0] == OperatingPoint()


def test_froc_plot_is_written(tmp_path: Path) -> None:
    _, table = choose_operating_point(rows_of_both())
    path = plot_froc(table, tmp_path / "froc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert [r["key"] for r in froc_table(rows_of_both())][:2] == ["argmax|0|0", "argmax|0|0.1"]


def test_lits_detection_counts_merges_splits_and_diameters() -> None:
    reference = np.zeros((40, 40, 40), bool)
    reference[5:10, 5:10, 5:10] = True  # A: 125 voxels, diameter ~6.9 mm (< 10 mm)
    reference[5:10, 12:17, 5:10] = True  # B, 2 voxels from A
    reference[20:35, 20:35, 20:35] = True  # C: 3.4 ml, diameter ~24 mm
    prediction = np.zeros(reference.shape, bool)
    prediction[5:10, 5:17, 5:10] = True  # one blob over A and B: a merge
    prediction[20:35, 20:27, 20:35] = True  # C split in two halves, each IoU < 0.5 but the union > 0.5
    prediction[20:35, 28:35, 20:35] = True
    row = evaluate_case(reference.astype(np.uint8) * 2, prediction.astype(np.uint8) * 2, SPACING)
    assert row["tumor_lesion_merges"] == 1 and row["tumor_lesion_splits"] == 1
    assert row["tumor_lesions_found_iou0"] == 3
    # A and B each share 125 voxels with the 300-voxel blob (IoU 0.42); C has IoU 3150 / 3375 with the two halves
    assert row["tumor_lesions_found_iou50"] == 1
    assert row["tumor_lesions_ref_lt10mm"] == 2 and row["tumor_lesions_ref_ge20mm"] == 1
    summary = lesion_detection_summary([row])
    assert summary["by_diameter"]["lt10mm"]["n_reference"] == 2 and summary["lits"]["merges"] == 1


def test_tumour_burden_rmse_of_segmentation_and_clinical_side_by_side(tmp_path: Path) -> None:
    rows = [{"case_id": "a", "liver_volume_ref_ml": 100.0, "tumor_volume_ref_ml": 10.0, "liver_volume_pred_ml": 100.0,
             "tumor_volume_pred_ml": 20.0},
            {"case_id": "b", "liver_volume_ref_ml": 200.0, "tumor_volume_ref_ml": 0.0, "liver_volume_pred_ml": 200.0,
             "tumor_volume_pred_ml": 0.0}]
    (tmp_path / "a_report.json").write_text(json.dumps({"clinical_tlvr_prediction": 0.15}))
    burden = tumour_burden(rows, tmp_path)
    assert burden["rmse_segmentation"] == pytest.approx(math.sqrt((0.1 ** 2 + 0) / 2))
    assert burden["n_clinical_cases"] == 1 and burden["rmse_clinical"] == pytest.approx(0.05)
    assert burden["rmse_segmentation_on_clinical_cases"] == pytest.approx(0.1)
