"""Training augmentation on the device (GPU), batched with torch: the CPU workers only cut patches.

With batchgenerators on the CPU (:func:`smoothseg.training.augmentation.training_transforms`), a loader worker spends
most of a tumour batch in the spatial transform (cubic interpolation of a rotated or scaled patch) and the intensity
transforms (bench/bench_loader.py), so feeding a GPU takes many CPU cores. Here the workers cut a **source patch**
(:func:`source_patch_size`: large enough that any rotation and scaling of the training patch stays inside it), apply
the liver-mask moves (a threshold of stored distances: cheap) and ship it; :class:`DeviceAugmenter` then does, for the
whole batch at once on the training device:

* rotation and scaling (``affine_grid`` + ``grid_sample``: trilinear for the image, nearest for the labels; outside the
  source: the fill value and background), then the centre crop to the training patch for samples that are neither
  rotated nor scaled (exactly the centre of the source, no interpolation);
* Gaussian noise, Gaussian blur (separable convolution), multiplicative brightness, contrast, low-resolution
  simulation (nearest down, trilinear up), gamma (inverted and plain), mirroring, and the liver-coverage field.

The probabilities and parameter ranges are the CPU pipeline's (:func:`training_ranges`, from the same patch size and
mirror axes), drawn per sample from a NumPy generator seeded like the CPU workers, so an epoch's augmentation
depends on its seed only. Interpolation differs: trilinear here, cubic on the CPU for the image (a test compares the
augmented statistics of both). The same code runs on CPU tensors, which is how the tests exercise it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AugmentationRanges", "DeviceAugmenter", "SampleParameters", "rotation_matrix", "source_patch_size",
           "spatial_transform", "training_ranges"]


@dataclass(frozen=True)
class AugmentationRanges:
    """Probabilities and ranges of the training augmentation (those of ``training_transforms``)."""

    patch_size: tuple[int, int, int]
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    in_plane: tuple[float, float] = (-math.pi / 6, math.pi / 6)  # rotation within the (y, x) plane
    out_of_plane: tuple[float, float] = (-math.pi / 12, math.pi / 12)  # about the y and x axes; 0 when anisotropic
    p_rotation: float = 0.2
    p_scale: float = 0.2
    scale: tuple[float, float] = (0.8, 1.2)
    p_noise: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)  # batchgenerators' "noise_variance" is the normal's scale
    p_blur: float = 0.2
    p_blur_channel: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    p_low_resolution_channel: float = 0.5
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    low_resolution_ignores_z: bool = False
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)


def training_ranges(patch_size: Sequence[int], mirror_axes: Sequence[int] = (0, 1, 2)) -> AugmentationRanges:
    """The ranges of ``training_transforms(patch_size, ..., mirror_axes)``: no out-of-plane rotation and no
    low-resolution simulation along z for anisotropic patches (in-plane extent over 3 times the slices)."""
    patch = tuple(int(p) for p in patch_size)
    anisotropic = max(patch[1:]) / patch[0] > 3
    return AugmentationRanges(patch, tuple(int(a) for a in mirror_axes),
                              out_of_plane=(0.0, 0.0) if anisotropic else (-math.pi / 12, math.pi / 12),
                              low_resolution_ignores_z=anisotropic)


def rotation_matrix(angle_x: float, angle_y: float, angle_z: float) -> np.ndarray:
    """batchgenerators' ``rotate_coords_3d`` as a matrix acting on ``(z, y, x)`` offsets: ``angle_x`` rotates within
    the (y, x) plane (``I @ Rx @ Ry @ Rz``, applied to row vectors, so the offsets map by its transpose)."""
    cx, sx, cy, sy, cz, sz = (math.cos(angle_x), math.sin(angle_x), math.cos(angle_y), math.sin(angle_y),
                              math.cos(angle_z), math.sin(angle_z))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rx @ ry @ rz).T


def _extreme_angles(low: float, high: float) -> list[float]:
    values = {low, high, 0.0 if low <= 0 <= high else low}
    values.update(a for a in (math.pi / 2 * k for k in range(-4, 5)) if low < a < high)
    return sorted(values)


def source_patch_size(ranges: AugmentationRanges) -> tuple[int, int, int]:
    """The smallest patch (odd margins rounded up) that holds every point any rotation and scaling within ``ranges``
    samples for the training patch: the workers cut it, centred where the training patch would be."""
    patch = np.asarray(ranges.patch_size, dtype=float)
    half = (patch - 1) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))  # (8, 3) zero-centred offsets
    # |R c| is largest at the range ends or at multiples of 90 degrees inside the range; all combinations of those
    extent = half.copy()
    for ax, ay, az in itertools.product(_extreme_angles(*ranges.in_plane), _extreme_angles(*ranges.out_of_plane),
                                        _extreme_angles(*ranges.out_of_plane)):
        rotated = corners @ rotation_matrix(ax, ay, az).T
        extent = np.maximum(extent, np.abs(rotated).max(0) * max(ranges.scale[1], 1.0))
    # a source of size S has offsets up to (S - 1) / 2 around its centre; one voxel more for the interpolation
    size = np.ceil(2 * extent + 1 + 2 - 1e-9).astype(int)
    size += (size - patch.astype(int)) % 2  # keep the training patch exactly centred
    return tuple(int(s) for s in np.maximum(size, patch.astype(int)))


@dataclass
class SampleParameters:
    """What happens to one sample (drawn by :meth:`DeviceAugmenter.draw`)."""

    rotation: np.ndarray | None  # 3 x 3, None: not rotated
    scale: float | None  # None: not scaled
    noise_std: float | None
    blur_sigma: float | None
    brightness: float | None
    contrast: float | None
    low_resolution_zoom: float | None
    gamma_inverted: float | None
    gamma: float | None
    mirror: tuple[int, ...]


def _two_sided(rng: np.random.Generator, low: float, high: float) -> float:
    """batchgenerators' draw for a factor around 1: below 1 or above 1 with even odds (when the range spans 1)."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1), high))


def spatial_transform(data: torch.Tensor, seg: torch.Tensor, patch_size: Sequence[int],
                      matrices: Sequence[np.ndarray | None], fill_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample source patches ``(B, C, *source)`` to ``patch_size`` around their centres: sample b reads
    ``matrix @ offset + centre`` for each zero-centred output offset (``None``: the centre crop, no interpolation).
    Image trilinear with ``fill_value`` outside, labels nearest with 0 outside."""
    patch = tuple(int(p) for p in patch_size)
    source = tuple(int(s) for s in data.shape[2:])
    lo = [(s - p) // 2 for s, p in zip(source, patch, strict=True)]
    crop = (slice(None), slice(None), *(slice(a, a + p) for a, p in zip(lo, patch, strict=True)))
    out_data = data[crop].clone()
    out_seg = seg[crop].clone()
    moved = [b for b, m in enumerate(matrices) if m is not None]
    if not moved:
        return out_data, out_seg
    device, dtype = data.device, torch.float32
    # align_corners=True: normalised -1..1 spans voxel centres 0..S-1, so index i is 2 i / (S - 1) - 1
    offsets = torch.stack(torch.meshgrid(*[torch.arange(p, device=device, dtype=dtype) - (p - 1) / 2 for p in patch],
                                         indexing="ij"), dim=-1)  # (*patch, 3) in (z, y, x)
    centre = torch.tensor([(s - 1) / 2 for s in source], device=device, dtype=dtype)
    half = torch.tensor([max(s - 1, 1) / 2 for s in source], device=device, dtype=dtype)
    grids = []
    for b in moved:
        matrix = torch.as_tensor(matrices[b], device=device, dtype=dtype)
        position = offsets @ matrix.T + centre  # source index (z, y, x) of each output voxel
        grids.append(((position - centre) / half).flip(-1))  # grid_sample wants (x, y, z)
    grid = torch.stack(grids)
    index = torch.tensor(moved, device=device)
    sampled = F.grid_sample(data[index].float() - fill_value, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True) + fill_value
    labels = F.grid_sample(seg[index].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
    out_data[index] = sampled.to(out_data.dtype)
    out_seg[index] = labels.round().to(out_seg.dtype)
    return out_data, out_seg


def _gaussian_blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter (truncate 4, reflect at the faces) of a ``(Z, Y, X)`` volume, separably."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=volume.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = volume[None, None].float()
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="reflect" if min(volume.shape) > radius else "replicate"),
                       kernel.view(shape))
    return out[0, 0].to(volume.dtype)


def _gamma(volume: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """batchgenerators' ``augment_gamma`` with ``retain_stats`` for one channel."""
    v = -volume if invert else volume
    mean, std = v.mean(), v.std(unbiased=False)
    low = v.min()
    span = v.max() - low
    v = torch.pow((v - low) / (span + 1e-7), gamma) * (span + 1e-7) + low
    v = (v - v.mean()) / (v.std(unbiased=False) + 1e-8) * std + mean
    return -v if invert else v


class DeviceAugmenter:
    """The training augmentation of batches of source patches on their device (see the module docstring).

    ``seed``: the NumPy generator that draws every sample's parameters; the noise is drawn by a torch generator
    seeded from it, on the batch's device.
    """

    def __init__(self, ranges: AugmentationRanges, fill_value: float, seed: int = 0) -> None:
        self.ranges = ranges
        self.fill_value = float(fill_value)
        self.source_size = source_patch_size(ranges)
        self.rng = np.random.default_rng(seed)
        self._torch_seed = int(self.rng.integers(2**62))
        self._generators: dict[str, torch.Generator] = {}

    def draw(self) -> SampleParameters:
        """One sample's parameters, with the CPU pipeline's probabilities and ranges."""
        r, rng = self.ranges, self.rng
        rotation = scale = None
        if rng.random() < r.p_rotation:
            rotation = rotation_matrix(rng.uniform(*r.in_plane), rng.uniform(*r.out_of_plane),
                                       rng.uniform(*r.out_of_plane))
        if rng.random() < r.p_scale:
            scale = _two_sided(rng, *r.scale)
        return SampleParameters(
            rotation=rotation, scale=scale,
            noise_std=float(rng.uniform(*r.noise_std)) if rng.random() < r.p_noise else None,
            blur_sigma=float(rng.uniform(*r.blur_sigma)) if rng.random() < r.p_blur and rng.random() <
            r.p_blur_channel else None,
            brightness=float(rng.uniform(*r.brightness)) if rng.random() < r.p_brightness else None,
            contrast=_two_sided(rng, *r.contrast) if rng.random() < r.p_contrast else None,
            low_resolution_zoom=float(rng.uniform(*r.low_resolution_zoom)) if rng.random() < r.p_low_resolution
            and rng.random() < r.p_low_resolution_channel else None,
            gamma_inverted=_two_sided(rng, *r.gamma) if rng.random() < r.p_gamma_inverted else None,
            gamma=_two_sided(rng, *r.gamma) if rng.random() < r.p_gamma else None,
            mirror=tuple(a for a in r.mirror_axes if rng.random() < 0.5))

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._torch_seed)
        return self._generators[key]

    @staticmethod
    def matrix(parameters: SampleParameters) -> np.ndarray | None:
        """The spatial matrix of a sample (rotation times scale), None when neither applies."""
        if parameters.rotation is None and parameters.scale is None:
            return None
        rotation = parameters.rotation if parameters.rotation is not None else np.eye(3)
        return rotation * (parameters.scale if parameters.scale is not None else 1.0)

    def __call__(self, batch: dict, device: torch.device | str | None = None) -> dict:
        """Augment a batch of source patches (``data`` ``(B, 1, *source)``, ``seg`` likewise; NumPy or tensors) into
        training patches on ``device`` (default: where ``data`` is); ``liver_coverage`` recounted; other keys kept."""
        data = torch.as_tensor(batch["data"])
        seg = torch.as_tensor(batch["seg"])
        device = torch.device(device) if device is not None else data.device
        if data.device != device:
            data = data.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else data.to(device)
            seg = seg.to(device, non_blocking=True)
        if tuple(data.shape[2:]) != self.source_size:
            raise ValueError(f"expected source patches of {self.source_size}, got {tuple(data.shape[2:])}")
        parameters = [self.draw() for _ in range(data.shape[0])]
        data, seg = spatial_transform(data.float(), seg, self.ranges.patch_size,
                                      [self.matrix(p) for p in parameters], self.fill_value)
        generator = self._generator(device)
        for b, p in enumerate(parameters):
            volume = data[b, 0]
            if p.noise_std is not None:
                volume = volume + torch.randn(volume.shape, generator=generator, device=device) * p.noise_std
            if p.blur_sigma is not None:
                volume = _gaussian_blur(volume, p.blur_sigma)
            if p.brightness is not None:
                volume = volume * p.brightness
            if p.contrast is not None:
                mean, low, high = volume.mean(), volume.min(), volume.max()
                volume = ((volume - mean) * p.contrast + mean).clamp(low, high)
            if p.low_resolution_zoom is not None:
                shape = volume.shape
                small = [max(1, round(s * p.low_resolution_zoom)) for s in shape]
                if self.ranges.low_resolution_ignores_z:
                    small[0] = shape[0]
                down = F.interpolate(volume[None, None], size=small, mode="nearest")
                volume = F.interpolate(down, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0]
            if p.gamma_inverted is not None:
                volume = _gamma(volume, p.gamma_inverted, invert=True)
            if p.gamma is not None:
                volume = _gamma(volume, p.gamma, invert=False)
            data[b, 0] = volume
            if p.mirror:
                dims = [a + 1 for a in p.mirror]  # of data[b]: (C, z, y, x)
                data[b] = torch.flip(data[b], dims)
                seg[b] = torch.flip(seg[b], dims)
        out = dict(batch)
        out["data"], out["seg"] = data, seg
        counts = (seg.reshape(seg.shape[0], -1) > 0).sum(1).float()
        voxels = torch.as_tensor(np.asarray(batch["liver_voxels"], dtype=np.float32), device=device)
        out["liver_coverage"] = (counts / voxels).clamp(0.0, 1.0)
        return out
