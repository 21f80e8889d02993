"""dataset.json schema, dataset lookup, case discovery and the clinical table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoothseg import paths
from smoothseg.dataset import DatasetSpec, RawDataset, list_cases
from smoothseg.dataset.clinical import load_clinical_table
from smoothseg.dataset.dataset_json import ClinicalSpec
from smoothseg.errors import DatasetNotFoundError, DatasetSchemaError

VALID = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "liver": 1, "tumor": 2, "portal_vein": 3},
    "numTraining": 2,
    "file_ending": ".nii.gz",
    "description": "kept as-is",
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def test_valid_dataset_json_parses_and_round_trips(tmp_path: Path) -> None:
    spec = DatasetSpec.from_file(_write(tmp_path, VALID))
    assert spec.num_channels == 1 and spec.label_values == (0, 1, 2, 3)
    # Defaults from the label names: tumour labels join the liver region; portal vein does not by name.
    assert spec.task_regions.liver == (1, 2) and spec.task_regions.tumor == (2,)
    assert spec.clinical is None
    again = DatasetSpec.from_dict(spec.to_dict())
    assert again == spec and again.extra == {"description": "kept as-is"}


def test_task_regions_and_clinical_keys(tmp_path: Path) -> None:
    data = dict(VALID, task_regions={"liver": [1, 2, 3], "tumor": [2]},
                clinical={"file": "clinical.csv", "features": ["Age", "BCLC"], "categorical": ["BCLC"]})
    spec = DatasetSpec.from_file(_write(tmp_path, data))
    assert spec.task_regions.liver == (1, 2, 3)
    assert spec.clinical == ClinicalSpec("clinical.csv", "case_id", ("Age", "BCLC"), ("BCLC",))
    assert spec.clinical.numeric == ("Age",)


def test_mass_label_counts_as_tumour(tmp_path: Path) -> None:
    data = dict(VALID, labels={"background": 0, "Liver": 1, "Mass": 2, "Aorta": 4})
    spec = DatasetSpec.from_file(_write(tmp_path, data))
    assert spec.task_regions.tumor == (2,) and spec.task_regions.liver == (1, 2)


@pytest.mark.parametrize("change, key, words", [
    ({"channel_names": None}, "channel_names", "non-empty object"),
    ({"channel_names": {"1": "CT"}}, "channel_names", "keys must be"),
    ({"labels": {"liver": 1}}, "labels", "background label"),
    ({"labels": {"background": 0, "liver": [1, 2]}}, "labels", "value of 'liver'"),
    ({"labels": {"background": 0, "liver": 1, "x": 1}}, "labels", "unique"),
    ({"numTraining": -1}, "numTraining", "non-negative"),
    ({"file_ending": "nii.gz"}, "file_ending", "file ending"),
    ({"labels": {"background": 0, "organ": 1}}, "task_regions", "no label is named 'liver'"),
    ({"task_regions": {"liver": [1]}}, "task_regions", "exactly the keys"),
    ({"task_regions": {"liver": [1, 9], "tumor": [2]}}, "task_regions.liver", "[9] are not declared"),
    ({"task_regions": {"liver": [1], "tumor": [2]}}, "task_regions.tumor", "part of the liver region"),
    ({"clinical": {"features": ["Age"]}}, "clinical.file", "must name"),
    ({"clinical": {"file": "c.csv", "features": ["Age"], "categorical": ["Sex"]}}, "clinical.categorical",
     "not listed"),
    ({"clinical": {"file": "c.csv", "features": ["case_id"]}}, "clinical.features", "case id column"),
    ({"clinical": {"file": "c.csv", "features": ["Age", "TLVR"]}}, "clinical.features", "derived from the segment"),
    ({"clinical": {"file": "c.csv", "features": ["Tumor volume (ml)"]}}, "clinical.features", "['Tumor volume (ml)']"),
    ({"clinical": {"file": "c.csv", "features": ["liver_vol"]}}, "clinical.features", "derived from the segment"),
])
def test_schema_errors_name_key_and_file(tmp_path: Path, change: dict, key: str, words: str) -> None:
    path = _write(tmp_path, {**VALID, **change})
    with pytest.raises(DatasetSchemaError) as exc:
        DatasetSpec.from_file(path)
    assert exc.value.key == key
    assert str(path) in str(exc.value) and f"'{key}'" in str(exc.value) and words in str(exc.value)


def test_clinical_sizes_known_at_diagnosis_are_not_taken_for_segmentation_measures() -> None:
    from smoothseg.dataset.dataset_json import is_segmentation_derived

    for name in ("Tr_Size", "T_involvment", "AFP", "Age", "CLIP_Score", "BCLC", "Okuda", "tumour_diameter_cm"):
        assert not is_segmentation_derived(name), name
    for name in ("tlvr", "TLVR_ref", "tumour_volume_ml", "TumorVolume", "lesion_voxels", "volume_liver",
                 "tumor_to_liver_ratio"):
        assert is_segmentation_derived(name), name


def test_missing_key_and_invalid_json(tmp_path: Path) -> None:
    data = dict(VALID)
    del data["numTraining"]
    with pytest.raises(DatasetSchemaError, match="'numTraining': required key is missing"):
        DatasetSpec.from_file(_write(tmp_path, data))
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetSchemaError, match="not valid JSON"):
        DatasetSpec.from_file(bad)
    with pytest.raises(DatasetSchemaError, match="dataset.json not found"):
        DatasetSpec.from_file(tmp_path / "absent" / "dataset.json")


def test_roots_default_under_one_base_and_env_overrides(data_home: Path, monkeypatch, tmp_path: Path) -> None:
    assert paths.raw_root() == data_home / "raw"
    assert paths.preprocessed_root() == data_home / "preprocessed"
    assert paths.results_root() == data_home / "results"
    monkeypatch.setenv("SMOOTHSEG_RESULTS", str(tmp_path / "elsewhere"))
    assert paths.results_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("SMOOTHSEG_HOME")
    assert paths.raw_root() == Path.home() / "smoothseg_data" / "raw"


def test_roots_are_logged(data_home: Path, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO):
        paths.log_roots(logging.getLogger("test"))
    text = caplog.text
    assert str(data_home / "raw") in text and "default" in text and "results" in text


@pytest.mark.parametrize("identifier", [7, "7", "007", "Dataset007_HCCTACESeg"])
def test_find_dataset_accepts_id_forms(tmp_path: Path, identifier) -> None:
    (tmp_path / "Dataset007_HCCTACESeg").mkdir()
    (tmp_path / "Dataset003_MSDLiver").mkdir()
    assert paths.find_dataset(identifier, tmp_path) == tmp_path / "Dataset007_HCCTACESeg"


def test_find_dataset_errors_list_what_exists(tmp_path: Path) -> None:
    (tmp_path / "Dataset003_MSDLiver").mkdir()
    with pytest.raises(DatasetNotFoundError, match="Dataset003_MSDLiver"):
        paths.find_dataset(7, tmp_path)
    (tmp_path / "Dataset003_Other").mkdir()
    with pytest.raises(DatasetNotFoundError, match="ambiguous"):
        paths.find_dataset("003", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="not a dataset id"):
        paths.find_dataset("liver", tmp_path)


def test_case_discovery_from_file_names(tmp_path: Path) -> None:
    for name in ["imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz", "imagesTr/b_0000.nii.gz",
                 "labelsTr/a.nii.gz", "labelsTr/c.nii.gz", "imagesTr/.tmp-x-d_0000.nii.gz", "imagesTr/notes.txt"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    cases = {c.case_id: c for c in list_cases(tmp_path, ".nii.gz")}
    assert sorted(cases) == ["a", "b", "c"]
    assert sorted(cases["a"].images) == [0, 1] and cases["a"].label.name == "a.nii.gz"
    assert cases["b"].label is None and cases["c"].images == {}


def test_clinical_table_keyed_by_case_id(tmp_path: Path) -> None:
    (tmp_path / "clinical.csv").write_text("case_id,Age,BCLC,AFP\n007,61,B,\nHCC_002,70,C,12.5\n")
    spec = ClinicalSpec("clinical.csv", "case_id", ("Age", "BCLC", "AFP"), ("BCLC",))
    table = load_clinical_table(tmp_path, spec)
    assert list(table.index) == ["007", "HCC_002"]
    assert table.loc["007", "Age"] == 61.0 and np.isnan(table.loc["007", "AFP"])
    assert table.loc["HCC_002", "BCLC"] == "C"


@pytest.mark.parametrize("text, words", [
    ("id,Age,BCLC,AFP\n1,2,B,3\n", "case id column missing"),
    ("case_id,Age,BCLC\n1,2,B\n", "'AFP'"),
    ("case_id,Age,BCLC,AFP\n1,2,B,3\n1,4,C,5\n", "duplicate case ids"),
    ("case_id,Age,BCLC,AFP\n1,old,B,3\n", "non-numeric values (1='old')"),
])
def test_clinical_table_errors_name_the_file(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "clinical.csv").write_text(text)
    spec = ClinicalSpec("clinical.csv", "case_id", ("Age", "BCLC", "AFP"), ("BCLC",))
    with pytest.raises(DatasetSchemaError) as exc:
        load_clinical_table(tmp_path, spec)
    assert "clinical.csv" in str(exc.value) and words in str(exc.value)


def test_raw_dataset_ties_it_together(demo_dataset: Path) -> None:
    raw = RawDataset.find(900)
    assert raw.folder == demo_dataset
    assert len(raw.training_cases) == raw.spec.num_training == 4 and len(raw.test_cases) == 2
    table = raw.clinical()
    assert set(c.case_id for c in raw.training_cases + raw.test_cases) <= set(table.index)
    assert "tlvr" not in {c.lower() for c in table.columns}
