"""Lesion-balanced foreground sampling and clean-liver negatives of the tumour task's patch loader, on constructed
cases written in the preprocessed format by the preprocessing's own functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from smoothseg.labels import LIVER, TUMOR
from smoothseg.masks.components import connected_lesions
from smoothseg.preprocessing.dataset_preprocessing import (
    PREPROCESSING_VERSION,
    case_files,
    class_locations,
    is_done,
    lesion_locations,
    load_lesions,
)
from smoothseg.training.data_loader import PatchLoader, SamplingConfig
from smoothseg.training.lesion_synthesis import SynthesisStats, paint_lesions


def write_case(folder: Path, case_id: str, seg: np.ndarray) -> None:
    """A preprocessed tumour-task case: a flat image, ``seg``, its locations and lesion table, its properties."""
    folder.mkdir(parents=True, exist_ok=True)
    files = case_files(folder, case_id)
    np.save(files["data"], np.zeros((1, *seg.shape), np.float32))
    np.save(files["seg"], seg.astype(np.uint8))
    np.savez(files["locations"], **class_locations(seg, (LIVER, TUMOR), 0), **lesion_locations(seg, 0))
    counts = np.bincount(seg.ravel(), minlength=3)
    files["properties"].write_text(json.dumps({"spacing": [1.0, 1.0, 1.0], "class_voxels": counts.tolist(),
                                               "liver_voxels": int(counts[1:].sum()), "tlvr": 0.0,
                                               "plan_hash": "h", "preprocessing_version": PREPROCESSING_VERSION}))


def big_and_small(shape=(100, 100, 100)) -> np.ndarray:
    """A liver holding a 512 ml lesion (80^3 voxels of 1 mm) and a 0.5 ml one (8^3 voxels), far apart."""
    seg = np.ones(shape, np.uint8)
    seg[2:82, 2:82, 2:82] = TUMOR
    seg[88:96, 88:96, 88:96] = TUMOR
    return seg


def in_small_lesion(centre: np.ndarray) -> bool:
    return bool(np.all((centre >= 88) & (centre < 96)))


def test_preprocessing_stores_every_lesion_with_its_size(tmp_path: Path) -> None:
    seg = big_and_small()
    seg[50, 90, 10] = TUMOR  # a one-voxel lesion, 26-connected to nothing
    write_case(tmp_path, "case", seg)
    lesions, sizes = load_lesions(tmp_path, "case")
    _, n = connected_lesions(seg == TUMOR)
    assert len(lesions) == n == 3
    assert sorted(sizes.tolist()) == [1, 512, 80 ** 3]
    for coords, size in zip(lesions, sizes, strict=True):
        assert len(coords) == min(size, 1000)  # large lesions keep a sample
        assert np.all(seg[tuple(coords.T)] == TUMOR)
        labels, _ = connected_lesions(seg == TUMOR)
        assert len(np.unique(labels[tuple(coords.T)])) == 1  # each lesion's rows are one component


def test_a_small_lesion_beside_a_large_one_is_the_centre_of_half_the_foreground_patches(tmp_path: Path) -> None:
    write_case(tmp_path, "case", big_and_small())
    share = {}
    for lesion_sampling, alpha in ((1.0, 0.0), (0.0, 0.0), (0.5, 0.0), (1.0, 1.0)):
        cfg = SamplingConfig((16, 16, 16), 1, oversample_foreground=1.0, lesion_sampling=lesion_sampling,
                             lesion_alpha=alpha)
        loader = PatchLoader(tmp_path, ["case"], cfg, seed=1)
        share[lesion_sampling, alpha] = np.mean([in_small_lesion(loader._foreground_centre("case"))
                                                 for _ in range(3000)])
    assert abs(share[1.0, 0.0] - 0.5) < 0.04  # uniform over the two lesions
    assert share[0.0, 0.0] < 0.005  # per tumour voxel: 512 of 512,512
    assert abs(share[0.5, 0.0] - 0.25) < 0.04  # half lesion-balanced, half per voxel
    assert share[1.0, 1.0] > 0.98  # weight 1 / voxels favours the small one 1000:1


def test_lesion_sampling_falls_back_to_voxels_for_a_case_without_lesions(tmp_path: Path) -> None:
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[5:15, 5:15, 5:15] = LIVER
    write_case(tmp_path, "free", seg)
    loader = PatchLoader(tmp_path, ["free"], SamplingConfig((8, 8, 8), 1, lesion_sampling=1.0), seed=0)
    assert all(seg[tuple(loader._foreground_centre("free"))] == LIVER for _ in range(50))


def _tumour_in_patches(loader: PatchLoader, n: int) -> tuple[float, float, set]:
    """Over n batches: the share of patches with tumour, with liver, and the cases drawn."""
    tumour, liver, keys = [], [], set()
    for _ in range(n):
        batch = loader.generate_train_batch()
        seg = batch["seg"][:, 0]
        tumour += [(s == TUMOR).any() for s in seg]
        liver += [(s == LIVER).any() for s in seg]
        keys |= set(batch["keys"])
    return float(np.mean(tumour)), float(np.mean(liver)), keys


def test_clean_liver_patches_come_from_tumour_free_cases_when_there_are_any(tmp_path: Path) -> None:
    write_case(tmp_path, "tumour", big_and_small((100, 100, 100)))
    free = np.zeros((60, 60, 60), np.uint8)
    free[10:50, 10:50, 10:50] = LIVER
    write_case(tmp_path, "free", free)
    cfg = SamplingConfig((16, 16, 16), 4, oversample_foreground=0.0, clean_liver=1.0)
    loader = PatchLoader(tmp_path, ["tumour", "free"], cfg, seed=2)
    assert loader.tumour_free_ids == ["free"]
    tumour, liver, keys = _tumour_in_patches(loader, 30)
    assert keys == {"free"} and tumour == 0.0 and liver == 1.0


def test_clean_liver_patches_avoid_the_tumour_of_a_tumour_case(tmp_path: Path) -> None:
    """Without tumour-free cases the clean patches are centred on liver away from the tumour: counted against the
    plain random placement of the same loader."""
    seg = np.ones((60, 60, 60), np.uint8)
    seg[:30, :30, :] = TUMOR  # a quarter of the case is tumour
    write_case(tmp_path, "case", seg)
    base = dict(oversample_foreground=0.0)
    plain = _tumour_in_patches(PatchLoader(tmp_path, ["case"], SamplingConfig((16, 16, 16), 4, **base), seed=3), 50)
    half = _tumour_in_patches(PatchLoader(tmp_path, ["case"], SamplingConfig((16, 16, 16), 4, clean_liver=0.5,
                                                                           **base), seed=3), 50)
    clean = _tumour_in_patches(PatchLoader(tmp_path, ["case"], SamplingConfig((16, 16, 16), 4, clean_liver=1.0,
                                                                            **base), seed=3), 50)
    assert plain[0] > 0.3  # random patches often touch the tumour
    assert clean[0] == 0.0 and clean[1] == 1.0
    assert clean[0] < half[0] < plain[0]


def test_foreground_patches_are_not_replaced_by_clean_ones(tmp_path: Path) -> None:
    write_case(tmp_path, "tumour", big_and_small())
    free = np.zeros((40, 40, 40), np.uint8)
    free[5:35, 5:35, 5:35] = LIVER
    write_case(tmp_path, "free", free)
    cfg = SamplingConfig((16, 16, 16), 2, oversample_foreground=0.5, clean_liver=1.0)
    loader = PatchLoader(tmp_path, ["tumour"], cfg, seed=0)
    loader.tumour_free_ids = ["free"]
    for _ in range(10):
        batch = loader.generate_train_batch()
        assert batch["keys"][1] == "free" and (batch["seg"][0, 0] == TUMOR).any()


@pytest.mark.parametrize("field, value", [("lesion_sampling", 1.5), ("clean_liver", -0.1), ("lesion_alpha", -1.0)])
def test_sampling_settings_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingConfig((8, 8, 8), 1, **{field: value})


def test_a_case_from_an_older_preprocessing_is_preprocessed_again(tmp_path: Path) -> None:
    write_case(tmp_path, "case", big_and_small((40, 40, 40)))
    assert is_done(tmp_path, "case", "h")
    props = case_files(tmp_path, "case")["properties"]
    data = json.loads(props.read_text())
    del data["preprocessing_version"]
    props.write_text(json.dumps(data))
    assert not is_done(tmp_path, "case", "h")


# --- lesion synthesis -------------------------------------------------------------------------------------------

def _synthesis_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 60 x 60 patch at 1 mm: liver (label 1, intensity 0 +- 0.2) with one real lesion, background around."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((40, 60, 60), np.uint8)
    seg[4:36, 5:55, 5:55] = LIVER
    seg[10:20, 10:20, 10:20] = TUMOR
    image = np.where(seg == LIVER, rng.normal(0.0, 0.2, seg.shape), -3.0).astype(np.float32)
    image[seg == TUMOR] = -1.0
    return image, seg


def test_painted_lesions_lie_in_tumour_free_liver_with_the_dataset_contrast() -> None:
    stats = SynthesisStats(contrast=(-1.5,), ratio=(1.0,))
    cores = 0
    for seed in range(6):
        image, seg = _synthesis_case(seed)
        before_image, before_seg = image.copy(), seg.copy()
        painted = paint_lesions(image, seg, (1.0, 1.0, 1.0), np.random.default_rng(seed), stats)
        assert 1 <= painted <= 3
        new = (seg == TUMOR) & (before_seg != TUMOR)
        assert (before_seg[new] == LIVER).all()  # never outside the liver, never over a real lesion
        np.testing.assert_array_equal(seg[before_seg != LIVER], before_seg[before_seg != LIVER])
        labels, n = connected_lesions(seg == TUMOR)
        assert n == painted + 1  # separate from the real lesion and from each other
        for i in range(1, n + 1):
            lesion = labels == i
            if (lesion & (before_seg == TUMOR)).any():
                continue
            volume = lesion.sum()  # 3-15 mm diameters, semi-axes x0.8-1.2, roughened edge
            assert 4 / 3 * np.pi * (1.5 * 0.6) ** 3 <= volume <= 4 / 3 * np.pi * (7.5 * 1.5) ** 3
            core = lesion & (ndimage.distance_transform_edt(lesion) >= 2)
            if core.sum() >= 10:  # the inside carries the contrast of the dataset's lesions
                cores += 1
                assert image[core].mean() == pytest.approx(-1.5, abs=0.3)
        np.testing.assert_array_equal(image[~new], before_image[~new])  # nothing changes elsewhere
    assert cores >= 3


def test_painted_lesions_keep_the_parenchyma_texture_scaled_by_the_std_ratio() -> None:
    checked = 0
    for seed in range(8):
        image, seg = _synthesis_case(seed)
        before = image.copy()
        paint_lesions(image, seg, (1.0, 1.0, 1.0), np.random.default_rng(seed), SynthesisStats((1.0,), (2.0,)),
                      count=1)
        new = (seg == TUMOR) & (before != image)
        core = new & (ndimage.distance_transform_edt(seg == TUMOR) >= 3)
        if core.sum() >= 20:
            checked += 1
            assert np.std(image[core]) == pytest.approx(2 * np.std(before[core]), rel=0.3)
            assert image[core].mean() - before[core].mean() == pytest.approx(1.0, abs=0.15)
    assert checked >= 2


def test_no_room_means_no_lesion() -> None:
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[4:6, 4:6, 4:6] = LIVER  # 2 mm of liver: no 3 mm lesion fits with its margin
    image = np.zeros(seg.shape, np.float32)
    assert paint_lesions(image, seg, (1.0, 1.0, 1.0), np.random.default_rng(0), SynthesisStats((1.0,), (1.0,))) == 0
    assert not (seg == TUMOR).any() and not image.any()


def test_the_loader_paints_its_share_and_drops_their_tlvr_target(tmp_path: Path) -> None:
    image, seg = _synthesis_case(0)
    write_case(tmp_path, "case", seg)
    props = json.loads(case_files(tmp_path, "case")["properties"].read_text())
    props["intensity_stats"] = {"liver": [0.0, 0.2], "tumour": [-1.0, 0.2]}
    case_files(tmp_path, "case")["properties"].write_text(json.dumps(props))
    n_lesions = []
    for share in (0.0, 1.0):
        cfg = SamplingConfig((40, 60, 60), 4, oversample_foreground=0.0, lesion_synthesis=share)
        loader = PatchLoader(tmp_path, ["case"], cfg, {"case": 0.1}, seed=0)
        batch = loader.generate_train_batch()
        n_lesions.append([connected_lesions(s == TUMOR)[1] for s in batch["seg"][:, 0]])
        assert np.isnan(batch["clinical_tlvr"]).all() == (share == 1.0)
    assert n_lesions[0] == [1] * 4 and all(n > 1 for n in n_lesions[1])
    assert SynthesisStats.from_properties([props]).contrast == (-1.0,)
    assert SynthesisStats.from_properties([{"intensity_stats": {"liver": [0, 1], "tumour": None}}]) is None
