"""The two-task planner: from a fingerprint to ``liver`` and ``tumor`` configurations.

Rules (each derived from the data, none hard-coded for a dataset):

* **liver (global view)**: whole volume. In-plane spacing is coarsened so that the median field of
  view spans about ``GLOBAL_INPLANE_VOXELS`` voxels, and at least ``GLOBAL_MIN_COARSENING`` times
  the median in-plane spacing; z spacing is the larger of the median slice spacing and that
  in-plane spacing. The patch covers the median
  resampled volume when memory allows. Window from liver-region intensities (see
  :func:`liver_window`).
* **tumor (local view)**: liver bounding box plus ``TUMOR_CROP_MARGIN_MM``, median spacing with
  nnU-Net's anisotropy rule (z spacing from the 10th percentile when slices are more than 3x
  thicker than the in-plane spacing). The patch targets the median liver crop and shrinks when the width needs
  the memory (the TLVR target handles partial coverage). Window from liver and tumour intensities.
* **mirroring**: none for the liver, all axes for the tumour. Arrays are in the canonical orientation
  (:mod:`smoothseg.dataset.orientation`), where the liver is always on the same side: the global view
  must not be taught that a mirrored abdomen, with the spleen (liver-like HU) in the liver's place, is
  plausible. Lesions inside the liver crop have no handedness, so the local view mirrors all axes (as nnU-Net).
* **both**: patch sizes are multiples of 16 (the SegResNetVAE's VAE branch needs it). **Width before patch**
  (:func:`fit_to_budget`): at ``FULL_WIDTH_BUDGET_GB`` (8 GB) and above both networks get nnU-Net's 32 filters and the
  patch shrinks until a batch of 2 fits the budget; below it the widest of 32, 24, 16 filters whose shrunk patch
  keeps at least ``MIN_PATCH_FRACTION`` of the target patch, and never fewer than 16 filters. Narrow (8-filter)
  tumour networks failed to learn the tumour class at all from some initialisations (documentation/benchmarks.md),
  while a patch smaller than the liver is safe: the TLVR target adapts to partial coverage. The batch then grows
  while memory allows, via :func:`estimate_memory_gb`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from smoothseg.network.segresnet_vae import SegResNetVAE, estimate_activation_elements
from smoothseg.planning.plans import (
    ConfigurationPlan,
    IntensityWindow,
    NetworkPlan,
    Plans,
    ResamplingPlan,
    default_active_contour,
)

logger = logging.getLogger(__name__)

GLOBAL_INPLANE_VOXELS = 96
GLOBAL_MIN_COARSENING = 1.25  # the global view is at least this much coarser in-plane than the data
TUMOR_CROP_MARGIN_MM = (10.0, 10.0, 10.0)
LIVER_MIRROR_AXES: tuple[int, ...] = ()
TUMOR_MIRROR_AXES: tuple[int, ...] = (0, 1, 2)
PATCH_DIVISOR = 16
WIDTHS = (32, 24, 16)
#: At or above this budget (GB) both networks have the full width (nnU-Net's 32 base filters at 8 GB).
FULL_WIDTH_BUDGET_GB = 8.0
#: Below the full-width budget, a wider network is taken while its patch keeps this fraction of the target patch.
MIN_PATCH_FRACTION = 0.25
MIN_BATCH = 2
MAX_BATCH = 16
MAX_BATCH_DATASET_FRACTION = 0.05  # as nnU-Net: a batch should not cover more than 5% of the dataset's voxels
MIN_PATCH = (16, 32, 32)

# Memory model (stated here, checked in tests against a measured activation count):
#   memory = batch * activations * BYTES_PER_ACTIVATION + parameters * BYTES_PER_PARAMETER + CUDA_OVERHEAD_GB
# ``activations`` is the number of elements output by all leaf modules of the network in one training forward
# pass for one sample (:func:`smoothseg.network.segresnet_vae.estimate_activation_elements`). Under AMP most
# saved tensors are fp16 (2 bytes) and normalisation runs in fp32 (4 bytes); 4 bytes per element also covers the
# transient gradient buffers of the backward pass. Per parameter: fp32 weight, gradient and SGD momentum, plus
# the fp16 copy AMP makes (4 + 4 + 4 + 2, rounded up to 16).
BYTES_PER_ACTIVATION = 4.0
BYTES_PER_PARAMETER = 16.0
CUDA_OVERHEAD_GB = 0.8


def _median(values) -> np.ndarray:
    return np.median(np.asarray(values, dtype=float), axis=0)


def _round_patch(shape_vox: np.ndarray) -> tuple[int, int, int]:
    """Round up to multiples of 16 (ignoring an excess under 10% of 16 voxels), at least the minimum patch."""
    return tuple(int(max(m, math.ceil(v / PATCH_DIVISOR - 0.1) * PATCH_DIVISOR))
                 for v, m in zip(shape_vox, MIN_PATCH, strict=True))


def _stat(fingerprint: dict[str, Any], region: str, key: str) -> float | None:
    stats = fingerprint["pooled_intensity"].get(region)
    if stats is None:
        return None
    return float(stats["percentiles"][key]) if key in stats["percentiles"] else float(stats[key])


def liver_window(fingerprint: dict[str, Any]) -> IntensityWindow:
    """Global window: centred on the liver region, wide enough for fat and enhancing vessels.

    With ``lo``/``hi`` the liver region's 5th/95th percentiles and ``span = hi - lo``:
    ``[lo - 2 span, hi + span]`` (for a 70-170 HU liver: [-130, 270] HU, close to the fixed
    [-150, 250] of the authors' code), kept within the body's 0.5-99.5 percentile range. A brighter
    liver shifts the window with it.
    """
    lo, hi = _stat(fingerprint, "liver", "5.0"), _stat(fingerprint, "liver", "95.0")
    span = max(hi - lo, 20.0)
    lower, upper = lo - 2 * span, hi + span
    body_lo, body_hi = _stat(fingerprint, "body", "0.5"), _stat(fingerprint, "body", "99.5")
    if body_lo is not None:
        lower, upper = max(lower, body_lo), min(upper, body_hi)
    return _window(lower, upper, fingerprint, ("liver",))


def tumor_window(fingerprint: dict[str, Any]) -> IntensityWindow:
    """Local window: the liver and tumour 5-95 percentile range, widened by half its span on each side.

    Narrower than the global window, so liver-tumour contrast fills more of the normalised range.
    """
    los = [v for v in (_stat(fingerprint, "liver", "5.0"), _stat(fingerprint, "tumor", "5.0")) if v is not None]
    his = [v for v in (_stat(fingerprint, "liver", "95.0"), _stat(fingerprint, "tumor", "95.0")) if v is not None]
    lo, hi = min(los), max(his)
    span = max(hi - lo, 20.0)
    return _window(lo - 0.5 * span, hi + 0.5 * span, fingerprint, ("liver", "tumor"))


def _window(lower: float, upper: float, fingerprint: dict[str, Any], regions: tuple[str, ...]) -> IntensityWindow:
    """Round the window and take mean/std of the named regions (clipped to it) for z-scoring."""
    lower, upper = round(lower, 1), round(upper, 1)
    means, stds, weights = [], [], []
    for region in regions:
        stats = fingerprint["pooled_intensity"].get(region)
        if stats:
            means.append(min(max(stats["mean"], lower), upper))
            stds.append(stats["std"])
            weights.append(stats["n"])
    mean = float(np.average(means, weights=weights))
    std = max(float(np.average(stds, weights=weights)), 1.0)
    return IntensityWindow(lower, upper, round(mean, 3), round(std, 3))


def tumor_spacing(spacings: np.ndarray, threshold: float = 3.0) -> tuple[float, float, float]:
    """Median spacing; with anisotropic data (z > threshold x in-plane) z comes from the 10th percentile."""
    target = _median(spacings)
    if target[0] > threshold * max(target[1], target[2]):
        target[0] = float(np.percentile(spacings[:, 0], 10))
    return tuple(round(float(v), 4) for v in target)


def liver_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[float, float, float]:
    """Coarse spacing for the global view: the median field of view over ``GLOBAL_INPLANE_VOXELS`` voxels."""
    median_spacing = _median(spacings)
    fov = _median(spacings * shapes)
    inplane = max(GLOBAL_MIN_COARSENING * float(median_spacing[1:].max()), float(fov[1:].max()) / GLOBAL_INPLANE_VOXELS)
    z = max(float(median_spacing[0]), inplane)
    return round(z, 4), round(inplane, 4), round(inplane, 4)


def count_parameters(patch: tuple[int, int, int], num_classes: int, network: NetworkPlan) -> int:
    """Parameter count of the planned network, built on the ``meta`` device (no memory, no compute)."""
    with torch.device("meta"):
        model = SegResNetVAE(in_channels=1, out_channels=num_classes, input_image_size=patch,
                             init_filters=network.init_filters, blocks_down=network.blocks_down,
                             blocks_up=network.blocks_up, norm=network.norm, vae_nz=network.vae_nz,
                             vae_estimate_std=network.vae_estimate_std)
    return sum(p.numel() for p in model.parameters())


def estimate_memory_gb(patch: tuple[int, int, int], batch: int, num_classes: int, network: NetworkPlan) -> float:
    """GPU memory for one training step under AMP, by the memory model stated at the top of this module."""
    activations = estimate_activation_elements(patch, 1, num_classes, network.init_filters, network.blocks_down,
                                               network.blocks_up, vae=True)
    params = count_parameters(patch, num_classes, network)
    return (batch * activations * BYTES_PER_ACTIVATION + params * BYTES_PER_PARAMETER) / 1e9 + CUDA_OVERHEAD_GB


def _shrink_to_fit(target_patch: tuple[int, int, int], spacing: tuple[float, float, float], num_classes: int,
                   budget_gb: float, net: NetworkPlan) -> tuple[int, int, int] | None:
    """The largest patch reached from ``target_patch`` by shrinking its largest physical axis 16 voxels at a time
    that trains with a batch of 2 within ``budget_gb``; None when even the smallest patch does not."""
    patch = target_patch
    while estimate_memory_gb(patch, MIN_BATCH, num_classes, net) > budget_gb:
        physical = np.asarray(patch) * np.asarray(spacing)
        for axis in np.argsort(-physical, kind="stable"):
            if patch[axis] - PATCH_DIVISOR >= MIN_PATCH[axis]:
                patch = tuple(p - PATCH_DIVISOR if i == axis else p for i, p in enumerate(patch))
                break
        else:
            return None
    return patch


def fit_to_budget(target_patch: tuple[int, int, int], spacing: tuple[float, float, float], num_classes: int,
                  budget_gb: float, dataset_voxels: float) -> tuple[tuple[int, int, int], int, NetworkPlan, float]:
    """Choose width, patch and batch size: width before patch (see the module docstring).

    Returns ``(patch, batch, network, estimated GB)``. When not even the smallest patch fits with 16 filters, that
    patch and width are returned with a warning (the budget is too small for any useful network).
    """
    widths = WIDTHS[:1] if budget_gb >= FULL_WIDTH_BUDGET_GB else WIDTHS
    for width in widths:
        net = NetworkPlan(init_filters=width)
        patch = _shrink_to_fit(target_patch, spacing, num_classes, budget_gb, net)
        if patch is None:
            continue
        if width != widths[-1] and np.prod(patch) < MIN_PATCH_FRACTION * np.prod(target_patch):
            continue
        batch = MIN_BATCH
        cap = max(MIN_BATCH, min(MAX_BATCH, int(MAX_BATCH_DATASET_FRACTION * dataset_voxels / np.prod(patch))))
        while batch < cap and estimate_memory_gb(patch, batch + 1, num_classes, net) <= budget_gb:
            batch += 1
        return patch, batch, net, round(estimate_memory_gb(patch, batch, num_classes, net), 2)
    net = NetworkPlan(init_filters=WIDTHS[-1])
    patch = tuple(max(m, 0) for m in MIN_PATCH)
    mem = round(estimate_memory_gb(patch, MIN_BATCH, num_classes, net), 2)
    logger.warning("even the smallest patch %s needs %.2f GB with %d filters, over the %.2f GB budget; planning it "
                   "anyway (networks narrower than %d filters are not planned)", patch, mem, WIDTHS[-1], budget_gb,
                   WIDTHS[-1])
    return patch, MIN_BATCH, net, mem


def plan(fingerprint: dict[str, Any], gpu_memory_target_gb: float = 8.0) -> Plans:
    """Plan both configurations from a fingerprint (deterministic: same fingerprint, same plans)."""
    cases = fingerprint["cases"]
    spacings = np.array([c["spacing"] for c in cases], dtype=float)
    shapes = np.array([c["shape"] for c in cases], dtype=float)
    with_liver = [c for c in cases if c["liver_bbox"]]
    if not with_liver:
        raise ValueError("no training case has a liver label; cannot plan")
    has_tumours = fingerprint["pooled_intensity"].get("tumor") is not None

    # liver: global view
    g_spacing = liver_spacing(spacings, shapes)
    g_shapes = shapes * spacings / np.asarray(g_spacing)
    g_median = np.median(g_shapes, axis=0)
    g_patch, g_batch, g_net, g_mem = fit_to_budget(_round_patch(g_median), g_spacing, 2, gpu_memory_target_gb,
                                                   float(g_shapes.prod(axis=1).sum()))
    liver = ConfigurationPlan(
        name="liver", spacing=g_spacing, patch_size=g_patch, batch_size=g_batch, window=liver_window(fingerprint),
        num_classes=2, class_names=("background", "liver"), crop="none", network=g_net,
        resampling=ResamplingPlan(), median_shape=tuple(int(round(v)) for v in g_median), estimated_memory_gb=g_mem,
        mirror_axes=LIVER_MIRROR_AXES)

    # tumor: local view on the liver crop
    t_spacing = tumor_spacing(spacings)
    margin = np.asarray(TUMOR_CROP_MARGIN_MM)
    crop_mm = np.array([c["liver_bbox"]["extent_mm"] for c in with_liver], dtype=float) + 2 * margin
    t_shapes = crop_mm / np.asarray(t_spacing)
    t_median = np.median(t_shapes, axis=0)
    t_patch, t_batch, t_net, t_mem = fit_to_budget(_round_patch(t_median), t_spacing, 3, gpu_memory_target_gb,
                                                   float(t_shapes.prod(axis=1).sum()))
    covers = all(p >= m for p, m in zip(t_patch, t_median, strict=True))
    if not covers:
        logger.info("tumor patch %s covers part of the median liver crop %s at %.1f GB (%d filters): the TLVR "
                    "term uses partial-coverage targets", t_patch, tuple(int(v) for v in t_median),
                    gpu_memory_target_gb, t_net.init_filters)
    t_window = tumor_window(fingerprint) if has_tumours else liver_window(fingerprint)
    tumor = ConfigurationPlan(
        name="tumor", spacing=t_spacing, patch_size=t_patch, batch_size=t_batch,
        window=t_window, num_classes=3, class_names=("outside_liver", "liver", "tumor"), crop="liver",
        crop_margin_mm=tuple(float(v) for v in margin), network=t_net, resampling=ResamplingPlan(),
        median_shape=tuple(int(round(v)) for v in t_median), estimated_memory_gb=t_mem, mirror_axes=TUMOR_MIRROR_AXES,
        active_contour=default_active_contour(t_window))
    return Plans(dataset=fingerprint["dataset"], task_regions=fingerprint["task_regions"],
                 configurations={"liver": liver, "tumor": tumor}, gpu_memory_target_gb=gpu_memory_target_gb)


def summarize(plans: Plans) -> str:
    """A short human-readable summary of both configurations."""
    lines = [f"plans for {plans.dataset} (GPU memory target {plans.gpu_memory_target_gb:g} GB):"]
    for cfg in plans.configurations.values():
        w = cfg.window
        lines.append(
            f"  {cfg.name:5s}: spacing {_fmt(cfg.spacing)} mm, patch {_fmt(cfg.patch_size)}, batch {cfg.batch_size}, "
            f"median shape {_fmt(cfg.median_shape)}, window [{w.lower:g}, {w.upper:g}] HU, "
            f"{cfg.network.init_filters} filters, ~{cfg.estimated_memory_gb:.1f} GB, crop {cfg.crop}"
            + (f" + {_fmt(cfg.crop_margin_mm)} mm" if cfg.crop == "liver" else ""))
    return "\n".join(lines)


def _fmt(values) -> str:
    return "x".join(f"{v:g}" for v in values)
