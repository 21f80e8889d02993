"""Typed plans and their readable JSON form (``plans.json``).

One :class:`ConfigurationPlan` per task: ``liver`` (global view, whole volume, coarse spacing) and
``tumor`` (local view, liver crop, fine spacing). Users may edit ``plans.json`` by hand; loading
validates every field and names the offending key, and the rest of the pipeline reads only what
is written here. All spatial tuples are in array order (z, y, x).
"""

from __future__ import annotations

import hashlib
import json
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
        orientation=orientation, mirror_axes=tuple(sorted(mirror_axes)),
    )
