"""The per-task preprocessor: one object used by preprocessing for training and by inference.

``liver`` task: whole volume, resampled to the coarse spacing, windowed and normalised; labels
{0 background, 1 liver region}.
``tumor`` task: crop to a liver mask's bounding box plus the planned margin (the ground-truth liver
in training, the predicted liver at inference), resample to the fine spacing, window and normalise;
labels {0 outside liver, 1 liver, 2 tumour}. Intensities outside the liver are kept: the data loader
masks them, so training can perturb the mask the way liver-stage errors will at inference.

:meth:`TaskPreprocessor.preprocess` first brings the arrays to the canonical orientation when the plan says so
(:mod:`smoothseg.dataset.orientation`); the ``revert_*`` methods undo the resampling, the crop and the
reorientation, back to the original grid. ``properties["crop_box"]`` is always in the original (stored) frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from smoothseg.dataset.io import Geometry
from smoothseg.dataset.orientation import Orientation
from smoothseg.masks.box import Box, bounding_box, box_from_dict, box_to_dict, full_box, paste_box
from smoothseg.planning.plans import ConfigurationPlan
from smoothseg.preprocessing.normalization import normalize_ct
from smoothseg.preprocessing.resampling import (
    is_anisotropic,
    resample_array,
    resample_image,
    resample_labels,
    resample_probabilities,
    shape_for_spacing,
)


def argmax_labels(probabilities: Iterable[np.ndarray]) -> np.ndarray:
    """``argmax`` over the class maps as uint8 (ties: lowest class), one class map at a time.

    ``probabilities`` is a ``(C, ...)`` array or any iterable of per-class maps (e.g. a generator that resamples
    them one by one): only the running maximum and the labels are kept, never all C maps, and there is no int64
    temporary as with ``np.argmax``.
    """
    labels: np.ndarray | None = None
    best: np.ndarray | None = None
    for c, class_map in enumerate(probabilities):
        if best is None:
            best = np.array(class_map, dtype=np.float32)
            labels = np.zeros(best.shape, dtype=np.uint8)
            continue
        better = class_map > best
        labels[better] = c
        np.maximum(best, class_map, out=best)
    if labels is None:
        raise ValueError("argmax_labels needs at least one class map")
    return labels


@dataclass
class TaskPreprocessor:
    plan: ConfigurationPlan
    liver_labels: tuple[int, ...]
    tumor_labels: tuple[int, ...]

    @classmethod
    def from_plans(cls, plans, task: str) -> TaskPreprocessor:
        return cls(plans[task], tuple(plans.task_regions["liver"]), tuple(plans.task_regions["tumor"]))

    # -- geometry ---------------------------------------------------------------------------------------------
    def crop_box(self, shape, spacing_zyx, liver_mask: np.ndarray | None) -> Box:
        """The region of the original grid this task sees."""
        if self.plan.crop == "none":
            return full_box(shape)
        if liver_mask is None:
            raise ValueError("the tumor task needs a liver mask to crop to")
        box = bounding_box(liver_mask, margin_mm=self.plan.crop_margin_mm, spacing=spacing_zyx)
        if box is None:
            raise ValueError("the liver mask is empty: nothing to crop to")
        return box

    def _separate_z(self, spacing_zyx) -> bool:
        t = self.plan.resampling.anisotropy_threshold
        return is_anisotropic(spacing_zyx, t) or is_anisotropic(self.plan.spacing, t)

    def orientation(self, geometry: Geometry) -> Orientation:
        """How this task reorients an image of ``geometry`` (identity for ``orientation: native`` plans)."""
        if self.plan.orientation == "native":
            return Orientation()
        return Orientation.from_direction(geometry.direction)

    # -- forward ----------------------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, geometry: Geometry, liver_mask: np.ndarray | None = None,
                   label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """Image (and raw label map) on the original grid -> network input ``(1, z, y, x)``, task labels, properties.

        ``liver_mask`` defaults to the label map's liver region when a label is given (training). All three arrays
        are given in the original (stored) frame.
        """
        orient = self.orientation(geometry)
        original_shape = tuple(int(v) for v in image.shape)
        image = orient.to_canonical(image)
        label = None if label is None else orient.to_canonical(label)
        liver_mask = None if liver_mask is None else orient.to_canonical(liver_mask)
        spacing = orient.canonical_tuple(geometry.spacing_zyx)
        if liver_mask is None and label is not None and self.plan.crop == "liver":
            liver_mask = np.isin(label, self.liver_labels)
        box = self.crop_box(image.shape, spacing, liver_mask)
        cropped = np.ascontiguousarray(image[box])
        new_shape = shape_for_spacing(cropped.shape, spacing, self.plan.spacing)
        separate_z = self._separate_z(spacing)
        rs = self.plan.resampling
        data = resample_image(cropped, new_shape, order=rs.image_order, separate_z=separate_z, z_order=rs.z_order)
        data = normalize_ct(data, self.plan.window)[None]
        original_box = orient.box_to_original(box, image.shape)
        properties: dict[str, Any] = {
            "task": self.plan.name,
            "original_shape": list(original_shape),
            "geometry": geometry.to_dict(),
            "orientation": orient.to_dict(),
            "canonical_shape": [int(v) for v in image.shape],
            "crop_box": box_to_dict(original_box),
            "canonical_crop_box": box_to_dict(box),
            "cropped_shape": [int(v) for v in cropped.shape],
            "resampled_shape": [int(v) for v in new_shape],
            "spacing": list(self.plan.spacing),
            "separate_z": bool(separate_z),
        }
        seg = None
        if label is not None:
            task_label = self.map_labels(np.ascontiguousarray(label[box]))
            seg = resample_labels(task_label, new_shape, order=rs.label_order, separate_z=separate_z,
                                  z_order=rs.z_order)
        return data, seg, properties

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        """Raw labels -> task labels: liver {0, 1 liver region}; tumor {0 outside, 1 liver, 2 tumour}."""
        out = np.zeros(raw.shape, dtype=np.uint8)
        out[np.isin(raw, self.liver_labels)] = 1
        if self.plan.name == "tumor" or self.plan.num_classes == 3:
            out[np.isin(raw, self.tumor_labels)] = 2
        return out

    # -- inverse ----------------------------------------------------------------------------------------------
    def revert_probabilities(self, probabilities: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """Per-class maps on the preprocessed grid -> on the original grid (outside the crop: background)."""
        cropped = resample_probabilities(probabilities, properties["cropped_shape"],
                                         order=1, separate_z=properties["separate_z"],
                                         z_order=self.plan.resampling.z_order)
        box = _canonical_box(properties)
        full = paste_box(cropped, box, _canonical_shape(properties), fill_value=0)
        outside = np.ones(full.shape[1:], dtype=bool)
        outside[box] = False
        full[0][outside] = 1.0
        return _to_original(full, properties)

    def revert_argmax(self, probabilities: np.ndarray, properties: dict[str, Any], *,
                      crop_only: bool = False) -> np.ndarray:
        """The argmax label map (uint8) of :meth:`revert_probabilities`, computed one class map at a time.

        Equal to ``argmax_labels(revert_probabilities(...))`` but never holds more than one resampled class map and
        the running maximum, on the crop only: for a whole CT that is ~2x the image in float32 instead of the C
        full-size class maps plus their pasted copy. ``crop_only``: return the labels of the crop box only (the
        original grid's ``properties["crop_box"]``).
        """
        rs = self.plan.resampling
        shape = properties["cropped_shape"]
        labels = argmax_labels(resample_array(p.astype(np.float32, copy=False), shape, order=1,
                                              separate_z=properties["separate_z"], z_order=rs.z_order)
                               for p in probabilities)
        if crop_only:
            return _to_original(labels, properties)
        return _to_original(paste_box(labels, _canonical_box(properties), _canonical_shape(properties)),
                            properties)

    def revert_class_map(self, class_map: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """One class's probability map on the preprocessed grid -> on the crop box of the original grid (float32,
        linear interpolation, as :meth:`revert_probabilities` does for every class)."""
        cropped = resample_array(class_map.astype(np.float32, copy=False), properties["cropped_shape"], order=1,
                                 separate_z=properties["separate_z"], z_order=self.plan.resampling.z_order)
        return _to_original(np.asarray(cropped, dtype=np.float32), properties)

    def revert_labels(self, seg: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """A task label map on the preprocessed grid -> on the original grid."""
        cropped = resample_labels(seg, properties["cropped_shape"], order=self.plan.resampling.label_order,
                                  separate_z=properties["separate_z"], z_order=self.plan.resampling.z_order)
        return _to_original(paste_box(cropped, _canonical_box(properties), _canonical_shape(properties)),
                            properties)


def stored_box(properties: dict[str, Any]) -> Box:
    """The crop box recorded by :meth:`TaskPreprocessor.preprocess`, in the original (stored) frame."""
    return box_from_dict(properties["crop_box"])


def _canonical_box(properties: dict[str, Any]) -> Box:
    return box_from_dict(properties.get("canonical_crop_box", properties["crop_box"]))


def _canonical_shape(properties: dict[str, Any]) -> list[int]:
    return properties.get("canonical_shape", properties["original_shape"])


def _to_original(array: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
    orient = Orientation.from_dict(properties.get("orientation"))
    return array if orient.is_identity else np.ascontiguousarray(orient.to_original(array))
