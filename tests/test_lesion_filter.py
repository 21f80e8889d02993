"""The minimum lesion volume: removing specks, choosing the volume on validation cases, pooling over folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoothseg.inference.lesion_filter import (
    POSTPROCESSING_NAME,
    candidate_dice,
    choose_min_lesion_volume,
    min_lesion_volume_from_folders,
    remove_small_lesions,
    write_postprocessing,
)

SPACING = (2.0, 1.0, 1.0)  # 2 mm^3 per voxel: 500 voxels per ml


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A liver with one true lesion (1000 voxels = 2 ml) found, and a false speck of 8 voxels (0.016 ml)."""
    labels = np.zeros((20, 40, 40), dtype=np.uint8)
    labels[2:18, 5:35, 5:35] = 1
    reference = np.zeros(labels.shape, dtype=bool)
    reference[5:15, 10:20, 10:20] = True
    labels[reference] = 2
    labels[3:5, 30:32, 30:32] = 2  # the speck, away from the lesion
    return labels, reference


def test_small_components_become_liver_and_are_counted() -> None:
    labels, reference = _case()
    kept, removed = remove_small_lesions(labels, SPACING, 0.1)
    assert removed == 1
    np.testing.assert_array_equal(kept == 2, reference)
    assert (kept > 0).sum() == (labels > 0).sum()  # the speck is liver now, nothing left the liver
    assert remove_small_lesions(labels, SPACING, 0.0) == (labels, 0)
    # the threshold is a volume: with 10x larger voxels, the 8-voxel speck is 0.16 ml and survives 0.1 ml
    assert remove_small_lesions(labels, (20.0, 1.0, 1.0), 0.1)[1] == 0
    # the true lesion (2 ml) goes too above its volume
    assert remove_small_lesions(labels, SPACING, 2.5)[1] == 2


def test_the_volume_is_chosen_on_validation_dice_ties_to_the_smaller() -> None:
    labels, reference = _case()
    with_speck = candidate_dice(labels, reference, SPACING)
    assert with_speck["0"] == pytest.approx(2 * 1000 / (1000 + 1008))
    assert with_speck["0.1"] == with_speck["0.25"] == pytest.approx(1.0)
    assert with_speck["2"] == pytest.approx(1.0)  # exactly 2 ml: kept
    tumour_free = np.where(labels == 2, 1, labels).astype(np.uint8)
    tumour_free[3:5, 30:32, 30:32] = 2
    empty_reference = np.zeros(labels.shape, dtype=bool)
    speck_only = candidate_dice(tumour_free, empty_reference, SPACING)
    assert speck_only["0"] == 0.0 and speck_only["0.1"] is None  # both empty: counts 1 when choosing
    chosen, means = choose_min_lesion_volume({"a": with_speck, "b": speck_only})
    assert chosen == 0.1  # the smallest volume that removes the speck
    assert means["0"] == pytest.approx(with_speck["0"] / 2) and means["0.1"] == pytest.approx(1.0)
    # nothing to gain: nothing is removed
    assert choose_min_lesion_volume({"a": candidate_dice(labels, labels == 2, SPACING)})[0] == 0.0
    assert choose_min_lesion_volume({}) == (0.0, {})
    # a tumour-free case where nothing is predicted has no say
    nothing = candidate_dice(np.where(labels == 2, 1, labels).astype(np.uint8), np.zeros(labels.shape, bool), SPACING)
    assert set(nothing.values()) == {None}
    assert choose_min_lesion_volume({"a": with_speck, "n": nothing})[0] == 0.1
    assert choose_min_lesion_volume({"a": candidate_dice(labels, labels == 2, SPACING), "n": nothing})[0] == 0.0


def test_folds_are_pooled_and_missing_or_broken_files_are_ignored(tmp_path: Path) -> None:
    labels, reference = _case()
    fold_0, fold_1, fold_2 = (tmp_path / f"fold_{k}" for k in range(3))
    for folder in (fold_0, fold_1, fold_2):
        folder.mkdir()
    # fold 0 alone prefers keeping everything (its small lesion is real); fold 1 has a speck on a tumour-free case
    real_small = candidate_dice(labels, labels == 2, SPACING)
    assert write_postprocessing(fold_0, {"c0": real_small}, "test") == 0.0
    tumour_free = np.where(labels == 2, 1, labels).astype(np.uint8)
    tumour_free[3:5, 30:32, 30:32] = 2
    assert write_postprocessing(fold_1, {"c1": candidate_dice(tumour_free, np.zeros(labels.shape, bool), SPACING)},
                                "test") == 0.1
    saved = json.loads((fold_1 / POSTPROCESSING_NAME).read_text())
    assert saved["min_lesion_volume_ml"] == 0.1 and saved["n_cases"] == 1 and saved["source"] == "test"
    pooled, why = min_lesion_volume_from_folders([fold_0, fold_1, fold_2])
    # pooled: the speck case scores 0 at 0 ml and counts 1 (nothing left, nothing to find) from 0.1 ml on; fold 0's
    # case loses only 0.4 %
    assert pooled == 0.1 and "2 validation case(s) of fold_0, fold_1" in why
    assert min_lesion_volume_from_folders([fold_2]) == (
        0.0, "no postprocessing.json (no full validation yet): no lesion is removed")
    (fold_2 / POSTPROCESSING_NAME).write_text("{not json")
    assert min_lesion_volume_from_folders([fold_0, fold_2])[0] == 0.0
