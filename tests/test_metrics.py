"""Tests for smoothseg.evaluation.metrics against hand-computed values on small arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

from smoothseg.evaluation.metrics import (
    OverlapCounts,
    accuracy,
    assd,
    counts_from_case,
    dice,
    evaluate_case,
    hd95,
    iou,
    lesion_detection,
    overlap_counts,
    pooled_overlap_metrics,
    precision,
    sensitivity,
    specificity,
    surface_distances,
)
from smoothseg.masks.components import connected_lesions
from smoothseg.masks.measures import max_diameter_mm, surface_voxels, volume_ml

ANISO = (2.5, 0.7, 0.7)  # (z, y, x) mm, typical CT


def _mask(shape, *voxels_or_slices):
    mask = np.zeros(shape, dtype=bool)
    for index in voxels_or_slices:
        mask[index] = True
    return mask


# ---------------------------------------------------------------------------------------------------- overlap


def test_overlap_counts_and_ratios_hand_computed():
    # 10 voxels in a row: reference = 0..3, prediction = 2..4 -> TP 2, FP 1, FN 2, TN 5
    ref = _mask((1, 1, 10), np.s_[0, 0, 0:4])
    pred = _mask((1, 1, 10), np.s_[0, 0, 2:5])
    c = overlap_counts(ref, pred, (2.0, 1.0, 0.5))  # 1 mm^3 voxels
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 2, 5)
    assert dice(c) == pytest.approx(4 / 7)
    assert iou(c) == pytest.approx(2 / 5)
    assert sensitivity(c) == pytest.approx(0.5)
    assert precision(c) == pytest.approx(2 / 3)
    assert specificity(c) == pytest.approx(5 / 6)
    assert accuracy(c) == pytest.approx(7 / 10)
    assert c.reference_volume_ml == pytest.approx(0.004)
    assert c.prediction_volume_ml == pytest.approx(0.003)


def test_volume_ml_uses_spacing():
    mask = _mask((4, 4, 4), np.s_[0:2, 0:2, 0:2])  # 8 voxels of 2.5*0.7*0.7 = 1.225 mm^3
    assert volume_ml(mask, ANISO) == pytest.approx(8 * 1.225 / 1000)
    assert volume_ml(np.zeros((2, 2, 2), bool), ANISO) == 0.0


def test_pooled_global_dice_differs_from_mean_per_case_dice():
    # case A: large lesion (10 voxels) found exactly -> Dice 1
    ref_a = _mask((1, 1, 20), np.s_[0, 0, 0:10])
    pred_a = ref_a.copy()
    # case B: 1-voxel lesion, prediction 1 voxel next to it -> Dice 0
    ref_b = _mask((1, 1, 20), (0, 0, 5))
    pred_b = _mask((1, 1, 20), (0, 0, 6))
    counts = [overlap_counts(ref_a, pred_a, (1, 1, 1)), overlap_counts(ref_b, pred_b, (1, 1, 1))]
    mean_dice = float(np.mean([dice(c) for c in counts]))
    pooled = pooled_overlap_metrics(counts)
    assert mean_dice == pytest.approx(0.5)
    # global: sum 2TP / sum(2TP + FP + FN) = 20 / (20 + 1 + 1)
    assert pooled["dice"] == pytest.approx(20 / 22)
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["tn"]) == (10, 1, 1, 10 + 18)


def test_pooling_from_evaluate_case_dicts_survives_json():
    ref = np.zeros((1, 4, 4), np.uint8)
    ref[0, 0, :] = 2
    pred = np.zeros_like(ref)
    pred[0, 0, :2] = 2
    case = json.loads(json.dumps(evaluate_case(ref, pred, (1, 1, 1))))
    pooled = pooled_overlap_metrics([counts_from_case(case, "tumor")] * 2)
    assert pooled["dice"] == pytest.approx(2 * 4 / (2 * 4 + 0 + 4))
    with pytest.raises(ValueError, match="tumor_tp"):
        counts_from_case({}, "tumor")


def test_pooling_nothing_gives_nan():
    assert math.isnan(pooled_overlap_metrics([])["dice"])


# ---------------------------------------------------------------------------------------------------- empty cases


def test_both_empty_is_nan_for_ratios_and_distances():
    empty = np.zeros((3, 4, 5), bool)
    c = overlap_counts(empty, empty, ANISO)
    assert math.isnan(dice(c)) and math.isnan(iou(c))
    assert math.isnan(sensitivity(c)) and math.isnan(precision(c))
    assert specificity(c) == 1.0 and accuracy(c) == 1.0
    d = surface_distances(empty, empty, ANISO)
    assert math.isnan(d.hd95_mm) and math.isnan(d.assd_mm) and math.isnan(d.hd_mm)


def test_empty_reference_nonempty_prediction():
    empty = np.zeros((3, 4, 5), bool)
    pred = _mask(empty.shape, (1, 1, 1))
    c = overlap_counts(empty, pred, ANISO)
    assert dice(c) == 0.0 and iou(c) == 0.0 and precision(c) == 0.0
    assert math.isnan(sensitivity(c))
    assert hd95(empty, pred, ANISO) == math.inf
    assert assd(empty, pred, ANISO) == math.inf


def test_nonempty_reference_empty_prediction():
    empty = np.zeros((3, 4, 5), bool)
    ref = _mask(empty.shape, (1, 1, 1))
    c = overlap_counts(ref, empty, ANISO)
    assert dice(c) == 0.0 and iou(c) == 0.0 and sensitivity(c) == 0.0
    assert math.isnan(precision(c))
    assert hd95(ref, empty, ANISO) == math.inf
    assert assd(ref, empty, ANISO) == math.inf


def test_full_reference_makes_specificity_nan():
    full = np.ones((2, 2, 2), bool)
    assert math.isnan(specificity(overlap_counts(full, full, (1, 1, 1))))


# ---------------------------------------------------------------------------------------------------- surfaces


def test_surface_voxels_face_connected_and_border():
    cube = _mask((5, 5, 5), np.s_[1:4, 1:4, 1:4])
    surf = surface_voxels(cube)
    assert surf.sum() == 26 and not surf[2, 2, 2]  # only the centre of a 3x3x3 cube is interior
    # the array border counts as background: a full array's border voxels are surface, its inside is not
    full = surface_voxels(np.ones((3, 4, 4), bool))
    assert full.sum() == 3 * 16 - 4 and not full[1, 1:3, 1:3].any()


def test_single_voxels_apart_along_z_anisotropic():
    ref = _mask((6, 5, 5), (1, 2, 2))
    pred = _mask((6, 5, 5), (4, 2, 2))
    d = surface_distances(ref, pred, ANISO)
    assert d.hd95_mm == pytest.approx(3 * 2.5)
    assert d.assd_mm == pytest.approx(7.5)
    assert d.hd_mm == pytest.approx(7.5)
    # the same offset along x is 3 * 0.7 mm
    pred_x = _mask((6, 5, 5), (1, 2, 5 - 1))
    ref_x = _mask((6, 5, 5), (1, 2, 1))
    assert hd95(ref_x, pred_x, ANISO) == pytest.approx(3 * 0.7)


def test_slabs_apart_along_z_anisotropic():
    ref = _mask((8, 6, 6), np.s_[2, :, :])
    pred = _mask((8, 6, 6), np.s_[5, :, :])
    assert hd95(ref, pred, ANISO) == pytest.approx(7.5)
    assert assd(ref, pred, ANISO) == pytest.approx(7.5)
    assert hd95(ref, pred, (1.0, 0.7, 0.7)) == pytest.approx(3.0)


def test_hd95_union_versus_max_convention():
    # reference: one voxel; prediction: that voxel plus one 2 slices away (5 mm at 2.5 mm slices)
    ref = _mask((5, 3, 3), (0, 1, 1))
    pred = _mask((5, 3, 3), (0, 1, 1), (2, 1, 1))
    # d(R->P) = [0], d(P->R) = [0, 5]; union = [0, 0, 5]
    d = surface_distances(ref, pred, ANISO)
    assert d.hd95_mm == pytest.approx(0.9 * 5.0)  # linear interpolation at rank 0.95 * 2 = 1.9
    assert d.assd_mm == pytest.approx(5.0 / 3)
    assert d.hd_mm == pytest.approx(5.0)
    d_max = surface_distances(ref, pred, ANISO, hd_convention="max")
    assert d_max.hd95_mm == pytest.approx(0.95 * 5.0)  # p95 of [0, 5]
    with pytest.raises(ValueError, match="hd_convention"):
        surface_distances(ref, pred, ANISO, hd_convention="mean")


def test_surface_distances_match_brute_force_and_cropping_is_exact():
    rng = np.random.default_rng(0)
    shape = (12, 14, 16)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    ref[2:7, 3:10, 0:9] = True  # touches the array border
    pred[3:9, 5:12, 2:11] = True
    pred &= rng.random(shape) > 0.1
    spacing = (3.0, 0.8, 0.6)
    coords_r = np.argwhere(surface_voxels(ref)) * np.asarray(spacing)
    coords_p = np.argwhere(surface_voxels(pred)) * np.asarray(spacing)
    dist = cdist(coords_r, coords_p)
    union = np.concatenate([dist.min(axis=1), dist.min(axis=0)])
    d = surface_distances(ref, pred, spacing)
    assert d.hd95_mm == pytest.approx(np.percentile(union, 95))
    assert d.assd_mm == pytest.approx(union.mean())
    assert d.hd_mm == pytest.approx(union.max())


def test_identical_masks_have_zero_distance():
    mask = _mask((4, 5, 6), np.s_[1:3, 1:4, 2:5])
    d = surface_distances(mask, mask, ANISO)
    assert d.hd95_mm == 0.0 and d.assd_mm == 0.0 and d.hd_mm == 0.0


# ---------------------------------------------------------------------------------------------------- diameters


def test_diameter_of_line_along_z_and_in_plane():
    line_z = _mask((7, 3, 3), np.s_[1:6, 1, 1])  # 5 voxel centres -> 4 gaps of 2.5 mm
    assert max_diameter_mm(line_z, ANISO) == pytest.approx(10.0)
    line_x = _mask((3, 3, 12), np.s_[1, 1, 0:11])  # 10 gaps of 0.7 mm
    assert max_diameter_mm(line_x, ANISO) == pytest.approx(7.0)


def test_diameter_of_box_is_its_centre_diagonal():
    box = _mask((6, 8, 9), np.s_[1:4, 2:6, 1:6])  # 3 x 4 x 5 voxels
    expected = math.sqrt((2 * 2.5) ** 2 + (3 * 0.7) ** 2 + (4 * 0.7) ** 2)
    assert max_diameter_mm(box, ANISO) == pytest.approx(expected)


def test_diameter_degenerate_and_empty():
    assert max_diameter_mm(_mask((3, 3, 3), (1, 1, 1)), ANISO) == 0.0
    assert math.isnan(max_diameter_mm(np.zeros((3, 3, 3), bool), ANISO))
    plane = _mask((3, 10, 10), np.s_[1, 1:9, 2:7])  # coplanar points: hull falls back to joggling
    assert max_diameter_mm(plane, ANISO) == pytest.approx(math.hypot(7 * 0.7, 4 * 0.7))


def test_diameter_of_ball_matches_brute_force():
    z, y, x = np.ogrid[:9, :25, :25]
    ball = ((z - 4) * 2.5) ** 2 + ((y - 12) * 0.7) ** 2 + ((x - 12) * 0.7) ** 2 <= 8.0**2
    expected = pdist(np.argwhere(ball) * np.asarray(ANISO)).max()
    assert max_diameter_mm(ball, ANISO) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------- lesions


def _three_lesion_example():
    shape = (6, 20, 20)
    ref = np.zeros(shape, bool)
    ref[1:4, 1:5, 1:5] = True  # lesion A: 3 x 4 x 4 = 48 voxels, found
    ref[1:3, 10:12, 10:12] = True  # lesion B: 2 x 2 x 2 = 8 voxels, missed
    pred = np.zeros(shape, bool)
    pred[1:4, 2:5, 1:5] = True  # covers 36 of A's 48 voxels
    pred[1:3, 15:18, 1:3] = True  # false positive far from everything (12 voxels)
    return ref, pred


def test_lesion_detection_one_found_one_missed_one_false_positive():
    ref, pred = _three_lesion_example()
    det = lesion_detection(ref, pred, ANISO)
    assert (det.tp, det.fp, det.fn) == (1, 1, 1)
    assert det.precision == pytest.approx(0.5)
    assert det.recall == pytest.approx(0.5)
    assert det.f1 == pytest.approx(0.5)
    lesion_a, lesion_b = det.reference_lesions
    assert lesion_a.matched and not lesion_b.matched
    assert lesion_a.dice == pytest.approx(2 * 36 / (48 + 36))
    assert lesion_b.dice == 0.0
    voxel_ml = 2.5 * 0.7 * 0.7 / 1000
    assert lesion_a.volume_ml == pytest.approx(48 * voxel_ml)
    assert lesion_b.volume_ml == pytest.approx(8 * voxel_ml)
    assert lesion_a.max_diameter_mm == pytest.approx(math.sqrt(5.0**2 + 2.1**2 + 2.1**2))
    assert lesion_b.max_diameter_mm == pytest.approx(math.sqrt(2.5**2 + 0.7**2 + 0.7**2))
    assert [p.matched for p in det.predicted_lesions] == [True, False]


def test_lesion_detection_threshold_and_merging():
    shape = (3, 10, 30)
    ref = np.zeros(shape, bool)
    ref[1, 1:4, 1:4] = True  # 9 voxels
    ref[1, 1:4, 6:9] = True  # 9 voxels
    # one prediction merges both lesions: both detected, no false positive
    merged = np.zeros(shape, bool)
    merged[1, 1:4, 1:9] = True
    det = lesion_detection(ref, merged, (1, 1, 1))
    assert (det.tp, det.fp, det.fn) == (2, 0, 0)
    # a large blob that grazes the first lesion by one voxel: Dice = 2 / (9 + 452) < 0.1 -> miss + false positive
    graze = np.zeros(shape, bool)
    graze[:, 5:10, :] = True  # 3 x 5 x 30 = 450 voxels, away from both lesions
    graze[1, 3:5, 3] = True  # two-voxel bridge; (1, 3, 3) lies in the first lesion
    det = lesion_detection(ref, graze, (1, 1, 1))
    assert (det.tp, det.fp, det.fn) == (0, 1, 2)
    assert det.f1 == 0.0 and det.recall == 0.0 and det.precision == 0.0
    assert det.reference_lesions[0].dice == pytest.approx(2 / (9 + 452))
    det_any = lesion_detection(ref, graze, (1, 1, 1), min_dice=0.0)  # "any overlap" criterion
    assert (det_any.tp, det_any.fp, det_any.fn) == (1, 0, 1)
    with pytest.raises(ValueError, match="min_dice"):
        lesion_detection(ref, graze, (1, 1, 1), min_dice=1.5)


def test_lesion_detection_empty_conventions():
    empty = np.zeros((3, 5, 5), bool)
    one = _mask(empty.shape, (1, 1, 1))
    none = lesion_detection(empty, empty, ANISO)
    assert math.isnan(none.precision) and math.isnan(none.recall) and math.isnan(none.f1)
    fp_only = lesion_detection(empty, one, ANISO)
    assert fp_only.precision == 0.0 and math.isnan(fp_only.recall) and fp_only.f1 == 0.0
    fn_only = lesion_detection(one, empty, ANISO)
    assert math.isnan(fn_only.precision) and fn_only.recall == 0.0 and fn_only.f1 == 0.0


def test_connectivity_default_is_26():
    diagonal = _mask((3, 3, 3), (0, 0, 0), (1, 1, 1))
    assert connected_lesions(diagonal)[1] == 1
    assert connected_lesions(diagonal, connectivity=1)[1] == 2
    with pytest.raises(ValueError, match="connectivity"):
        connected_lesions(diagonal, connectivity=4)


# ---------------------------------------------------------------------------------------------------- evaluate_case


def test_evaluate_case_keys_values_and_json():
    ref = np.zeros((6, 20, 20), np.uint8)
    pred = np.zeros_like(ref)
    ref[0:6, 0:20, 0:8] = 1
    pred[0:6, 0:20, 0:8] = 1
    ref_t, pred_t = _three_lesion_example()
    ref[ref_t] = 2
    pred[pred_t] = 2
    out = evaluate_case(ref, pred, ANISO)
    liver_ref = np.isin(ref, (1, 2))
    liver_pred = np.isin(pred, (1, 2))
    assert out["liver_dice"] == pytest.approx(dice(overlap_counts(liver_ref, liver_pred, ANISO)))
    assert out["tumor_dice"] == pytest.approx(2 * 36 / (56 + 48))
    assert out["tumor_lesion_f1"] == pytest.approx(0.5)
    assert out["tumor_n_lesions_ref"] == 2 and out["tumor_n_lesions_pred"] == 2
    assert out["tumor_volume_ref_ml"] == pytest.approx(56 * 2.5 * 0.7 * 0.7 / 1000)
    assert out["tumor_max_diameter_ref_mm"] == pytest.approx(math.sqrt(5.0**2 + 2.1**2 + 2.1**2))
    for key in ("tumor_hd95_mm", "tumor_assd_mm", "liver_hd95_mm", "tumor_lesion_precision", "liver_specificity"):
        assert key in out
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out.values())
    json.loads(json.dumps(out))  # flat and JSON-able (NaN/inf as Python's json writes them)


def test_evaluate_case_label_sets():
    ref = np.array([[[0, 1, 3, 2]]])
    pred = np.array([[[0, 3, 1, 2]]])
    out = evaluate_case(ref, pred, (1, 1, 1), liver_labels=(1, 2, 3), tumor_labels=(2,))
    assert out["liver_dice"] == 1.0 and out["tumor_dice"] == 1.0
    out = evaluate_case(ref, pred, (1, 1, 1), liver_labels=(1, 2))
    assert out["liver_dice"] == pytest.approx(2 * 1 / (2 + 2))


def test_evaluate_case_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(np.zeros((2, 3, 4)), np.zeros((2, 4, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), (1, 1))
    with pytest.raises(ValueError, match="positive"):
        evaluate_case(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), (1, 0, 1))
    with pytest.raises(ValueError, match="shape"):
        overlap_counts(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))


def test_counts_dataclass_is_hashable_value():
    assert OverlapCounts(1, 2, 3, 4, 0.1, 0.2) == OverlapCounts(1, 2, 3, 4, 0.1, 0.2)


def test_lesion_detection_by_size_and_false_positives_per_tumour_free_liver(tmp_path):
    """Three reference lesions of 0.5, 5 and 15 ml (1 mm voxels): the prediction finds the two larger ones and adds a
    false positive; a second, tumour-free case gets two predicted lesions. The summary's bins and FP rate follow."""
    from smoothseg.evaluation.evaluate import lesion_detection_summary

    shape = (40, 60, 60)
    ref = np.zeros(shape, bool)
    ref[2:10, 2:10, 2:10] = True  # 512 voxels = 0.512 ml
    ref[15:25, 2:22, 2:27] = True  # 5000 voxels = 5 ml
    ref[5:25, 30:55, 30:70] = True  # 20 x 25 x 30 = 15000 voxels = 15 ml
    pred = ref.copy()
    pred[2:10, 2:10, 2:10] = False
    pred[30:34, 40:44, 2:6] = True  # a false positive
    case = evaluate_case(ref.astype(np.uint8) * 2, pred.astype(np.uint8) * 2, (1.0, 1.0, 1.0))
    assert [case[f"tumor_lesions_ref_{k}"] for k in ("lt1ml", "1to10ml", "ge10ml")] == [1, 1, 1]
    assert [case[f"tumor_lesions_detected_{k}"] for k in ("lt1ml", "1to10ml", "ge10ml")] == [0, 1, 1]
    empty_pred = np.zeros(shape, np.uint8)
    empty_pred[1:5, 1:5, 1:5] = 2
    empty_pred[20:24, 20:24, 20:24] = 2
    free = evaluate_case(np.zeros(shape, np.uint8), empty_pred, (1.0, 1.0, 1.0))
    summary = lesion_detection_summary([case, free])
    assert summary["by_size"]["lt1ml"]["sensitivity"] == 0.0
    assert summary["by_size"]["1to10ml"]["sensitivity"] == 1.0 and summary["by_size"]["ge10ml"]["n_reference"] == 1
    assert summary["n_tumour_free_cases"] == 1 and summary["fp_lesions_per_tumour_free_case"] == 2.0
