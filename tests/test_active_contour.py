"""Tests for smoothseg.inference.active_contour: local per-lesion Chan-Vese refinement and its safety rules."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from scipy import ndimage

from smoothseg.inference import active_contour
from smoothseg.inference.active_contour import refine_tumours
from smoothseg.planning.plans import ActiveContourPlan

SPACING = (2.5, 0.8, 0.8)
SHAPE = (48, 64, 64)
LIVER_HU, TUMOUR_HU, OUTSIDE_HU = 110.0, 60.0, -80.0
FULL = ndimage.generate_binary_structure(3, 3)


def ellipsoid(centre_mm, radii_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    level = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre_mm, radii_mm, strict=True))
    return level <= 1.0


def render(liver: np.ndarray, tumour: np.ndarray, seed: int = 0, noise: float = 12.0) -> np.ndarray:
    """Piecewise-constant CT in HU, blurred (partial volume), plus Gaussian noise."""
    image = np.full(liver.shape, OUTSIDE_HU)
    image[liver] = LIVER_HU
    image[tumour] = TUMOUR_HU
    image = ndimage.gaussian_filter(image, (0.4, 1.0, 1.0))
    return (image + np.random.default_rng(seed).normal(0.0, noise, image.shape)).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def n_lesions(mask: np.ndarray) -> int:
    return ndimage.label(mask, structure=FULL)[1]


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 48x64x64 liver-like region with three darker ellipsoidal lesions; anisotropic spacing (2.5, 0.8, 0.8)."""
    liver = ellipsoid((60, 25.6, 25.6), (55, 24, 24))
    tumour = np.zeros(SHAPE, dtype=bool)
    for centre, radii in [((40, 16, 16), (8, 6, 6)), ((75, 32, 30), (10, 8, 7)), ((60, 14, 36), (6, 5, 4.5))]:
        tumour |= ellipsoid(centre, radii)
    tumour &= liver
    return render(liver, tumour), liver, tumour


def test_started_from_the_ground_truth_it_stays_there(case) -> None:
    image, liver, truth = case
    refined = refine_tumours(image, truth, liver, SPACING)
    assert refined.dtype == bool and refined.shape == truth.shape
    assert dice(refined, truth) >= 0.95
    assert n_lesions(refined) == n_lesions(truth) == 3
    assert not (refined & ~liver).any()


@pytest.mark.parametrize("perturbation", ["eroded", "dilated"])
def test_started_from_a_perturbed_mask_it_gets_closer_to_the_truth(case, perturbation) -> None:
    image, liver, truth = case
    face = ndimage.generate_binary_structure(3, 1)
    if perturbation == "eroded":
        start = ndimage.binary_erosion(truth, face)
    else:
        start = ndimage.binary_dilation(truth, face) & liver
    refined = refine_tumours(image, start, liver, SPACING)
    assert dice(refined, truth) > dice(start, truth) + 0.05
    assert n_lesions(refined) == 3
    assert not (refined & ~liver).any()


def test_liver_mask_without_the_tumours_works_the_same(case) -> None:
    image, liver, truth = case
    np.testing.assert_array_equal(refine_tumours(image, truth, liver & ~truth, SPACING),
                                  refine_tumours(image, truth, liver, SPACING))


def test_a_tiny_lesion_survives(case) -> None:
    image, liver, truth = case
    tiny = np.zeros(SHAPE, dtype=bool)
    tiny[24, 30:32, 14:16] = True  # 4 voxels, in the parenchyma
    image = image.copy()
    image[tiny] = TUMOUR_HU
    single = np.zeros(SHAPE, dtype=bool)
    single[10, 32, 40] = True  # 1 voxel, no contrast at all
    assert liver[tiny].all() and liver[single].all()
    assert not ndimage.binary_dilation(truth, FULL, iterations=3)[tiny | single].any()
    start = truth | tiny | single
    refined = refine_tumours(image, start, liver, SPACING)
    assert refined[tiny].any() and refined[single].all()
    assert n_lesions(refined) == 5


def test_output_stays_inside_the_liver_next_to_darker_tissue() -> None:
    # A lesion on the liver's edge: the fat outside (-80 HU) is darker than the lesion and would attract the contour.
    liver = ellipsoid((60, 25.6, 25.6), (55, 24, 24))
    truth = ellipsoid((60, 25.6, 4.0), (10, 8, 8)) & liver
    image = render(liver, truth, seed=3)
    start = ndimage.binary_dilation(truth, ndimage.generate_binary_structure(3, 1)) & liver
    refined = refine_tumours(image, start, liver, SPACING)
    assert refined.any() and not (refined & ~liver).any()
    assert dice(refined, truth) > dice(start, truth) + 0.05


def test_a_lesion_without_contrast_is_kept_unchanged(case) -> None:
    image, liver, truth = case
    invisible = ellipsoid((95, 30, 20), (7, 6, 6)) & liver & ~ndimage.binary_dilation(truth, FULL, iterations=2)
    assert invisible.sum() > 50
    start = truth | invisible
    refined = refine_tumours(image, start, liver, SPACING)
    box = tuple(slice(s.start - 1, s.stop + 1) for s in ndimage.find_objects(invisible.astype(np.uint8))[0])
    np.testing.assert_array_equal(refined[box], start[box])
    assert n_lesions(refined) == 4


def test_neighbouring_lesions_never_merge_or_take_each_others_voxels() -> None:
    # One dark ellipsoid in the image, predicted as two lesions separated by a 2-voxel gap: the contour would
    # happily close the gap, but the lesions must stay two.
    liver = ellipsoid((60, 25.6, 25.6), (55, 24, 24))
    blob = ellipsoid((60, 25.6, 25.6), (12, 10, 10))
    image = render(liver, blob, seed=5)
    start = blob.copy()
    start[:, :, 31:33] = False
    left = start.copy()
    left[:, :, 31:] = False
    right = start & ~left
    refined = refine_tumours(image, start, liver, SPACING, max_grow_fraction=3.0)
    assert n_lesions(refined) == 2
    labels, _ = ndimage.label(refined, structure=FULL)
    assert len(np.unique(labels[left & refined])) == 1 and len(np.unique(labels[right & refined])) == 1
    assert np.unique(labels[left & refined]) != np.unique(labels[right & refined])


def test_multifocal_lesions_all_survive(case) -> None:
    image, liver, truth = case
    refined = refine_tumours(image, truth, liver, SPACING)
    labels, n = ndimage.label(truth, structure=FULL)
    for index in range(1, n + 1):
        assert refined[labels == index].any()


@pytest.mark.parametrize("outcome", ["vanish", "shrink", "grow"])
def test_safety_rules_keep_the_original_lesion(case, monkeypatch, outcome) -> None:
    image, liver, truth = case

    def fake_chan_vese(working, init, params):
        if outcome == "vanish":
            return np.zeros_like(init)
        if outcome == "shrink":  # keep only a third of the slices holding the lesion
            out = np.zeros_like(init)
            rows = np.flatnonzero(init.any(axis=(1, 2)))
            keep = rows[: max(1, len(rows) // 3)]
            out[keep] = init[keep]
            return out
        return np.ones_like(init)  # the whole box: far more than twice the lesion

    monkeypatch.setattr(active_contour, "_chan_vese", fake_chan_vese)
    np.testing.assert_array_equal(refine_tumours(image, truth, liver, SPACING), truth)


def test_thin_volumes_fall_back_to_slice_wise_2d() -> None:
    spacing = (0.8, 0.8, 0.8)
    shape = (2, 64, 64)  # two slices: too thin for a 3D contour, even with isotropic spacing
    liver = ellipsoid((0.4, 25.6, 25.6), (10, 24, 24), shape, spacing)
    truth = ellipsoid((0.4, 25.6, 25.6), (10, 8, 8), shape, spacing)
    image = render(liver, truth, seed=2)
    start = ndimage.binary_dilation(truth, ndimage.generate_binary_structure(3, 1)[1:2]) & liver  # in-plane dilation
    refined = refine_tumours(image, start, liver, spacing)
    assert dice(refined, truth) > dice(start, truth)
    assert refined[0].any() and refined[1].any()


def test_empty_mask_and_zero_iterations(case) -> None:
    image, liver, truth = case
    assert not refine_tumours(image, np.zeros(SHAPE, bool), liver, SPACING).any()
    np.testing.assert_array_equal(refine_tumours(image, truth, liver, SPACING, iterations=0), truth)


def test_params_object_window_none_and_no_liver(case) -> None:
    image, liver, truth = case
    params = ActiveContourPlan(iterations=3, margin_mm=4.0)
    np.testing.assert_array_equal(refine_tumours(image, truth, liver, SPACING, params=params),
                                  refine_tumours(image, truth, liver, SPACING, iterations=3, margin_mm=4.0))
    assert dice(refine_tumours(image, truth, liver, SPACING, window=None), truth) >= 0.95
    assert n_lesions(refine_tumours(image, truth, None, SPACING)) == 3


def test_params_round_trip_and_validation() -> None:
    params = ActiveContourPlan(window=(-50, 200), iterations=7, lambda2=2.0)
    data = params.to_dict()
    assert ActiveContourPlan.from_dict(json.loads(json.dumps(data))) == params
    assert ActiveContourPlan.from_dict({}) == ActiveContourPlan()
    assert ActiveContourPlan.from_dict({"window": None}).window is None
    with pytest.raises(FrozenInstanceError):
        params.iterations = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown"):
        ActiveContourPlan.from_dict({"iteration": 3})
    for bad in ({"window": (10, 0)}, {"iterations": -1}, {"lambda1": 0.0}, {"min_keep_fraction": 1.5},
                {"max_grow_fraction": -0.1}, {"margin_mm": -1.0}, {"max_upsampling": 0},
                {"max_working_voxels": 0}):
        with pytest.raises(ValueError):
            ActiveContourPlan(**bad)


def test_input_checks(case) -> None:
    image, liver, truth = case
    with pytest.raises(ValueError):
        refine_tumours(image[:-1], truth, liver, SPACING)
    with pytest.raises(ValueError):
        refine_tumours(image, truth, liver[:-1], SPACING)
    with pytest.raises(ValueError):
        refine_tumours(image, truth, liver, (1.0, 1.0))


@pytest.mark.parametrize("ndim", [2, 3])
def test_fast_curvature_operators_equal_scipy_morphology_with_the_footprints(ndim) -> None:
    rng = np.random.default_rng(ndim)
    for trial in range(12):
        shape = tuple(int(n) for n in rng.integers(3, 10, ndim))
        noise = rng.random(shape) < 0.55
        u = ndimage.binary_opening(noise) if trial % 2 else noise  # blobs and salt-and-pepper, touching the border
        sup_inf = np.zeros_like(u)
        inf_sup = np.ones_like(u)
        for footprint in active_contour._FOOTPRINTS[ndim]:
            sup_inf |= ndimage.binary_erosion(u, footprint)
            inf_sup &= ndimage.binary_dilation(u, footprint)
        np.testing.assert_array_equal(active_contour._sup_inf(u), sup_inf)
        np.testing.assert_array_equal(active_contour._inf_sup(u), inf_sup)


def test_working_grid_is_capped_for_large_boxes(case) -> None:
    spacing = (2.5, 0.8, 0.8)
    assert active_contour._working_factors(spacing, 8, (10, 20, 20), 10**9) == (3, 1, 1)
    assert active_contour._working_factors(spacing, 2, (10, 20, 20), 10**9) == (2, 1, 1)
    assert active_contour._working_factors(spacing, 8, (10, 20, 20), 2 * 4000) == (2, 1, 1)
    assert active_contour._working_factors(spacing, 8, (10, 20, 20), 100) == (1, 1, 1)
    image, liver, truth = case
    capped = refine_tumours(image, truth, liver, SPACING, max_working_voxels=1)  # raw grid for every lesion
    np.testing.assert_array_equal(capped, refine_tumours(image, truth, liver, SPACING, max_upsampling=1))
    assert not np.array_equal(capped, refine_tumours(image, truth, liver, SPACING))
    assert dice(capped, truth) >= 0.85 and n_lesions(capped) == 3


def test_a_lesion_that_a_naive_contour_splits_stays_whole() -> None:
    """Two lobes joined by a thin bridge of parenchyma-like intensity: plain Chan-Vese cuts the bridge and makes two
    lesions; the refinement keeps one (here: the original, since the cut is its only change)."""
    from skimage.segmentation import morphological_chan_vese

    shape, spacing = (24, 48, 64), (1.0, 1.0, 1.0)
    z, y, x = np.ogrid[:24, :48, :64]
    lobe_a = (z - 12) ** 2 + (y - 24) ** 2 + (x - 18) ** 2 <= 7 ** 2
    lobe_b = (z - 12) ** 2 + (y - 24) ** 2 + (x - 46) ** 2 <= 7 ** 2
    bridge = (np.abs(z - 12) <= 1) & (np.abs(y - 24) <= 1) & (x >= 18) & (x <= 46)
    lesion = lobe_a | lobe_b | bridge
    liver = np.ones(shape, bool)
    image = np.full(shape, 110.0)
    image[lobe_a | lobe_b] = 40.0  # the bridge keeps the parenchyma's intensity
    image += np.random.default_rng(0).normal(0, 3, shape)
    params = ActiveContourPlan(window=(-100.0, 250.0), margin_mm=4.0, iterations=5, presmooth_mm=0.0, max_upsampling=1)
    window = (np.clip(image, -100, 250) + 100) / 350
    naive = morphological_chan_vese(window, params.iterations, init_level_set=lesion, smoothing=1)
    assert ndimage.label(naive.astype(bool), structure=np.ones((3, 3, 3)))[1] == 2  # the naive contour splits it
    refined = refine_tumours(image, lesion, liver, spacing, params=params)
    assert ndimage.label(refined, structure=np.ones((3, 3, 3)))[1] == 1
    np.testing.assert_array_equal(refined, lesion)
