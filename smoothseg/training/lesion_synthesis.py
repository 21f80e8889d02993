"""Synthetic small lesions painted into tumour-task training patches (the idea of Hu et al., CVPR 2023,
"Label-free liver tumor synthesis").

Real small lesions are rare in the training labels: a cohort has a handful under 1 ml, so the tumour model sees few
of them however the patches are sampled. :func:`paint_lesions` adds 1-3 lesions of 3-15 mm (log-uniform diameter)
to a patch's reference liver:

* **where**: centred on a liver voxel whose distance (mm, real spacing) to anything that is not tumour-free liver
  (background, the liver edge, a real lesion) is at least the new lesion's radius plus ``MARGIN_MM``, so a painted
  lesion never leaves the liver and never touches a real or another painted one;
* **shape**: an ellipsoid of the drawn diameter (each semi-axis scaled by 0.8-1.2) whose boundary is roughened by
  smoothed Gaussian noise, kept inside the tumour-free liver;
* **intensity**: ``image + w * (contrast + (ratio - 1) * (image - m))``, where ``contrast`` and ``ratio`` are the
  tumour-minus-liver mean and the tumour-over-liver standard deviation of one training case with tumour (drawn from
  :attr:`SynthesisStats`; normalised intensities, as the network sees them), ``m`` the mean of the patch's liver
  around the lesion and ``w`` a soft edge from 0 at the boundary to 1 a fifth of the way in. So a lesion is as much
  darker or brighter than its own parenchyma as the dataset's lesions are, and keeps the parenchyma's texture;
* **label**: tumour inside the shape.

A patch that got painted lesions carries no TLVR target (its label ratio is no longer the case's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from smoothseg.labels import LIVER, TUMOR

__all__ = ["DIAMETER_MM", "MARGIN_MM", "SynthesisStats", "paint_lesions"]

#: Range of the painted lesions' diameters (mm), drawn log-uniformly.
DIAMETER_MM = (3.0, 15.0)
#: Distance kept between a painted lesion and the liver edge, real lesions and other painted lesions (mm).
MARGIN_MM = 2.0


@dataclass(frozen=True)
class SynthesisStats:
    """Per training case with tumour: tumour-minus-liver mean and tumour-over-liver std of normalised intensity."""

    contrast: tuple[float, ...]
    ratio: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.contrast or len(self.contrast) != len(self.ratio):
            raise ValueError("lesion synthesis needs the intensity statistics of at least one case with tumour")

    @classmethod
    def from_properties(cls, properties: list[dict]) -> SynthesisStats | None:
        """From preprocessed cases' ``intensity_stats`` (None when no case has tumour statistics)."""
        contrast, ratio = [], []
        for props in properties:
            stats = props.get("intensity_stats") or {}
            liver, tumour = stats.get("liver"), stats.get("tumour")
            if liver and tumour and liver[1] > 0:
                contrast.append(float(tumour[0] - liver[0]))
                ratio.append(float(tumour[1] / liver[1]))
        return cls(tuple(contrast), tuple(ratio)) if contrast else None


def _one_lesion(image: np.ndarray, seg: np.ndarray, free_mm: np.ndarray, spacing: np.ndarray,
                rng: np.random.Generator, stats: SynthesisStats) -> bool:
    """Paint one lesion into ``image``/``seg`` in place; False when the liver has no room for the drawn size."""
    diameter = float(np.exp(rng.uniform(*np.log(DIAMETER_MM))))
    radius = diameter / 2
    room = np.argwhere(free_mm >= radius + MARGIN_MM)
    if not len(room):
        return False
    centre = room[rng.integers(len(room))]
    semi = radius * rng.uniform(0.8, 1.2, size=3)
    reach = np.ceil(semi.max() * 1.3 / spacing).astype(int) + 1
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, seg.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.indices(tuple(hi - lo), dtype=np.float32)
    r = np.sqrt(sum((((grid[i] + lo[i] - centre[i]) * spacing[i]) / semi[i]) ** 2 for i in range(3)))
    noise = ndimage.gaussian_filter(rng.standard_normal(r.shape).astype(np.float32),
                                    sigma=np.maximum(radius * 0.4 / spacing, 0.5))
    noise /= max(float(np.abs(noise).max()), 1e-6)
    r = r + 0.25 * noise
    shape = (r < 1.0) & (seg[box] == LIVER)
    if not shape.any():
        return False
    k = int(rng.integers(len(stats.contrast)))
    weight = np.clip((1.0 - r) / 0.2, 0.0, 1.0) * shape
    around = (seg[box] == LIVER) & ~shape
    local_mean = float(image[box][around].mean()) if around.any() else float(image[box][shape].mean())
    patch = image[box]
    image[box] = patch + weight * (stats.contrast[k] + (stats.ratio[k] - 1.0) * (patch - local_mean))
    seg[box][shape] = TUMOR
    return True


def paint_lesions(image: np.ndarray, seg: np.ndarray, spacing, rng: np.random.Generator,
                  stats: SynthesisStats, count: int | None = None) -> int:
    """Paint 1-3 (or ``count``) synthetic lesions into the tumour-free reference liver of one patch, in place:
    ``image`` (z, y, x) normalised intensities, ``seg`` (z, y, x) labels 0/1/2. Returns how many were painted
    (fewer when the liver has no room left for them)."""
    spacing = np.asarray(spacing, dtype=float)
    painted = 0
    for _ in range(int(rng.integers(1, 4)) if count is None else count):
        free = seg == LIVER
        if not free.any():
            break
        free_mm = ndimage.distance_transform_edt(free, sampling=spacing)
        painted += _one_lesion(image, seg, free_mm, spacing, rng, stats)
    return painted
