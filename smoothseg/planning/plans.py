"""Typed plans and their readable JSON form (``plans.json``).

One :class:`ConfigurationPlan` per task: ``liver`` (global view, whole volume, coarse spacing) and
``tumor`` (local view, liver crop, fine spacing). Users may edit ``plans.json`` by hand; loading
validates every field and names the offending key, and the rest of the pipeline reads only what
is written here. All spatial tuples are in array order (z, y, x).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smoothseg.atomic import write_json
from smoothseg.errors import DatasetSchemaError

PLANS_VERSION = 1
TASKS = ("liver", "tumor")
ORIENTATIONS = ("canonical", "native")


@dataclass(frozen=True)
class IntensityWindow:
    """CT normalisation: clip HU to [lower, upper], then subtract ``mean`` and divide by ``std``."""

    lower: float
    upper: float
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not self.lower < self.upper:
            raise ValueError(f"window lower ({self.lower}) must be below upper ({self.upper})")
        if not self.std > 0:
            raise ValueError(f"window std must be positive, got {self.std}")


@dataclass(frozen=True)
class ResamplingPlan:
    """Interpolation orders; along z, ``z_order`` is used instead when the spacing is anisotropic."""

    image_order: int = 3
    label_order: int = 1
    z_order: int = 0
    anisotropy_threshold: float = 3.0


@dataclass(frozen=True)
class NetworkPlan:
    """SegResNetVAE keyword arguments (see :mod:`smoothseg.network.segresnet_vae`)."""

    init_filters: int = 16
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    norm: str = "instance"
    dropout: float = 0.0
    vae_nz: int = 256
    vae_estimate_std: bool = False


@dataclass(frozen=True)
class ActiveContourPlan:
    """Settings of the active contours (:func:`smoothseg.inference.active_contour.refine_tumours`); defaults suit
    portal-venous CT in HU. The tumour configuration carries them (``active_contour`` in ``plans.json``).

    Attributes
    ----------
    window:
        Intensity window ``(lo, hi)`` in image units (HU): intensities are clipped to it and scaled to [0, 1] before
        the contour runs, so bone, air and contrast-filled vessels cannot dominate the region means. ``None``: use
        the 1st-99th percentiles of the liver voxels in each lesion's box.
    margin_mm:
        Margin around each lesion's bounding box, in mm (converted per axis with the voxel spacing). The contour can
        move at most this far, and the parenchyma in the margin defines the "outside" mean.
    iterations:
        Number of morphological Chan-Vese iterations. Each iteration moves the boundary by at most about one voxel of
        the working grid, i.e. about the finest spacing (in-plane pixel size for CT).
    smoothing:
        Number of morphological curvature-smoothing passes per iteration (skimage's ``smoothing``): larger values give
        smoother, rounder boundaries and also shrink thin protrusions and very small lesions.
    lambda1:
        skimage's ``lambda1``: weight of ``(I - mean_inside)**2`` in the region step; a boundary voxel joins the
        lesion when ``lambda1 * (I - mean_inside)**2 < lambda2 * (I - mean_outside)**2``. Larger than ``lambda2``:
        the outside (parenchyma) may hold a wider range of intensities, so the lesion tends to shrink.
    lambda2:
        skimage's ``lambda2``: weight of ``(I - mean_outside)**2``. Larger than ``lambda1``: the lesion may hold a wider
        range of intensities (heterogeneous tumours), so it tends to grow.
    min_keep_fraction:
        If the refined lesion has fewer than this fraction of the original voxels, the original is kept.
    max_grow_fraction:
        If the refined lesion has more than ``(1 + max_grow_fraction)`` times the original voxels, the original is
        kept (the contour leaked into the parenchyma).
    presmooth_mm:
        Standard deviation (mm) of a Gaussian applied to the windowed box before the contour runs, against voxel
        noise; 0 disables it.
    max_upsampling:
        Largest integer factor by which a coarse axis is upsampled for the near-isotropic working grid (1 disables
        the resampling and runs on the raw grid).
    max_working_voxels:
        Largest working grid (voxels) of one lesion's box: above it, the upsampling factors are lowered (a large
        lesion's box is refined on a coarser grid, down to the raw grid). Bounds the time and memory of the step.
    min_contrast:
        Minimal contrast-to-noise ratio ``|mean_inside - mean_outside| / pooled_sd`` between the lesion and the
        parenchyma in its box, in the windowed image. Below it the contour has nothing to follow and the lesion is
        kept as predicted.
    """

    window: tuple[float, float] | None = (-100.0, 250.0)
    margin_mm: float = 5.0
    iterations: int = 5
    smoothing: int = 1
    lambda1: float = 1.0
    lambda2: float = 1.0
    min_keep_fraction: float = 0.5
    max_grow_fraction: float = 1.0
    presmooth_mm: float = 1.0
    max_upsampling: int = 8
    max_working_voxels: int = 4_000_000
    min_contrast: float = 0.5

    def __post_init__(self) -> None:
        if self.window is not None:
            lo, hi = (float(v) for v in self.window)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"window must be (lo, hi) with lo < hi, got {self.window}")
            object.__setattr__(self, "window", (lo, hi))
        if not (math.isfinite(self.margin_mm) and self.margin_mm >= 0):
            raise ValueError(f"margin_mm must be >= 0, got {self.margin_mm}")
        if self.iterations < 0 or self.smoothing < 0:
            raise ValueError(f"iterations and smoothing must be >= 0, got {self.iterations}, {self.smoothing}")
        if self.lambda1 <= 0 or self.lambda2 <= 0:
            raise ValueError(f"lambda1 and lambda2 must be positive, got {self.lambda1}, {self.lambda2}")
        if not 0 <= self.min_keep_fraction <= 1:
            raise ValueError(f"min_keep_fraction must be in [0, 1], got {self.min_keep_fraction}")
        if self.max_grow_fraction < 0:
            raise ValueError(f"max_grow_fraction must be >= 0, got {self.max_grow_fraction}")
        if not (math.isfinite(self.presmooth_mm) and self.presmooth_mm >= 0):
            raise ValueError(f"presmooth_mm must be >= 0, got {self.presmooth_mm}")
        if self.max_upsampling < 1:
            raise ValueError(f"max_upsampling must be >= 1, got {self.max_upsampling}")
        if self.max_working_voxels < 1:
            raise ValueError(f"max_working_voxels must be >= 1, got {self.max_working_voxels}")
        if self.min_contrast < 0:
            raise ValueError(f"min_contrast must be >= 0, got {self.min_contrast}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the window as a list, or None)."""
        data = dataclasses.asdict(self)
        data["window"] = None if self.window is None else [float(v) for v in self.window]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActiveContourPlan:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown active-contour parameter(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if values.get("window") is not None:
            values["window"] = tuple(float(v) for v in values["window"])
        return cls(**values)


@dataclass(frozen=True)
class ConfigurationPlan:
    """Everything one task's preprocessing, training and inference need."""

    name: str
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    window: IntensityWindow
    num_classes: int
    class_names: tuple[str, ...]
    crop: str  # "none": whole volume; "liver": liver bounding box plus crop_margin_mm
    crop_margin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    normalization: str = "ct_window_zscore"
    resampling: ResamplingPlan = field(default_factory=ResamplingPlan)
    network: NetworkPlan = field(default_factory=NetworkPlan)
    median_shape: tuple[int, int, int] = (0, 0, 0)
    estimated_memory_gb: float = 0.0
    orientation: str = "canonical"  # "canonical": reoriented to the identity direction first; "native": as stored
    mirror_axes: tuple[int, ...] = (0, 1, 2)  # mirroring in training augmentation and test-time augmentation
    #: Active-contour settings of the tumour configuration (None for the liver): what the contours would use when they
    #: run; whether they run is decided at prediction time.
    active_contour: ActiveContourPlan | None = None

    def content_hash(self) -> str:
        """A short hash of the fields that change preprocessed data (for resumable preprocessing)."""
        relevant = {k: v for k, v in asdict(self).items()
                    if k in ("spacing", "window", "crop", "crop_margin_mm", "normalization", "resampling",
                             "num_classes", "orientation")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plans:
    dataset: str
    task_regions: dict[str, list[int]]
    configurations: dict[str, ConfigurationPlan]
    gpu_memory_target_gb: float = 8.0
    version: int = PLANS_VERSION

    def __getitem__(self, task: str) -> ConfigurationPlan:
        if task not in self.configurations:
            raise KeyError(f"no configuration '{task}' in the plans (have: {', '.join(self.configurations)})")
        return self.configurations[task]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "dataset": self.dataset, "gpu_memory_target_gb": self.gpu_memory_target_gb,
                "task_regions": self.task_regions,
                "configurations": {k: _config_to_dict(v) for k, v in self.configurations.items()}}

    def save(self, path: str | Path) -> Path:
        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        path = Path(path)
        if not path.is_file():
            raise DatasetSchemaError(path, None, "plans.json not found; run smoothseg_plan_and_preprocess first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetSchemaError(path, None, f"not valid JSON ({exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path = "plans.json") -> Plans:
        path = Path(path)
        try:
            configs = {name: _config_from_dict(name, cfg, path) for name, cfg in data["configurations"].items()}
            return cls(dataset=str(data["dataset"]), task_regions={k: list(v) for k, v in data["task_regions"].items()},
                       configurations=configs, gpu_memory_target_gb=float(data.get("gpu_memory_target_gb", 8.0)),
                       version=int(data.get("version", PLANS_VERSION)))
        except DatasetSchemaError:
            raise
        except KeyError as exc:
            raise DatasetSchemaError(path, str(exc.args[0]), "required key is missing") from None
        except (TypeError, AttributeError, ValueError) as exc:
            raise DatasetSchemaError(path, None, f"malformed plans ({exc})") from None


def _config_to_dict(cfg: ConfigurationPlan) -> dict[str, Any]:
    d = asdict(cfg)
    d["active_contour"] = None if cfg.active_contour is None else cfg.active_contour.to_dict()
    for key in ("spacing", "patch_size", "class_names", "crop_margin_mm", "median_shape", "mirror_axes"):
        d[key] = list(d[key])
    d["network"]["blocks_down"] = list(d["network"]["blocks_down"])
    d["network"]["blocks_up"] = list(d["network"]["blocks_up"])
    return d


def _config_from_dict(name: str, d: dict[str, Any], path: Path) -> ConfigurationPlan:
    def fail(key: str, problem: str):
        raise DatasetSchemaError(path, f"configurations.{name}.{key}", problem)

    def triple(key: str, kind):
        value = d.get(key)
        if not isinstance(value, list) or len(value) != 3:
            fail(key, f"must be a list of 3 numbers (z, y, x), got {value!r}")
        try:
            out = tuple(kind(v) for v in value)
        except (TypeError, ValueError):
            fail(key, f"must be a list of 3 numbers (z, y, x), got {value!r}")
        return out

    for key in ("spacing", "patch_size", "batch_size", "window", "num_classes", "class_names", "crop"):
        if key not in d:
            fail(key, "required key is missing")
    spacing = triple("spacing", float)
    if min(spacing) <= 0:
        fail("spacing", "must be positive")
    patch = triple("patch_size", int)
    network = NetworkPlan(**{**d.get("network", {}),
                             "blocks_down": tuple(d.get("network", {}).get("blocks_down", (1, 2, 2, 4))),
                             "blocks_up": tuple(d.get("network", {}).get("blocks_up", (1, 1, 1)))})
    divisor = 2 ** len(network.blocks_down)
    if any(p <= 0 or p % divisor for p in patch):
        fail("patch_size", f"every size must be a positive multiple of {divisor} (the SegResNetVAE needs it), "
                           f"got {list(patch)}")
    if not isinstance(d["batch_size"], int) or d["batch_size"] < 1:
        fail("batch_size", "must be a positive integer")
    if d["crop"] not in ("none", "liver"):
        fail("crop", "must be 'none' or 'liver'")
    try:
        window = IntensityWindow(**d["window"])
    except (TypeError, ValueError) as exc:
        fail("window", f"needs lower < upper, mean and std > 0 ({exc})")
    orientation = d.get("orientation", "canonical")
    if orientation not in ORIENTATIONS:
        fail("orientation", f"must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    mirror_axes = d.get("mirror_axes", [0, 1, 2])
    if (not isinstance(mirror_axes, list) or len(set(mirror_axes)) != len(mirror_axes)
            or any(not isinstance(a, int) or isinstance(a, bool) or not 0 <= a <= 2 for a in mirror_axes)):
        fail("mirror_axes", f"must be a list of distinct axes among 0, 1, 2 (z, y, x), got {mirror_axes!r}")
    active_contour = _active_contour_from_dict(d.get("active_contour", "default"), name, window, fail)
    names = tuple(str(n) for n in d["class_names"])
    if len(names) != int(d["num_classes"]):
        fail("class_names", f"has {len(names)} names for num_classes={d['num_classes']}")
    return ConfigurationPlan(
        name=name, spacing=spacing, patch_size=patch, batch_size=int(d["batch_size"]), window=window,
        num_classes=int(d["num_classes"]), class_names=names, crop=d["crop"],
        crop_margin_mm=triple("crop_margin_mm", float) if "crop_margin_mm" in d else (0.0, 0.0, 0.0),
        normalization=d.get("normalization", "ct_window_zscore"),
        resampling=ResamplingPlan(**d.get("resampling", {})), network=network,
        median_shape=triple("median_shape", int) if "median_shape" in d else (0, 0, 0),
        estimated_memory_gb=float(d.get("estimated_memory_gb", 0.0)),
        orientation=orientation, mirror_axes=tuple(sorted(mirror_axes)), active_contour=active_contour,
    )


def default_active_contour(window: IntensityWindow) -> ActiveContourPlan:
    """The tumour configuration's default active-contour settings: the defaults, in the plan's intensity window."""
    return ActiveContourPlan(window=(window.lower, window.upper))


def _active_contour_from_dict(value: Any, name: str, window: IntensityWindow, fail) -> ActiveContourPlan | None:
    """``active_contour`` of a configuration: absent -> the default for ``tumor`` (None for others); null -> None;
    a dict -> its keys over the defaults (the window defaulting to the plan's)."""
    if value == "default":
        return default_active_contour(window) if name == "tumor" else None
    if value is None:
        return None
    if not isinstance(value, dict):
        fail("active_contour", f"must be a dict of active-contour settings or null, got {type(value).__name__}")
    try:
        return ActiveContourPlan.from_dict({**default_active_contour(window).to_dict(), **value})
    except (TypeError, ValueError) as exc:
        fail("active_contour", str(exc))
