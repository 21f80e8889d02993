"""Connected components of binary masks: labelling, the largest component, small components, holes, restriction.

``connectivity`` is SciPy's rank throughout: 1 = face neighbours (6 in 3D), 2 = faces + edges (18), 3 = full (26,
the default, as for lesions everywhere in smoothseg).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["connected_lesions", "fill_holes_3d", "keep_inside", "largest_connected_component",
           "remove_small_components"]


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be between 1 and {ndim}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def connected_lesions(mask: np.ndarray, connectivity: int = 3) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask: (label map with ids 1..n, n)."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    return labels, int(n)


def largest_connected_component(mask: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """Keep only the largest connected component of a binary mask.

    Ties are broken in favour of the component with the smallest label (first in C order). An empty mask gives an
    empty mask. Returns a new boolean array.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = connected_lesions(mask, connectivity)
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
    labels, n = connected_lesions(mask, connectivity)
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
