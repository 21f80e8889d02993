"""Resampling, the task preprocessors, and resumable dataset preprocessing via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from scipy import ndimage

from smoothseg.dataset.io import read_image, write_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.planning.plans import Plans
from smoothseg.preprocessing.dataset_preprocessing import load_case, load_locations
from smoothseg.preprocessing.preprocessor import TaskPreprocessor, argmax_labels
from smoothseg.preprocessing.resampling import resample_image, resample_labels, shape_for_spacing
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("separate_z", [False, True])
def test_resampling_there_and_back(separate_z: bool) -> None:
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(20, 40, 40)), 3).astype(np.float32)
    labels = (image > 0).astype(np.uint8) + (image > 0.05).astype(np.uint8)
    spacing, target = (5.0, 1.0, 1.0), (2.5, 1.6, 1.6)
    shape = shape_for_spacing(image.shape, spacing, target)
    assert shape == (40, 25, 25)
    down = resample_image(image, shape, separate_z=separate_z)
    back = resample_image(down, image.shape, separate_z=separate_z)
    assert back.shape == image.shape and back.dtype == np.float32
    assert np.corrcoef(back.ravel(), image.ravel())[0, 1] > 0.97
    lab_back = resample_labels(resample_labels(labels, shape, separate_z=separate_z), labels.shape,
                               separate_z=separate_z)
    assert set(np.unique(lab_back)) == {0, 1, 2}
    assert _dice(lab_back > 0, labels > 0) > 0.93


@pytest.fixture
def prepared(demo_dataset: Path):
    result = plan_and_preprocess(900, num_processes=1)
    return result


def test_plan_and_preprocess_writes_everything(prepared, demo_dataset: Path) -> None:
    folder = prepared.folder
    for name in ("fingerprint.json", "plans.json", "splits.json"):
        assert (folder / name).is_file()
    raw = RawDataset(demo_dataset)
    ids = sorted(c.case_id for c in raw.training_cases)
    for task in ("liver", "tumor"):
        cfg = prepared.plans[task]
        for cid in ids:
            data, seg, props = load_case(folder / task, cid)
            assert isinstance(data, np.memmap) and data.dtype == np.float32 and data.shape[0] == 1
            assert data.shape[1:] == seg.shape == tuple(props["resampled_shape"])
            assert set(np.unique(seg)) <= set(range(cfg.num_classes))
            locs = load_locations(folder / task, cid)
            assert sorted(locs) == list(range(1, cfg.num_classes))
            for c, coords in locs.items():
                if len(coords):
                    assert np.all(np.asarray(seg)[tuple(coords.T)] == c)
            # normalised intensities: liver region near the window mean
            assert abs(float(np.median(np.asarray(data[0])[np.asarray(seg) == 1]))) < 1.5
            stats = props["intensity_stats"]  # for the lesion synthesis: mean and std per foreground class
            liver_values = np.asarray(data[0])[np.asarray(seg) == 1]
            assert stats["liver"] == pytest.approx([liver_values.mean(), liver_values.std()], abs=1e-4)
            assert (stats["tumour"] is None) == (task == "liver" or not (np.asarray(seg) == 2).any())
    assert json.loads((folder / "splits.json").read_text())["scheme"] == "kfold"


def test_tumor_crop_contains_the_whole_liver(prepared, demo_dataset: Path) -> None:
    raw = RawDataset(demo_dataset)
    for case in raw.training_cases:
        label, geometry = read_image(case.label)
        _, seg, props = load_case(prepared.folder / "tumor", case.case_id)
        liver = np.isin(label, raw.spec.task_regions.liver)
        start, stop = props["crop_box"]["start"], props["crop_box"]["stop"]
        inside = liver[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))].sum()
        assert inside == liver.sum(), case.case_id
        # the box keeps the planned margin (or touches the image border)
        idx = np.nonzero(liver)
        for axis, margin in enumerate(prepared.plans["tumor"].crop_margin_mm):
            lo_mm = (idx[axis].min() - start[axis]) * geometry.spacing_zyx[axis]
            assert lo_mm >= margin - 1e-6 or start[axis] == 0
        voxel_ml = np.prod(props["spacing"]) / 1000
        assert (np.asarray(seg) > 0).sum() * voxel_ml == pytest.approx(liver.sum() * np.prod(
            geometry.spacing) / 1000, rel=0.05)
        assert props["tlvr"] == pytest.approx(np.isin(label, [2]).sum() / liver.sum(), abs=1e-5)


@pytest.mark.parametrize("task", ["liver", "tumor"])
def test_revert_restores_the_original_grid(prepared, demo_dataset: Path, tmp_path: Path, task: str) -> None:
    """Preprocess a flipped-direction case, revert its labels, write with the stored geometry: nothing moves."""
    raw = RawDataset(demo_dataset)
    plans = Plans.load(prepared.folder / "plans.json")
    pre = TaskPreprocessor.from_plans(plans, task)
    flipped = [c for c in raw.cases("Tr") + raw.cases("Ts")
               if not np.allclose(read_image(c.image(0))[1].direction_matrix, np.eye(3))]
    assert flipped, "the demo dataset should hold a flipped-direction case"
    case = flipped[0]
    image, geometry = read_image(case.image(0))
    label = read_image(case.label)[0]
    data, seg, props = pre.preprocess(image, geometry, label=label)
    back = pre.revert_labels(seg, props)
    assert back.shape == image.shape
    expected = pre.map_labels(label)
    assert _dice(back > 0, expected > 0) > 0.9
    probs = np.stack([(seg == c).astype(np.float32) for c in range(plans[task].num_classes)])
    reverted = pre.revert_probabilities(probs, props)
    assert reverted.shape == (plans[task].num_classes, *image.shape)
    np.testing.assert_allclose(reverted.sum(axis=0), 1.0, atol=1e-4)
    # The channel-wise argmax the cascade uses equals the argmax of the full reverted maps, on the grid and the crop.
    soft = np.random.default_rng(1).random(probs.shape).astype(np.float32) + 2 * probs
    soft /= soft.sum(axis=0)
    expected_labels = argmax_labels(pre.revert_probabilities(soft, props))
    assert set(np.unique(expected_labels)) == set(range(plans[task].num_classes))
    np.testing.assert_array_equal(pre.revert_argmax(soft, props), expected_labels)
    crop = tuple(slice(a, b) for a, b in zip(props["crop_box"]["start"], props["crop_box"]["stop"], strict=True))
    np.testing.assert_array_equal(pre.revert_argmax(soft, props, crop_only=True), expected_labels[crop])
    out = write_image(back, type(geometry).from_dict(props["geometry"]), tmp_path / "seg.nii.gz")
    assert read_image(out)[1] == geometry


def test_preprocessing_resumes_after_interruption(demo_dataset: Path) -> None:
    first = plan_and_preprocess(900, tasks=("tumor",))
    folder = first.folder / "tumor"
    ids = sorted(first.preprocessed["tumor"])
    assert len(ids) == 4
    # An interrupted run: one case lost its properties (written last), another has a half-written temp file.
    (folder / f"{ids[0]}.json").unlink()
    (folder / f"{ids[1]}.npy").unlink()
    (folder / ".tmp-deadbeef0000").mkdir()
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob(f"{ids[2]}*")}
    second = plan_and_preprocess(900, tasks=("tumor",))
    assert sorted(second.preprocessed["tumor"]) == ids[:2]
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob(f"{ids[2]}*")} == kept
    assert plan_and_preprocess(900, tasks=("tumor",)).preprocessed["tumor"] == []
    assert sorted(plan_and_preprocess(900, tasks=("tumor",), clean=True).preprocessed["tumor"]) == ids


def test_hand_edited_plans_are_honoured(demo_dataset: Path) -> None:
    result = plan_and_preprocess(900, tasks=("tumor",))
    plans_path = result.folder / "plans.json"
    data = json.loads(plans_path.read_text())
    data["configurations"]["tumor"]["spacing"] = [s * 2 for s in data["configurations"]["tumor"]["spacing"]]
    data["configurations"]["tumor"]["window"]["lower"] = -50.0
    plans_path.write_text(json.dumps(data))
    again = plan_and_preprocess(900, tasks=("tumor",))
    assert len(again.preprocessed["tumor"]) == 4  # the plan changed, so every case is redone
    assert json.loads(plans_path.read_text()) == data  # the edit survives
    _, seg, props = load_case(result.folder / "tumor", again.preprocessed["tumor"][0])
    assert props["spacing"] == data["configurations"]["tumor"]["spacing"]
    cropped = np.asarray(props["cropped_shape"])
    assert np.all(np.abs(np.asarray(seg.shape) - cropped / 2) <= 1)


def test_cli_refuses_a_broken_dataset_and_writes_nothing(demo_dataset: Path, data_home: Path) -> None:
    (demo_dataset / "labelsTr" / "SynLiver_001.nii.gz").unlink()
    out = run_cli("plan_and_preprocess", "-d", "900", "--verify_dataset_integrity", home=data_home)
    assert out.returncode == 1
    assert "[SynLiver_001]: label is missing" in out.stdout and "nothing was written" in out.stdout
    assert not (data_home / "preprocessed").exists()


def test_cli_plans_and_preprocesses(demo_dataset: Path, data_home: Path) -> None:
    out = run_cli("plan_and_preprocess", "-d", "900", "--no_pp", "--split-scheme", "holdout", home=data_home)
    assert out.returncode == 0, out.stderr
    assert "liver:" in out.stdout and "tumor:" in out.stdout and "window [" in out.stdout
    folder = data_home / "preprocessed" / "Dataset900_SyntheticLiver"
    assert json.loads((folder / "splits.json").read_text())["scheme"] == "holdout"
    assert not (folder / "liver").exists()
    bad = run_cli("plan_and_preprocess", "-d", "901", home=data_home)
    assert bad.returncode == 2 and "Dataset900_SyntheticLiver" in bad.stderr
