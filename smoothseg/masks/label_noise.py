"""Reproducible corruption of tumour labels, as imperfect annotators make it: the label-noise arms of the ablation.

Four kinds, each with one level (``KIND:LEVEL``, e.g. ``boundary:2``):

* ``boundary:MM``: every lesion's boundary moves by a smooth random offset within +-MM (the signed distance to the
  lesion compared with a smooth random field, standardised and clipped to +-MM, correlated over
  :data:`BOUNDARY_SMOOTHING_MM`): some stretches drawn too wide, others too tight;
* ``bias:MM``: every lesion dilated by MM (a generous annotator);
* ``drop:ML``: lesions under ML millilitres removed (a hurried annotator skips the small ones);
* ``miss:P``: each lesion removed with probability P.

Tumour only ever grows into the liver region it may occupy (``region``: the liver labels around it) and removed
tumour becomes liver, so the liver region of a case is unchanged and only the tumour labels are noisy. The same seed
gives the same corruption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from smoothseg.masks.components import connected_lesions
from smoothseg.masks.measures import signed_distance_mm, voxel_volume_ml

__all__ = ["NOISE_KINDS", "LabelNoise", "corrupt_tumour"]

NOISE_KINDS = ("boundary", "bias", "drop", "miss")
#: Correlation length of the ``boundary`` offset field (mm): neighbouring stretches of a boundary move together.
BOUNDARY_SMOOTHING_MM = 6.0


@dataclass(frozen=True)
class LabelNoise:
    kind: str
    level: float

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"unknown label noise {self.kind!r}; choose from {', '.join(NOISE_KINDS)}")
        if not np.isfinite(self.level) or self.level < 0 or (self.kind == "miss" and self.level > 1):
            raise ValueError(f"label noise {self.kind}: level must be {'in [0, 1]' if self.kind == 'miss' else '>= 0'}"
                             f", got {self.level}")

    @classmethod
    def parse(cls, spec: str) -> LabelNoise:
        """``"KIND:LEVEL"`` (``boundary:2``, ``bias:1.5``, ``drop:1``, ``miss:0.3``)."""
        kind, sep, level = spec.partition(":")
        try:
            value = float(level)
        except ValueError:
            value = None
        if not sep or value is None:
            raise ValueError(f"label noise {spec!r}: write KIND:LEVEL, KIND one of {', '.join(NOISE_KINDS)}")
        return cls(kind.strip(), value)

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.level:g}"


def corrupt_tumour(tumour: np.ndarray, region: np.ndarray, spacing_zyx: tuple[float, float, float],
                   noise: LabelNoise, rng: np.random.Generator) -> np.ndarray:
    """The corrupted tumour mask: ``tumour`` changed by ``noise``, grown only into ``region | tumour``."""
    tumour = np.asarray(tumour, dtype=bool)
    allowed = np.asarray(region, dtype=bool) | tumour
    spacing = tuple(float(s) for s in spacing_zyx)
    if not tumour.any() or noise.level == 0:
        return tumour.copy()
    if noise.kind in ("drop", "miss"):
        lesions, n = connected_lesions(tumour)
        voxels = np.bincount(lesions.ravel(), minlength=n + 1)[1:]
        if noise.kind == "drop":
            removed = voxels * voxel_volume_ml(spacing) < noise.level
        else:
            removed = rng.random(n) < noise.level
        keep = np.concatenate([[False], ~removed])
        return keep[lesions]
    if noise.kind == "bias":
        return (ndimage.distance_transform_edt(~tumour, sampling=spacing) <= noise.level) & allowed
    # boundary: compare the signed distance with a smooth field, standardised and clipped to [-level, level]
    field = ndimage.gaussian_filter(rng.standard_normal(tumour.shape),
                                    sigma=[BOUNDARY_SMOOTHING_MM / s for s in spacing])
    spread = float(field.std())
    offset = np.clip(field / spread, -1.0, 1.0) * noise.level if spread > 0 else np.zeros_like(field)
    return (signed_distance_mm(tumour, spacing) <= offset) & allowed
