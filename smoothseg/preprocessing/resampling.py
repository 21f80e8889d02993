"""Resampling between voxel spacings (images with splines, label maps through one-hot interpolation).

Grids are aligned by their outer voxel edges (``scipy.ndimage.zoom`` with ``grid_mode=True``): a
volume resampled to another shape and back covers the same physical box. When either grid is
anisotropic (largest/smallest spacing above a threshold) the in-plane axes are interpolated first
with the given order and z afterwards with ``z_order`` (nearest by default), as nnU-Net does, so
thick slices are not smeared into each other.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def shape_for_spacing(shape, spacing, target_spacing) -> tuple[int, ...]:
    """The shape that covers the same physical extent at ``target_spacing`` (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing, strict=True))


def is_anisotropic(spacing, threshold: float) -> bool:
    return max(spacing) / min(spacing) > threshold


def _zoom(array: np.ndarray, factors, order: int) -> np.ndarray:
    if all(abs(f - 1.0) < 1e-12 for f in factors):
        return array
    if order > 1:  # prefilter in float32 ourselves: scipy's own prefilter makes a float64 copy of the whole volume
        array = ndimage.spline_filter(array, order=order, output=np.float32, mode="nearest")
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=False)


def resample_array(array: np.ndarray, new_shape, *, order: int, separate_z: bool = False, z_order: int = 0
                   ) -> np.ndarray:
    """Resample a 3D ``(z, y, x)`` float array to ``new_shape``."""
    new_shape = tuple(int(v) for v in new_shape)
    if tuple(array.shape) == new_shape:
        return array
    factors = [n / o for n, o in zip(new_shape, array.shape, strict=True)]
    if separate_z:
        out = _zoom(array, (1.0, factors[1], factors[2]), order)
        out = _zoom(out, (factors[0], 1.0, 1.0), z_order)
    else:
        out = _zoom(array, factors, order)
    if out.shape != new_shape:  # zoom rounds; enforce the exact shape
        out = out[tuple(slice(0, n) for n in new_shape)]
        pad = [(0, n - s) for n, s in zip(new_shape, out.shape, strict=True)]
        out = np.pad(out, pad, mode="edge")
    return out


def resample_image(image: np.ndarray, new_shape, *, order: int = 3, separate_z: bool = False, z_order: int = 0
                   ) -> np.ndarray:
    """Resample an intensity image to ``new_shape`` (float32 out)."""
    return resample_array(image.astype(np.float32, copy=False), new_shape, order=order, separate_z=separate_z,
                          z_order=z_order).astype(np.float32, copy=False)


def resample_labels(labels: np.ndarray, new_shape, *, order: int = 1, separate_z: bool = False, z_order: int = 0
                    ) -> np.ndarray:
    """Resample a label map: each label's indicator is interpolated, and the most likely label wins."""
    new_shape = tuple(int(v) for v in new_shape)
    if tuple(labels.shape) == new_shape:
        return labels
    values = np.unique(labels)
    if order == 0 or len(values) == 1:
        return resample_array(labels, new_shape, order=0, separate_z=separate_z, z_order=0).astype(labels.dtype)
    best = np.full(new_shape, -1.0, dtype=np.float32)
    out = np.zeros(new_shape, dtype=labels.dtype)
    for value in values:
        score = resample_array((labels == value).astype(np.float32), new_shape, order=order, separate_z=separate_z,
                               z_order=z_order)
        better = score > best
        out[better] = value
        best[better] = score[better]
    return out


def resample_probabilities(probabilities: np.ndarray, new_shape, *, order: int = 1, separate_z: bool = False,
                           z_order: int = 0) -> np.ndarray:
    """Resample per-class maps ``(C, z, y, x)`` channel by channel (linear by default)."""
    return np.stack([resample_array(p.astype(np.float32, copy=False), new_shape, order=order,
                                    separate_z=separate_z, z_order=z_order) for p in probabilities])
