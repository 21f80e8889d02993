"""Lesion and structure measures in physical units: volume (ml), surface voxels, maximal 3D diameter (mm).

Arrays are in NumPy order ``(z, y, x)`` and ``spacing`` in the same order, in mm (:class:`smoothseg.dataset.io.Geometry`
stores ``(x, y, z)``: use its ``spacing_zyx``). Used by the tumour report, the lesion filter and the evaluation, so
that they measure the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from smoothseg.masks.box import bounding_box

__all__ = ["binary_dice", "check_spacing", "max_diameter_mm", "signed_distance_mm", "surface_voxels", "voxel_volume_ml",
           "volume_ml"]


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} entries but the arrays are {ndim}D; "
                         "give one spacing per axis, in the arrays' (z, y, x) order")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be finite and positive, got {values}")
    return values


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    return float(np.prod(spacing)) / 1000.0


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a binary mask in millilitres: ``count(mask) * prod(spacing_mm) / 1000``. Empty mask: 0.0."""
    mask = np.asarray(mask, dtype=bool)
    spacing = check_spacing(spacing, mask.ndim)
    return int(np.count_nonzero(mask)) * voxel_volume_ml(spacing)


def signed_distance_mm(mask: np.ndarray, spacing: Sequence[float], *,
                       outside_is_background: bool = False) -> np.ndarray:
    """Per voxel, mm to the nearest voxel centre on the other side of ``mask``'s boundary: positive outside the mask,
    negative inside (so ``<= 0`` is the mask itself, ``<= r`` its dilation by r mm, ``< -r`` its erosion by r mm).
    ``outside_is_background``: voxels beyond the array count as outside the mask (an inside voxel at the array's
    face is then one voxel from the outside), as for a mask that is cropped with background padding. float64."""
    mask = np.asarray(mask, dtype=bool)
    spacing = check_spacing(spacing, mask.ndim)
    if outside_is_background:
        padded = np.pad(mask, 1, constant_values=False)
        inner = tuple(slice(1, -1) for _ in range(mask.ndim))
        return signed_distance_mm(padded, spacing)[inner]
    if not mask.any() or mask.all():  # no boundary: an empty mask is all outside, a full one all inside
        return np.full(mask.shape, np.inf if not mask.any() else -np.inf)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return np.where(mask, -inside, outside)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask: ``mask & ~erode(mask)`` with the face-connected structuring element.

    A voxel is on the surface when at least one of its 2*ndim face neighbours is background; the space outside the
    array counts as background, so mask voxels on the array border are surface voxels.
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _max_pairwise_distance(points: np.ndarray, max_block_elements: int = 1 << 22) -> float:
    """Largest Euclidean distance between any two rows of ``points``, in row blocks to bound memory."""
    block = max(1, max_block_elements // len(points))
    best = 0.0
    for start in range(0, len(points), block):
        best = max(best, float(cdist(points[start:start + block], points).max()))
    return best


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    """Rows of ``points`` that are convex-hull vertices (all points when the hull is degenerate and tiny)."""
    if len(points) <= points.shape[1] + 1:
        return points
    try:
        hull = ConvexHull(points)
    except QhullError:  # coplanar / collinear points: joggle the input; vertices are still original points
        hull = ConvexHull(points, qhull_options="QJ")
    return points[hull.vertices]


def max_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Maximal 3D diameter of a binary mask in mm: the largest voxel-centre to voxel-centre distance.

    ``max_{a, b in mask} || (a - b) * spacing ||_2``, computed on the convex-hull vertices of the surface voxels'
    physical coordinates (the farthest pair of a point set is always a pair of hull vertices), so it is exact and
    fast. Because centres are used, a single voxel has diameter 0 and a line of n voxels along z has
    ``(n - 1) * spacing_z``. The mask is not assumed to be connected; pass one lesion at a time for per-lesion
    diameters. Empty mask: NaN (there is no diameter).
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = check_spacing(spacing, mask.ndim)
    box = bounding_box(mask)
    if box is None:
        return math.nan
    coords = np.argwhere(surface_voxels(mask[box])).astype(np.float64) * np.asarray(spacing)
    if len(coords) < 2:
        return 0.0
    return _max_pairwise_distance(_hull_vertices(coords))


def binary_dice(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """Dice of two binary masks; None when both are empty (undefined; callers decide how to count it)."""
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(reference))
    return None if total == 0 else 2.0 * float(np.count_nonzero(prediction & reference)) / total
