"""The training arms of the ablation: each label-noise kind on a constructed case (volumes and counts as expected,
the liver region untouched, reproducible from the seed), the noisy raw copy, and the train-fraction splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from smoothseg.dataset.io import Geometry, read_image, write_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.masks.components import connected_lesions
from smoothseg.masks.label_noise import LabelNoise, corrupt_tumour
from smoothseg.workflows.ablation import AblationSettings
from smoothseg.workflows.training_arms import TrainingArm, fraction_splits, noisy_raw_copy

SPACING = (1.0, 1.0, 1.0)  # z, y, x mm: 1 voxel = 1 mm^3 = 0.001 ml
RADII = (3, 5, 8)  # spheres of about 0.11, 0.52 and 2.1 ml


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A liver block holding three spherical lesions of known radii; returns (tumour, liver region)."""
    shape = (40, 48, 72)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    region = np.zeros(shape, bool)
    region[2:38, 2:46, 2:70] = True
    tumour = np.zeros(shape, bool)
    for radius, cx in zip(RADII, (10, 28, 52), strict=True):
        tumour |= (z - 20) ** 2 + (y - 24) ** 2 + (x - cx) ** 2 <= radius ** 2
    return tumour, region & ~tumour


def _volumes(mask: np.ndarray) -> list[int]:
    labels, n = connected_lesions(mask)
    return sorted(np.bincount(labels.ravel(), minlength=n + 1)[1:].tolist())


def test_parse_and_refuse() -> None:
    assert LabelNoise.parse("boundary:2") == LabelNoise("boundary", 2.0)
    assert LabelNoise.parse("miss:0.3").key == "miss-0.3"
    for bad in ("boundary", "wobble:2", "miss:1.5", "bias:-1", "drop:x"):
        with pytest.raises(ValueError):
            LabelNoise.parse(bad)


def test_drop_removes_exactly_the_lesions_under_the_volume() -> None:
    tumour, region = _case()
    before = _volumes(tumour)
    noisy = corrupt_tumour(tumour, region, SPACING, LabelNoise("drop", 1.0), np.random.default_rng(0))
    assert _volumes(noisy) == [v for v in before if v * 0.001 >= 1.0] and len(_volumes(noisy)) == 1
    assert not (noisy & ~tumour).any()


def test_miss_removes_whole_lesions_with_the_probability() -> None:
    tumour, region = _case()
    rng = np.random.default_rng(0)
    assert _volumes(corrupt_tumour(tumour, region, SPACING, LabelNoise("miss", 0.0), rng)) == _volumes(tumour)
    assert not corrupt_tumour(tumour, region, SPACING, LabelNoise("miss", 1.0), rng).any()
    kept = [len(_volumes(corrupt_tumour(tumour, region, SPACING, LabelNoise("miss", 0.5), np.random.default_rng(s))))
            for s in range(60)]
    assert 1.2 < np.mean(kept) < 1.8  # 3 lesions x 0.5, over 60 seeds
    for seed in range(5):  # whatever survives is a whole original lesion
        noisy = corrupt_tumour(tumour, region, SPACING, LabelNoise("miss", 0.5), np.random.default_rng(seed))
        assert set(_volumes(noisy)) <= set(_volumes(tumour)) and not (noisy & ~tumour).any()


def test_bias_dilates_every_lesion_by_the_distance_inside_the_liver() -> None:
    tumour, region = _case()
    noisy = corrupt_tumour(tumour, region, SPACING, LabelNoise("bias", 2.0), np.random.default_rng(0))
    assert (noisy >= tumour).all() and not (noisy & ~(region | tumour)).any()
    for radius, before, after in zip(RADII, _volumes(tumour), _volumes(noisy), strict=True):
        assert after / before == pytest.approx(((radius + 2) / radius) ** 3, rel=0.2)


def test_boundary_moves_each_boundary_within_the_distance_reproducibly() -> None:
    tumour, region = _case()
    noise = LabelNoise("boundary", 2.0)
    a = corrupt_tumour(tumour, region, SPACING, noise, np.random.default_rng(7))
    b = corrupt_tumour(tumour, region, SPACING, noise, np.random.default_rng(7))
    c = corrupt_tumour(tumour, region, SPACING, noise, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    near = ndimage.distance_transform_edt(~tumour) <= 2.0
    core = ndimage.distance_transform_edt(tumour) > 2.0
    assert not (a & ~near).any() and a[core].all()  # only the 2 mm band around each boundary changes
    assert (a & ~tumour).any() and (tumour & ~a).any()  # some stretches grow, others shrink
    assert len(_volumes(a)) == 3
    assert np.array_equal(corrupt_tumour(tumour, region, SPACING, LabelNoise("boundary", 0.0),
                                         np.random.default_rng(7)), tumour)


def _raw_dataset(folder: Path) -> RawDataset:
    tumour, region = _case()
    label = np.where(tumour, 2, np.where(region, 1, 0)).astype(np.uint8)
    geometry = Geometry(SPACING, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for i in range(2):
        write_image(np.full(label.shape, -100, np.int16), geometry, folder / "imagesTr" / f"C_{i:03d}_0000.nii.gz")
        write_image(label, geometry, folder / "labelsTr" / f"C_{i:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": 2,
        "file_ending": ".nii.gz"}))
    return RawDataset(folder)


def test_noisy_raw_copy_corrupts_only_the_labels_and_keeps_the_liver_region(tmp_path: Path) -> None:
    raw = _raw_dataset(tmp_path / "raw" / "Dataset951_Noise")
    noisy = noisy_raw_copy(raw, tmp_path / "noisy" / raw.name, LabelNoise("drop", 1.0), seed=0)
    assert [c.case_id for c in noisy.training_cases] == ["C_000", "C_001"]
    for case, original in zip(noisy.training_cases, raw.training_cases, strict=True):
        assert case.image(0).resolve() == original.image(0).resolve()  # linked, not copied
        label, geometry = read_image(case.label)
        reference, reference_geometry = read_image(original.label)
        assert geometry.differences(reference_geometry) == []
        assert np.array_equal(label > 0, reference > 0)  # the liver region is untouched
        assert len(_volumes(label == 2)) == 1 and len(_volumes(reference == 2)) == 3
    again = noisy_raw_copy(raw, tmp_path / "again" / raw.name, LabelNoise("drop", 1.0), seed=0)
    assert np.array_equal(read_image(again.training_cases[0].label)[0], read_image(noisy.training_cases[0].label)[0])


def test_train_fraction_keeps_a_seeded_subset_of_each_fold() -> None:
    splits = {"scheme": "kfold", "splits": [{"train": [f"c{i}" for i in range(20) if i % 5 != k],
                                             "val": [f"c{i}" for i in range(20) if i % 5 == k]} for k in range(5)]}
    half = fraction_splits(splits, 0.5, seed=3)
    for fold, original in zip(half["splits"], splits["splits"], strict=True):
        assert len(fold["train"]) == 8 and set(fold["train"]) <= set(original["train"])
        assert fold["val"] == original["val"]
    assert half == fraction_splits(splits, 0.5, seed=3) and half != fraction_splits(splits, 0.5, seed=4)
    assert all(len(f["train"]) == 1 for f in fraction_splits(splits, 0.01, seed=0)["splits"])


def test_arm_keys_and_refusals() -> None:
    assert TrainingArm().is_default and TrainingArm().key == "clean"
    assert TrainingArm(LabelNoise("boundary", 2.0), 0.5).key == "noise-boundary-2_fraction-0.5"
    assert TrainingArm(LabelNoise("bias", 0.0)).is_default
    with pytest.raises(SmoothSegError, match="train-fraction"):
        TrainingArm(fraction=0.0)
    with pytest.raises(SmoothSegError, match="single_stage"):
        AblationSettings(dataset=900, variants=("single_stage",), arm=TrainingArm(fraction=0.5))
