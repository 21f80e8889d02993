"""Fingerprint, planner, plans.json and splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from smoothseg.dataset.io import read_image, write_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import DatasetSchemaError
from smoothseg.network.segresnet_vae import SegResNetVAE, estimate_activation_elements, measure_activation_elements
from smoothseg.planning.fingerprint import extract_fingerprint
from smoothseg.planning.planner import estimate_memory_gb, plan
from smoothseg.planning.plans import NetworkPlan, Plans
from smoothseg.planning.splits import make_splits


@pytest.fixture(scope="module")
def fingerprint(demo_dataset_pristine: Path) -> dict:
    return extract_fingerprint(RawDataset(demo_dataset_pristine), num_processes=1)


def test_fingerprint_contents(fingerprint: dict, demo_dataset_pristine: Path) -> None:
    from smoothseg.synthetic.demo_dataset import load_truth

    truth = load_truth(demo_dataset_pristine)
    assert fingerprint["n_cases"] == 4
    for case in fingerprint["cases"]:
        t = truth[case["case_id"]]["truth"]
        assert case["tlvr"] == pytest.approx(t["tlvr"], abs=1e-4)
        assert case["liver_volume_ml"] == pytest.approx(t["liver_region_ml"], rel=1e-3)
        assert case["tumor_count"] >= (1 if t["n_tumours"] else 0) and (case["tumor_count"] == 0) == (
            t["n_tumours"] == 0)
        assert sum(case["tumor_volumes_ml"]) == pytest.approx(t["tumour_ml"], abs=0.01)
        assert all(50 < e < 300 for e in case["liver_bbox"]["extent_mm"])
        liver = case["intensity"]["liver"]
        assert set(liver["percentiles"]) == {"0.5", "5.0", "50.0", "95.0", "99.5"} and liver["std"] > 0
    assert fingerprint["pooled_intensity"]["body"]["percentiles"]["50.0"] < \
        fingerprint["pooled_intensity"]["liver"]["percentiles"]["50.0"]


def test_fingerprint_is_deterministic_across_process_counts(fingerprint: dict, demo_dataset_pristine: Path) -> None:
    again = extract_fingerprint(RawDataset(demo_dataset_pristine), num_processes=2)
    assert json.dumps(again, sort_keys=True) == json.dumps(fingerprint, sort_keys=True)


def test_plans_have_two_distinct_valid_configurations(fingerprint: dict) -> None:
    plans = plan(fingerprint)
    liver, tumor = plans["liver"], plans["tumor"]
    assert liver.spacing[1] > tumor.spacing[1]  # global view is coarser in-plane
    assert (liver.window.lower, liver.window.upper) != (tumor.window.lower, tumor.window.upper)
    assert tumor.window.upper - tumor.window.lower < liver.window.upper - liver.window.lower
    for cfg in (liver, tumor):
        assert all(p % 16 == 0 for p in cfg.patch_size)
        assert cfg.estimated_memory_gb <= 8.0 and cfg.batch_size >= 2
    assert all(p >= m for p, m in zip(tumor.patch_size, tumor.median_shape, strict=True))  # whole-liver patches
    assert tumor.crop == "liver" and min(tumor.crop_margin_mm) > 0 and liver.crop == "none"
    assert (liver.num_classes, tumor.num_classes) == (2, 3)


def test_planning_twice_gives_identical_plans(fingerprint: dict, tmp_path: Path) -> None:
    a, b = plan(fingerprint), plan(fingerprint)
    assert a.to_dict() == b.to_dict()
    a.save(tmp_path / "plans.json")
    assert Plans.load(tmp_path / "plans.json").to_dict() == a.to_dict()


def test_windows_follow_the_data(demo_dataset_pristine: Path, tmp_path: Path, fingerprint: dict) -> None:
    """A dataset whose liver is 40 HU brighter gets windows shifted by about 40 HU."""
    bright = tmp_path / demo_dataset_pristine.name
    shutil.copytree(demo_dataset_pristine, bright)
    raw = RawDataset(bright)
    for case in raw.training_cases:
        image, geometry = read_image(case.image(0))
        label, _ = read_image(case.label)
        image[np.isin(label, raw.spec.task_regions.liver)] += 40
        write_image(image, geometry, case.image(0))
    shifted = plan(extract_fingerprint(RawDataset(bright)))
    base = plan(fingerprint)
    for task in ("liver", "tumor"):
        w0, w1 = base[task].window, shifted[task].window
        assert w1.upper - w0.upper == pytest.approx(40, abs=6), task
        assert w1.mean - w0.mean == pytest.approx(40, abs=8), task
    assert shifted["tumor"].window.lower - base["tumor"].window.lower == pytest.approx(40, abs=6)


def test_memory_budget_drives_width_patch_and_batch(fingerprint: dict) -> None:
    small = plan(fingerprint, gpu_memory_target_gb=1.5)
    large = plan(fingerprint, gpu_memory_target_gb=40)
    for task in ("liver", "tumor"):
        s, big = small[task], large[task]
        assert s.estimated_memory_gb <= 1.5
        assert (s.network.init_filters, s.batch_size, np.prod(s.patch_size)) <= \
            (big.network.init_filters, big.batch_size, np.prod(big.patch_size))
        assert s.network.init_filters < big.network.init_filters or np.prod(s.patch_size) < np.prod(big.patch_size)
    assert estimate_memory_gb((32, 64, 64), 4, 3, NetworkPlan(16)) > estimate_memory_gb((32, 64, 64), 2, 3,
                                                                                         NetworkPlan(16))


def real_sized_fingerprint(demo: dict, n_cases: int = 12) -> dict:
    """An HCC-TACE-Seg-sized fingerprint: 512 x 512 x ~100 slices of 2.5 mm, 0.78 mm pixels, an adult liver of
    about 180 mm (the demo's intensity statistics)."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n_cases):
        slices = int(rng.integers(80, 120))
        extent = [float(rng.uniform(140, 190)), float(rng.uniform(160, 200)), float(rng.uniform(170, 210))]
        cases.append({**demo["cases"][0], "case_id": f"real_{i:03d}", "shape": [slices, 512, 512],
                      "spacing": [2.5, 0.78, 0.78], "liver_bbox": {"start": [0, 0, 0], "stop": [1, 1, 1],
                                                                   "extent_mm": extent}})
    return {**demo, "cases": cases, "n_cases": n_cases}


@pytest.mark.parametrize("budget", [1.0, 2.0, 4.0, 8.0, 24.0, 40.0])
def test_width_before_patch_on_real_sized_ct(fingerprint: dict, budget: float) -> None:
    """Never fewer than 16 filters; from 8 GB on, nnU-Net's 32 for both stages with the patch shrinking instead,
    and at 8 GB a tumour patch of at least ~0.5 M voxels."""
    plans = plan(real_sized_fingerprint(fingerprint), gpu_memory_target_gb=budget)
    for task in ("liver", "tumor"):
        cfg = plans[task]
        assert cfg.network.init_filters >= 16, (task, budget)
        if budget >= 8:
            assert cfg.network.init_filters == 32, (task, budget)
        if budget >= 2:
            assert cfg.estimated_memory_gb <= budget, (task, budget)
    if budget == 8:
        assert np.prod(plans["tumor"].patch_size) >= 0.5e6
        assert any(p < m for p, m in zip(plans["tumor"].patch_size, plans["tumor"].median_shape, strict=True))
    if budget < 8:
        more = plan(real_sized_fingerprint(fingerprint), gpu_memory_target_gb=budget * 2)
        assert more["tumor"].network.init_filters >= plans["tumor"].network.init_filters


def test_demo_budget_plans_at_least_16_filters(fingerprint: dict) -> None:
    for budget in (1.0, 1.25):
        plans = plan(fingerprint, gpu_memory_target_gb=budget)
        assert min(plans[t].network.init_filters for t in ("liver", "tumor")) >= 16


@pytest.mark.parametrize("patch, width", [((16, 32, 32), 8), ((32, 32, 48), 4)])
def test_memory_estimate_counts_activations_like_a_real_forward_pass(patch, width) -> None:
    """The planner's activation count (closed form) equals the one measured with hooks on a real network."""
    net = NetworkPlan(init_filters=width)
    model = SegResNetVAE(in_channels=1, out_channels=3, input_image_size=patch, init_filters=width,
                         blocks_down=net.blocks_down, blocks_up=net.blocks_up, norm=net.norm)
    measured = measure_activation_elements(model, (1, *patch))
    estimated = estimate_activation_elements(patch, 1, 3, width, net.blocks_down, net.blocks_up, vae=True)
    assert estimated == pytest.approx(measured, rel=0.01)


def test_hand_edited_plans_are_validated(fingerprint: dict, tmp_path: Path) -> None:
    data = plan(fingerprint).to_dict()
    data["configurations"]["tumor"]["patch_size"] = [30, 64, 64]
    (tmp_path / "plans.json").write_text(json.dumps(data))
    with pytest.raises(DatasetSchemaError, match=r"configurations.tumor.patch_size.*multiple of 16"):
        Plans.load(tmp_path / "plans.json")
    data["configurations"]["tumor"]["patch_size"] = [32, 64, 64]
    data["configurations"]["liver"]["window"]["lower"] = 500
    (tmp_path / "plans.json").write_text(json.dumps(data))
    with pytest.raises(DatasetSchemaError, match=r"configurations.liver.window"):
        Plans.load(tmp_path / "plans.json")


def test_kfold_splits_cover_every_case_once() -> None:
    ids = [f"c{i:02d}" for i in range(23)]
    splits = make_splits(ids, "kfold")["splits"]
    assert len(splits) == 5
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == ids
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and sorted(s["train"] + s["val"]) == ids
    assert make_splits(ids, "kfold") == make_splits(ids, "kfold")


def test_holdout_splits_are_three_80_20_replications() -> None:
    ids = [f"c{i:02d}" for i in range(20)]
    splits = make_splits(ids, "holdout")["splits"]
    assert len(splits) == 3 and all(len(s["val"]) == 4 and len(s["train"]) == 16 for s in splits)
    assert len({tuple(s["val"]) for s in splits}) == 3


def test_liver_view_is_not_mirrored_tumour_view_is(fingerprint: dict, tmp_path: Path) -> None:
    """Canonical orientation keeps the liver on one side: the global view learns it; lesions have no side."""
    from batchgenerators.transforms.spatial_transforms import MirrorTransform

    from smoothseg.training.augmentation import training_transforms

    plans = plan(fingerprint)
    assert plans["liver"].mirror_axes == () and plans["tumor"].mirror_axes == (0, 1, 2)
    assert plans["liver"].orientation == plans["tumor"].orientation == "canonical"
    plans.save(tmp_path / "plans.json")
    assert Plans.load(tmp_path / "plans.json") == plans
    mirrors = [[t for t in training_transforms((32, 48, 48), 0.0, cfg.mirror_axes).transforms
                if isinstance(t, MirrorTransform)] for cfg in (plans["liver"], plans["tumor"])]
    assert mirrors[0] == [] and [t.axes for t in mirrors[1]] == [(0, 1, 2)]
    data = plans.to_dict()
    for key, value, problem in (("mirror_axes", [0, 3], "distinct axes"), ("mirror_axes", [1, 1], "distinct axes"),
                                ("orientation", "RAS", "canonical, native")):
        broken = json.loads(json.dumps(data))
        broken["configurations"]["liver"][key] = value
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(DatasetSchemaError, match=rf"configurations.liver.{key}.*{problem}"):
            Plans.load(tmp_path / "bad.json")
