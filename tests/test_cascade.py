"""The cascade's building blocks with untrained (or constant) tiny models: no training needed.

Stage predictor (preprocessing shared with training, masking, fold ensembling), liver post-processing, label
composition, active-contour parameters from the plans, input discovery and cohort parts, geometry preservation for
any direction matrix, the no-liver path, the tumour report and model export/install validation.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from inference_helpers import TINY_DATASET, die_on_bad, make_constant, make_model_pair, tiny_plans
from scipy import ndimage

from smoothseg.dataset.io import Geometry, read_header, read_image, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import CascadePredictor, ModelOptions, active_contour_plan
from smoothseg.inference.cohort import CohortOptions, predict
from smoothseg.inference.cohort_workers import LoadJob, WorkerStage
from smoothseg.inference.inputs import InputCase, find_input_cases, select_part
from smoothseg.inference.postprocessing import compose_labels, postprocess_liver, refine_and_compose
from smoothseg.inference.predictor import StagePredictor
from smoothseg.inference.report import case_report
from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
from smoothseg.models.archive import export_models, install_models
from smoothseg.models.build import write_untrained_models
from smoothseg.models.store import select_models
from smoothseg.planning.plans import ActiveContourPlan, Plans
from smoothseg.preprocessing.normalization import outside_fill_value
from smoothseg.preprocessing.preprocessor import TaskPreprocessor, argmax_labels

CPU = torch.device("cpu")
FAST_MODELS = ModelOptions(device=CPU, step_size=1.0)
FAST = dict(num_processes_preprocessing=0, num_processes_postprocessing=0, progress=False)


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius ** 2


def _ct(shape=(20, 40, 44), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like image (HU) with a liver ball and a darker lesion, and its liver mask."""
    rng = np.random.default_rng(seed)
    liver = _ball(shape, (10, 20, 22), 9)
    image = np.full(shape, -900.0, dtype=np.float32)
    image[liver] = 110.0
    image[_ball(shape, (10, 18, 20), 3)] = 40.0
    return image + rng.normal(0, 5, shape).astype(np.float32), liver


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiny networks: one torch thread (here and in CLI processes) is faster than several."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def models(data_home: Path):
    return make_model_pair(data_home / "results", folds=("0", "1"))


# ------------------------------------------------------------------------------------------------------------------
# stage predictor
# ------------------------------------------------------------------------------------------------------------------

def test_tumour_stage_input_is_cropped_to_and_masked_outside_the_predicted_liver(models) -> None:
    image, liver = _ct()
    geometry = Geometry((2.0, 2.0, 4.0), (0, 0, 0))
    stage = StagePredictor(models.checkpoints("tumor")[:1], device="cpu")
    data, props = stage.preprocess(image, geometry, liver)
    reference = TaskPreprocessor.from_plans(tiny_plans(), "tumor")
    expected, _, expected_props = reference.preprocess(image, geometry, liver_mask=liver)
    assert props["crop_box"] == expected_props["crop_box"]  # the crop comes from the liver mask (plus the margin)
    fill = outside_fill_value(stage.plan)
    masked = data[0] == fill
    assert masked.any() and not masked.all()
    np.testing.assert_array_equal(data[0][~masked], expected[0][~masked])  # inside the liver: training's values
    with pytest.raises(SmoothSegError, match="liver mask"):
        stage.preprocess(image, geometry, np.zeros_like(liver))


def test_tumour_stage_refines_the_liver_at_fine_spacing_but_never_grows_it(models, monkeypatch) -> None:
    image, liver = _ct()
    geometry = Geometry((2.0, 2.0, 4.0), (0, 0, 0))
    cascade = CascadePredictor.from_models(models, replace(FAST_MODELS, active_contour=False))
    smaller = _ball(liver.shape, (10, 20, 22), 8)  # the tumour model trims the coarse liver boundary
    lesion = _ball(liver.shape, (10, 18, 20), 2)
    beyond = np.zeros_like(liver)
    beyond[10, 20, 33:36] = True  # "liver" the tumour model sees outside the mask it was given: never added
    assert not (beyond & liver).any()
    full = np.where(lesion, 2, np.where(smaller | beyond, 1, 0)).astype(np.uint8)

    def fake_revert(probabilities, properties):
        box = tuple(slice(a, b) for a, b in zip(properties["crop_box"]["start"], properties["crop_box"]["stop"],
                                                strict=True))
        return full[box], box

    monkeypatch.setattr(cascade.tumor, "revert_labels_to_crop", fake_revert)
    refined, tumour = cascade.tumour_stage(image, geometry, liver)
    np.testing.assert_array_equal(refined, smaller)
    np.testing.assert_array_equal(tumour, lesion)
    cascade.refine_liver = False
    kept, tumour = cascade.tumour_stage(image, geometry, liver)
    np.testing.assert_array_equal(kept, liver)
    np.testing.assert_array_equal(tumour, lesion)
    cascade.refine_liver = True
    for keep in (_ball(liver.shape, (10, 20, 22), 4), np.zeros_like(liver)):
        # a tumour model that keeps under half of the liver (or none) disagrees wholesale: the liver mask is kept
        full[:] = np.where(keep, 1, 0)
        kept, tumour = cascade.tumour_stage(image, geometry, liver)
        np.testing.assert_array_equal(kept, liver)
        assert not tumour.any()


def test_folds_are_ensembled_by_averaging_probabilities(models) -> None:
    image, _ = _ct()
    geometry = Geometry((2.0, 2.0, 4.0), (0, 0, 0))
    both = StagePredictor(models.checkpoints("liver"), device="cpu", step_size=1.0)
    singles = [StagePredictor([p], device="cpu", step_size=1.0) for p in models.checkpoints("liver")]
    data, _ = both.preprocess(image, geometry)
    mean = np.mean([s.predict_preprocessed(data) for s in singles], axis=0)
    np.testing.assert_allclose(both.predict_preprocessed(data), mean, atol=1e-6)
    probabilities = both.predict_probabilities(image, geometry)
    assert probabilities.shape == (2, *image.shape)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)


def test_small_tiles_are_batched_on_the_cpu_large_ones_are_not(models, monkeypatch) -> None:
    from smoothseg.inference import predictor

    stage = StagePredictor(models.checkpoints("liver")[:1], device="cpu")
    assert stage.plan.batch_size > 1 and stage.tile_batch_size == stage.plan.batch_size  # a tiny test plan
    monkeypatch.setattr(predictor, "SMALL_TILE_ELEMENTS", 1)
    assert StagePredictor(models.checkpoints("liver")[:1], device="cpu").tile_batch_size == 1
    assert StagePredictor(models.checkpoints("liver")[:1], device="cpu", tile_batch_size=3).tile_batch_size == 3


def test_tta_defaults_off_on_cpu_and_mirrors_only_the_planned_axes(models, monkeypatch) -> None:
    from smoothseg.inference import predictor

    assert not StagePredictor(models.checkpoints("liver"), device="cpu").tta
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["mirror_axes"])
        return torch.zeros((args[3], *args[1].shape[1:]))

    monkeypatch.setattr(predictor, "sliding_window_predict", spy)
    data = np.zeros((1, 16, 32, 32), dtype=np.float32)
    for task, axes in (("liver", ()), ("tumor", (0, 1, 2))):  # tiny_plans mirror as the planner does
        stage = StagePredictor(models.checkpoints(task)[:1], device="cpu", tta=True)
        assert stage.tta and stage.mirror_axes == axes
        stage.predict_preprocessed(data)
        StagePredictor(models.checkpoints(task)[:1], device="cpu").predict_preprocessed(data)
        assert seen[-2:] == [axes, ()]


# ------------------------------------------------------------------------------------------------------------------
# post-processing, composition, active-contour parameters
# ------------------------------------------------------------------------------------------------------------------

def test_liver_postprocessing_keeps_the_largest_component_and_fills_holes() -> None:
    mask = _ball((30, 30, 30), (15, 15, 15), 10)
    mask[_ball((30, 30, 30), (15, 15, 15), 3)] = False  # an enclosed hole
    mask[0:2, 0:2, 0:2] = True  # a small second component
    out = postprocess_liver(mask)
    np.testing.assert_array_equal(out, _ball((30, 30, 30), (15, 15, 15), 10))
    assert not postprocess_liver(np.zeros((4, 4, 4), bool)).any()


def test_labels_compose_and_argmax_matches_numpy() -> None:
    liver = np.zeros((3, 3, 3), bool)
    liver[1] = True
    tumour = np.zeros_like(liver)
    tumour[1, 1, 1] = tumour[0, 0, 0] = True  # the second lies outside the liver and is dropped
    labels = compose_labels(liver, tumour)
    assert labels.dtype == np.uint8 and labels[1, 1, 1] == 2 and labels[0, 0, 0] == 0 and labels[1, 0, 0] == 1
    probabilities = np.random.default_rng(0).random((3, 5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(argmax_labels(probabilities), np.argmax(probabilities, axis=0))


def _plans_with_active_contour(value) -> dict:
    data = tiny_plans().to_dict()
    data["configurations"]["tumor"]["active_contour"] = value
    return data


def test_active_contour_settings_are_typed_in_the_plans(tmp_path: Path) -> None:
    plan = tiny_plans()["tumor"]
    params = active_contour_plan(plan)  # no key in plans.json: the defaults, in the tumour plan's window
    assert params.window == (-100.0, 250.0) and params.iterations == 5
    assert tiny_plans()["liver"].active_contour is None
    edited = Plans.from_dict(_plans_with_active_contour({"iterations": 2, "margin_mm": 8.0}))["tumor"].active_contour
    assert edited.iterations == 2 and edited.margin_mm == 8.0 and edited.window == (-100.0, 250.0)
    with pytest.raises(SmoothSegError, match="configurations.tumor.active_contour"):
        Plans.from_dict(_plans_with_active_contour({"speed": 3}))
    with pytest.raises(SmoothSegError, match="configurations.tumor.active_contour"):
        Plans.from_dict(_plans_with_active_contour([1, 2]))
    # the JSON round trip keeps every setting
    again = Plans.from_dict(json.loads(json.dumps(Plans.from_dict(_plans_with_active_contour(
        {"iterations": 2, "window": [-50, 200]})).to_dict())))
    assert again["tumor"].active_contour == ActiveContourPlan(window=(-50.0, 200.0), iterations=2)


def test_the_cascade_takes_active_contour_settings_from_the_checkpoint(tmp_path: Path) -> None:
    plans = Plans.from_dict(_plans_with_active_contour({"iterations": 3}))
    models = write_untrained_models(plans, tmp_path / "results" / "Dataset998_AC")
    # a plans.json on disk that says otherwise is not a second source of truth
    (models.task_folder("tumor") / "plans.json").write_text(json.dumps(_plans_with_active_contour({"iterations": 9})))
    cascade = CascadePredictor.from_models(models, replace(FAST_MODELS, active_contour="on"))
    assert cascade.active_contour_params.iterations == 3
    off = CascadePredictor.from_models(models, replace(FAST_MODELS, active_contour=False))
    assert off.active_contour_params is None
    assert CascadePredictor.from_models(models, FAST_MODELS).active_contour_params is None  # auto, no validation


def test_cascade_active_contours_started_from_the_truth_keep_it() -> None:
    spacing = (2.5, 0.8, 0.8)
    shape = (32, 64, 64)
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")

    def ellipsoid(c, r):
        return sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r, strict=True)) <= 1

    liver = ellipsoid((40, 25.6, 25.6), (36, 24, 24))
    tumour = (ellipsoid((30, 16, 16), (8, 6, 6)) | ellipsoid((50, 34, 32), (9, 7, 7))) & liver
    image = np.where(liver, 110.0, -80.0)
    image[tumour] = 60.0
    image = ndimage.gaussian_filter(image, (0.4, 1, 1)) + np.random.default_rng(0).normal(0, 10, shape)
    labels = compose_labels(liver, tumour)
    geometry = Geometry(spacing[::-1], (0, 0, 0), (-1, 0, 0, 0, 1, 0, 0, 0, -1))
    refined = refine_and_compose(image, geometry, labels, active_contour_plan(tiny_plans()["tumor"]))
    new_tumour = refined == 2
    dice = 2 * np.count_nonzero(new_tumour & tumour) / (np.count_nonzero(new_tumour) + np.count_nonzero(tumour))
    assert dice >= 0.95
    assert ndimage.label(new_tumour, np.ones((3, 3, 3)))[1] == 2
    np.testing.assert_array_equal(refined > 0, liver)
    np.testing.assert_array_equal(refine_and_compose(image, geometry, labels, None), labels)


# ------------------------------------------------------------------------------------------------------------------
# inputs and parts
# ------------------------------------------------------------------------------------------------------------------

def test_input_discovery(tmp_path: Path) -> None:
    for name in ("b_0000.nii.gz", "a.nrrd", "c_0000.mha", "notes.txt", ".hidden.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    cases = find_input_cases(tmp_path)
    assert [(c.case_id, c.path.name, c.ending) for c in cases] == [
        ("a", "a.nrrd", ".nrrd"), ("b", "b_0000.nii.gz", ".nii.gz"), ("c", "c_0000.mha", ".mha")]
    (tmp_path / "b.nii").write_bytes(b"x")
    with pytest.raises(SmoothSegError, match="several images for one case id.*b_0000.nii.gz"):
        find_input_cases(tmp_path)
    (tmp_path / "b.nii").unlink()
    (tmp_path / "c_0001.mha").write_bytes(b"x")
    with pytest.raises(SmoothSegError, match="channel 0001"):
        find_input_cases(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SmoothSegError, match="no images found"):
        find_input_cases(tmp_path / "empty")


def test_parts_partition_the_cohort() -> None:
    cases = [InputCase(f"case{i}", Path(f"case{i}.nii.gz"), ".nii.gz") for i in (3, 1, 4, 0, 2)]
    parts = [select_part(cases, 3, k) for k in range(3)]
    ids = [c.case_id for part in parts for c in part]
    assert sorted(ids) == sorted(c.case_id for c in cases) and len(ids) == len(set(ids))
    assert [c.case_id for c in parts[0]] == ["case0", "case3"]
    with pytest.raises(SmoothSegError, match="part-id"):
        select_part(cases, 2, 2)


# ------------------------------------------------------------------------------------------------------------------
# whole cascade
# ------------------------------------------------------------------------------------------------------------------

def test_any_direction_matrix_is_preserved(models, data_home: Path, tmp_path: Path) -> None:
    for checkpoint in models.checkpoints("liver"):
        make_constant(checkpoint, [-5.0, 5.0])  # liver everywhere: the tumour stage runs
    for checkpoint in models.checkpoints("tumor"):
        make_constant(checkpoint, [-5.0, 5.0, -5.0])  # and keeps all of it as liver (no refinement, no tumour)
    image, _ = _ct((18, 30, 34))
    c, s = np.cos(0.4), np.sin(0.4)
    oblique = (c, -s, 0.0, s * 0.8, c * 0.8, -0.6, s * 0.6, c * 0.6, 0.8)  # a rotation, not axis-aligned
    geometry = Geometry((1.7, 2.1, 4.5), (-12.5, 30.25, 100.0), oblique)
    inputs = tmp_path / "in"
    write_image(image.astype(np.int16), geometry, inputs / "oblique_0000.nii.gz")
    summary = predict(inputs, tmp_path / "out", models=FAST_MODELS, options=CohortOptions(output_format="mha", **FAST))
    assert summary.ok and summary.cases[0].liver_found
    out = tmp_path / "out" / "oblique.mha"
    header, original = read_header(out), read_header(inputs / "oblique_0000.nii.gz")
    assert header.size == original.size
    assert not original.geometry.differences(header.geometry, spacing_tol=1e-6, origin_tol_mm=1e-4,
                                             direction_tol=1e-6)
    labels, _ = read_image(out)
    assert (labels == 1).all()  # every voxel accounted for: nothing shifted out of the grid


def test_minimum_lesion_volume_turns_small_tumour_into_liver(models, data_home: Path, tmp_path: Path) -> None:
    for checkpoint in models.checkpoints("liver"):
        make_constant(checkpoint, [-5.0, 5.0])  # liver everywhere
    for checkpoint in models.checkpoints("tumor"):
        make_constant(checkpoint, [-5.0, -5.0, 5.0])  # and all of it tumour: one lesion of the image's volume
    image, _ = _ct((18, 30, 34))
    geometry = Geometry((1.7, 2.1, 4.5), (0.0, 0.0, 0.0))  # 16.065 mm^3 per voxel: the image is 295 ml
    inputs = tmp_path / "in"
    write_image(image.astype(np.int16), geometry, inputs / "case_0000.nii.gz")
    reports = {}
    for name, volume in (("keep", 290.0), ("drop", 300.0)):
        chosen = replace(FAST_MODELS, active_contour=False, min_lesion_volume_ml=volume)
        assert predict(inputs, tmp_path / name, models=chosen, options=CohortOptions(**FAST)).ok
        reports[name] = json.loads((tmp_path / name / "case_report.json").read_text())
    kept, _ = read_image(tmp_path / "keep" / "case.nii.gz")
    dropped, _ = read_image(tmp_path / "drop" / "case.nii.gz")
    assert (kept == 2).all() and (dropped == 1).all()
    assert (reports["keep"]["lesion_count"], reports["keep"]["small_lesions_removed"]) == (1, 0)
    assert (reports["drop"]["lesion_count"], reports["drop"]["small_lesions_removed"]) == (0, 1)
    assert reports["drop"]["model"]["min_lesion_volume_ml"] == 300.0
    assert reports["drop"]["model"]["min_lesion_volume_source"] == "given"
    # without a value, the tumour fold folders' postprocessing.json decide (pooled over the folds); none: keep all
    assert CascadePredictor.from_models(models, FAST_MODELS).min_lesion_volume_ml == 0.0
    for fold, (dice_at_0, dice_at_1) in zip(("0", "1"), ((0.0, None), (0.9, 0.8)), strict=True):
        folder = models.checkpoints("tumor")[int(fold)].parent
        (folder / "postprocessing.json").write_text(json.dumps({"per_case": {"c": {"0": dice_at_0, "1": dice_at_1}}}))
    assert CascadePredictor.from_models(models, FAST_MODELS).min_lesion_volume_ml == 1.0  # (1 + 0.8) / 2 beats 0.45
    with pytest.raises(SmoothSegError, match="non-negative"):
        CascadePredictor(StagePredictor(models.checkpoints("liver"), device="cpu"),
                         StagePredictor(models.checkpoints("tumor"), device="cpu"), min_lesion_volume_ml=-1.0)
    bad = run_cli("predict", "-i", str(inputs), "-o", str(tmp_path / "bad"), "--min-lesion-ml", "-1", home=data_home)
    assert bad.returncode == 2 and "non-negative" in bad.stderr


def test_no_liver_gives_an_empty_map_and_says_so(models, data_home: Path, tmp_path: Path) -> None:
    for checkpoint in models.checkpoints("liver"):
        make_constant(checkpoint, [5.0, -5.0])  # background everywhere
    geometry = Geometry((0.9, 0.9, 3.0), (10.0, -20.0, 5.0), (1, 0, 0, 0, -1, 0, 0, 0, -1))
    write_image(np.full((12, 40, 40), -1000, np.int16), geometry, tmp_path / "in" / "air_0000.nii.gz")
    result = run_cli("predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-device", "cpu",
                     "-npp", "0", "-nps", "0", home=data_home)
    assert result.returncode == 0, result.stderr
    labels, out_geometry = read_image(tmp_path / "out" / "air.nii.gz")
    assert labels.shape == (12, 40, 40) and not labels.any()
    assert not geometry.differences(out_geometry)
    report = json.loads((tmp_path / "out" / "air_report.json").read_text())
    assert report["liver_found"] is False and report["lesion_count"] == 0 and report["tlvr"] is None
    assert "no liver found" in report["messages"][0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cases"][0]["status"] == "ok" and summary["cases"][0]["message"] == "no liver found"
    assert "no liver" in result.stderr.lower()


# ------------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------------

def test_report_measures_lesions_in_millimetres_and_physical_space() -> None:
    shape = (10, 20, 30)
    labels = np.zeros(shape, np.uint8)
    labels[2:8, 2:18, 2:28] = 1
    labels[4, 5, 5:9] = 2  # 4 voxels along x
    labels[6, 10:12, 20:22] = 2  # 4 voxels in a 2x2 square
    labels[3, 15, 25] = 2
    image = np.full(shape, 100.0)
    image[labels == 2] = 40.0
    geometry = Geometry((0.5, 0.8, 2.0), (10.0, 20.0, 30.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1))
    report = case_report("c1", image, labels, geometry, clinical_tlvr=0.125)
    assert report["lesion_count"] == 3 and report["liver_found"]
    voxel_ml = 0.5 * 0.8 * 2.0 / 1000
    assert report["liver_volume_ml"] == pytest.approx(np.count_nonzero(labels) * voxel_ml)
    assert report["tlvr"] == pytest.approx(9 / np.count_nonzero(labels))
    first, second, third = report["lesions"]
    assert first["volume_ml"] == pytest.approx(4 * voxel_ml) and first["max_diameter_mm"] == pytest.approx(1.5)
    assert first["centroid_index_xyz"] == [6.5, 5.0, 4.0]
    assert first["centroid_mm"] == pytest.approx([10.0 - 6.5 * 0.5, 20.0 + 5 * 0.8, 30.0 - 4 * 2.0])
    assert second["max_diameter_mm"] == pytest.approx(np.hypot(0.5, 0.8))
    assert third["voxels"] == 1 and third["max_diameter_mm"] == 0.0
    assert all(lesion["mean_hu"] == pytest.approx(40.0) for lesion in report["lesions"])
    assert report["clinical_tlvr_prediction"] == 0.125
    json.dumps(report, allow_nan=False)


def test_clinical_tlvr_prediction(tmp_path: Path) -> None:
    import pandas as pd

    from smoothseg.knowledge.tlvr import TLVRRegressor

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"afp": rng.random(12) * 100, "stage": rng.choice(["A", "B"], 12)},
                         index=[f"c{i}" for i in range(12)])
    model = TLVRRegressor(numeric_features=("afp",), categorical_features=("stage",)).fit(table, rng.random(12) * 0.3)
    path = tmp_path / "clinical.csv"
    table.rename_axis("case_id").reset_index().to_csv(path, index=False)
    clinical = ClinicalTLVR(path, [model.to_dict(), model.to_dict()])
    assert clinical.predict("c3") == pytest.approx(float(model.predict(table.loc[["c3"]])[0]))
    assert clinical.predict("unknown") is None
    assert ClinicalTLVR(path, []).predict("c3") is None


# ------------------------------------------------------------------------------------------------------------------
# model store
# ------------------------------------------------------------------------------------------------------------------

def test_install_validates_the_archive(models, data_home: Path, tmp_path: Path) -> None:
    archive = export_models(None, tmp_path / "model.zip")
    target = tmp_path / "other_results"

    def rewrite(name: str, change=lambda member, data: data, extra: dict[str, bytes] | None = None,
                drop: str | None = None) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
            manifest = json.loads(src.read("manifest.json"))
            for item in src.infolist():
                if item.filename not in ("manifest.json", drop):
                    dst.writestr(item.filename, change(item.filename, src.read(item.filename)))
            for member, data in (extra or {}).items():
                dst.writestr(member, data)
                manifest["files"][member] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            if drop != "manifest.json":
                dst.writestr("manifest.json", json.dumps(manifest))
        return out

    with pytest.raises(SmoothSegError, match="manifest.json is missing"):
        install_models(rewrite("no_manifest.zip", drop="manifest.json"), root=target)
    tampered = rewrite("tampered.zip", lambda member, data: data[:-10] + b"0" * 10 if member.endswith(".pth") else data)
    with pytest.raises(SmoothSegError, match="checksum mismatch"):
        install_models(tampered, root=target)
    with pytest.raises(SmoothSegError, match="unsafe"):
        install_models(rewrite("escape.zip", extra={f"{TINY_DATASET}/../../evil.json": b"{}"}), root=target)
    incomplete = rewrite("incomplete.zip", drop=f"{TINY_DATASET}/SmoothSegTrainer__tumor/fold_1/checkpoint_final.pth")
    with pytest.raises(SmoothSegError, match="incomplete archive"):
        install_models(incomplete, root=target)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(SmoothSegError, match="not a zip file"):
        install_models(tmp_path / "junk.zip", root=target)
    assert not (target / TINY_DATASET).exists()  # nothing was installed by a failed attempt

    pair = install_models(archive, root=target)
    assert pair.folds == {"liver": ("0", "1"), "tumor": ("0", "1")}
    assert select_models(root=target).dataset == TINY_DATASET
    with pytest.raises(SmoothSegError, match="refusing to overwrite"):
        install_models(archive, root=target)
    install_models(archive, root=target, overwrite=True)


def test_a_dying_worker_fails_only_its_case() -> None:
    stage = WorkerStage(die_on_bad, workers=1)
    jobs = [LoadJob(InputCase(name, Path(f"{name}.nii.gz"), ".nii.gz"), None) for name in ("a", "bad", "c")]
    try:
        done = [item for job in jobs for item in stage.submit(job)] + list(stage.drain())
    finally:
        stage.close()
    outcomes = {job.case.case_id: outcome for job, outcome in done}
    assert outcomes["a"].ok and outcomes["c"].ok and outcomes["c"].value == "c"
    assert not outcomes["bad"].ok and "bad.nii.gz: a worker process died" in outcomes["bad"].message


def test_active_contours_run_as_the_fold_validation_chose(tmp_path: Path) -> None:
    from smoothseg.inference.contour_choice import OFF, candidates, choose, section

    assert choose({"a": {"off": 0.8, "plan": 0.8}, "b": {"off": 0.5, "plan": 1.0}})[0] == "plan"
    assert choose({"a": {"off": None, "plan": 0.0}})[0] == OFF  # a tumour-free case left clean counts 1
    assert choose({"a": {"off": 0.8, "plan": 0.8}})[0] == OFF  # a tie keeps them off
    models = make_model_pair(tmp_path / "results", folds=("0", "1"))
    settings = candidates(active_contour_plan(tiny_plans()["tumor"]))
    tables = {"0": {"c1": {"off": 0.70, "plan": 0.72, "more_iterations": 0.80}},
              "1": {"c2": {"off": 0.90, "plan": 0.88, "more_iterations": 0.86}}}
    for fold, rows in tables.items():
        data = {"per_case": {}, "active_contour": section(rows, settings)}
        (models.task_folder("tumor") / f"fold_{fold}" / "postprocessing.json").write_text(json.dumps(data))
    cascade = CascadePredictor.from_models(models, FAST_MODELS)  # pooled: more_iterations 0.83 beats off 0.80
    assert cascade.active_contour_params.iterations == 2 * settings["plan"].iterations
    assert "more_iterations chosen on 2 validation case(s)" in cascade.model_info["active_contour_source"]
    fold_1 = replace(models, folds={"liver": ("1",), "tumor": ("1",)})
    only_fold_1 = CascadePredictor.from_models(fold_1, FAST_MODELS)
    assert only_fold_1.active_contour_params is None  # fold 1 alone: off wins
    switched_off = CascadePredictor.from_models(models, replace(FAST_MODELS, active_contour="off"))
    assert switched_off.active_contour_params is None
