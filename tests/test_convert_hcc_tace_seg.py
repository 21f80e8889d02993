"""HCC-TACE-Seg converter on a tiny, real TCIA-like tree: CT series written with pydicom (one holding two
contrast phases at the same positions), DICOM SEGs written with highdicom, a clinical spreadsheet from pandas."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_builders import (
    add_series_references,
    box,
    make_ct_series,
    make_seg,
    paint_expected,
    pydicom,
    reread,
    strip_source_references,
    write_datasets,
)

from dataset_conversion.dicom_ct import index_dicom_tree, require_dicom_libraries, stack_slices
from dataset_conversion.hcc_tace_clinical import (
    CATEGORICAL_FEATURES,
    CATEGORIES,
    DEFAULT_FEATURES,
    ENCODINGS,
    NUMERIC_COLUMNS,
    OUTCOME_COLUMNS,
    encode_clinical,
)
from dataset_conversion.hcc_tace_seg import convert_hcc_tace_seg
from dataset_conversion.report import ConversionError
from smoothseg.cli.convert_hcc_tace_seg import main
from smoothseg.dataset.dataset_json import DatasetSpec
from smoothseg.dataset.io import read_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.dataset.verify import verify_dataset
from smoothseg.errors import SmoothSegError

# Segment order deliberately differs from the label values: mapping must go by label, not number.
SHAPE_1 = (7, 12, 16)
MASKS_1 = {
    "Mass": box(SHAPE_1, slice(2, 4), slice(4, 8), slice(6, 11)),
    "Necrosis": box(SHAPE_1, slice(2, 3), slice(5, 7), slice(7, 9)),
    "Liver": box(SHAPE_1, slice(1, 6), slice(2, 10), slice(2, 12)),
    "Abdominal aorta": box(SHAPE_1, slice(0, 7), slice(9, 12), slice(13, 15)),
    "Portal vein": box(SHAPE_1, slice(3, 6), slice(8, 11), slice(9, 13)),
}
ORIGIN_1 = (-100.5, 20.25, 300.0)
SHAPE_2 = (6, 10, 14)
MASKS_2 = {
    "Liver": box(SHAPE_2, slice(0, 4), slice(1, 8), slice(1, 10)),
    "Mass": box(SHAPE_2, slice(1, 3), slice(2, 5), slice(2, 6)),
    "portal_vein": box(SHAPE_2, slice(2, 5), slice(6, 9), slice(8, 11)),
    "ABDOMINAL AORTA": box(SHAPE_2, slice(0, 6), slice(8, 10), slice(11, 13)),
}
ORIENTATION_2 = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def _rng_hu(shape, seed):
    return np.random.default_rng(seed).integers(-200, 300, shape).astype(np.int16)


def _patient_1(root: Path) -> dict:
    """Two phases stacked in one series folder (same positions, AcquisitionNumber 1 and 2); SEG on phase 2."""
    base = _rng_hu(SHAPE_1, 1)
    study = root / "HCC_001" / "01-01-2000-NA-ABDOMEN-12345"
    kw = dict(origin=ORIGIN_1, pixel_spacing=(0.8, 0.7), slice_step=2.5, study_uid="1.2.3.1", series_uid="1.2.3.1.1",
              frame_of_reference_uid="1.2.3.1.9")
    phase1 = make_ct_series("HCC_001", base, acquisition_number=1, **kw)
    phase2 = make_ct_series("HCC_001", base + 500, acquisition_number=2, first_instance=8, **kw)
    both = phase1 + phase2
    order = list(np.random.default_rng(2).permutation(len(both)))
    paths = write_datasets(both, study / "2.000000-LIVER 3 PHASE-111", order=order)
    seg = make_seg(reread(paths[len(phase1):]), MASKS_1, "HCC_001")
    seg_file = study / "300.000000-Segmentation-222" / "1-1.dcm"
    seg_file.parent.mkdir(parents=True)
    seg.save_as(seg_file)
    # another study with an unrelated series, a corrupted file and a non-DICOM file the converter must ignore
    other = make_ct_series("HCC_001", _rng_hu((3, 12, 16), 3), origin=(0, 0, 0), pixel_spacing=(1, 1),
                           slice_step=5.0, study_uid="1.2.3.2")
    write_datasets(other, root / "HCC_001" / "02-02-2000-NA-FOLLOWUP-999" / "3.000000-PV-333")
    (study / "2.000000-LIVER 3 PHASE-111" / "1-999.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x13" * 200)
    return {"hu": (base + 500).astype(np.int16), "labels": paint_expected(MASKS_1), "seg": seg_file,
            "phase1": phase1}


def _patient_2(root: Path) -> dict:
    """Rotated in-plane orientation, slices stored top-down, SEG frames placed by position only."""
    hu = _rng_hu(SHAPE_2, 4)
    cts = make_ct_series("HCC_002", hu, origin=(50.0, -30.0, 100.0), pixel_spacing=(0.9, 0.6), slice_step=-3.0,
                         orientation=ORIENTATION_2)
    paths = write_datasets(cts, root / "HCC_002" / "study" / "series", order=[3, 0, 5, 1, 4, 2])
    seg_file = root / "HCC_002" / "study" / "seg" / "1-1.dcm"
    seg_file.parent.mkdir(parents=True)
    make_seg(reread(paths), MASKS_2, "HCC_002").save_as(seg_file)
    strip_source_references(seg_file, keep_series_reference=False)
    masks = {"Liver": MASKS_2["Liver"], "Mass": MASKS_2["Mass"], "Portal vein": MASKS_2["portal_vein"],
             "Abdominal aorta": MASKS_2["ABDOMINAL AORTA"]}
    return {"hu": hu[::-1], "labels": paint_expected(masks)[::-1]}


def _patient_without_seg(root: Path) -> None:
    write_datasets(make_ct_series("HCC_003", _rng_hu((3, 8, 8), 5), origin=(0, 0, 0), pixel_spacing=(1, 1),
                                  slice_step=2.0), root / "HCC_003" / "study" / "series")


def _patient_with_corrupted_slice(root: Path) -> Path:
    shape = (4, 8, 8)
    cts = make_ct_series("HCC_004", _rng_hu(shape, 6), origin=(0, 0, 0), pixel_spacing=(1, 1), slice_step=2.0)
    paths = write_datasets(cts, root / "HCC_004" / "study" / "series")
    seg_file = root / "HCC_004" / "study" / "seg" / "1-1.dcm"
    seg_file.parent.mkdir(parents=True)
    make_seg(reread(paths), {"Liver": box(shape, slice(0, 4), slice(1, 6), slice(1, 6))}, "HCC_004").save_as(seg_file)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-60])  # truncated pixel data: the header still reads
    return paths[2]


def _patient_with_irregular_spacing(root: Path) -> None:
    shape = (5, 8, 8)
    cts = make_ct_series("HCC_005", _rng_hu(shape, 7), origin=(0, 0, 0), pixel_spacing=(1, 1),
                         slice_step=[0.0, 2.0, 4.0, 8.0, 10.0])
    paths = write_datasets(cts, root / "HCC_005" / "study" / "series")
    seg_file = root / "HCC_005" / "study" / "seg" / "1-1.dcm"
    seg_file.parent.mkdir(parents=True)
    make_seg(reread(paths), {"Liver": box(shape, slice(0, 5), slice(1, 6), slice(1, 6))}, "HCC_005").save_as(seg_file)


CLINICAL_ROWS = [
    # TCIA_ID, Sex, age, Smoking, fhx_can, Evidence_of_cirh, hepatitis, AFP, Tr_Size, tumor_nodul, T_involvment,
    # CLIP_Score, Okuda, TNM, BCLC, CPS, AFP_group, TTP, OS, Censored_0_progressed_1
    ("HCC_001", "M", 65, 1, 0, 1, "HCV only", 12.5, 5.2, "multinodular", "< or = 50%", "Stage_2", "Stage I",
     "Stage-IIIa", "B", "A", "<400", 30, 100, 1),
    ("HCC_002", "F", 71, 0, 1, 0, "No virus", ">1000", 9.1, "uninodular", ">50%", "Stage_3", "Stage II",
     "Stage-IVb", "C", "B", ">=400", 12, 40, 0),
    ("HCC_003", 1, 58, None, "yes", "no", "HCV and HBV", 3, None, "uninodular", "< or = 50%", "Stage_0", "Stage III",
     "Stage-I", "Z", "C", "<400", 50, 80, 1),
]
CLINICAL_COLUMNS = ["TCIA_ID", "Sex", "age", "Smoking", "fhx_can", "Evidence_of_cirh", "hepatitis", "AFP", "Tr_Size",
                    "tumor_nodul", "T_involvment", "CLIP_Score", "Okuda", "TNM", "BCLC", "CPS", "AFP_group", "TTP",
                    "OS", "Censored_0_progressed_1"]


@pytest.fixture(scope="module")
def tcia(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tcia")
    download = root / "download" / "HCC-TACE-Seg"
    expected = {"HCC_001": _patient_1(download), "HCC_002": _patient_2(download)}
    _patient_without_seg(download)
    corrupted = _patient_with_corrupted_slice(download)
    _patient_with_irregular_spacing(download)
    (root / "download" / "LICENSE").write_text("not a DICOM file")
    xlsx = root / "clinical.xlsx"
    pd.DataFrame(CLINICAL_ROWS, columns=CLINICAL_COLUMNS).to_excel(xlsx, index=False)
    out = root / "raw"
    result = convert_hcc_tace_seg(root / "download", xlsx, output_root=out, progress=False)
    return {"root": root, "download": root / "download", "xlsx": xlsx, "result": result, "expected": expected,
            "corrupted": corrupted, "folder": out / "Dataset007_HCCTACESeg"}


def test_output_layout(tcia):
    folder = tcia["folder"]
    assert tcia["result"].folder == folder
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["HCC_001_0000.nii.gz", "HCC_002_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["HCC_001.nii.gz", "HCC_002.nii.gz"]
    for name in ("dataset.json", "clinical.csv", "conversion_report.json", "conversion.log"):
        assert (folder / name).is_file(), name


def test_two_phase_series_resolved_by_seg_reference(tcia):
    folder, expected = tcia["folder"], tcia["expected"]["HCC_001"]
    image, geometry = read_image(folder / "imagesTr" / "HCC_001_0000.nii.gz")
    assert image.dtype == np.int16
    assert image.shape == SHAPE_1
    np.testing.assert_array_equal(image, expected["hu"])  # phase 2 (+500 HU), not phase 1, not both
    np.testing.assert_allclose(geometry.spacing, (0.7, 0.8, 2.5), atol=1e-5)
    np.testing.assert_allclose(geometry.origin, ORIGIN_1, atol=1e-4)
    np.testing.assert_allclose(geometry.direction, np.eye(3).ravel(), atol=1e-6)
    labels, label_geometry = read_image(folder / "labelsTr" / "HCC_001.nii.gz")
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected["labels"])
    assert label_geometry == geometry
    # overlaps resolved: tumour (and necrosis, merged into it) over liver, portal vein over liver
    assert labels[2, 5, 7] == 2 and labels[3, 9, 10] == 3 and labels[1, 3, 3] == 1 and labels[0, 10, 13] == 4


def test_rotated_orientation_and_frames_placed_by_position(tcia):
    folder, expected = tcia["folder"], tcia["expected"]["HCC_002"]
    image, geometry = read_image(folder / "imagesTr" / "HCC_002_0000.nii.gz")
    np.testing.assert_array_equal(image, expected["hu"])
    np.testing.assert_allclose(geometry.spacing, (0.6, 0.9, 3.0), atol=1e-5)
    np.testing.assert_allclose(geometry.origin, (50.0, -30.0, 85.0), atol=1e-4)
    np.testing.assert_allclose(geometry.direction, (0, -1, 0, 1, 0, 0, 0, 0, 1), atol=1e-6)
    labels, label_geometry = read_image(folder / "labelsTr" / "HCC_002.nii.gz")
    np.testing.assert_array_equal(labels, expected["labels"])
    assert label_geometry == geometry
    report = json.loads((folder / "conversion_report.json").read_text())
    case = next(c for c in report["converted"] if c["case_id"] == "HCC_002")
    assert case["frames_placed_by_position"] == case["frames"] > 0


def test_skipped_patients_are_reported_with_reasons(tcia):
    report = json.loads((tcia["folder"] / "conversion_report.json").read_text())
    assert [c["case_id"] for c in report["converted"]] == ["HCC_001", "HCC_002"]
    reasons = {c["case_id"]: c["reason"] for c in report["skipped"]}
    assert set(reasons) == {"HCC_003", "HCC_004", "HCC_005"}
    assert "no DICOM SEG" in reasons["HCC_003"]
    assert str(tcia["corrupted"]) in reasons["HCC_004"] and "pixel data" in reasons["HCC_004"]
    assert "missing slice(s): a gap of 4.00 mm between 4.00 and 8.00 mm" in reasons["HCC_005"]
    case_1 = next(c for c in report["converted"] if c["case_id"] == "HCC_001")
    assert any("1-999.dcm" in w for w in case_1["warnings"])  # the corrupted file was reported, not fatal
    assert case_1["referenced_slices"] == SHAPE_1[0]
    assert case_1["phases_referenced"][0]["acquisition_number"] == 2
    assert "HCC_004" in (tcia["folder"] / "conversion.log").read_text()


def test_dataset_json(tcia):
    spec = DatasetSpec.from_file(tcia["folder"] / "dataset.json")
    assert spec.channel_names == {"0": "CT"}
    assert spec.labels == {"background": 0, "liver": 1, "tumor": 2, "portal_vein": 3, "aorta": 4}
    assert spec.task_regions.liver == (1, 2, 3) and spec.task_regions.tumor == (2,)
    assert spec.num_training == 2 and spec.file_ending == ".nii.gz"
    assert spec.clinical is not None and spec.clinical.file == "clinical.csv"
    assert spec.clinical.case_id_column == "case_id"
    assert spec.clinical.categorical == ("hepatitis",)
    features = set(spec.clinical.features)
    assert {"age", "Sex", "AFP", "Tr_Size", "BCLC", "CPS", "TNM", "Okuda", "CLIP_Score", "T_involvment",
            "Evidence_of_cirh", "hepatitis"} <= features
    assert not features & {"TTP", "OS", "Censored_0_progressed_1", "AFP_group"}


def test_clinical_csv_encodings(tcia):
    table = pd.read_csv(tcia["folder"] / "clinical.csv").set_index("case_id")
    assert list(table.index) == ["HCC_001", "HCC_002", "HCC_003"]
    row1, row2, row3 = table.loc["HCC_001"], table.loc["HCC_002"], table.loc["HCC_003"]
    assert (row1["Sex"], row2["Sex"], row3["Sex"]) == (1, 0, 1)
    assert (row1["BCLC"], row2["BCLC"]) == (2, 3) and np.isnan(row3["BCLC"])  # 'Z' is unknown -> blank
    assert (row1["CPS"], row2["CPS"], row3["CPS"]) == (1, 2, 3)
    assert (row1["TNM"], row2["TNM"], row3["TNM"]) == (3, 4, 1)
    assert (row1["Okuda"], row2["Okuda"], row3["Okuda"]) == (1, 2, 3)
    assert (row1["CLIP_Score"], row2["CLIP_Score"], row3["CLIP_Score"]) == (2, 3, 0)
    assert (row1["T_involvment"], row2["T_involvment"]) == (0, 1)
    assert (row1["tumor_nodul"], row2["tumor_nodul"]) == (1, 0)
    assert (row1["AFP_group"], row2["AFP_group"]) == (0, 1)
    assert (row1["AFP"], row2["AFP"]) == (12.5, 1000.0)
    assert (row1["hepatitis"], row2["hepatitis"], row3["hepatitis"]) == ("HCV", "none", "HBV+HCV")
    assert (row3["fhx_can"], row3["Evidence_of_cirh"]) == (1, 0) and np.isnan(row3["Smoking"])
    assert row1["TTP"] == 30  # outcomes are kept for analysis, just not as features
    report = json.loads((tcia["folder"] / "conversion_report.json").read_text())
    assert any("BCLC" in w and "'Z'" in w for w in report["warnings"])
    loaded = RawDataset(tcia["folder"]).clinical()  # the dataset model reads it back
    assert loaded.loc["HCC_002", "BCLC"] == 3.0 and loaded.loc["HCC_001", "hepatitis"] == "HCV"


def test_converted_dataset_verifies_clean(tcia):
    report = verify_dataset(tcia["folder"])
    assert report.ok, report.summary()
    assert report.n_training == 2


def test_keep_necrosis_and_complete_phase(tmp_path):
    # only patient 1 is needed; its SEG references the whole of phase 2, so completing the phase changes nothing
    download = tmp_path / "dl"
    _patient_1(download)
    result = convert_hcc_tace_seg(download, output_root=tmp_path / "raw", keep_necrosis=True, complete_phase=True,
                                  progress=False)
    spec = DatasetSpec.from_file(result.folder / "dataset.json")
    assert spec.labels["necrosis"] == 5 and spec.task_regions.tumor == (2, 5) and spec.clinical is None
    labels, _ = read_image(result.folder / "labelsTr" / "HCC_001.nii.gz")
    np.testing.assert_array_equal(labels, paint_expected(MASKS_1, keep_necrosis=True))


def test_seg_on_part_of_a_phase(tmp_path):
    shape = (7, 8, 8)
    hu = _rng_hu(shape, 8)
    cts = make_ct_series("HCC_006", hu, origin=(1.0, 2.0, 3.0), pixel_spacing=(1, 1), slice_step=2.0)
    paths = write_datasets(cts, tmp_path / "dl" / "HCC_006" / "series")
    liver = box((5, 8, 8), slice(0, 5), slice(2, 6), slice(2, 6))
    seg_file = tmp_path / "dl" / "HCC_006" / "seg" / "1-1.dcm"
    seg_file.parent.mkdir(parents=True)
    make_seg(reread(paths[1:6]), {"Liver": liver}, "HCC_006").save_as(seg_file)  # slices 1..5 of 0..6

    only = convert_hcc_tace_seg(tmp_path / "dl", output_root=tmp_path / "a", progress=False)
    image, geometry = read_image(only.folder / "imagesTr" / "HCC_006_0000.nii.gz")
    np.testing.assert_array_equal(image, hu[1:6])
    np.testing.assert_allclose(geometry.origin, (1.0, 2.0, 5.0), atol=1e-5)
    assert only.report.converted[0].details["phase_slices"] == 7

    whole = convert_hcc_tace_seg(tmp_path / "dl", output_root=tmp_path / "b", complete_phase=True, progress=False)
    image, geometry = read_image(whole.folder / "imagesTr" / "HCC_006_0000.nii.gz")
    labels, _ = read_image(whole.folder / "labelsTr" / "HCC_006.nii.gz")
    np.testing.assert_array_equal(image, hu)
    np.testing.assert_allclose(geometry.origin, (1.0, 2.0, 3.0), atol=1e-5)
    expected = np.zeros(shape, np.uint8)
    expected[1:6][liver] = 1
    np.testing.assert_array_equal(labels, expected)


def test_series_level_reference_to_both_phases_uses_the_frames_phase(tmp_path):
    download = tmp_path / "dl"
    expected = _patient_1(download)
    add_series_references(expected["seg"], expected["phase1"])
    result = convert_hcc_tace_seg(download, output_root=tmp_path / "raw", progress=False)
    assert result.report.converted_ids == ["HCC_001"]
    image, _ = read_image(result.folder / "imagesTr" / "HCC_001_0000.nii.gz")
    np.testing.assert_array_equal(image, expected["hu"])
    assert any("phases" in w for w in result.report.converted[0].warnings)


def test_seg_that_highdicom_rejects_is_read_with_pydicom(tmp_path):
    download = tmp_path / "dl"
    expected = _patient_1(download)
    ds = pydicom.dcmread(expected["seg"])
    del ds.SharedFunctionalGroupsSequence  # highdicom needs it; the converter does not
    ds.save_as(expected["seg"])
    result = convert_hcc_tace_seg(download, output_root=tmp_path / "raw", progress=False)
    assert result.report.converted_ids == ["HCC_001"]
    assert any("highdicom rejected" in w for w in result.report.converted[0].warnings)
    labels, _ = read_image(result.folder / "labelsTr" / "HCC_001.nii.gz")
    np.testing.assert_array_equal(labels, expected["labels"])


def test_irregular_stack_raises_clear_error(tcia):
    index = index_dicom_tree(tcia["download"] / "HCC-TACE-Seg" / "HCC_005", progress=False)
    with pytest.raises(ConversionError, match=r"not form one regular volume: missing slice\(s\): a gap of"):
        stack_slices([f for f in index.files if f.is_ct])
    stacked = index_dicom_tree(tcia["download"] / "HCC-TACE-Seg" / "HCC_001" / "01-01-2000-NA-ABDOMEN-12345",
                               progress=False)
    with pytest.raises(ConversionError, match=r"duplicate slice position\(s\).*acquisition.*two phases"):
        stack_slices([f for f in stacked.files if f.is_ct])


def test_encode_clinical_is_tolerant():
    raw = pd.DataFrame({"TCIA ID": ["HCC_010", "HCC_011", "HCC_011", None],
                        "Child_Pugh": ["Class B", "2", "A", "C"], "bclc": ["stage d", "A", "B", "C"],
                        "Gender": ["Female", "male", "M", "F"], "Notes": ["a", "b", "c", "d"]})
    clinical = encode_clinical(raw)
    table = clinical.table.set_index("case_id")
    assert list(table.index) == ["HCC_010", "HCC_011"]  # blank id dropped, duplicate kept once
    assert table.loc["HCC_010", "CPS"] == 2 and table.loc["HCC_011", "CPS"] == 2  # '2' is already a code
    assert table.loc["HCC_010", "BCLC"] == 4 and table.loc["HCC_010", "Sex"] == 0
    assert table.loc["HCC_011", "Notes"] == "b"  # unknown columns pass through
    assert any("more than once" in w for w in clinical.warnings)
    assert "CPS" in clinical.features and "Notes" not in clinical.features and "age" not in clinical.features
    assert ENCODINGS["BCLC"] == {"0": 0, "A": 1, "B": 2, "C": 3, "D": 4}


def test_every_default_feature_has_a_documented_encoding():
    for feature in DEFAULT_FEATURES:
        assert feature in ENCODINGS or feature in CATEGORIES or feature in NUMERIC_COLUMNS, feature
    assert set(CATEGORICAL_FEATURES) == set(DEFAULT_FEATURES) & set(CATEGORIES)
    assert not set(DEFAULT_FEATURES) & set(OUTCOME_COLUMNS)


def test_cli(tcia, tmp_path, capsys):
    args = ["-i", str(tcia["download"]), "-c", str(tcia["xlsx"]), "-o", str(tmp_path), "-q"]
    assert main(args) == 0
    assert "2 case(s) converted, 3 skipped" in capsys.readouterr().out
    assert main(args) == 2  # refuses to mix with the earlier conversion
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["-i", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x"), "-q"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-i", str(empty), "-o", str(tmp_path / "y"), "-q"]) == 2
    assert (tmp_path / "y" / "Dataset007_HCCTACESeg" / "conversion_report.json").is_file()
    assert main(["-i", str(tcia["download"]), "-o", str(tmp_path / "y"), "-q"]) == 0  # the failed run does not block


def test_missing_dicom_libraries_give_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(SmoothSegError, match=r'pip install "smoothseg\[dicom\]"'):
        require_dicom_libraries()
