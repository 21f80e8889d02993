"""Gaussian-weighted sliding-window inference with mirroring test-time augmentation (nnU-Net style).

This module owns the patch-wise prediction of a whole (preprocessed) volume with a network trained on patches:

1. the image is padded with a constant to at least the patch size (the padding is remembered and cropped off);
2. patches ("tiles") are laid out with :func:`compute_tile_starts` so that they cover the image with an overlap of at
   least ``1 - step_size`` of the patch size, spread evenly and mirror-symmetrically;
3. tiles are predicted in batches on the compute device; each prediction is turned into **class probabilities by a
   softmax per tile** (optionally averaged over all mirror flips), multiplied by a Gaussian importance map
   (:func:`gaussian_importance_map`) that trusts a tile's centre more than its border, and accumulated as weighted
   sums together with the sums of the weights;
4. the result is ``sum(w * p) / sum(w)`` per voxel: a convex combination of per-tile probabilities, so it is a
   valid probability distribution over classes at every voxel.

With a ``region`` (the tumour stage's liver mask on its grid), tiles that hold none of it, even after growing them by
``region_margin`` voxels on every side, are not run: the voxels near the region are then summed over exactly the
tiles that summed them before, so their probabilities are unchanged, and voxels no tile reached are background
(probability 1 for class 0). The tumour stage's crop is the liver's bounding box, whose corners hold no liver.

Choice: probabilities, not logits. nnU-Net v2 averages logits and applies the softmax at the end; we average
probabilities instead. Averaging probabilities keeps each tile's (and each flip's) vote bounded, so one
over-confident tile cannot dominate its neighbours, and the output can be used directly as per-class probabilities.
With a model whose output is the same in every tile both choices give identical results.

The network is any callable mapping a ``(B, C, *patch)`` tensor to logits ``(B, num_classes, *patch)``; if it
returns a tuple or list (deep supervision, a VAE branch), the first element is used. An ``nn.Module`` is switched to
eval mode for the call and restored afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from smoothseg.device import autocast as device_autocast
from smoothseg.logging_setup import progress_bar

__all__ = ["REGION_MARGIN", "compute_tile_starts", "gaussian_importance_map", "sliding_window_predict", "tile_regions",
           "tiles_to_run"]

logger = logging.getLogger(__name__)

Network = Callable[[torch.Tensor], torch.Tensor]

#: Voxels by which a tile is grown before asking whether it holds any of the region: the region's neighbours, which
#: the linear interpolation back to the original grid reads, keep every tile that covered them.
REGION_MARGIN = 2


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, *,
                            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                            min_value: float = 1e-6) -> torch.Tensor:
    """Gaussian weights over a patch: 1 at the centre, falling off towards the border, never zero.

    The map is the product of one 1D Gaussian per axis centred at ``(p - 1) / 2`` (so it is mirror-symmetric, also for
    even patch sizes) with standard deviation ``sigma_scale * p``. It is normalised to a maximum of 1 and clamped
    from below to ``min_value``, so that every voxel of every tile carries a positive weight and the weight sum is
    positive everywhere the tiles reach.
    """
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    if not 0 < min_value <= 1:
        raise ValueError(f"min_value must be in (0, 1], got {min_value}")
    weights = torch.ones((), dtype=torch.float64)
    for p in patch_size:
        p = int(p)
        if p < 1:
            raise ValueError(f"patch sizes must be positive, got {tuple(patch_size)}")
        coords = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        sigma = sigma_scale * p
        axis_weights = torch.exp(-0.5 * (coords / sigma) ** 2)
        weights = weights[..., None] * axis_weights
    weights = weights / weights.max()
    return weights.clamp_(min=min_value).to(dtype=dtype, device=device)


def compute_tile_starts(image_shape: Sequence[int], patch_size: Sequence[int],
                        step_size: float = 0.5) -> list[list[int]]:
    """Start indices of the tiles along each axis.

    Along an axis of length ``n`` with patch ``p`` (``n >= p`` is required: pad first), the number of tiles is the
    smallest that keeps neighbouring starts at most ``step_size * p`` apart, i.e. ``ceil((n - p) / (step_size * p))
    + 1``, and the starts are spread evenly from 0 to ``n - p`` (rounded to whole voxels). Consequently the tiles
    cover the axis, the first tile starts at 0, the last one ends at ``n``, and neighbours overlap by at least
    ``(1 - step_size) * p`` voxels (up to rounding of the target step). The layout is mirror-symmetric (the starts of
    the flipped axis are ``n - p - start``), except that a middle tile is off centre by half a voxel when ``n - p`` is
    odd.
    """
    if len(image_shape) != len(patch_size):
        raise ValueError(f"image shape {tuple(image_shape)} and patch size {tuple(patch_size)} differ in length")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    starts: list[list[int]] = []
    for n, p in zip(image_shape, patch_size, strict=True):
        n, p = int(n), int(p)
        if p < 1:
            raise ValueError(f"patch sizes must be positive, got {tuple(patch_size)}")
        if n < p:
            raise ValueError(f"image shape {tuple(image_shape)} is smaller than the patch size {tuple(patch_size)}; "
                             "pad the image first")
        target_step = step_size * p
        num_steps = int(math.ceil((n - p) / target_step - 1e-9)) + 1
        if num_steps == 1:
            starts.append([0])
            continue
        actual_step = (n - p) / (num_steps - 1)
        half = [int(math.floor(actual_step * i + 0.5)) for i in range(num_steps)]
        # Mirror the first half onto the second, so rounding cannot break the symmetry (bar a middle tile).
        axis_starts = [half[i] if i < (num_steps + 1) // 2 else (n - p) - half[num_steps - 1 - i]
                       for i in range(num_steps)]
        starts.append(axis_starts)
    return starts


def tile_regions(image_shape: Sequence[int], patch_size: Sequence[int],
                 step_size: float = 0.5) -> list[tuple[slice, ...]]:
    """Every tile of :func:`compute_tile_starts` as slices over the (padded) image."""
    starts = compute_tile_starts(image_shape, patch_size, step_size)
    return [tuple(slice(s, s + int(p)) for s, p in zip(corner, patch_size, strict=True))
            for corner in itertools.product(*starts)]


def _pad_to_patch(image: torch.Tensor, patch_size: Sequence[int],
                  value: float) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial axes of a ``(C, *spatial)`` tensor to at least ``patch_size``, split evenly before/after.

    Returns the padded tensor and the slices (over the spatial axes) that cut the original image back out.
    """
    spatial = image.shape[1:]
    pads_before = [max(int(p) - int(s), 0) // 2 for s, p in zip(spatial, patch_size, strict=True)]
    pads_after = [max(int(p) - int(s), 0) - b for s, p, b in zip(spatial, patch_size, pads_before, strict=True)]
    crop = tuple(slice(b, b + int(s)) for b, s in zip(pads_before, spatial, strict=True))
    if not any(pads_before) and not any(pads_after):
        return image, crop
    # F.pad takes (last_before, last_after, second_last_before, ...).
    flat_pad: list[int] = []
    for b, a in zip(reversed(pads_before), reversed(pads_after), strict=True):
        flat_pad += [b, a]
    return F.pad(image, flat_pad, mode="constant", value=value), crop


class _Accumulator:
    """Weighted sums of probabilities and weights, with a fallback to CPU when the device runs out of memory."""

    def __init__(self, num_classes: int, shape: Sequence[int], device: torch.device) -> None:
        self.device = device
        try:
            self._allocate(num_classes, shape, device)
        except torch.OutOfMemoryError:
            if device.type == "cpu":
                raise
            logger.warning("Out of memory allocating the sliding-window accumulators on %s; accumulating on the CPU "
                           "instead (slower)", device)
            self._release_device_memory()
            self.device = torch.device("cpu")
            self._allocate(num_classes, shape, self.device)

    def _allocate(self, num_classes: int, shape: Sequence[int], device: torch.device) -> None:
        self.values = self.weights = None
        self.values = torch.zeros((num_classes, *shape), dtype=torch.float32, device=device)
        self.weights = torch.zeros(tuple(shape), dtype=torch.float32, device=device)

    @staticmethod
    def _release_device_memory() -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def add(self, region: tuple[slice, ...], probabilities: torch.Tensor, weight: torch.Tensor) -> None:
        """Add ``weight * probabilities`` (``(K, *patch)``) and ``weight`` (``(*patch)``) to ``region``."""
        done = {"values": False, "weights": False}
        try:
            self._add(region, probabilities, weight, done)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            logger.warning("Out of memory accumulating on %s; moving the sliding-window accumulators to the CPU",
                           self.device)
            self.values = self.values.cpu()
            self.weights = self.weights.cpu()
            self.device = torch.device("cpu")
            self._release_device_memory()
            self._add(region, probabilities, weight, done)

    def _add(self, region: tuple[slice, ...], probabilities: torch.Tensor, weight: torch.Tensor,
             done: dict[str, bool]) -> None:
        """The addition proper; ``done`` records which sums are already updated, so a retry never adds twice."""
        weight = weight.to(self.device, torch.float32)
        if not done["values"]:
            # In place, with the weight broadcast over the classes: no weighted copy of the tile is made.
            self.values[(slice(None), *region)].addcmul_(probabilities.to(self.device, torch.float32), weight)
            done["values"] = True
        if not done["weights"]:
            self.weights[region] += weight
            done["weights"] = True

    def result(self) -> torch.Tensor:
        """The weighted mean, computed in place (the accumulators are consumed); a voxel no tile reached (all its tiles
        were skipped) is background: probability 1 for class 0."""
        unreached = self.weights == 0
        if bool(unreached.any()):
            self.values[:, unreached] = 0.0
            self.values[0][unreached] = 1.0
            self.weights[unreached] = 1.0
        return self.values.div_(self.weights)


def tiles_to_run(tiles: Sequence[tuple[slice, ...]], region: torch.Tensor | np.ndarray | None,
                 margin: int = REGION_MARGIN) -> list[tuple[slice, ...]]:
    """The tiles (slices over a padded image) that hold a voxel of ``region`` (a mask of the padded image's shape)
    once grown by ``margin`` voxels on every side; every tile when ``region`` is None."""
    if region is None:
        return list(tiles)
    mask = torch.as_tensor(np.asarray(region, dtype=bool))
    kept = []
    for tile in tiles:
        grown = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in tile)
        if bool(mask[grown].any()):
            kept.append(tile)
    return kept


def _forward(network: Network, batch: torch.Tensor) -> torch.Tensor:
    output = network(batch)
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (1) computed in the logits' own buffer: no second tile-sized tensor, which with
    mirroring TTA (a running sum, the flipped copy) keeps the tile buffers to three."""
    logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


def _predict_probabilities(network: Network, batch: torch.Tensor, num_classes: int,
                           flip_combinations: Sequence[tuple[int, ...]],
                           autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """Softmax probabilities of a batch of tiles, averaged over the given flips (dims of the batched tensor)."""
    total: torch.Tensor | None = None
    for dims in flip_combinations:
        inputs = torch.flip(batch, dims) if dims else batch
        with autocast():
            logits = _forward(network, inputs)
        if logits.shape[0] != batch.shape[0] or logits.shape[1] != num_classes or logits.shape[2:] != batch.shape[2:]:
            raise ValueError(f"network output has shape {tuple(logits.shape)}, expected "
                             f"{(batch.shape[0], num_classes, *batch.shape[2:])}")
        probabilities = _softmax_(logits.float())
        del logits
        if dims:
            probabilities = torch.flip(probabilities, dims)  # a copy: the unflipped one is freed here
        total = probabilities if total is None else total.add_(probabilities)
        del probabilities
    assert total is not None
    return total.div_(len(flip_combinations)) if len(flip_combinations) > 1 else total


def sliding_window_predict(network: Network, image: torch.Tensor | np.ndarray, patch_size: Sequence[int],
                           num_classes: int, *, step_size: float = 0.5, batch_size: int = 2,
                           mirror_axes: Sequence[int] | None = None, device: torch.device | str = "cpu",
                           gaussian: bool = True, accumulate_device: torch.device | str | None = None,
                           progress: bool = False, pad_value: float = 0.0, autocast_dtype: torch.dtype | None = None,
                           channels_last: bool = False, region: torch.Tensor | np.ndarray | None = None,
                           region_margin: int = REGION_MARGIN) -> torch.Tensor:
    """Predict per-class probabilities for a whole image, patch by patch.

    Parameters
    ----------
    network:
        Callable mapping ``(B, C, *patch)`` to logits ``(B, num_classes, *patch)``; an ``nn.Module`` is put in eval
        mode for the call (and restored after). A tuple/list output is reduced to its first element.
    image:
        ``(C, *spatial)`` float image (3D: ``(C, Z, Y, X)``), preprocessed the way the network was trained; CPU.
    patch_size:
        Spatial patch size, one value per spatial axis.
    num_classes:
        Number of output channels of the network.
    step_size:
        Distance between neighbouring tile starts as a fraction of the patch size (0.5: half-overlapping tiles).
    batch_size:
        Number of tiles per forward pass.
    mirror_axes:
        Spatial axes (0 = first spatial axis, e.g. Z) to mirror for test-time augmentation. The probabilities are
        averaged over all ``2**len(mirror_axes)`` flip combinations (including no flip); ``None``/empty: no TTA.
    device:
        Where the network runs.
    gaussian:
        Weight tiles with :func:`gaussian_importance_map` (default) or uniformly.
    accumulate_device:
        Where the full-size weighted sums live (default: ``device``). If allocating or accumulating there runs out
        of memory, the accumulation falls back to the CPU with a logged warning.
    progress:
        Show a tqdm progress bar over the batches of tiles.
    pad_value:
        Constant used to pad images smaller than the patch (0, the mean of a z-scored image).
    autocast_dtype:
        Run the network under ``torch.autocast`` with this dtype (``None``: float32;
        :func:`smoothseg.device.autocast_dtype` gives the right one for a device). The softmax and the sums are
        float32 either way.
    channels_last:
        Give the network its tiles in channels-last memory order (for a network converted with
        ``.to(memory_format=torch.channels_last_3d)``; faster with oneDNN on a CPU).
    region:
        Optional mask of the image's spatial shape: tiles that hold none of it within ``region_margin`` voxels are
        not run, and voxels no tile reached are background (see the module docstring). None: every tile runs.

    Returns
    -------
    torch.Tensor
        ``(num_classes, *spatial)`` float32 probabilities on the CPU, summing to 1 over classes at every voxel.
    """
    image = torch.as_tensor(image)
    if image.ndim != len(patch_size) + 1:
        raise ValueError(f"image must be (C, *spatial) with {len(patch_size)} spatial axes to match patch size "
                         f"{tuple(patch_size)}, got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    spatial_dims = len(patch_size)
    mirror_axes = tuple(sorted({int(a) for a in (mirror_axes or ())}))
    if any(not 0 <= a < spatial_dims for a in mirror_axes):
        raise ValueError(f"mirror_axes {mirror_axes} must be spatial axes in [0, {spatial_dims})")
    device = torch.device(device)
    accumulate_device = torch.device(accumulate_device) if accumulate_device is not None else device

    image = image.float().cpu()
    padded, crop = _pad_to_patch(image, patch_size, pad_value)
    padded_shape = tuple(padded.shape[1:])
    tiles = tile_regions(padded_shape, patch_size, step_size)
    if region is not None:
        region = torch.as_tensor(np.asarray(region, dtype=bool))
        if tuple(region.shape) != tuple(image.shape[1:]):
            raise ValueError(f"region shape {tuple(region.shape)} differs from the image's {tuple(image.shape[1:])}")
        padded_region, _ = _pad_to_patch(region[None].to(torch.uint8), patch_size, 0)
        all_tiles = len(tiles)
        tiles = tiles_to_run(tiles, padded_region[0].bool(), region_margin)
        logger.debug("Sliding window: %d of %d tiles hold the region; the others are not run", len(tiles), all_tiles)
    # Flip dims of the batched (B, C, *spatial) tensor: spatial axis a is dim a + 2.
    flip_combinations = [tuple(a + 2 for a in combo) for k in range(len(mirror_axes) + 1)
                         for combo in itertools.combinations(mirror_axes, k)]
    logger.debug("Sliding window: image %s padded to %s, patch %s, %d tiles, %d mirror combinations, device %s",
                 tuple(image.shape[1:]), padded_shape, tuple(patch_size), len(tiles), len(flip_combinations), device)

    weight = (gaussian_importance_map(patch_size, device=device) if gaussian
              else torch.ones(tuple(int(p) for p in patch_size), device=device))
    def autocast() -> contextlib.AbstractContextManager:
        return device_autocast(device, autocast_dtype)

    was_training = isinstance(network, torch.nn.Module) and network.training
    if was_training:
        network.eval()  # type: ignore[union-attr]
    try:
        with torch.inference_mode():
            accumulator = _Accumulator(num_classes, padded_shape, accumulate_device)
            batches = range(0, len(tiles), batch_size)
            for first in progress_bar(batches, desc="sliding window", unit="batch", disable=not progress):
                regions = tiles[first:first + batch_size]
                batch = torch.stack([padded[(slice(None), *region)] for region in regions]).to(device)
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last_3d)
                probabilities = _predict_probabilities(network, batch, num_classes, flip_combinations, autocast)
                for region, tile_probabilities in zip(regions, probabilities, strict=True):
                    accumulator.add(region, tile_probabilities, weight)
            result = accumulator.result()[(slice(None), *crop)]
    finally:
        if was_training:
            network.train()  # type: ignore[union-attr]
    # Tensors made under inference_mode refuse in-place updates and autograd later on: hand back a normal tensor (one
    # contiguous copy of the crop, on the CPU).
    result = result.to("cpu", torch.float32)
    return result.clone(memory_format=torch.contiguous_format) if result.is_inference() else result.contiguous()
