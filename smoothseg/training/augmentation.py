"""Data augmentation pipelines (batchgenerators) and the multi-process augmenter.

Training: rotation and scaling, mirroring (along the plan's ``mirror_axes``), Gaussian noise, Gaussian blur,
multiplicative brightness, contrast, low-resolution simulation and gamma, with nnU-Net-like probabilities.
Rotation is about the z axis only when the patch is anisotropic (in-plane over 3x the slice count).
Validation: none.

The number of worker processes defaults to the CPU count minus one (at most 8), and
``SMOOTHSEG_NUM_WORKERS`` overrides it; 0 augments in the main process. Each worker is seeded
from the run's seed, so a run is reproducible for a given worker count.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from smoothseg.training.data_loader import LiverCoverageTransform

logger = logging.getLogger(__name__)


def default_num_workers() -> int:
    """Worker processes for augmentation: ``$SMOOTHSEG_NUM_WORKERS`` or CPU count - 1 (1..8)."""
    env = os.environ.get("SMOOTHSEG_NUM_WORKERS")
    if env is not None:
        try:
            return max(0, int(env))
        except ValueError:
            logger.warning("ignoring SMOOTHSEG_NUM_WORKERS=%r (not an integer)", env)
    return int(min(8, max(1, (os.cpu_count() or 2) - 1)))


def training_transforms(patch_size, fill_value: float = 0.0, mirror_axes=(0, 1, 2)) -> Compose:
    """The training augmentation pipeline for patches of ``patch_size`` (z, y, x), mirroring ``mirror_axes``."""
    anisotropic = max(patch_size[1:]) / patch_size[0] > 3
    in_plane = (-np.pi / 6, np.pi / 6)  # batchgenerators' angle_x rotates within the (y, x) plane of (z, y, x) data
    out_of_plane = (0.0, 0.0) if anisotropic else (-np.pi / 12, np.pi / 12)
    transforms: list[AbstractTransform] = [
        SpatialTransform(
            patch_size, patch_center_dist_from_border=None, do_elastic_deform=False, do_rotation=True,
            angle_x=in_plane, angle_y=out_of_plane, angle_z=out_of_plane,
            do_scale=True, scale=(0.8, 1.2), border_mode_data="constant", border_cval_data=fill_value,
            order_data=3, border_mode_seg="constant", border_cval_seg=0, order_seg=1, random_crop=False,
            p_rot_per_sample=0.2, p_scale_per_sample=0.2,
        ),
        GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1.0), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25,
                                       ignore_axes=(0,) if anisotropic else None),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(axes=tuple(mirror_axes)))
    transforms.append(LiverCoverageTransform())
    return Compose(transforms)


def make_augmenter(loader, transforms: Compose | None, num_workers: int, seed: int):
    """Wrap ``loader`` in a multi-process augmenter (or a single-threaded one when ``num_workers`` is 0)."""
    if num_workers <= 0:
        # batchgenerators' transforms draw from NumPy's global generator and Python's ``random``; seed both as the
        # worker processes are seeded, so a run's augmentation depends on its seeds only (in-process, an augmenter
        # made later, e.g. the validation one, reseeds them again: still the same stream on every run)
        np.random.seed(int(seed) % 2**32)
        random.seed(int(seed))
        return SingleThreadedAugmenter(loader, transforms)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(num_workers)]
    return MultiThreadedAugmenter(loader, transforms, num_workers, num_cached_per_queue=3, seeds=seeds,
                                  pin_memory=False)
