"""MSD Task03_Liver / LiTS converter on tiny real NIfTI files in both namings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataset_conversion.msd_liver import convert_msd_liver, find_cases
from smoothseg.cli.convert_msd import main
from smoothseg.dataset.dataset_json import DatasetSpec
from smoothseg.dataset.io import Geometry, read_image, write_image
from smoothseg.dataset.verify import verify_dataset
from smoothseg.errors import SmoothSegError

SHAPE = (5, 9, 11)
GEOMETRY = Geometry((0.75, 0.8, 2.5), (-120.5, 35.25, -410.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def _volume(seed: int, dtype=np.int16) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, SHAPE).astype(dtype)


def _label(seed: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[1:4, 2:7, 2:9] = 1
    label[2, 3 + seed % 2:5, 4:6] = 2
    return label


def _shifted(geometry: Geometry, mm: float) -> Geometry:
    return Geometry(geometry.spacing, tuple(v + mm for v in geometry.origin), geometry.direction)


@pytest.fixture
def msd_tree(tmp_path) -> Path:
    root = tmp_path / "Task03_Liver"
    images, labels = root / "imagesTr", root / "labelsTr"
    write_image(_volume(0, np.float64), GEOMETRY, images / "liver_0.nii.gz")  # whole-number floats -> int16
    write_image(_label(0), GEOMETRY, labels / "liver_0.nii.gz")
    write_image(_volume(1), GEOMETRY, images / "liver_1.nii.gz")
    write_image(_label(1).astype(np.float32), _shifted(GEOMETRY, 3e-3), labels / "liver_1.nii.gz")  # header noise
    write_image(_volume(2), GEOMETRY, images / "liver_2.nii.gz")
    write_image(_label(2), _shifted(GEOMETRY, 5.0), labels / "liver_2.nii.gz")  # does not fit its image
    write_image(_volume(3), GEOMETRY, images / "liver_3.nii.gz")  # no label
    write_image(_volume(4), GEOMETRY, images / "liver_4.nii.gz")
    write_image(_label(4) * 2, GEOMETRY, labels / "liver_4.nii.gz")  # value 4: not a liver task label
    (images / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07macOS resource fork")
    write_image(_volume(130), GEOMETRY, root / "imagesTs" / "liver_130.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "cancer"}}))
    return root


@pytest.fixture
def lits_tree(tmp_path) -> Path:
    root = tmp_path / "LiTS"
    write_image(_volume(10), GEOMETRY, root / "Training Batch 1" / "volume-0.nii")
    write_image(_label(0), GEOMETRY, root / "Training Batch 1" / "segmentation-0.nii")
    write_image(_volume(11), GEOMETRY, root / "Training Batch 2" / "volume-27.nii.gz")
    write_image(_label(1), GEOMETRY, root / "Training Batch 2" / "segmentation-27.nii.gz")
    write_image(_label(1), GEOMETRY, root / "Training Batch 2" / "segmentation-99.nii")  # no volume-99
    write_image(_volume(12), GEOMETRY, root / "Test" / "test-volume-5.nii")
    return root


def test_msd_layout_converted_with_exact_geometry(msd_tree, tmp_path):
    result = convert_msd_liver(msd_tree, output_root=tmp_path / "raw", progress=False)
    folder = result.folder
    assert folder.name == "Dataset003_MSDLiver"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["liver_0_0000.nii.gz", "liver_1_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["liver_0.nii.gz", "liver_1.nii.gz"]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["liver_130_0000.nii.gz"]
    for case, seed in (("liver_0", 0), ("liver_1", 1)):
        image, image_geometry = read_image(folder / "imagesTr" / f"{case}_0000.nii.gz")
        label, label_geometry = read_image(folder / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(image, _volume(seed))
        np.testing.assert_array_equal(label, _label(seed))
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert label_geometry == image_geometry  # copied exactly, noise included
        assert not GEOMETRY.differences(image_geometry, spacing_tol=1e-6, origin_tol_mm=1e-4, direction_tol=1e-6)

    reasons = {c.case_id: c.details["reason"] for c in result.report.skipped}
    assert set(reasons) == {"liver_2", "liver_3", "liver_4"}
    assert "beyond tolerance" in reasons["liver_2"] and "origin" in reasons["liver_2"]
    assert "no label" in reasons["liver_3"]
    assert "[4]" in reasons["liver_4"]
    noisy = next(c for c in result.report.converted if c.case_id == "liver_1")
    assert any("within tolerance" in w for w in noisy.warnings)

    spec = DatasetSpec.from_file(folder / "dataset.json")
    assert spec.labels == {"background": 0, "liver": 1, "tumor": 2}
    assert spec.num_training == 2 and spec.clinical is None
    assert "clinical" not in json.loads((folder / "dataset.json").read_text())
    assert spec.task_regions.liver == (1, 2) and spec.task_regions.tumor == (2,)
    saved = json.loads((folder / "conversion_report.json").read_text())
    assert saved["n_converted"] == 3 and saved["n_skipped"] == 3 and saved["layout"] == "MSD"
    report = verify_dataset(folder)
    assert report.ok, report.summary()
    assert (report.n_training, report.n_test) == (2, 1)


def test_lits_naming_in_several_folders(lits_tree, tmp_path):
    layout, cases, problems = find_cases(lits_tree)
    assert layout == "LiTS"
    assert [(c.case_id, c.split) for c in cases] == [("liver_0", "Tr"), ("liver_27", "Tr"), ("liver_test_5", "Ts")]
    result = convert_msd_liver(lits_tree, output_root=tmp_path / "raw", progress=False)
    folder = result.folder
    image, geometry = read_image(folder / "imagesTr" / "liver_27_0000.nii.gz")
    np.testing.assert_array_equal(image, _volume(11))
    label, label_geometry = read_image(folder / "labelsTr" / "liver_27.nii.gz")
    np.testing.assert_array_equal(label, _label(1))
    assert label_geometry == geometry
    assert (folder / "imagesTs" / "liver_test_5_0000.nii.gz").is_file()
    assert [c.case_id for c in result.report.skipped] == ["liver_99"]
    assert verify_dataset(folder).ok


def test_no_cases_and_existing_output_are_errors(tmp_path, msd_tree):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SmoothSegError, match="no MSD"):
        convert_msd_liver(empty, output_root=tmp_path / "raw", progress=False)
    convert_msd_liver(msd_tree, output_root=tmp_path / "raw", progress=False)
    with pytest.raises(SmoothSegError, match="overwrite"):
        convert_msd_liver(msd_tree, output_root=tmp_path / "raw", progress=False)
    convert_msd_liver(msd_tree, output_root=tmp_path / "raw", overwrite=True, progress=False)


def test_cli(msd_tree, tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["-i", str(msd_tree), "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "3 case(s) converted, 3 skipped" in printed and "liver_2" in printed
    assert main(["-i", str(msd_tree), "-o", str(out), "-q"]) == 2
    assert main(["-i", str(msd_tree), "-o", str(out), "-d", "4", "--name", "LiTS", "-q"]) == 0
    assert (out / "Dataset004_LiTS" / "dataset.json").is_file()
    assert main(["-i", str(tmp_path / "missing"), "-o", str(out), "-q"]) == 2


def test_default_raw_root_then_verify_by_id(msd_tree, data_home):
    from smoothseg.cli.verify_dataset import main as verify_main

    assert main(["-i", str(msd_tree), "-q"]) == 0
    assert (data_home / "raw" / "Dataset003_MSDLiver" / "dataset.json").is_file()
    assert verify_dataset(3).ok
    assert verify_main(["-d", "3", "-q"]) == 0
