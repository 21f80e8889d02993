"""Boxes in index space: the one :data:`Box` type of the project, with margins in voxels or millimetres.

A :data:`Box` is one ``slice(start, stop)`` per spatial axis, with explicit, non-negative, clipped bounds (``step`` is
``None``), so ``array[box]`` (or ``array[(..., *box)]`` with leading channel axes) is always a valid view. Boxes that
must be stored (preprocessing properties) go through :func:`box_to_dict` / :func:`box_from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Box", "bounding_box", "box_from_dict", "box_shape", "box_to_dict", "crop_to_box", "full_box", "grow_box",
           "mm_to_voxels", "paste_box"]

#: A box in an array: one ``slice(start, stop)`` per spatial axis.
Box = tuple[slice, ...]


def per_axis(value: float | Sequence[float], ndim: int, name: str) -> tuple[float, ...]:
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


def mm_to_voxels(margin_mm: float | Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """Convert a margin in mm to a whole number of voxels per axis, rounding up: ``ceil(margin_mm / spacing)``.

    ``margin_mm`` may be one value for all axes or one per axis; ``spacing`` is per axis, in the array's order.
    A tiny tolerance keeps exact multiples exact (5 mm at 2.5 mm spacing is 2 voxels, not 3).
    """
    spacing_values = tuple(float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in spacing_values):
        raise ValueError(f"spacing must be finite and positive, got {spacing_values}")
    margins = per_axis(margin_mm, len(spacing_values), "margin_mm")
    return tuple(int(math.ceil(m / s - 1e-9)) for m, s in zip(margins, spacing_values, strict=True))


def full_box(shape: Sequence[int]) -> Box:
    """The box covering a whole array of ``shape``."""
    return tuple(slice(0, int(n)) for n in shape)


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(int(s.stop - s.start) for s in box)


def grow_box(box: Box, margin_voxels: Sequence[int], shape: Sequence[int]) -> Box:
    """Grow ``box`` by ``margin_voxels`` (one per axis) on each side, clipped to ``shape``."""
    return tuple(slice(max(0, s.start - int(m)), min(int(n), s.stop + int(m)))
                 for s, m, n in zip(box, margin_voxels, shape, strict=True))


def _tight_box(mask: np.ndarray) -> Box | None:
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


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
        margins = tuple(int(m) for m in per_axis(margin_voxels, mask.ndim, "margin_voxels"))
    tight = _tight_box(mask)
    return None if tight is None else grow_box(tight, margins, mask.shape)


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
    spatial = tuple(len(range(*sl.indices(n))) for sl, n in zip(box, full_shape, strict=True))
    if crop.shape[crop.ndim - len(box):] != spatial:
        raise ValueError(f"crop shape {crop.shape} does not match the box {box} (spatial shape {spatial})")
    leading = crop.shape[:crop.ndim - len(box)]
    if out is None:
        out = np.full(leading + full_shape, fill_value, dtype=crop.dtype)
    elif out.shape != leading + full_shape:
        raise ValueError(f"out has shape {out.shape}, expected {leading + full_shape}")
    out[(Ellipsis, *box)] = crop
    return out


def box_to_dict(box: Box) -> dict[str, list[int]]:
    """The JSON form of a box: ``{"start": [...], "stop": [...]}``."""
    return {"start": [int(s.start) for s in box], "stop": [int(s.stop) for s in box]}


def box_from_dict(data: dict[str, Any]) -> Box:
    """The inverse of :func:`box_to_dict`."""
    return tuple(slice(int(a), int(b)) for a, b in zip(data["start"], data["stop"], strict=True))
