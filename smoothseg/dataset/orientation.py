"""Canonical orientation: every image is seen by the networks with the same anatomy along the same array axes.

CT volumes come with any direction matrix: a third of a typical multi-centre cohort is stored left-right or
head-feet flipped, some are stored sagittally. nnU-Net feeds the arrays as stored and mirrors every axis during
training, so the network never learns where "left" is. The liver's global view needs exactly that cue: the spleen
has the liver's HU and differs mainly by side. So the preprocessor first brings each array to the canonical
orientation of the identity direction matrix (array axes z, y, x along ITK's +S, +P, +L, i.e. "LPS"), by axis
permutation and flips only: no interpolation, exactly invertible. Oblique scans are reoriented to the nearest
axis-aligned orientation (as ``DICOMOrient`` does); the obliqueness itself is kept in the geometry.

An :class:`Orientation` maps arrays (with any leading channel axes), spacings and boxes between the stored
("original") and the canonical frame.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Orientation:
    """``canonical = flip(transpose(original, axes), flips)`` on the last three (z, y, x) axes.

    ``axes[i]`` is the original array axis that becomes canonical axis ``i``; ``flips[i]`` says whether canonical
    axis ``i`` is then reversed.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def from_direction(cls, direction) -> Orientation:
        """The permutation and flips that make a row-major 3x3 direction matrix (x, y, z columns) nearest identity.

        Array axis ``a`` (z, y, x order) is ITK index axis ``2 - a``, whose physical direction is column ``2 - a``.
        Among the six permutations, the one with the largest product of absolute direction cosines wins (for an
        axis-aligned matrix that is the exact one; ties are broken by the first found, i.e. the identity first).
        """
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        # cosine[p, a]: component along physical axis p (x, y, z) of array axis a's direction
        cosine = d[:, ::-1]
        best, best_score = (0, 1, 2), -1.0
        for perm in itertools.permutations(range(3)):
            # canonical axis i is along physical axis 2 - i and comes from array axis perm[i]
            score = float(np.prod([abs(cosine[2 - i, perm[i]]) for i in range(3)]))
            if score > best_score + 1e-9:
                best, best_score = perm, score
        flips = tuple(bool(cosine[2 - i, best[i]] < 0) for i in range(3))
        return cls(tuple(int(a) for a in best), flips)

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    # -- arrays ---------------------------------------------------------------------------------------------------
    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Original -> canonical frame (a view; leading channel axes are kept)."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        return array.transpose(*range(lead), *(lead + a for a in self.axes))[self._flip_index()]

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """Canonical -> original frame (a view)."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        unflipped = array[self._flip_index()]
        inverse = np.argsort(self.axes)
        return unflipped.transpose(*range(lead), *(lead + int(a) for a in inverse))

    def _flip_index(self) -> tuple:
        """Index reversing the flipped canonical axes (a flip is its own inverse)."""
        return (Ellipsis, *(slice(None, None, -1) if f else slice(None) for f in self.flips))

    # -- shapes, spacings, boxes ----------------------------------------------------------------------------------
    def canonical_tuple(self, values) -> tuple:
        """Per-axis values (shape, spacing) of the original frame, in canonical axis order."""
        values = tuple(values)
        return tuple(values[a] for a in self.axes)

    def box_to_original(self, box: tuple[slice, ...], canonical_shape) -> tuple[slice, ...]:
        """A canonical-frame box (one slice per axis) -> the same voxels' box in the original frame."""
        original = [slice(0, 0)] * 3
        for i, a in enumerate(self.axes):
            lo, hi = box[i].start, box[i].stop
            if self.flips[i]:
                lo, hi = int(canonical_shape[i]) - hi, int(canonical_shape[i]) - lo
            original[a] = slice(int(lo), int(hi))
        return tuple(original)

    # -- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "flips": list(self.flips)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Orientation:
        if not d:
            return cls()
        return cls(tuple(int(a) for a in d["axes"]), tuple(bool(f) for f in d["flips"]))
