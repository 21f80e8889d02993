"""Preprocessing a whole dataset for one task, in parallel and resumably.

Output per case in ``<preprocessed>/DatasetXXX/<task>/``:

* ``<case>.npy``: float32 network input ``(1, z, y, x)`` (memory-mappable);
* ``<case>_seg.npy``: uint8 task labels ``(z, y, x)``;
* ``<case>_locations.npz``: up to ``MAX_LOCATIONS`` voxel coordinates per foreground class, for
  foreground oversampling (loaded with ``allow_pickle=False``);
* ``<case>.json``: properties to undo every step (original geometry, crop box, shapes), the
  ground-truth TLVR, voxel counts per class, and the hash of the plan that produced it.

Each file is written atomically and the JSON last, so a case counts as done only when its JSON
exists with the current plan's hash. Re-running skips done cases unless ``clean``.
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
from smoothseg.parallel import map_cases
from smoothseg.planning.plans import Plans
from smoothseg.preprocessing.preprocessor import TaskPreprocessor

logger = logging.getLogger(__name__)

MAX_LOCATIONS = 10_000


def case_files(folder: Path, case_id: str) -> dict[str, Path]:
    return {"data": folder / f"{case_id}.npy", "seg": folder / f"{case_id}_seg.npy",
            "locations": folder / f"{case_id}_locations.npz", "properties": folder / f"{case_id}.json"}


def is_done(folder: Path, case_id: str, plan_hash: str) -> bool:
    files = case_files(folder, case_id)
    if not all(p.exists() for p in files.values()):
        return False
    try:
        return json.loads(files["properties"].read_text()).get("plan_hash") == plan_hash
    except (OSError, ValueError):
        return False


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
    })
    files = case_files(folder, case.case_id)
    _save_npy(data, files["data"])
    _save_npy(seg, files["seg"])
    locations = class_locations(seg, range(1, preprocessor.plan.num_classes), zlib.crc32(case.case_id.encode()))
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
        return {int(k.split("_")[1]): npz[k] for k in npz.files}
