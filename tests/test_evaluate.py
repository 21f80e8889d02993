"""Tests for folder evaluation, the paper's size strata, refusals, the replication protocol and ``--png``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_cli

from smoothseg.dataset.dataset_json import TaskRegions
from smoothseg.dataset.io import Geometry, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import evaluate, evaluate_folders
from smoothseg.evaluation.matching import match_cases, to_task_labels
from smoothseg.evaluation.metrics import evaluate_case
from smoothseg.evaluation.replication import summarize_replications, write_replication_summary
from smoothseg.evaluation.strata import PAPER_METRICS, STRATA
from smoothseg.synthetic import make_phantom

SHAPE = (8, 24, 24)  # (z, y, x)
GEOMETRY = Geometry((10.0, 10.0, 10.0), (0.0, 0.0, 0.0))  # 1 ml voxels, so diameters reach 10 cm easily


def _liver() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:7, 2:22, 2:22] = 1
    return labels


def _with_tumour(box: tuple[slice, ...] | None) -> np.ndarray:
    labels = _liver()
    if box is not None:
        labels[box] = 2
    return labels


# Reference tumours: "large_flat" is >= 10 cm but < 500 ml, "small" < 10 cm, "huge" >= 10 cm and >= 500 ml.
REFERENCES = {
    "large_flat": _with_tumour((slice(2, 4), slice(4, 16), slice(4, 16))),    # 288 ml, ~156 mm
    "small": _with_tumour((slice(3, 5), slice(5, 8), slice(5, 8))),            # 18 ml, ~31 mm
    "huge": _with_tumour((slice(1, 7), slice(3, 15), slice(3, 15))),          # 864 ml
    "tumour_free": _with_tumour(None),
}


def _predictions() -> dict[str, np.ndarray]:
    preds = {cid: ref.copy() for cid, ref in REFERENCES.items()}
    preds["large_flat"][2:4, 4:16, 10:16] = 1           # half of the tumour missed
    preds["small"][3:5, 5:8, 5:8] = 1                     # small tumour missed entirely
    preds["small"][3:5, 15:18, 15:18] = 2                 # and a false positive elsewhere
    preds["huge"][1:7, 3:15, 14] = 1                      # one column missed
    return preds


def _write_cases(folder: Path, arrays: dict[str, np.ndarray], geometry: Geometry = GEOMETRY) -> Path:
    for case_id, array in arrays.items():
        write_image(array, geometry, folder / f"{case_id}.nii.gz")
    return folder


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return _write_cases(tmp_path / "ref", REFERENCES), _write_cases(tmp_path / "pred", _predictions())


# ------------------------------------------------------------------------------------------------ metrics & outputs

def test_per_case_rows_equal_evaluate_case_and_outputs_are_written(folders, tmp_path):
    ref_dir, pred_dir = folders
    summary = evaluate_folders(ref_dir, pred_dir, tmp_path / "out" / "summary.json")
    preds = _predictions()
    rows = {r["case_id"]: r for r in summary["cases"]}
    assert sorted(rows) == sorted(REFERENCES)
    for case_id, ref in REFERENCES.items():
        expected = evaluate_case(ref, preds[case_id], GEOMETRY.spacing_zyx)
        for key in ("tumor_dice", "tumor_iou", "tumor_sensitivity", "tumor_accuracy", "liver_dice", "tumor_hd95_mm"):
            want = expected[key]
            got = rows[case_id][key]
            assert (got is None and not math.isfinite(want)) or got == pytest.approx(want), (case_id, key)
    assert rows["large_flat"]["tumor_dice"] == pytest.approx(2 * 144 / (288 + 144))

    csv = pd.read_csv(tmp_path / "out" / "summary_cases.csv")
    assert len(csv) == 4 and sorted(csv["case_id"]) == sorted(REFERENCES)
    assert {"tumor_dice", "liver_hd95_mm", "tumor_lesion_f1", "stratum_diameter", "stratum_volume"} <= set(csv.columns)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["metrics"]["tumor_dice"] == summary["metrics"]["tumor_dice"]
    markdown = (tmp_path / "out" / "summary.md").read_text()
    for stratum in STRATA:
        assert f"| {stratum.label} |" in markdown
    assert "| Stratum | n | Dice | IoU | Sensitivity | Accuracy |" in markdown


def test_aggregates_are_named_and_global_dice_differs_from_mean(folders):
    summary = evaluate_folders(*folders)
    dice = summary["metrics"]["tumor_dice"]
    assert set(dice) >= {"mean_per_case", "std_per_case", "n_cases", "n_nan", "n_inf", "n_finite"}
    # tumour-free case with an empty prediction: Dice undefined, left out and counted
    assert dice["n_cases"] == 4 and dice["n_nan"] == 1 and dice["n_finite"] == 3
    per_case = [r["tumor_dice"] for r in summary["cases"] if r["tumor_dice"] is not None]
    assert dice["mean_per_case"] == pytest.approx(np.mean(per_case))
    assert dice["std_per_case"] == pytest.approx(np.std(per_case))
    # pooled: sum 2TP / sum (2TP + FP + FN) over all cases
    tp = 144 + 0 + (864 - 72)
    fp = 18
    fn = 144 + 18 + 72
    assert summary["global"]["tumor_dice_global"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert abs(summary["global"]["tumor_dice_global"] - dice["mean_per_case"]) > 0.05
    detection = summary["lesion_detection"]
    assert (detection["tp"], detection["fp"], detection["fn"]) == (2, 1, 1)
    assert detection["f1"] == pytest.approx(4 / 6)


def test_strata_from_reference_diameter_and_volume(folders):
    strata = evaluate_folders(*folders)["strata"]
    assert sorted(strata["all"]["case_ids"]) == sorted(REFERENCES)
    assert sorted(strata["diameter_ge_10cm"]["case_ids"]) == ["huge", "large_flat"]
    assert strata["diameter_lt_10cm"]["case_ids"] == ["small"]
    assert strata["volume_ge_500ml"]["case_ids"] == ["huge"]
    assert sorted(strata["volume_lt_500ml"]["case_ids"]) == ["large_flat", "small"]
    ge10 = strata["diameter_ge_10cm"]
    assert ge10["n_cases"] == 2 and set(PAPER_METRICS) <= set(ge10)
    assert ge10["tumor_dice"]["n_cases"] == 2


def test_clinical_tr_size_overrides_reference_diameter(folders, tmp_path):
    csv = tmp_path / "clinical.csv"
    csv.write_text("Age,case_id,Tr_Size\n60,small,12.5\n70,large_flat,\n55,huge,4\n")
    summary = evaluate_folders(*folders, clinical_csv=csv)
    strata = summary["strata"]
    assert sorted(strata["diameter_ge_10cm"]["case_ids"]) == ["large_flat", "small"]  # blank -> reference
    assert strata["diameter_lt_10cm"]["case_ids"] == ["huge"]
    assert strata["volume_ge_500ml"]["case_ids"] == ["huge"]  # volume always from the reference
    rows = {r["case_id"]: r for r in summary["cases"]}
    assert rows["small"]["stratum_tumor_diameter_source"] == "clinical Tr_Size"
    assert rows["large_flat"]["stratum_tumor_diameter_source"] == "reference"
    assert rows["tumour_free"]["stratum_diameter"] == "none"

    first_column = tmp_path / "clinical_first.csv"  # no case_id column: the first column holds the ids
    first_column.write_text("patient,Tr_Size\nsmall,11\n")
    strata = evaluate_folders(*folders, clinical_csv=first_column)["strata"]
    assert "small" in strata["diameter_ge_10cm"]["case_ids"]

    bad = tmp_path / "clinical_bad.csv"
    bad.write_text("case_id,Tr_Size\nsmall,big\n")
    with pytest.raises(SmoothSegError, match="Tr_Size"):
        evaluate_folders(*folders, clinical_csv=bad)


def test_dataset_task_regions_map_raw_reference_labels(tmp_path, data_home):
    dataset = data_home / "raw" / "Dataset901_Regions"
    dataset.mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2, "portal_vein": 3},
        "numTraining": 1, "file_ending": ".nii.gz", "task_regions": {"liver": [1, 2, 3], "tumor": [2]}}))
    ref = REFERENCES["small"].copy()
    ref[2:6, 10:12, 10:12] = 3  # portal vein inside the liver
    pred = to_task_labels(ref, TaskRegions((1, 2, 3), (2,)))
    _write_cases(tmp_path / "ref", {"c": ref})
    _write_cases(tmp_path / "pred", {"c": pred})
    with_dataset = evaluate_folders(tmp_path / "ref", tmp_path / "pred", dataset="901")
    assert with_dataset["cases"][0]["liver_dice"] == pytest.approx(1.0)
    assert with_dataset["regions"]["reference_liver_labels"] == [1, 2, 3]
    default = evaluate_folders(tmp_path / "ref", tmp_path / "pred")
    assert default["cases"][0]["liver_dice"] < 1.0  # label 3 is background by default


def test_prediction_with_raw_labels_is_refused(tmp_path):
    _write_cases(tmp_path / "ref", {"c": REFERENCES["small"]})
    pred = REFERENCES["small"].copy()
    pred[0, 0, 0] = 3
    _write_cases(tmp_path / "pred", {"c": pred})
    with pytest.raises(SmoothSegError, match=r"label\(s\) \[3\]"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred")


def test_parallel_evaluation_equals_serial(folders):
    serial = evaluate_folders(*folders)
    parallel = evaluate_folders(*folders, num_processes=2)
    assert serial["metrics"] == parallel["metrics"] and serial["strata"] == parallel["strata"]


# ------------------------------------------------------------------------------------------------------- refusals

def _mismatched(tmp_path: Path) -> tuple[Path, Path]:
    ref_dir = _write_cases(tmp_path / "ref", {c: REFERENCES["small"] for c in ("a", "b", "c", "d", "f")})
    pred_dir = tmp_path / "pred"
    _write_cases(pred_dir, {"a": REFERENCES["small"]}, Geometry((10.0, 10.0, 12.0), (0.0, 0.0, 0.0)))
    _write_cases(pred_dir, {"b": REFERENCES["small"]}, Geometry((10.0, 10.0, 10.0), (0.0, 5.0, 0.0)))
    _write_cases(pred_dir, {"c": REFERENCES["small"]},
                 Geometry((10.0, 10.0, 10.0), (0.0, 0.0, 0.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1)))
    _write_cases(pred_dir, {"e": REFERENCES["small"]})  # extra; "d" is missing
    _write_cases(pred_dir, {"f": REFERENCES["small"][:, :, :20]})  # size differs
    (pred_dir / "summary.json").write_text("{}")  # not an image: ignored
    return ref_dir, pred_dir


def test_mismatches_are_refused_all_at_once(tmp_path):
    ref_dir, pred_dir = _mismatched(tmp_path)
    with pytest.raises(SmoothSegError) as info:
        evaluate_folders(ref_dir, pred_dir, tmp_path / "summary.json")
    message = str(info.value)
    assert "[a]" in message and "spacing" in message
    assert "[b]" in message and "origin" in message
    assert "[c]" in message and "direction" in message
    assert "[f]" in message and "size" in message
    assert "missing prediction(s)" in message and ": d" in message
    assert "extra prediction(s)" in message and ": e" in message
    assert "6 problem(s)" in message
    assert not (tmp_path / "summary.json").exists()


def test_matching_ignores_non_images_and_accepts_other_endings(tmp_path):
    _write_cases(tmp_path / "ref", {"a": REFERENCES["small"]})
    write_image(REFERENCES["small"], GEOMETRY, tmp_path / "pred" / "a.nrrd")
    (tmp_path / "pred" / "notes.txt").write_text("x")
    pairs = match_cases(tmp_path / "ref", tmp_path / "pred")
    assert [p.case_id for p in pairs] == ["a"] and pairs[0].prediction.name == "a.nrrd"


def test_cli_refusal_exits_2_without_traceback(tmp_path):
    ref_dir, pred_dir = _mismatched(tmp_path)
    result = run_cli("evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), home=tmp_path / "home")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "smoothseg_evaluate: error: refusing to evaluate" in result.stderr
    assert "missing prediction(s)" in result.stderr and "direction" in result.stderr


def test_cli_prints_the_paper_table(folders, tmp_path):
    ref_dir, pred_dir = folders
    out = tmp_path / "eval" / "run.json"
    result = run_cli("evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "--png",
                     home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "| ≥10 cm | 2 |" in result.stdout and "| <500 cm³ | 2 |" in result.stdout
    assert out.is_file()
    assert (tmp_path / "eval" / "run_cases.csv").is_file() and (tmp_path / "eval" / "run.md").is_file()
    assert "overlays skipped" in result.stderr  # --png without images: a warning, no pictures
    assert not (tmp_path / "eval" / "overlays").exists()


# ---------------------------------------------------------------------------------------------------- replication

def test_replication_mean_and_std_across_runs(folders, tmp_path):
    ref_dir, _ = folders
    summaries = []
    for run in range(3):
        preds = _predictions()
        preds["huge"][1:7, 3:15, 3 + run * 2] = 1  # each run misses a different amount
        preds["large_flat"][2:4, 4:16, 4:4 + run] = 1
        pred_dir = _write_cases(tmp_path / f"pred{run}", preds)
        summaries.append(evaluate_folders(ref_dir, pred_dir, tmp_path / f"run{run}" / "summary.json"))
    paths = [tmp_path / f"run{run}" / "summary.json" for run in range(3)]
    replicated = summarize_replications(paths)
    assert replicated["n_runs"] == 3 and replicated["std_ddof"] == 1
    for key in ("all", "diameter_ge_10cm", "volume_lt_500ml"):
        per_run = [s["strata"][key]["tumor_dice"]["mean_per_case"] for s in summaries]
        agg = replicated["strata"][key]["tumor_dice"]
        assert agg["per_run"] == pytest.approx(per_run)
        assert agg["mean_across_runs"] == pytest.approx(np.mean(per_run))
        assert agg["std_across_runs"] == pytest.approx(np.std(per_run, ddof=1))
    assert replicated["strata"]["diameter_lt_10cm"]["tumor_sensitivity"]["mean_across_runs"] == pytest.approx(0.0)
    global_runs = [s["global"]["tumor_dice_global"] for s in summaries]
    assert replicated["global"]["tumor_dice_global"]["mean_across_runs"] == pytest.approx(np.mean(global_runs))

    result = run_cli("evaluate", "--replications", *map(str, paths[:2]), str(tmp_path / "run2"), "-o",
                     str(tmp_path / "replicated.json"), home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "| All | 4/4/4 |" in result.stdout
    assert json.loads((tmp_path / "replicated.json").read_text())["n_runs"] == 3
    assert "mean ± std across runs" in (tmp_path / "replicated.md").read_text()


def test_replication_refuses_foreign_files(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(SmoothSegError) as info:
        write_replication_summary([tmp_path / "a.json", tmp_path / "missing.json"])
    assert "a.json" in str(info.value) and "missing.json" in str(info.value)


# ----------------------------------------------------------------------------------------------------- overlays

def test_png_writes_best_and_worst_overlays(tmp_path):
    images, refs, preds = {}, {}, {}
    for i in range(2):
        phantom = make_phantom(np.random.default_rng(i), "small")
        case_id = f"case_{i}"
        write_image(phantom.image, phantom.geometry, tmp_path / "imagesTr" / f"{case_id}_0000.nii.gz")
        refs[case_id] = phantom.label
        pred = np.where(phantom.label == 3, 1, phantom.label).astype(np.uint8)
        if i == 1:
            pred[pred == 2] = 1  # tumour missed: the worst case
        preds[case_id] = pred
        write_image(phantom.label, phantom.geometry, tmp_path / "labelsTr" / f"{case_id}.nii.gz")
        write_image(pred, phantom.geometry, tmp_path / "pred" / f"{case_id}.nii.gz")
        images[case_id] = phantom
    summary = evaluate(tmp_path / "labelsTr", tmp_path / "pred", tmp_path / "out" / "summary.json", png=True,
                       images_dir=tmp_path / "imagesTr")
    roles = {o["role"]: o for o in summary["overlays"]}
    assert roles["best"]["case_id"] == "case_0" and roles["worst"]["case_id"] == "case_1"
    for overlay in roles.values():
        assert Path(overlay["file"]).is_file() and Path(overlay["file"]).parent == tmp_path / "out" / "overlays"
    # without -img the sibling imagesTr of labelsTr is found
    again = evaluate_folders(tmp_path / "labelsTr", tmp_path / "pred", tmp_path / "out2" / "summary.json", png=True)
    assert len(again["overlays"]) == 2


def test_validation_layout_references_inside_the_prediction_folder(tmp_path):
    """Training's validation: references linked into a sub-folder of the predictions, summary named metrics.json."""
    pred_dir = _write_cases(tmp_path / "validation", _predictions())
    ref_dir = _write_cases(pred_dir / "reference-tmp", REFERENCES)
    summary = evaluate_folders(ref_dir, pred_dir, pred_dir / "metrics.json", dataset=None)
    (pred_dir / "summary.json").write_text('{"n_ok": 4}')  # the prediction report, not an evaluation summary
    assert summary["n_cases"] == 4 and (pred_dir / "metrics_cases.csv").is_file()
    replicated = summarize_replications([pred_dir])  # the folder's evaluation summary is found
    assert replicated["runs"] == [str(pred_dir / "metrics.json")]
    assert replicated["strata"]["all"]["tumor_dice"]["std_across_runs"] is None  # one run: no std
