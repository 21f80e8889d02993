"""Post-processing of binary masks: connected components, hole filling, bounding boxes and crop/paste helpers.

This module owns the small, pure NumPy/SciPy mask operations that the inference cascade applies between and after
its stages (keep the largest liver component, fill holes, restrict the tumour to the liver, crop to the liver box
with a margin in millimetres and paste the crop back). It does no I/O and knows nothing about networks.

Conventions
-----------
* Arrays are in NumPy order ``(z, y, x)``; ``spacing`` is given in the same order, in mm.
* ``connectivity`` is SciPy's rank: 1 = face neighbours (6 in 3D), 2 = faces + edges (18), 3 = full (26). The
  default is full connectivity, as for lesions in :mod:`smoothseg.evaluation.metrics`.
* Boxes are tuples of ``slice`` objects with explicit, non-negative, clipped bounds (``step`` is ``None``), so
  ``array[box]`` is always a valid, non-empty view for a non-empty mask.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from smoothseg.preprocessing.cropping import bounding_box as tight_box
from smoothseg.preprocessing.cropping import box_slices, grow_box

__all__ = [
    "Box", "bounding_box", "crop_to_box", "fill_holes_3d", "keep_inside", "largest_connected_component",
    "mm_to_voxels", "paste_box", "remove_small_components",
]

logger = logging.getLogger(__name__)

#: A box in an array: one ``slice(start, stop)`` per spatial axis.
Box = tuple[slice, ...]


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be between 1 and {ndim}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def _per_axis(value: float | Sequence[float], ndim: int, name: str) -> tuple[float, ...]:
    """Broadcast a scalar to one value per axis, or check that a sequence has one value per axis."""
    if np.isscalar(value):
        values = (float(value),) * ndim  # type: ignore[arg-type]
    else:
        values = tuple(float(v) for v in value)  # type: ignore[union-attr]
    if len(values) != ndim:
        raise ValueError(f"{name} {values} has {len(values)} entries but the array is {ndim}D")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{name} must be finite and non-negative, got {values}")
    return values


def largest_connected_component(mask: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """Keep only the largest connected component of a binary mask.

    Ties are broken in favour of the component with the smallest label (first in C order). An empty mask gives an
    empty mask. Returns a new boolean array.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def remove_small_components(mask: np.ndarray, min_voxels: int, connectivity: int = 3) -> np.ndarray:
    """Remove the connected components with fewer than ``min_voxels`` voxels. Returns a new boolean array."""
    mask = np.asarray(mask, dtype=bool)
    if min_voxels <= 1:
        return mask.copy()
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def fill_holes_3d(mask: np.ndarray, slice_axis: int | None = None) -> np.ndarray:
    """Fill the holes of a binary mask: background regions that are not connected to the array border.

    The fill is done in full 3D first (face connectivity of the background, SciPy's ``binary_fill_holes``). When
    ``slice_axis`` is given, every slice perpendicular to that axis is then also filled in 2D, which closes holes that
    are enclosed in-plane but open towards a neighbouring slice (common with thick CT slices). Returns a new boolean
    array.
    """
    mask = np.asarray(mask, dtype=bool)
    filled = ndimage.binary_fill_holes(mask)
    if slice_axis is not None:
        if not -mask.ndim <= slice_axis < mask.ndim:
            raise ValueError(f"slice_axis {slice_axis} is out of range for a {mask.ndim}D mask")
        moved = np.moveaxis(filled, slice_axis, 0)  # a view: writing into it writes into `filled`
        for index in range(moved.shape[0]):
            if moved[index].any():
                moved[index] = ndimage.binary_fill_holes(moved[index])
    return filled


def keep_inside(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``mask & region`` as a new boolean array (e.g. the tumour restricted to the liver)."""
    mask = np.asarray(mask, dtype=bool)
    region = np.asarray(region, dtype=bool)
    if mask.shape != region.shape:
        raise ValueError(f"mask and region must have the same shape, got {mask.shape} and {region.shape}")
    return mask & region


def mm_to_voxels(margin_mm: float | Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """Convert a margin in mm to a whole number of voxels per axis, rounding up: ``ceil(margin_mm / spacing)``.

    ``margin_mm`` may be one value for all axes or one per axis; ``spacing`` is per axis, in the array's order.
    A tiny tolerance keeps exact multiples exact (5 mm at 2.5 mm spacing is 2 voxels, not 3).
    """
    spacing_values = tuple(float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in spacing_values):
        raise ValueError(f"spacing must be finite and positive, got {spacing_values}")
    margins = _per_axis(margin_mm, len(spacing_values), "margin_mm")
    return tuple(int(math.ceil(m / s - 1e-9)) for m, s in zip(margins, spacing_values, strict=True))


def bounding_box(mask: np.ndarray, margin_voxels: int | Sequence[int] = 0, *,
                 margin_mm: float | Sequence[float] | None = None,
                 spacing: Sequence[float] | None = None) -> Box | None:
    """The smallest box holding all True voxels of ``mask``, grown by a margin and clipped to the array.

    Give the margin either in voxels (``margin_voxels``, one value or one per axis) or in millimetres
    (``margin_mm`` with ``spacing``, converted per axis with :func:`mm_to_voxels`, so an anisotropic spacing gives
    fewer voxels along the coarse axis). Returns one ``slice(start, stop)`` per axis, or ``None`` for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if margin_mm is not None:
        if spacing is None:
            raise ValueError("margin_mm needs the voxel spacing (in the array's axis order, mm)")
        if np.any(np.asarray(margin_voxels) != 0):
            raise ValueError("give the margin either in voxels or in mm, not both")
        if len(spacing) != mask.ndim:
            raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} entries but the mask is {mask.ndim}D")
        margins = mm_to_voxels(margin_mm, spacing)
    else:
        margins = tuple(int(m) for m in _per_axis(margin_voxels, mask.ndim, "margin_voxels"))
    tight = tight_box(mask)
    return None if tight is None else box_slices(grow_box(tight, margins, mask.shape))


def crop_to_box(array: np.ndarray, box: Box) -> np.ndarray:
    """A copy of ``array`` cropped to ``box`` along its last ``len(box)`` axes (leading channel axes are kept)."""
    array = np.asarray(array)
    if len(box) > array.ndim:
        raise ValueError(f"box has {len(box)} axes but the array only {array.ndim}")
    return array[(Ellipsis, *box)].copy()


def paste_box(crop: np.ndarray, box: Box, full_shape: Sequence[int], fill_value: float | bool = 0,
              out: np.ndarray | None = None) -> np.ndarray:
    """Put a crop back into a full-size array: the inverse of :func:`crop_to_box`.

    ``full_shape`` is the spatial shape of the full array (the axes the box refers to); leading axes of ``crop``
    (channels) are kept. Voxels outside the box get ``fill_value``. When ``out`` is given the crop is written into it
    in place (``fill_value`` is then ignored) and ``out`` is returned.
    """
    crop = np.asarray(crop)
    full_shape = tuple(int(s) for s in full_shape)
    if len(box) != len(full_shape):
        raise ValueError(f"box has {len(box)} axes but full_shape {full_shape} has {len(full_shape)}")
    box_shape = tuple(len(range(*sl.indices(n))) for sl, n in zip(box, full_shape, strict=True))
    if crop.shape[crop.ndim - len(box):] != box_shape:
        raise ValueError(f"crop shape {crop.shape} does not match the box {box} (spatial shape {box_shape})")
    leading = crop.shape[:crop.ndim - len(box)]
    if out is None:
        out = np.full(leading + full_shape, fill_value, dtype=crop.dtype)
    elif out.shape != leading + full_shape:
        raise ValueError(f"out has shape {out.shape}, expected {leading + full_shape}")
    out[(Ellipsis, *box)] = crop
    return out
