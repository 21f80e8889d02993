"""Preprocessing a whole dataset for one task, in parallel and resumably.

Output per case in ``<preprocessed>/DatasetXXX/<task>/``:

* ``<case>.npy``: float32 network input ``(1, z, y, x)`` (memory-mappable);
* ``<case>_seg.npy``: uint8 task labels ``(z, y, x)``;
* ``<case>_locations.npz``: up to ``MAX_LOCATIONS`` voxel coordinates per foreground class, for
  foreground oversampling, and, where the task has a tumour class, the reference lesions (26-connected tumour
  components) for lesion-balanced sampling: up to ``MAX_LESION_LOCATIONS`` coordinates per lesion, concatenated
  (``lesion_coords``), where each lesion's rows start (``lesion_offsets``, n + 1 entries) and its size in voxels
  (``lesion_voxels``) (loaded with ``allow_pickle=False``; :func:`load_locations`, :func:`load_lesions`);
* ``<case>_sdf.npy`` (tasks that crop to the liver): float32 signed distance in mm to the surface of the case's liver
  region on the preprocessed grid (negative inside; beyond the case counts as outside the liver), clipped to
  ``+-SDF_CLIP_MM``: the training loader moves a patch's liver mask by thresholding its crop of it
  (:func:`load_liver_sdf`) instead of a distance transform per patch;
* ``<case>.json``: properties to undo every step (original geometry, crop box, shapes), the
  ground-truth TLVR, voxel counts per class, the mean and standard deviation of the normalised intensity per
  foreground class (``intensity_stats``, for lesion synthesis), and the hash of the plan that produced it.

Each file is written atomically and the JSON last, so a case counts as done only when its JSON
exists with the current plan's hash and ``PREPROCESSING_VERSION`` (a folder written by an older smoothseg, without
the lesion table, is preprocessed again). Re-running skips done cases unless ``clean``.
"""

from __future__ import annotations

import json
import logging
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.atomic import atomic_path, write_json
from smoothseg.dataset.cases import CaseFiles
from smoothseg.dataset.io import read_image
from smoothseg.labels import TUMOR
from smoothseg.masks.components import connected_lesions
from smoothseg.masks.measures import signed_distance_mm
from smoothseg.parallel import map_cases
from smoothseg.planning.plans import Plans
from smoothseg.preprocessing.preprocessor import TaskPreprocessor

logger = logging.getLogger(__name__)

MAX_LOCATIONS = 10_000
MAX_LESION_LOCATIONS = 1_000
#: Raised when the files of a case change; cases written with another version are preprocessed again.
PREPROCESSING_VERSION = 4
#: The stored liver distances are clipped to +-this (mm); a mask move as large falls back to a distance transform.
SDF_CLIP_MM = 60.0


def case_files(folder: Path, case_id: str) -> dict[str, Path]:
    return {"data": folder / f"{case_id}.npy", "seg": folder / f"{case_id}_seg.npy",
            "locations": folder / f"{case_id}_locations.npz", "properties": folder / f"{case_id}.json"}


def sdf_file(folder: Path, case_id: str) -> Path:
    """The liver signed-distance file of a case (written for tasks that crop to the liver)."""
    return Path(folder) / f"{case_id}_sdf.npy"


def liver_sdf(seg: np.ndarray, spacing) -> np.ndarray:
    """float32 mm to the surface of the liver region (``seg > 0``), negative inside, clipped to ``+-SDF_CLIP_MM``;
    beyond the array counts as outside the liver (as the loader's crops pad with background)."""
    distance = signed_distance_mm(seg > 0, spacing, outside_is_background=True)
    # float32, not float16: float16's rounding (8 um at 10 mm) flipped whole mask faces in 0.45 % of the demo's training
    # batches, which was enough to send a training run elsewhere; float32's is ~1e-6 mm
    return np.clip(distance, -SDF_CLIP_MM, SDF_CLIP_MM).astype(np.float32)


def load_liver_sdf(folder: Path, case_id: str) -> np.ndarray | None:
    """The case's stored liver distances (memory-mapped), or None where the folder has none (another task, or an
    older preprocessing: the loader then computes distance transforms per patch)."""
    path = sdf_file(folder, case_id)
    return np.load(path, mmap_mode="r") if path.is_file() else None


def is_done(folder: Path, case_id: str, plan_hash: str) -> bool:
    files = case_files(folder, case_id)
    if not all(p.exists() for p in files.values()):
        return False
    try:
        properties = json.loads(files["properties"].read_text())
    except (OSError, ValueError):
        return False
    return properties.get("plan_hash") == plan_hash and properties.get("preprocessing_version") == \
        PREPROCESSING_VERSION


def class_locations(seg: np.ndarray, classes, seed: int) -> dict[str, np.ndarray]:
    """Up to ``MAX_LOCATIONS`` (z, y, x) coordinates per class, sampled with a fixed seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        coords = np.argwhere(seg == c).astype(np.int32)
        if len(coords) > MAX_LOCATIONS:
            coords = coords[np.sort(rng.choice(len(coords), MAX_LOCATIONS, replace=False))]
        out[f"class_{c}"] = coords
    return out


def intensity_stats(image: np.ndarray, seg: np.ndarray) -> dict[str, list[float] | None]:
    """``[mean, std]`` of the normalised intensity per foreground class (``liver``: class 1, ``tumour``: class 2;
    None where the case has no such voxel), for the lesion synthesis of training."""
    out: dict[str, list[float] | None] = {}
    for name, c in (("liver", 1), ("tumour", TUMOR)):
        values = image[seg == c]
        out[name] = [round(float(values.mean()), 5), round(float(values.std()), 5)] if values.size else None
    return out


def lesion_locations(seg: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The reference lesions of a task label map (26-connected components of ``TUMOR``): up to
    ``MAX_LESION_LOCATIONS`` (z, y, x) coordinates of each, concatenated in ``lesion_coords``; lesion i's rows are
    ``lesion_offsets[i]:lesion_offsets[i + 1]``; ``lesion_voxels[i]`` is its size in voxels."""
    rng = np.random.default_rng(seed)
    components, n = connected_lesions(seg == TUMOR)
    coords, offsets, sizes = [], [0], []
    if n:
        # one pass over the tumour voxels, grouped by lesion id (argwhere is in C order, so each group stays sorted)
        voxels = np.argwhere(components > 0).astype(np.int32)
        ids = components[tuple(voxels.T)]
        order = np.argsort(ids, kind="stable")
        voxels, ids = voxels[order], ids[order]
        bounds = np.searchsorted(ids, np.arange(1, n + 2))
        for i in range(n):
            lesion = voxels[bounds[i]:bounds[i + 1]]
            sizes.append(len(lesion))
            if len(lesion) > MAX_LESION_LOCATIONS:
                lesion = lesion[np.sort(rng.choice(len(lesion), MAX_LESION_LOCATIONS, replace=False))]
            coords.append(lesion)
            offsets.append(offsets[-1] + len(lesion))
    return {"lesion_coords": np.concatenate(coords) if coords else np.zeros((0, 3), np.int32),
            "lesion_offsets": np.asarray(offsets, dtype=np.int64), "lesion_voxels": np.asarray(sizes, np.int64)}


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))


def preprocess_case(case: CaseFiles, preprocessor: TaskPreprocessor, folder: Path, plan_hash: str) -> dict[str, Any]:
    """Preprocess one training case and write its four files; return its properties."""
    image, geometry = read_image(case.image(0))
    label, _ = read_image(case.label)
    data, seg, properties = preprocessor.preprocess(image, geometry, label=label)
    raw_liver = np.isin(label, preprocessor.liver_labels)
    raw_tumour = np.isin(label, preprocessor.tumor_labels)
    counts = np.bincount(seg.ravel(), minlength=preprocessor.plan.num_classes)
    properties.update({
        "case_id": case.case_id,
        "plan_hash": plan_hash,
        "tlvr": round(float(raw_tumour.sum()) / float(raw_liver.sum()), 6) if raw_liver.any() else 0.0,
        "class_voxels": [int(v) for v in counts],
        "liver_voxels": int(counts[1:].sum()),
        "preprocessing_version": PREPROCESSING_VERSION,
        "intensity_stats": intensity_stats(data[0], seg),
    })
    files = case_files(folder, case.case_id)
    _save_npy(data, files["data"])
    _save_npy(seg, files["seg"])
    if preprocessor.plan.crop == "liver":
        _save_npy(liver_sdf(seg, properties["spacing"]), sdf_file(folder, case.case_id))
    seed = zlib.crc32(case.case_id.encode())
    locations = class_locations(seg, range(1, preprocessor.plan.num_classes), seed)
    if preprocessor.plan.num_classes > TUMOR:
        locations.update(lesion_locations(seg, seed))
    with atomic_path(files["locations"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **locations)
    write_json(properties, files["properties"])
    return properties


def _preprocess_star(args) -> str:
    case, preprocessor, folder, plan_hash = args
    preprocess_case(case, preprocessor, folder, plan_hash)
    return case.case_id


def preprocess_task(cases: list[CaseFiles], plans: Plans, task: str, folder: Path, num_processes: int = 1,
                    clean: bool = False) -> list[str]:
    """Preprocess every case for ``task`` into ``folder``; return the ids processed now (done ones skipped)."""
    folder = Path(folder)
    if clean and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preprocessor = TaskPreprocessor.from_plans(plans, task)
    plan_hash = plans[task].content_hash()
    todo = [c for c in cases if not is_done(folder, c.case_id, plan_hash)]
    skipped = len(cases) - len(todo)
    if skipped:
        logger.info("%s: %d case(s) already preprocessed with this plan, skipped", task, skipped)
    if not todo:
        return []
    jobs = [(c, preprocessor, folder, plan_hash) for c in todo]
    return map_cases(_preprocess_star, jobs, num_processes, desc=f"preprocess {task}")


def load_case(folder: Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A preprocessed case: data ``(1, z, y, x)`` and labels (memory-mapped by default), and its properties."""
    files = case_files(Path(folder), case_id)
    mode = "r" if mmap else None
    data = np.load(files["data"], mmap_mode=mode)
    seg = np.load(files["seg"], mmap_mode=mode)
    return data, seg, json.loads(files["properties"].read_text())


def load_locations(folder: Path, case_id: str) -> dict[int, np.ndarray]:
    with np.load(case_files(Path(folder), case_id)["locations"], allow_pickle=False) as npz:
        return {int(k.split("_")[1]): npz[k] for k in npz.files if k.startswith("class_")}


def load_lesions(folder: Path, case_id: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The stored coordinates of each reference lesion of a case and the lesions' sizes in voxels (see
    :func:`lesion_locations`); empty when the case has none or its task has no tumour class."""
    with np.load(case_files(Path(folder), case_id)["locations"], allow_pickle=False) as npz:
        if "lesion_offsets" not in npz.files:
            return [], np.zeros(0, np.int64)
        coords, offsets, sizes = npz["lesion_coords"], npz["lesion_offsets"], npz["lesion_voxels"]
    return [coords[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)], sizes
