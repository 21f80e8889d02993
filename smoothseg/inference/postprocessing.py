"""The cascade's post-processing of label maps on the original grid: liver clean-up, composition, active contours.

Pure NumPy/SciPy (no torch), so the cohort's post-processing worker processes start quickly. The mask operations
themselves live in :mod:`smoothseg.masks`.
"""

from __future__ import annotations

import numpy as np

from smoothseg.dataset.io import Geometry
from smoothseg.inference.active_contour import refine_tumours
from smoothseg.labels import TUMOR
from smoothseg.masks.box import bounding_box
from smoothseg.masks.components import fill_holes_3d, largest_connected_component
from smoothseg.planning.plans import ActiveContourPlan

__all__ = ["compose_labels", "postprocess_liver", "refine_and_compose"]


def postprocess_liver(mask: np.ndarray) -> np.ndarray:
    """Largest connected component (26-connectivity) with its holes filled in 3D; empty stays empty.

    Works inside the mask's bounding box plus one voxel, which gives the same result as on the whole grid.
    """
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask, 1)
    if box is None:
        return mask.copy()
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = fill_holes_3d(largest_connected_component(mask[box]))
    return out


def compose_labels(liver: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Label map 0 background, 1 liver, 2 tumour (tumour outside the liver is dropped)."""
    labels = np.asarray(liver, dtype=bool).astype(np.uint8)
    labels[np.asarray(tumour, dtype=bool) & (labels > 0)] = TUMOR
    return labels


def refine_and_compose(image: np.ndarray, geometry: Geometry, labels: np.ndarray,
                       params: ActiveContourPlan | None) -> np.ndarray:
    """Active contours on the tumour of a cascade label map (``params`` None: none), then the final label map."""
    liver = labels > 0
    tumour = labels == TUMOR
    if params is not None and tumour.any():
        tumour = refine_tumours(image, tumour, liver, geometry.spacing_zyx, params=params)
    return compose_labels(liver, tumour)
