"""``smoothseg_predict`` and friends after short trainings of tiny liver and tumour models (trained once per module).

Covers the label maps and reports of a cohort (geometry identical to the inputs', flipped directions included),
robustness to broken inputs, model selection, export -> install on another results root, cohort parts and skipping
of finished cases, and the full validation of a fold with the predicted liver.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from inference_helpers import train_tiny_pair, use_home

from smoothseg.dataset.io import Geometry, read_header, read_image, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import CascadePredictor, ModelOptions
from smoothseg.inference.cohort import CohortOptions, predict
from smoothseg.inference.postprocessing import postprocess_liver
from smoothseg.inference.predictor import StagePredictor
from smoothseg.models.archive import export_models, install_models
from smoothseg.models.store import select_models
from smoothseg.workflows.validation import validate_fold

DATASET = "Dataset900_SyntheticLiver"
FAST_MODELS = ModelOptions(device=torch.device("cpu"), step_size=1.0)
FAST = CohortOptions(num_processes_preprocessing=0, num_processes_postprocessing=0, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_dataset_pristine: Path) -> Path:
    """A data home with the demo dataset preprocessed and tiny liver + tumour models trained for fold 0."""
    return train_tiny_pair(tmp_path_factory.mktemp("predict") / "home", demo_dataset_pristine)


@pytest.fixture
def home(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The trained data home as this test's roots (in-process calls and CLI processes, one torch thread each)."""
    yield from use_home(trained, monkeypatch)


@pytest.fixture
def inputs(home: Path, tmp_path: Path) -> Path:
    """Two test cases in nnU-Net naming plus a flipped-direction training case under a plain name."""
    raw = home / "raw" / DATASET
    folder = tmp_path / "inputs"
    folder.mkdir()
    for path in sorted((raw / "imagesTs").iterdir()):
        shutil.copy(path, folder / path.name)
    shutil.copy(raw / "imagesTr" / "SynLiver_001_0000.nii.gz", folder / "flipped.nii.gz")
    assert np.any(np.diag(read_header(folder / "flipped.nii.gz").geometry.direction_matrix) < 0)
    return folder


def _geometry_matches(image_path: Path, label_path: Path) -> None:
    original, predicted = read_header(image_path), read_header(label_path)
    assert predicted.size == original.size
    assert not original.geometry.differences(predicted.geometry, spacing_tol=1e-6, origin_tol_mm=1e-4,
                                             direction_tol=1e-6), label_path


def test_predict_cli_writes_label_maps_with_the_input_geometry_and_reports(home: Path, inputs: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("predict", "-i", str(inputs), "-o", str(out), "-device", "cpu", "--step-size", "1", "-npp", "1",
                     "-nps", "1", home=home)
    assert result.returncode == 0, result.stderr
    cases = {"SynLiver_004": "SynLiver_004_0000.nii.gz", "SynLiver_005": "SynLiver_005_0000.nii.gz",
             "flipped": "flipped.nii.gz"}
    for case_id, image_name in cases.items():
        label_path = out / f"{case_id}.nii.gz"
        _geometry_matches(inputs / image_name, label_path)
        labels, _ = read_image(label_path)
        assert set(np.unique(labels)) <= {0, 1, 2}
        report = json.loads((out / f"{case_id}_report.json").read_text())
        assert report["case_id"] == case_id and report["lesion_count"] == len(report["lesions"])
        assert report["model"]["folds"] == {"liver": ["0"], "tumor": ["0"]}
        model = report["model"]  # auto without a fold validation: no contours, and the report says why
        assert model["active_contour_mode"] == "auto" and not model["active_contour"]
        assert "no fold validation has tried them yet" in model["active_contour_source"]
        assert report["small_lesions_removed"] >= 0 and report["model"]["min_lesion_volume_source"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 3 and summary["n_failed"] == 0
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("case_id,liver_found,liver_volume_ml") and len(rows) == 4
    assert "3 case(s): 3 ok" in result.stdout


def test_broken_inputs_are_reported_and_the_others_finish(home: Path, inputs: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(inputs / "SynLiver_004_0000.nii.gz", folder / "good_0000.nii.gz")
    data = gzip.decompress((inputs / "SynLiver_005_0000.nii.gz").read_bytes())
    (folder / "truncated_0000.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    nan_image = np.zeros((8, 16, 16), np.float32)
    nan_image[3, 4, 5] = np.nan
    write_image(nan_image, Geometry((1, 1, 1), (0, 0, 0)), folder / "nan_0000.nii.gz")
    (folder / "flat_0000.mha").write_bytes(b"")
    out = tmp_path / "out"
    result = run_cli("predict", "-i", str(folder), "-o", str(out), "-device", "cpu", "--step-size", "1",
                     "-npp", "1", "-nps", "0", "--no-active-contour", "--output-format", ".nrrd", home=home)
    assert result.returncode == 1, result.stderr
    summary = {c["case_id"]: c for c in json.loads((out / "summary.json").read_text())["cases"]}
    assert summary["good"]["status"] == "ok"
    for case_id, name in (("truncated", "truncated_0000.nii.gz"), ("nan", "nan_0000.nii.gz"),
                          ("flat", "flat_0000.mha")):
        assert summary[case_id]["status"] == "failed" and name in summary[case_id]["message"], summary[case_id]
        assert not (out / f"{case_id}.nrrd").exists()
    assert "NaN" in summary["nan"]["message"]
    _geometry_matches(folder / "good_0000.nii.gz", out / "good.nrrd")  # --no-active-contour: valid output too
    labels, _ = read_image(out / "good.nrrd")
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert "3 failed" in result.stderr and "truncated_0000.nii.gz" in result.stderr


def test_model_selection_lists_what_exists(home: Path, inputs: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_home"
    result = run_cli("predict", "-i", str(inputs), "-o", str(tmp_path / "o"), home=empty)
    assert result.returncode == 2 and "no dataset" in result.stderr and "choose one with -d" in result.stderr
    results = tmp_path / "results"
    shutil.copytree(home / "results" / DATASET, results / DATASET)
    shutil.copytree(home / "results" / DATASET, results / "Dataset901_Other")
    with pytest.raises(SmoothSegError, match=r"2 datasets(.|\n)*Dataset900_SyntheticLiver(.|\n)*Dataset901_Other"):
        select_models(root=results)
    assert select_models("901", root=results).dataset == "Dataset901_Other"
    with pytest.raises(SmoothSegError, match="fold.* 3 have no checkpoint_final.pth; available: 0"):
        select_models("900", folds=["3"], root=results)
    shutil.rmtree(results / "Dataset901_Other" / "SmoothSegTrainer__tumor")
    pair = select_models(root=results)
    assert pair.dataset == DATASET and pair.folds == {"liver": ("0",), "tumor": ("0",)}
    with pytest.raises(SmoothSegError, match="no trained tumor model"):
        select_models("901", root=results)
    with pytest.raises(SmoothSegError, match="no dataset '42'.*Dataset900"):
        select_models("42", root=results)


def test_export_install_round_trip_predicts_identically(home: Path, inputs: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    one = inputs / "SynLiver_004_0000.nii.gz"
    first = predict(one, tmp_path / "first", models=FAST_MODELS, options=FAST)
    archive = export_models("900", tmp_path / "model.zip")
    second_home = tmp_path / "second_home"
    result = run_cli("install_model", str(archive), home=second_home)
    assert result.returncode == 0, result.stderr
    assert (second_home / "results" / DATASET / "SmoothSegTrainer__tumor" / "plans.json").is_file()
    again = run_cli("install_model", str(archive), home=second_home)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    monkeypatch.setenv("SMOOTHSEG_HOME", str(second_home))
    second = predict(one, tmp_path / "second", models=FAST_MODELS, options=FAST)
    assert first.ok and second.ok
    a, _ = read_image(tmp_path / "first" / "SynLiver_004.nii.gz")
    b, _ = read_image(tmp_path / "second" / "SynLiver_004.nii.gz")
    np.testing.assert_array_equal(a, b)
    install_models(archive, overwrite=True)


def test_parts_write_each_case_once_and_reruns_skip_finished_cases(home: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen = []
    for part in (0, 1):
        summary = predict(inputs, out, models=FAST_MODELS, options=replace(FAST, num_parts=2, part_id=part))
        assert summary.ok
        seen += [c.case_id for c in summary.cases]
        assert (out / f"summary_part{part}of2.json").is_file()
    assert sorted(seen) == ["SynLiver_004", "SynLiver_005", "flipped"]
    assert len((out / "report.csv").read_text().splitlines()) == 4  # the cohort CSV covers both parts
    stamp = os.stat(out / "flipped.nii.gz").st_mtime_ns
    again = replace(FAST, continue_prediction=True)
    rerun = predict(inputs, out, models=FAST_MODELS, options=again)
    assert [c.status for c in rerun.cases] == ["skipped"] * 3
    assert os.stat(out / "flipped.nii.gz").st_mtime_ns == stamp
    (out / "flipped_report.json").unlink()  # an unfinished case is redone
    redo = predict(inputs, out, models=FAST_MODELS, options=again)
    assert [c.status for c in redo.cases] == ["skipped", "skipped", "ok"]
    forced = predict(inputs, out, models=FAST_MODELS, options=replace(FAST, num_parts=2, part_id=1))
    assert [(c.case_id, c.status) for c in forced.cases] == [("SynLiver_005", "ok")]  # the default predicts again
    # outputs of another model (other settings here; a retrained model changes the checkpoints' hash) are redone
    first_id = json.loads((out / "flipped_report.json").read_text())["model"]["model_id"]
    other = predict(inputs, out, models=replace(FAST_MODELS, active_contour="on"), options=again)
    assert [c.status for c in other.cases] == ["ok"] * 3
    ids = {json.loads((out / f"{c.case_id}_report.json").read_text())["model"]["model_id"] for c in other.cases}
    assert len(ids) == 1 and first_id not in ids


def test_validate_fold_uses_the_predicted_liver(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    livers: list[np.ndarray] = []
    given: list[np.ndarray] = []
    liver_stage, tumour_stage = CascadePredictor.liver_stage, CascadePredictor._tumour_stage

    def record_liver(self, *args, **kwargs):
        livers.append(liver_stage(self, *args, **kwargs))
        return livers[-1]

    def record_tumour(self, image, geometry, liver, with_probability):
        given.append(liver)
        return tumour_stage(self, image, geometry, liver, with_probability)

    monkeypatch.setattr(CascadePredictor, "liver_stage", record_liver)
    monkeypatch.setattr(CascadePredictor, "_tumour_stage", record_tumour)  # what every cascade path calls
    folder = validate_fold("900", 0, models=FAST_MODELS, progress=False)
    assert folder == home / "results" / DATASET / "SmoothSegTrainer__tumor" / "fold_0" / "validation"
    val_ids = json.loads((home / "preprocessed" / DATASET / "splits.json").read_text())["splits"][0]["val"]
    assert len(livers) == len(given) == len(val_ids)
    for case_id, predicted, passed in zip(val_ids, livers, given, strict=True):
        assert passed is predicted  # the tumour stage got the liver stage's output, not the reference
        labels, _ = read_image(folder / f"{case_id}.nii.gz")
        assert not ((labels > 0) & ~predicted).any()  # the tumour stage refines the predicted liver, never grows it
        image, geometry = read_image(home / "raw" / DATASET / "imagesTr" / f"{case_id}_0000.nii.gz")
        liver_model = StagePredictor(select_models("900", ["0"]).checkpoints("liver"), device="cpu", step_size=1.0)
        np.testing.assert_array_equal(predicted, postprocess_liver(liver_model.predict_labels(image, geometry) > 0))
        _geometry_matches(home / "raw" / DATASET / "imagesTr" / f"{case_id}_0000.nii.gz", folder / f"{case_id}.nii.gz")
    assert json.loads((folder / "summary.json").read_text())["n_ok"] == len(val_ids)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert sorted(row["case_id"] for row in metrics["cases"]) == sorted(val_ids)
    for row in metrics["cases"]:  # the evaluation's tumour Dice is the one recomputed from the written files
        labels, _ = read_image(folder / f"{row['case_id']}.nii.gz")
        reference, _ = read_image(home / "raw" / DATASET / "labelsTr" / f"{row['case_id']}.nii.gz")
        tp, n = ((labels == 2) & (reference == 2)).sum(), (labels == 2).sum() + (reference == 2).sum()
        assert row["tumor_dice"] == (pytest.approx(2 * tp / n) if n else None)
    # the operating point (threshold + minimum lesion volume) is chosen on these predictions (made at argmax without
    # any post-processing, probabilities kept) and used by smoothseg_predict
    post = json.loads((folder.parent / "postprocessing.json").read_text())
    assert sorted(post["per_case"]) == sorted(val_ids)
    contours = post["active_contour"]  # tried off and on, chosen on the same predictions
    assert set(contours["mean_tumor_dice"]) == set(contours["settings"]) and "off" in contours["settings"]
    assert sorted(contours["per_case"]) == sorted(val_ids)
    best_contour = max(contours["mean_tumor_dice"].values())
    assert contours["mean_tumor_dice"][contours["chosen"]] == pytest.approx(best_contour)
    assert contours["chosen"] == "off" or contours["mean_tumor_dice"]["off"] < best_contour - 1e-9
    point = post["operating_point"]
    assert point["objective"] == "f1" and sorted(point["per_case"]) == sorted(val_ids)
    chosen = point["chosen"]
    assert post["tumor_threshold"] == chosen["threshold"] == point["tumor_threshold"]
    assert post["min_lesion_volume_ml"] == chosen["min_lesion_volume_ml"] == point["min_lesion_volume_ml"]
    assert point["format"] == 2 and post["min_lesion_confidence"] == chosen["min_lesion_confidence"]
    assert len(point["froc"]) == 4 * 7 * 6  # argmax and 3 thresholds x 7 confidences x 6 minimum volumes
    feasible = [r for r in point["froc"] if r["feasible"]] or point["froc"]
    assert chosen["f1"] == max(r["f1"] for r in feasible if r["f1"] is not None)
    assert sum(r["chosen"] for r in point["froc"]) == 1
    assert chosen["tp"] == sum(point["per_case"][c][chosen["key"]]["tp"] for c in val_ids)  # pooled per-case counts
    assert (folder / "froc.png").stat().st_size > 1000
    by_case = {row["case_id"]: row for row in metrics["cases"]}
    for case_id in val_ids:  # at argmax without a minimum volume the counts are the evaluation's own
        at_argmax = point["per_case"][case_id]["argmax|0|0"]
        assert (at_argmax["tp"], at_argmax["fp"], at_argmax["fn"]) == tuple(
            by_case[case_id][f"tumor_lesion_{k}"] for k in ("tp", "fp", "fn"))
        assert (folder / f"{case_id}.npz").is_file()
    assert not list(folder.parent.glob(".reference-*"))


def test_save_probabilities_writes_the_tumour_probability_on_the_label_grid(home: Path, inputs: Path,
                                                                           tmp_path: Path) -> None:
    """``--save_probabilities``: one ``<case>.npz`` per case with the tumour probability on the label map's grid
    and geometry, 0 outside the predicted liver, and at least 1/3 wherever the (unfiltered) label map says tumour
    (the argmax of three linearly reverted class maps that sum to 1)."""
    out = tmp_path / "out"
    models = replace(FAST_MODELS, save_probabilities=True, active_contour="off", min_lesion_volume_ml=0.0,
                     tumor_threshold="argmax", min_lesion_confidence=0.0)
    summary = predict(inputs, out, models=models, options=FAST)
    assert summary.count("ok") == 3
    for image_path in sorted(inputs.iterdir()):
        case_id = image_path.name.replace("_0000.nii.gz", "").replace(".nii.gz", "")
        labels, geometry = read_image(out / f"{case_id}.nii.gz")
        with np.load(out / f"{case_id}.npz") as saved:
            probability = saved["tumor_probability"]
            np.testing.assert_allclose(saved["spacing"], geometry.spacing)
            np.testing.assert_allclose(saved["origin"], geometry.origin)
            np.testing.assert_allclose(saved["direction"], geometry.direction)
        assert probability.dtype == np.float16 and probability.shape == labels.shape
        assert probability.min() >= 0 and probability.max() <= 1
        assert not probability[labels == 0].any()
        assert probability[labels > 0].max() > 0
        assert (probability[labels == 2] >= 0.33).all()


def test_a_tumour_threshold_replaces_argmax_and_every_lesion_carries_its_confidence(home: Path, inputs: Path,
                                                                                 tmp_path: Path) -> None:
    """``tumor_threshold``: tumour = P(tumour) >= t inside the same liver (a superset of argmax for a low t); each
    reported lesion's confidence is its highest P(tumour), at least the threshold; the report says where the
    threshold came from."""
    # every part of the operating point given: independent of what a validation in this module chose
    base = replace(FAST_MODELS, active_contour="off", min_lesion_volume_ml=0.0, min_lesion_confidence=0.0,
                   save_probabilities=True)
    predict(inputs, tmp_path / "argmax", models=replace(base, tumor_threshold="argmax"), options=FAST)
    predict(inputs, tmp_path / "low", models=replace(base, tumor_threshold=0.05), options=FAST)
    for image_path in sorted(inputs.iterdir()):
        case_id = image_path.name.replace("_0000.nii.gz", "").replace(".nii.gz", "")
        at_argmax, _ = read_image(tmp_path / "argmax" / f"{case_id}.nii.gz")
        low, _ = read_image(tmp_path / "low" / f"{case_id}.nii.gz")
        with np.load(tmp_path / "low" / f"{case_id}.npz") as saved:
            probability = saved["tumor_probability"].astype(np.float32)
        np.testing.assert_array_equal(low > 0, at_argmax > 0)  # the liver does not depend on the threshold
        assert not ((at_argmax == 2) & (low != 2)).any()
        clear = np.abs(probability - 0.05) > 1e-3  # the saved map is float16
        np.testing.assert_array_equal((low == 2)[clear], ((probability >= 0.05) & (low > 0))[clear])
        report = json.loads((tmp_path / "low" / f"{case_id}_report.json").read_text())
        assert report["model"]["tumor_threshold"] == 0.05 and report["model"]["tumor_threshold_source"] == "given"
        assert report["model"]["min_lesion_confidence"] == 0.0
        for lesion in report["lesions"]:
            assert 0.05 - 1e-3 <= lesion["confidence"] <= 1.0
        reference = json.loads((tmp_path / "argmax" / f"{case_id}_report.json").read_text())
        assert all(0.0 <= lesion["confidence"] <= 1.0 for lesion in reference["lesions"])
    # a minimum confidence drops whole lesions below it and keeps the others as they were
    predict(inputs, tmp_path / "confident", models=replace(base, tumor_threshold=0.05, min_lesion_confidence=0.6),
            options=FAST)
    for image_path in sorted(inputs.iterdir()):
        case_id = image_path.name.replace("_0000.nii.gz", "").replace(".nii.gz", "")
        low, _ = read_image(tmp_path / "low" / f"{case_id}.nii.gz")
        confident, _ = read_image(tmp_path / "confident" / f"{case_id}.nii.gz")
        lesions = json.loads((tmp_path / "low" / f"{case_id}_report.json").read_text())["lesions"]
        kept = json.loads((tmp_path / "confident" / f"{case_id}_report.json").read_text())["lesions"]
        assert sorted(lesion["voxels"] for lesion in kept) == sorted(
            lesion["voxels"] for lesion in lesions if lesion["confidence"] >= 0.6 + 1e-3)
        assert not ((confident == 2) & (low != 2)).any()
    with pytest.raises(SmoothSegError, match="strictly between 0 and 1"):
        ModelOptions(tumor_threshold=1.5)
    with pytest.raises(SmoothSegError, match="confidence lies in"):
        ModelOptions(min_lesion_confidence=1.0)
    bad = run_cli("predict", "-i", str(inputs), "-o", str(tmp_path / "bad"), "--tumor-threshold", "2", home=home)
    assert bad.returncode == 2 and "must be 'argmax' or a probability between 0 and 1" in bad.stderr
