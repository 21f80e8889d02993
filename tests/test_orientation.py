"""Canonical orientation: the same anatomy, stored in any orientation, reaches the networks as the same array."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from smoothseg.dataset.io import Geometry, read_image
from smoothseg.dataset.orientation import Orientation
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.planning.fingerprint import case_fingerprint
from smoothseg.preprocessing.preprocessor import TaskPreprocessor
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

SIGNED_PERMUTATIONS = [(perm, signs) for perm in itertools.permutations(range(3))
                       for signs in itertools.product((1, -1), repeat=3)]


def _direction(perm, signs) -> np.ndarray:
    d = np.zeros((3, 3))
    for column, (row, sign) in enumerate(zip(perm, signs, strict=True)):
        d[row, column] = sign
    return d


@pytest.mark.parametrize(("perm", "signs"), SIGNED_PERMUTATIONS)
def test_canonical_array_matches_simpleitk_dicomorient(perm, signs) -> None:
    """All 48 axis-aligned directions: the canonical array is SimpleITK's LPS reorientation, and it inverts."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(array)
    image.SetDirection(_direction(perm, signs).ravel().tolist())
    image.SetSpacing((1.0, 2.0, 3.0))
    reference = sitk.DICOMOrient(image, "LPS")
    orient = Orientation.from_direction(image.GetDirection())
    canonical = orient.to_canonical(array)
    np.testing.assert_array_equal(canonical, sitk.GetArrayFromImage(reference))
    assert orient.canonical_tuple((3.0, 2.0, 1.0)) == reference.GetSpacing()[::-1]
    np.testing.assert_array_equal(orient.to_original(canonical), array)
    # with a leading channel axis too
    stacked = np.stack([array, -array])
    np.testing.assert_array_equal(orient.to_original(orient.to_canonical(stacked)), stacked)
    # a box of the canonical frame covers the same voxels in the original frame
    box = (slice(1, 3), slice(2, 4), slice(0, 2))
    original_crop = array[orient.box_to_original(box, canonical.shape)]
    np.testing.assert_array_equal(orient.to_canonical(original_crop), canonical[1:3, 2:4, 0:2])
    assert Orientation.from_dict(orient.to_dict()) == orient
    assert orient.is_identity == (perm == (0, 1, 2) and signs == (1, 1, 1))


def test_oblique_direction_goes_to_the_nearest_axis_aligned_orientation() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    # index x mostly along -y, index y mostly along +x, index z along -z, each rotated by 0.3 rad
    oblique = np.array([[s, c, 0.0], [-c, s, 0.0], [0.0, 0.0, -1.0]])
    orient = Orientation.from_direction(oblique.ravel())
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetDirection(oblique.ravel().tolist())
    np.testing.assert_array_equal(orient.to_canonical(sitk.GetArrayFromImage(image)),
                                  sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")))
    assert orient.axes == (0, 2, 1) and orient.flips == (True, True, False)


def _reoriented_copies(path: Path, tmp_path: Path, codes=("LPS", "RAS", "PIR", "SLA")) -> list[Path]:
    """The same image written in several orientations by SimpleITK (independent of smoothseg's code)."""
    image = sitk.ReadImage(str(path))
    out = []
    for code in codes:
        target = tmp_path / f"{code}_{path.name}"
        sitk.WriteImage(sitk.DICOMOrient(image, code), str(target))
        out.append(target)
    return out


def test_any_storage_orientation_gives_the_same_network_input_and_reverts_to_its_own_frame(
        demo_dataset: Path, tmp_path: Path) -> None:
    raw = RawDataset(demo_dataset)
    plans = plan_and_preprocess(900, preprocess=False).plans
    case = raw.training_cases[0]
    images = _reoriented_copies(case.image(0), tmp_path)
    labels = _reoriented_copies(case.label, tmp_path)
    for task in ("liver", "tumor"):
        pre = TaskPreprocessor.from_plans(plans, task)
        outputs = []
        for image_path, label_path in zip(images, labels, strict=True):
            image, geometry = read_image(image_path)
            label, _ = read_image(label_path)
            data, seg, props = pre.preprocess(image, geometry, label=label)
            back = pre.revert_labels(seg, props)
            assert back.shape == image.shape
            # reverted labels are in the file's own frame: reorient them with SimpleITK to compare across copies
            written = sitk.GetImageFromArray(back)
            written.CopyInformation(sitk.ReadImage(str(image_path)))
            outputs.append((data, seg, sitk.GetArrayFromImage(sitk.DICOMOrient(written, "LPS"))))
        for data, seg, back in outputs[1:]:
            np.testing.assert_array_equal(data, outputs[0][0])
            np.testing.assert_array_equal(seg, outputs[0][1])
            np.testing.assert_array_equal(back, outputs[0][2])
    # a native-orientation plan would feed a different array for a flipped copy: the test above can fail
    native = TaskPreprocessor(dataclasses.replace(plans["liver"], orientation="native"), pre.liver_labels,
                              pre.tumor_labels)
    first, second = (native.preprocess(*read_image(p))[0] for p in images[:2])
    assert not np.array_equal(first, second)


def test_fingerprint_is_the_same_for_any_storage_orientation(demo_dataset: Path, tmp_path: Path) -> None:
    raw = RawDataset(demo_dataset)
    case = raw.training_cases[0]
    records = []
    for image, label in zip(_reoriented_copies(case.image(0), tmp_path), _reoriented_copies(case.label, tmp_path),
                            strict=True):
        copy = dataclasses.replace(case, images={0: image}, label=label)
        record, _ = case_fingerprint(copy, raw.spec)
        records.append(record)
    for record in records[1:]:
        for key in ("shape", "spacing", "liver_bbox", "liver_volume_ml", "tumor_volumes_ml", "intensity"):
            assert record[key] == records[0][key], key
    assert records[0]["direction"] != records[1]["direction"]


def test_the_identity_direction_is_canonical() -> None:
    assert Orientation.from_direction(Geometry((1, 1, 1), (0, 0, 0)).direction).is_identity


def test_stage_prediction_is_the_same_for_any_storage_orientation(demo_dataset: Path, data_home: Path,
                                                                  tmp_path: Path) -> None:
    """An untrained (so spatially irregular) liver model: any storage of the same scan gives the same labels."""
    from inference_helpers import make_model_pair

    from smoothseg.inference.predictor import StagePredictor

    stage = StagePredictor(make_model_pair(data_home / "results").checkpoints("liver"), device="cpu",
                           step_size=1.0)
    case = RawDataset(demo_dataset).training_cases[0]
    labels = []
    for path in _reoriented_copies(case.image(0), tmp_path, codes=("LPS", "RAI", "ASL")):
        image, geometry = read_image(path)
        predicted = stage.predict_labels(image, geometry)
        assert predicted.shape == image.shape
        written = sitk.GetImageFromArray(predicted)
        written.CopyInformation(sitk.ReadImage(str(path)))
        labels.append(sitk.GetArrayFromImage(sitk.DICOMOrient(written, "LPS")))
    assert 0 < labels[0].mean() < 1  # a non-trivial map, so equality below means something
    for other in labels[1:]:
        np.testing.assert_array_equal(other, labels[0])
