"""The synthetic phantom generator: realistic content, varied geometry, determinism, clinical signal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from scipy import ndimage, stats
from sklearn.model_selection import KFold

from smoothseg.dataset.io import read_image
from smoothseg.errors import SmoothSegError
from smoothseg.knowledge.tlvr import TLVRRegressor
from smoothseg.synthetic.clinical import CATEGORICAL, FEATURES, clinical_row
from smoothseg.synthetic.demo_dataset import load_truth, make_demo_dataset
from smoothseg.synthetic.phantom import _sample_tumour_sizes, make_phantom, physical_grid, sample_geometry


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", n_cases=3, seed=5)
    b = make_demo_dataset(tmp_path / "b", n_cases=3, seed=5, num_processes=2)
    c = make_demo_dataset(tmp_path / "c", n_cases=3, seed=6)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert len(da) == 3 * 2 + 3 and da == db
    assert da["imagesTr/SynLiver_000_0000.nii.gz"] != dc["imagesTr/SynLiver_000_0000.nii.gz"]


def test_existing_dataset_is_kept_and_completed(tmp_path: Path) -> None:
    folder = make_demo_dataset(tmp_path, n_cases=3, seed=1)
    before = _digests(folder)
    victim = folder / "imagesTr" / "SynLiver_001_0000.nii.gz"
    victim.unlink()
    mtime = (folder / "imagesTr" / "SynLiver_000_0000.nii.gz").stat().st_mtime_ns
    make_demo_dataset(tmp_path, n_cases=3, seed=1)
    assert _digests(folder) == before
    assert (folder / "imagesTr" / "SynLiver_000_0000.nii.gz").stat().st_mtime_ns == mtime  # not rewritten
    with pytest.raises(SmoothSegError, match="other settings"):
        make_demo_dataset(tmp_path, n_cases=3, seed=2)
    make_demo_dataset(tmp_path, n_cases=3, seed=2, overwrite=True)
    assert _digests(folder) != before


def test_demo_dataset_layout_and_truth(demo_dataset_pristine: Path) -> None:
    spec = json.loads((demo_dataset_pristine / "dataset.json").read_text())
    assert spec["labels"] == {"background": 0, "liver": 1, "tumor": 2, "portal_vein": 3}
    assert spec["task_regions"] == {"liver": [1, 2, 3], "tumor": [2]}
    assert spec["numTraining"] == 4 and spec["clinical"]["file"] == "clinical.csv"
    truth = load_truth(demo_dataset_pristine)
    assert sorted(truth) == [f"SynLiver_{i:03d}" for i in range(6)]
    assert truth["SynLiver_003"]["truth"]["n_tumours"] == 0  # every fifth case is tumour-free
    for cid, record in truth.items():
        split = record["split"]
        label, geom = read_image(demo_dataset_pristine / f"labels{split}" / f"{cid}.nii.gz")
        image, igeom = read_image(demo_dataset_pristine / f"images{split}" / f"{cid}_0000.nii.gz")
        assert geom == igeom and image.dtype == np.int16 and label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1, 2, 3} and {0, 1, 3} <= set(np.unique(label))
        voxel_ml = np.prod(geom.spacing) / 1000
        tumour_ml = np.count_nonzero(label == 2) * voxel_ml
        assert tumour_ml == pytest.approx(record["truth"]["tumour_ml"], abs=1e-3)
        assert record["truth"]["tlvr"] == pytest.approx(tumour_ml / (np.count_nonzero(label) * voxel_ml), abs=1e-5)
        assert (2 in label) == (record["truth"]["n_tumours"] > 0)


def test_phantom_intensities_look_like_ct() -> None:
    phantom = make_phantom(np.random.default_rng(2), "small")
    image, label = phantom.image.astype(float), phantom.label
    liver = ndimage.binary_erosion(label == 1, iterations=2)
    tumour = ndimage.binary_erosion(label == 2, iterations=1)
    corner = image[:, :6, :6]
    assert -1030 < np.median(corner) < -960  # air
    assert abs(np.median(image[liver]) - phantom.info["liver_hu"]) < 10  # enhanced parenchyma
    assert 60 < np.median(image[liver]) < 160
    assert abs(np.median(image[tumour]) - np.median(image[liver])) > 15  # visible lesions
    assert (image > 400).sum() > 500  # bone
    assert ((image > -150) & (image < -60)).sum() > 20_000  # fat
    assert (image < -700).sum() > 0.2 * image.size  # air outside the body and in lungs/bowel
    assert 5 < np.std(image[liver] - ndimage.uniform_filter(image, 3)[liver]) < 40  # noise


def test_geometry_varies_and_flips_appear() -> None:
    geoms = [sample_geometry(np.random.default_rng(s), "small")[1] for s in range(40)]
    flips = {tuple(np.sign(np.diag(g.direction_matrix))) for g in geoms}
    assert (1, 1, 1) in flips and len(flips) >= 3
    assert len({g.spacing for g in geoms}) > 30 and len({g.origin for g in geoms}) > 30
    shape, full = sample_geometry(np.random.default_rng(0), "full")
    assert shape[1:] == (512, 512) and 90 <= shape[0] <= 110 and full.spacing[0] < 0.9


def test_physical_grid_matches_simpleitk() -> None:
    shape, geometry = sample_geometry(np.random.default_rng(3), "small")
    x, y, z = physical_grid(shape, geometry)
    image = geometry.apply_to(sitk.Image(shape[2], shape[1], shape[0], sitk.sitkInt16))
    for k, j, i in [(0, 0, 0), (shape[0] - 1, 5, 100), (7, 127, 3)]:
        np.testing.assert_allclose((x[k, j, i], y[k, j, i], z[k, j, i]),
                                   image.TransformIndexToPhysicalPoint((i, j, k)), atol=1e-3)


def test_flipped_direction_renders_the_same_anatomy() -> None:
    """Anatomy lives in patient space: with the liver on the patient's right (x < 0) whatever the flip."""
    for seed in range(12):
        p = make_phantom(np.random.default_rng(seed), "small", tumour_free=True)
        x, _, _ = physical_grid(p.label.shape, p.geometry)
        assert np.median(x[p.label == 1]) < 0, seed


def test_tumour_sizes_span_few_mm_to_over_10cm() -> None:
    sizes = np.concatenate([_sample_tumour_sizes(np.random.default_rng(s), False) for s in range(200)])
    counts = [len(_sample_tumour_sizes(np.random.default_rng(s), False)) for s in range(200)]
    assert sizes.min() < 6 and sizes.max() > 120
    assert 0.15 < np.mean([s >= 100 for s in (_sample_tumour_sizes(np.random.default_rng(k), False)[0]
                                              for k in range(200))]) < 0.45
    assert min(counts) == 1 and max(counts) == 5


def test_clinical_columns_carry_tlvr_signal() -> None:
    rng = np.random.default_rng(0)
    tlvr = rng.uniform(0, 0.5, 300) ** 2
    rows = [clinical_row(np.random.default_rng(i), t, 20 + 300 * t) for i, t in enumerate(tlvr)]
    afp = np.array([r["AFP"] if r["AFP"] is not None else np.nan for r in rows], float)
    ok = ~np.isnan(afp)
    assert stats.spearmanr(afp[ok], tlvr[ok]).statistic > 0.5
    assert stats.spearmanr([r["Age"] for r in rows], tlvr).statistic < 0.2
    assert 0 < np.isnan(afp).sum() < 60  # a few missing values


def test_cli_makes_a_clean_dataset(data_home: Path) -> None:
    make = run_cli("make_demo_dataset", "-n", "2", "--seed", "3", home=data_home)
    assert make.returncode == 0, make.stderr
    verify = run_cli("verify_dataset", "-d", "900", home=data_home)
    assert verify.returncode == 0 and "1 training and 1 test case(s); 0 problem(s)" in verify.stdout


def _out_of_fold_r2(signal: float, n: int = 300) -> float:
    """Out-of-fold R² of the project's TLVR regression on ``n`` simulated patients at ``signal``."""
    rng = np.random.default_rng(0)
    tlvr = np.where(rng.uniform(size=n) < 0.25, 0.0, rng.beta(0.6, 6.0, n))
    diameter = np.where(tlvr > 0, 20 + 250 * np.sqrt(tlvr) + rng.normal(0, 10, n), 0.0)
    rows = pd.DataFrame([clinical_row(np.random.default_rng([0, i, 1]), t, d, signal, np.random.default_rng([0, i, 2]))
                         for i, (t, d) in enumerate(zip(tlvr, diameter, strict=True))])
    predicted = np.zeros(n)
    for train, test in KFold(5, shuffle=True, random_state=0).split(rows):
        model = TLVRRegressor(numeric_features=[f for f in FEATURES if f not in CATEGORICAL],
                              categorical_features=list(CATEGORICAL)).fit(rows.iloc[train], tlvr[train])
        predicted[test] = model.predict(rows.iloc[test])
    return 1.0 - float(np.sum((predicted - tlvr) ** 2) / np.sum((tlvr - tlvr.mean()) ** 2))


def test_the_clinical_signal_knob_sets_how_much_the_table_knows() -> None:
    r2 = {signal: _out_of_fold_r2(signal) for signal in (0.0, 0.5, 1.0, 2.0)}
    assert r2[0.0] < 0.1 < r2[0.5] < r2[1.0] <= r2[2.0] + 0.01
    assert r2[1.0] > 0.6 and r2[2.0] > 0.8 and 0.35 < r2[0.5] < 0.65
    # the columns that carry no burden information are drawn the same way whatever the signal
    rows = [clinical_row(np.random.default_rng([5, 1]), 0.1, 40.0, s, np.random.default_rng([5, 2]))
            for s in (0.0, 1.0, 3.0)]
    assert len({(r["Age"], r["Sex"], r["Evidence_of_cirh"]) for r in rows}) == 1
    assert clinical_row(np.random.default_rng([5, 1]), 0.1, 40.0) == rows[1]  # the default is the demo's data
    with pytest.raises(ValueError, match="decoy"):
        clinical_row(np.random.default_rng(0), 0.1, 40.0, 0.5)
