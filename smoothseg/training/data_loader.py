"""Patch sampling from memory-mapped preprocessed cases (a batchgenerators ``DataLoader``).

* Foreground oversampling: a fraction ``oversample_foreground`` of each batch (at least one sample
  when the fraction is positive) is centred on a foreground voxel; the rest are placed uniformly, so the tumour task
  also sees tumour-free patches. For the tumour task the foreground class is the tumour when the case has one, else
  the liver.
* Lesion-balanced foreground (``lesion_sampling``, tumour task): that share of the foreground patches first picks one
  of the case's reference lesions (26-connected tumour components, stored at preprocessing), with weight
  ``voxels ** -lesion_alpha`` (0: uniformly), then a voxel inside it; the rest pick a random tumour voxel, as before.
  With voxel sampling alone a 0.5 ml lesion beside a 500 ml one is the centre of 1 foreground patch in 1000; with
  lesion sampling of about half of them.
* Clean-liver negatives (``clean_liver``, tumour task): that share of the patches that are not foreground patches is
  centred on a reference liver voxel with no tumour in the patch: in one of the training cases without tumour when
  there are any, else in the drawn case (up to ``CLEAN_LIVER_TRIES`` liver voxels are tried; a patch that still holds
  tumour is kept as it is), so the model sees normal parenchyma, vessels and the liver edge on purpose.
* Lesion synthesis (``lesion_synthesis``, tumour task): that share of the other patches gets 1-3 small synthetic
  lesions painted into its tumour-free liver (:mod:`smoothseg.training.lesion_synthesis`, with the contrast of the
  training cases' real lesions, from their preprocessing ``intensity_stats``); such a patch has no TLVR target.
* Tumour task: intensities outside the liver are masked as at inference. The mask is the
  reference liver, randomly dilated or eroded by up to ``mask_jitter_mm`` (Euclidean distance in mm, from the real
  spacing), so the model tolerates the liver stage's boundary errors; in a fraction ``LEAK_FRACTION`` of the patches
  it is instead dilated by ``mask_jitter_mm`` to ``mask_leak_mm``, as when the liver stage lets neighbouring tissue
  (spleen, stomach, heart) into its mask: the model learns to call that tissue background, so the cascade's liver
  refinement trims it instead of the tumour model calling it tumour. The perturbation is computed on the patch plus a
  margin of its radius, so the patch's faces are not eroded as if the liver ended there. Labels outside the
  perturbed mask become 0, as the cascade discards tumour outside the predicted liver.
* Per sample the batch carries, for the TLVR term, ``clinical_tlvr`` (NaN without clinical data), ``case_tlvr``
  (the case's reference TLVR), ``liver_voxels`` (the case's liver-region voxels) and ``liver_coverage`` (the patch's
  liver-region voxels over ``liver_voxels``, counted on the final labels: :class:`LiverCoverageTransform` recounts
  it after augmentation, so coverage and the loss's patch ratio come from the same labels); and ``keys``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

from smoothseg.labels import LIVER, TUMOR
from smoothseg.parallel import die_with_parent
from smoothseg.preprocessing.dataset_preprocessing import (
    SDF_CLIP_MM,
    case_files,
    load_case,
    load_lesions,
    load_liver_sdf,
    load_locations,
)
from smoothseg.training.lesion_synthesis import SynthesisStats, paint_lesions

logger = logging.getLogger(__name__)

#: Share of tumour-task patches whose liver mask is dilated as by a leaking liver stage (``mask_leak_mm``).
LEAK_FRACTION = 0.25
#: Liver voxels tried per clean-liver patch before a patch with some tumour is accepted.
CLEAN_LIVER_TRIES = 8


@dataclass(frozen=True)
class SamplingConfig:
    patch_size: tuple[int, int, int]
    batch_size: int
    oversample_foreground: float = 0.33
    mask_outside_liver: bool = False
    mask_jitter_mm: float = 0.0
    mask_leak_mm: float = 0.0  # > mask_jitter_mm: LEAK_FRACTION of the masks dilated by mask_jitter_mm..mask_leak_mm
    fill_value: float = 0.0  # normalised intensity written outside the liver mask
    lesion_sampling: float = 0.0  # share of foreground patches centred on a lesion drawn per lesion (not per voxel)
    lesion_alpha: float = 0.0  # a lesion's weight is its voxel count ** -lesion_alpha (0: uniform over lesions)
    clean_liver: float = 0.0  # share of the other patches centred in reference liver with no tumour in the patch
    lesion_synthesis: float = 0.0  # share of the patches (not clean-liver ones) with small lesions painted in
    #: The patches are cut at this size, centred where a ``patch_size`` patch is placed (the source patches of
    #: augmentation on the device); None: ``patch_size``.
    crop_size: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("mask_jitter_mm", "mask_leak_mm"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number of mm, got {value}")
        for name in ("lesion_sampling", "clean_liver", "lesion_synthesis"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a share between 0 and 1, got {value}")
        if not (np.isfinite(self.lesion_alpha) and self.lesion_alpha >= 0):
            raise ValueError(f"lesion_alpha must be a non-negative number, got {self.lesion_alpha}")


class PatchLoader(DataLoader):
    """Infinite random patches from the cases ``case_ids`` of one preprocessed task folder."""

    def __init__(self, folder: Path, case_ids: list[str], config: SamplingConfig,
                 clinical_tlvr: dict[str, float] | None = None, seed: int = 0, num_threads: int = 1):
        if not case_ids:
            raise ValueError("no cases to load patches from")
        super().__init__(list(case_ids), config.batch_size, num_threads_in_multithreaded=num_threads,
                         seed_for_shuffle=seed, infinite=True)
        self.case_ids = list(case_ids)
        self.folder = Path(folder)
        self.config = config
        self.clinical_tlvr = clinical_tlvr or {}
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.parent_pid = os.getpid()
        self._locations: dict[str, dict[int, np.ndarray]] = {}
        self._lesions: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        properties = [_properties(self.folder, c) for c in self.case_ids] \
            if config.clean_liver > 0 or config.lesion_synthesis > 0 else []
        self.tumour_free_ids = [c for c, props in zip(self.case_ids, properties, strict=True) if _tumour_free(props)] \
            if config.clean_liver > 0 else []
        self.synthesis = SynthesisStats.from_properties(properties) if config.lesion_synthesis > 0 else None
        if config.lesion_synthesis > 0 and self.synthesis is None:
            logger.warning("%s: no training case has tumour intensity statistics (preprocess again with this "
                           "smoothseg); no lesions are synthesised", self.folder)

    # batchgenerators calls set_thread_id in each worker; reseed so workers draw different, reproducible patches,
    # and make the worker die with the trainer
    def set_thread_id(self, thread_id: int) -> None:
        super().set_thread_id(thread_id)
        self.rng = np.random.default_rng([self.seed, thread_id])
        # batchgenerators' noise and blur transforms draw from Python's ``random``, which CPython reseeds from the OS
        # in every forked child, so without this the augmentation (and the demo's result) changed from run to run
        random.seed(int(np.random.SeedSequence([self.seed, thread_id]).generate_state(1)[0]))
        if os.getpid() != self.parent_pid:
            die_with_parent(self.parent_pid)

    def _case_locations(self, case_id: str) -> dict[int, np.ndarray]:
        if case_id not in self._locations:
            self._locations[case_id] = load_locations(self.folder, case_id)
        return self._locations[case_id]

    def _patch_start(self, shape, centre: np.ndarray | None) -> np.ndarray:
        patch = np.asarray(self.config.patch_size)
        shape = np.asarray(shape)
        lo = np.minimum(0, shape - patch)  # negative when the case is smaller than the patch (padded)
        hi = np.maximum(0, shape - patch)
        if centre is None:
            return np.array([self.rng.integers(a, b + 1) for a, b in zip(lo, hi, strict=True)])
        start = centre - patch // 2 + self.rng.integers(-(patch // 8), patch // 8 + 1)
        return np.clip(start, lo, hi)

    def _case_lesions(self, case_id: str) -> tuple[list[np.ndarray], np.ndarray]:
        if case_id not in self._lesions:
            self._lesions[case_id] = load_lesions(self.folder, case_id)
        return self._lesions[case_id]

    def _foreground_centre(self, case_id: str) -> np.ndarray | None:
        if self.config.lesion_sampling > 0 and self.rng.random() < self.config.lesion_sampling:
            lesions, sizes = self._case_lesions(case_id)
            if lesions:
                weights = np.asarray(sizes, dtype=float) ** -self.config.lesion_alpha
                coords = lesions[self.rng.choice(len(lesions), p=weights / weights.sum())]
                return coords[self.rng.integers(len(coords))]
        locations = self._case_locations(case_id)
        present = [c for c, v in sorted(locations.items()) if len(v)]
        if not present:
            return None
        cls = max(present)  # tumour (2) when present, else liver (1)
        coords = locations[cls]
        return coords[self.rng.integers(len(coords))]

    def _clean_liver_start(self, case_id: str, labels: np.ndarray) -> np.ndarray | None:
        """The start of a patch centred on a liver voxel of ``case_id`` with no tumour in it (the last one tried when
        none of ``CLEAN_LIVER_TRIES`` is free of tumour); None when the case has no liver."""
        liver = self._case_locations(case_id).get(LIVER, np.zeros((0, 3), np.int32))
        if not len(liver):
            return None
        start = None
        for _ in range(CLEAN_LIVER_TRIES):
            start = self._patch_start(labels.shape, liver[self.rng.integers(len(liver))])
            if not (self._crop(labels, start, 0, self.config.patch_size) == TUMOR).any():
                break
        return start

    @property
    def cut_size(self) -> np.ndarray:
        """The size patches are cut at (``crop_size``, else ``patch_size``)."""
        return np.asarray(self.config.crop_size or self.config.patch_size)

    def _crop(self, array: np.ndarray, start: np.ndarray, fill, size=None) -> np.ndarray:
        """Crop ``array[..., z, y, x]`` at ``start`` to ``size`` (default: :attr:`cut_size`), padding with ``fill``
        where outside."""
        patch = self.cut_size if size is None else np.asarray(size)
        shape = np.asarray(array.shape[-3:])
        src_lo = np.maximum(start, 0)
        src_hi = np.minimum(start + patch, shape)
        out = np.full((*array.shape[:-3], *patch), fill, dtype=array.dtype)
        dst_lo = src_lo - start
        dst = tuple(slice(a, b) for a, b in zip(dst_lo, dst_lo + (src_hi - src_lo), strict=True))
        src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
        out[(..., *dst)] = array[(..., *src)]
        return out

    def _mask_offset_mm(self) -> float:
        """How far this patch's liver mask moves: positive dilates, negative erodes (mm)."""
        jitter, leak = self.config.mask_jitter_mm, self.config.mask_leak_mm
        if leak > jitter and self.rng.random() < LEAK_FRACTION:
            return float(self.rng.uniform(jitter, leak))
        return float(self.rng.uniform(-jitter, jitter)) if jitter > 0 else 0.0

    def _jittered_mask(self, labels: np.ndarray, start: np.ndarray, spacing, mm: float | None = None,
                       sdf: np.ndarray | None = None) -> np.ndarray:
        """The patch's liver mask moved by ``mm`` (default: a random :meth:`_mask_offset_mm`): every voxel within
        ``mm`` of the liver added (dilation) or every voxel within ``-mm`` of its outside removed (erosion), as
        Euclidean distances in mm.

        With the case's stored signed distances ``sdf`` (:func:`load_liver_sdf`) that is a threshold of their crop
        (``<= mm`` dilates, ``< mm`` erodes). Without them (older preprocessing, or a move beyond the stored
        ``SDF_CLIP_MM``) it is a distance transform of the patch plus that distance of the case around it (outside
        the case: no liver), so a face where the liver continues is not eroded: the same mask, up to the float32
        rounding of the stored distances (a test compares them)."""
        patch = self.cut_size
        mm = self._mask_offset_mm() if mm is None else float(mm)
        if sdf is not None and abs(mm) < SDF_CLIP_MM:
            distances = self._crop(sdf, start, SDF_CLIP_MM).astype(np.float64)
            return distances <= mm if mm > 0 else distances < mm
        spacing = np.asarray(spacing, dtype=float)
        radius = np.ceil(abs(mm) / spacing - 1e-9).astype(int)  # 0 everywhere when mm is 0
        if not radius.any():
            return self._crop(labels, start, 0) > 0
        wider = self._crop(labels, start - radius, 0, patch + 2 * radius) > 0
        inner = tuple(slice(r, r + p) for r, p in zip(radius, patch, strict=True))
        if not wider.any() or wider.all():
            return wider[inner]
        if mm > 0:
            moved = ndimage.distance_transform_edt(~wider, sampling=spacing) <= mm
        else:
            moved = ndimage.distance_transform_edt(wider, sampling=spacing) > -mm
        return moved[inner]

    def generate_train_batch(self) -> dict:
        cfg = self.config
        keys = [self.case_ids[i] for i in self.rng.integers(len(self.case_ids), size=cfg.batch_size)]
        n_fg = int(np.ceil(cfg.oversample_foreground * cfg.batch_size)) if cfg.oversample_foreground > 0 else 0
        cut = tuple(int(c) for c in self.cut_size)
        margin = (self.cut_size - np.asarray(cfg.patch_size)) // 2  # the cut is centred on the placed patch
        data = np.empty((cfg.batch_size, 1, *cut), dtype=np.float32)
        seg = np.empty((cfg.batch_size, 1, *cut), dtype=np.int16)
        tlvr = np.full(cfg.batch_size, np.nan, dtype=np.float32)
        case_tlvr = np.zeros(cfg.batch_size, dtype=np.float32)
        liver_voxels = np.ones(cfg.batch_size, dtype=np.float32)
        for b in range(cfg.batch_size):
            clean = b >= n_fg and cfg.clean_liver > 0 and self.rng.random() < cfg.clean_liver
            if clean and self.tumour_free_ids:
                keys[b] = self.tumour_free_ids[self.rng.integers(len(self.tumour_free_ids))]
            case_id = keys[b]
            image, labels, props = load_case(self.folder, case_id)
            start = self._clean_liver_start(case_id, labels) if clean else None
            if start is None:
                centre = self._foreground_centre(case_id) if b < n_fg else None
                start = self._patch_start(labels.shape, centre)
            start = start - margin
            patch_img = self._crop(image, start, cfg.fill_value)
            patch_seg = self._crop(labels, start, 0)
            if cfg.mask_outside_liver:
                mask = self._jittered_mask(labels, start, props["spacing"],
                                           sdf=load_liver_sdf(self.folder, case_id))
                patch_img[0][~mask] = cfg.fill_value
                patch_seg[~mask] = 0
            painted = 0
            if self.synthesis is not None and not clean and self.rng.random() < cfg.lesion_synthesis:
                painted = paint_lesions(patch_img[0], patch_seg, props["spacing"], self.rng, self.synthesis)
            data[b] = patch_img
            seg[b, 0] = patch_seg
            tlvr[b] = np.nan if painted else self.clinical_tlvr.get(case_id, np.nan)
            case_tlvr[b] = float(props.get("tlvr", np.nan))
            liver_voxels[b] = max(int(props.get("liver_voxels", 0)), 1)
        return liver_coverage({"data": data, "seg": seg, "keys": keys, "clinical_tlvr": tlvr, "case_tlvr": case_tlvr,
                               "liver_voxels": liver_voxels})


def _properties(folder: Path, case_id: str) -> dict:
    return json.loads(case_files(folder, case_id)["properties"].read_text())


def _tumour_free(properties: dict) -> bool:
    """Whether a preprocessed tumour-task case has no tumour voxel (from its properties' class counts)."""
    counts = properties.get("class_voxels", [])
    return len(counts) > TUMOR and counts[TUMOR] == 0


def liver_coverage(batch: dict) -> dict:
    """Set ``batch["liver_coverage"]``: each patch's liver-region voxels in ``seg`` over its case's ``liver_voxels``
    (clipped to [0, 1])."""
    seg = np.asarray(batch["seg"])
    counts = (seg.reshape(len(seg), -1) > 0).sum(1).astype(np.float32)
    batch["liver_coverage"] = np.clip(counts / np.asarray(batch["liver_voxels"], dtype=np.float32), 0.0, 1.0)
    return batch


class LiverCoverageTransform(AbstractTransform):
    """The last training transform: recount ``liver_coverage`` on the augmented labels (see the module docstring).

    A spatial scaling by s changes voxel counts by about s^3 while ``liver_voxels`` is the unscaled case; the
    coverage is clipped to [0, 1]. (The TLVR target uses coverage only for tumour-free cases.)
    """

    def __call__(self, **data_dict):
        return liver_coverage(data_dict)
