"""Tests for smoothseg.inference.postprocessing: components, hole filling, boxes with mm margins, crop/paste."""

from __future__ import annotations

import numpy as np
import pytest

from smoothseg.masks.box import bounding_box, crop_to_box, mm_to_voxels, paste_box
from smoothseg.masks.components import fill_holes_3d, keep_inside, largest_connected_component, remove_small_components


def _two_blobs() -> np.ndarray:
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[1:3, 1:3, 1:3] = True  # 8 voxels
    mask[5:9, 5:10, 5:12] = True  # 140 voxels
    return mask


def test_largest_connected_component_keeps_the_biggest_blob() -> None:
    mask = _two_blobs()
    kept = largest_connected_component(mask)
    assert kept.dtype == bool
    assert kept.sum() == 140
    assert kept[6, 6, 6] and not kept[1, 1, 1]
    assert not largest_connected_component(np.zeros((4, 4, 4), bool)).any()


def test_largest_connected_component_respects_connectivity() -> None:
    mask = np.zeros((5, 5, 5), dtype=bool)
    for i in range(4):
        mask[i, i, i] = True  # a diagonal chain: 4 voxels touching at corners only
    mask[0, 4, 0:3] = True  # a separate, face-connected 3-voxel line
    full = largest_connected_component(mask, connectivity=3)
    assert full.sum() == 4 and full[0, 0, 0] and full[3, 3, 3]
    faces = largest_connected_component(mask, connectivity=1)
    assert faces.sum() == 3 and faces[0, 4, 0:3].all()
    with pytest.raises(ValueError):
        largest_connected_component(mask, connectivity=4)


def test_remove_small_components() -> None:
    kept = remove_small_components(_two_blobs(), min_voxels=10)
    assert kept.sum() == 140
    assert remove_small_components(_two_blobs(), min_voxels=1).sum() == 148


def test_fill_holes_3d_fills_enclosed_cavity_only() -> None:
    zz, yy, xx = np.mgrid[:21, :21, :21]
    r = np.sqrt((zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2)
    shell = (r <= 8) & (r >= 5)
    filled = fill_holes_3d(shell)
    np.testing.assert_array_equal(filled, r <= 8)
    # A cavity open to the array border is not a hole.
    cup = shell.copy()
    cup[10:, 8:13, 8:13] = False
    assert not fill_holes_3d(cup)[10, 10, 10]


def test_fill_holes_slice_wise_closes_tubes() -> None:
    yy, xx = np.mgrid[:15, :15]
    ring = ((yy - 7) ** 2 + (xx - 7) ** 2 <= 36) & ((yy - 7) ** 2 + (xx - 7) ** 2 >= 9)
    tube = np.zeros((6, 15, 15), dtype=bool)
    tube[1:5] = ring  # open at both ends along z: no 3D hole
    assert not fill_holes_3d(tube)[3, 7, 7]
    filled = fill_holes_3d(tube, slice_axis=0)
    assert filled[1:5, 7, 7].all()
    assert not filled[0].any() and not filled[5].any()


def test_keep_inside() -> None:
    mask = np.array([[True, True], [False, True]])
    region = np.array([[True, False], [True, True]])
    np.testing.assert_array_equal(keep_inside(mask, region), [[True, False], [False, True]])
    with pytest.raises(ValueError):
        keep_inside(mask, region[:1])


def test_mm_to_voxels_rounds_up_but_keeps_exact_multiples() -> None:
    assert mm_to_voxels(5.0, (2.5, 0.8, 0.8)) == (2, 7, 7)
    assert mm_to_voxels((0.0, 1.0, 2.4), (1.0, 1.0, 0.8)) == (0, 1, 3)
    with pytest.raises(ValueError):
        mm_to_voxels(5.0, (0.0, 1.0, 1.0))


def test_bounding_box_with_anisotropic_mm_margin() -> None:
    mask = np.zeros((20, 40, 40), dtype=bool)
    mask[10, 20:22, 30] = True
    box = bounding_box(mask, margin_mm=5.0, spacing=(2.5, 0.8, 0.8))
    # 5 mm is 2 slices at 2.5 mm and ceil(6.25) = 7 pixels at 0.8 mm.
    assert box == (slice(8, 13), slice(13, 29), slice(23, 38))
    assert bounding_box(mask) == (slice(10, 11), slice(20, 22), slice(30, 31))
    assert bounding_box(mask, (1, 0, 2)) == (slice(9, 12), slice(20, 22), slice(28, 33))


def test_bounding_box_is_clipped_to_the_array() -> None:
    mask = np.zeros((20, 40, 40), dtype=bool)
    mask[1, 38, 2] = True
    box = bounding_box(mask, margin_mm=5.0, spacing=(2.5, 0.8, 0.8))
    assert box == (slice(0, 4), slice(31, 40), slice(0, 10))
    assert mask[box].any()


def test_bounding_box_empty_and_bad_arguments() -> None:
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError):
        bounding_box(mask, margin_mm=1.0)  # no spacing
    with pytest.raises(ValueError):
        bounding_box(mask, 1, margin_mm=1.0, spacing=(1, 1, 1))  # both kinds of margin
    with pytest.raises(ValueError):
        bounding_box(mask, (1, 1))  # wrong number of axes


def test_crop_and_paste_round_trip() -> None:
    rng = np.random.default_rng(0)
    full = rng.normal(size=(3, 10, 12, 14)).astype(np.float32)  # with a channel axis
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[2:5, 3:9, 4:6] = True
    box = bounding_box(mask, 1)
    crop = crop_to_box(full, box)
    assert crop.shape == (3, 5, 8, 4)
    pasted = paste_box(crop, box, mask.shape, fill_value=-1.0)
    assert pasted.shape == full.shape and pasted.dtype == full.dtype
    np.testing.assert_array_equal(pasted[(Ellipsis, *box)], full[(Ellipsis, *box)])
    outside = np.ones(mask.shape, dtype=bool)
    outside[box] = False
    assert (pasted[:, outside] == -1.0).all()
    # In place into an existing array.
    target = np.zeros_like(full)
    assert paste_box(crop, box, mask.shape, out=target) is target
    np.testing.assert_array_equal(target[(Ellipsis, *box)], crop)
    with pytest.raises(ValueError):
        paste_box(crop[:, :-1], box, mask.shape)
