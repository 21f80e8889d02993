"""Bounding boxes in index space, with margins given in millimetres."""

from __future__ import annotations

import numpy as np

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (start, stop) in (z, y, x), stop exclusive


def bounding_box(mask: np.ndarray) -> Box | None:
    """The tight bounding box of a non-empty mask, or None."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)


def grow_box(box: Box, margin_voxels, shape) -> Box:
    """Grow ``box`` by ``margin_voxels`` (one per axis) on each side, clipped to ``shape``."""
    start = tuple(max(0, a - m) for a, m in zip(box[0], margin_voxels, strict=True))
    stop = tuple(min(n, b + m) for b, m, n in zip(box[1], margin_voxels, shape, strict=True))
    return start, stop


def expand_box(box: Box, shape, spacing, margin_mm) -> Box:
    """Grow ``box`` by ``margin_mm`` on each side (converted with the real spacing), clipped to ``shape``."""
    return grow_box(box, [int(np.ceil(m / s)) for m, s in zip(margin_mm, spacing, strict=True)], shape)


def box_slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(box[0], box[1], strict=True))


def paste(crop: np.ndarray, box: Box, shape, fill=0) -> np.ndarray:
    """Place ``crop`` (shaped like ``box``; leading channel axes allowed) into a full array of ``shape``."""
    out = np.full((*crop.shape[:-3], *shape), fill, dtype=crop.dtype)
    out[(..., *box_slices(box))] = crop
    return out
