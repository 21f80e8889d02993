"""Dataset fingerprint: what the planner needs to know about a raw dataset, extracted once.

Every training case is checked on the way (:func:`check_training_case`); all unusable cases are reported at once.

Per case (in the canonical orientation the preprocessor uses, see :mod:`smoothseg.dataset.orientation`):
shape, spacing and the stored direction; intensity statistics of the body, the liver region and the
tumour; the liver bounding-box extent in mm; tumour count and volumes; the ground-truth TLVR
(tumour-to-liver-region volume ratio). Per dataset: pooled intensity statistics from a fixed
number of voxels sampled per case and region. Sampling is seeded by the case id, so the
fingerprint is deterministic whatever the number of worker processes.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from smoothseg.atomic import write_json
from smoothseg.dataset.cases import CaseFiles
from smoothseg.dataset.dataset_json import DatasetSpec
from smoothseg.dataset.io import Geometry, read_image
from smoothseg.dataset.orientation import Orientation
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.dataset.verify import Tolerance
from smoothseg.errors import SmoothSegError
from smoothseg.parallel import map_cases

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 5.0, 50.0, 95.0, 99.5)
REGIONS = ("body", "liver", "tumor")
SAMPLES_PER_REGION = 10_000
BODY_THRESHOLD_HU = -500.0
FINGERPRINT_VERSION = 2  # 2: shapes, spacings and boxes in the canonical orientation


def intensity_stats(values: np.ndarray) -> dict[str, Any] | None:
    """Percentiles (0.5, 5, 50, 95, 99.5), mean, std and count of a 1-D sample; None when empty."""
    if values.size == 0:
        return None
    pct = np.percentile(values, PERCENTILES)
    return {"percentiles": {str(p): round(float(v), 3) for p, v in zip(PERCENTILES, pct, strict=True)},
            "mean": round(float(values.mean()), 3), "std": round(float(values.std()), 3), "n": int(values.size)}


def body_mask(image: np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """The patient's body: voxels above ``threshold`` HU, largest connected component, holes filled per slice."""
    mask = image > threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(sizes.argmax())
    return np.stack([ndimage.binary_fill_holes(sl) for sl in mask])


def _sample(values: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    if values.size <= n:
        return values
    return values[rng.choice(values.size, n, replace=False)]


def check_training_case(case: CaseFiles, image: np.ndarray, geometry: Geometry, label: np.ndarray,
                        label_geometry: Geometry, spec: DatasetSpec, tol: Tolerance = Tolerance()) -> list[str]:
    """What makes a training case unusable for planning, cheaply: the label off the image's grid (size, spacing,
    origin, direction beyond ``tol``), label values that ``dataset.json`` does not declare, an empty liver region."""
    problems = []
    if label.shape != image.shape:
        problems.append(f"label {case.label.name} has shape {label.shape}, image {image.shape}")
    differences = geometry.differences(label_geometry, spacing_tol=tol.spacing, origin_tol_mm=tol.origin_mm,
                                       direction_tol=tol.direction)
    if differences:
        problems.append(f"label {case.label.name} is not on the image's grid (image vs label: "
                        f"{'; '.join(differences)})")
    undeclared = sorted(set(np.unique(label).tolist()) - set(spec.label_values))
    if undeclared:
        problems.append(f"label {case.label.name} holds value(s) {undeclared} that dataset.json does not declare "
                        f"(declared: {spec.labels})")
    if not problems and not np.isin(label, spec.task_regions.liver).any():
        problems.append(f"label {case.label.name} has no liver region (values {list(spec.task_regions.liver)}): "
                        "nothing to crop the tumour task to")
    return problems


def case_fingerprint(case: CaseFiles, spec: DatasetSpec) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fingerprint of one training case, plus the intensity samples per region for pooling.

    Raises :class:`SmoothSegError` naming the case and every problem :func:`check_training_case` finds.
    """
    if case.label is None or 0 not in case.images:
        raise SmoothSegError(f"case {case.case_id}: image or label missing; run smoothseg_verify_dataset")
    image, geometry = read_image(case.image(0))
    label, label_geometry = read_image(case.label)
    problems = check_training_case(case, image, geometry, label, label_geometry, spec)
    if problems:
        raise SmoothSegError(f"case {case.case_id}: " + "; ".join(problems))
    orient = Orientation.from_direction(geometry.direction)
    image, label = orient.to_canonical(image), orient.to_canonical(label)
    spacing_zyx = np.asarray(orient.canonical_tuple(geometry.spacing_zyx))
    liver = np.isin(label, spec.task_regions.liver)
    tumour = np.isin(label, spec.task_regions.tumor)
    regions = {"body": body_mask(image), "liver": liver, "tumor": tumour}
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    samples = {name: _sample(image[mask].astype(np.float32), rng, SAMPLES_PER_REGION)
               for name, mask in regions.items()}
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    liver_ml = float(liver.sum()) * voxel_ml
    lesion_labels, n_lesions = ndimage.label(tumour, structure=np.ones((3, 3, 3)))
    lesion_ml = sorted((np.bincount(lesion_labels.ravel())[1:] * voxel_ml).round(3).tolist(), reverse=True)
    if liver.any():
        idx = np.nonzero(liver)
        lo = np.array([i.min() for i in idx])
        hi = np.array([i.max() for i in idx]) + 1
        liver_bbox = {"start": lo.tolist(), "stop": hi.tolist(),
                      "extent_mm": [round(float(v), 2) for v in (hi - lo) * spacing_zyx]}
    else:
        liver_bbox = None
    record = {
        "case_id": case.case_id,
        "shape": list(image.shape),
        "spacing": [float(v) for v in spacing_zyx],
        "direction": list(geometry.direction),
        "intensity": {name: intensity_stats(image[mask].astype(np.float32)) for name, mask in regions.items()},
        "liver_bbox": liver_bbox,
        "liver_volume_ml": round(liver_ml, 3),
        "tumor_count": int(n_lesions),
        "tumor_volumes_ml": lesion_ml,
        "tlvr": round(float(tumour.sum()) / float(liver.sum()), 6) if liver.any() else 0.0,
    }
    return record, samples


def _case_fingerprint_star(args) -> tuple[dict[str, Any], dict[str, np.ndarray]] | str:
    """Worker: the fingerprint, or the case's problem as a message (returned as data, so every case is checked)."""
    try:
        return case_fingerprint(*args)
    except SmoothSegError as exc:
        return str(exc)


def extract_fingerprint(raw: RawDataset, num_processes: int = 1) -> dict[str, Any]:
    """Fingerprint every training case (in parallel) and pool the intensity samples per region."""
    cases = [c for c in raw.training_cases if c.label is not None]
    if not cases:
        raise SmoothSegError(f"{raw.folder}: no labelled training cases to fingerprint")
    jobs = [(c, raw.spec) for c in cases]
    results = map_cases(_case_fingerprint_star, jobs, num_processes, desc="fingerprint")
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        raise SmoothSegError(f"{raw.folder}: {len(failed)} of {len(cases)} training case(s) cannot be planned; "
                             "nothing was written:\n  " + "\n  ".join(failed))
    records = [r for r, _ in results]
    pooled = {name: intensity_stats(np.concatenate([s[name] for _, s in results])) for name in REGIONS}
    return {
        "version": FINGERPRINT_VERSION,
        "dataset": raw.name,
        "task_regions": raw.spec.task_regions.to_dict(),
        "n_cases": len(records),
        "pooled_intensity": pooled,
        "cases": records,
    }


def save_fingerprint(fingerprint: dict[str, Any], path: Path) -> Path:
    return write_json(fingerprint, path)
