"""Writing the synthetic demo dataset ``Dataset900_SyntheticLiver`` in the raw (nnU-Net v2) layout.

Case ``i`` is drawn from ``default_rng([seed, i])`` alone, so it is the same whatever ``n_cases``
or the number of worker processes, and the same seed gives byte-identical files. Every fifth case
is tumour-free. The last quarter of the cases form the test split (``imagesTs``/``labelsTs``).
Besides the raw files the folder holds ``clinical.csv`` and ``phantoms.json``, the generator's
ground truth (tumour list, TLVR) for tests and benchmarks; the TLVR is not a clinical column.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smoothseg.atomic import write_json, write_text
from smoothseg.dataset.cases import image_path, label_path
from smoothseg.dataset.dataset_json import ClinicalSpec, DatasetSpec, TaskRegions
from smoothseg.dataset.io import write_image
from smoothseg.errors import SmoothSegError
from smoothseg.parallel import map_cases
from smoothseg.paths import dataset_folder_name, raw_root
from smoothseg.synthetic.clinical import CATEGORICAL, DEFAULT_SIGNAL, FEATURES, clinical_row
from smoothseg.synthetic.phantom import LABELS, SIZES, make_phantom

logger = logging.getLogger(__name__)

DEMO_DATASET_ID = 900
DEMO_DATASET_NAME = "SyntheticLiver"
GENERATOR_VERSION = 1
FILE_ENDING = ".nii.gz"
CASE_PREFIX = "SynLiver"


def case_id(index: int) -> str:
    return f"{CASE_PREFIX}_{index:03d}"


def split_of(index: int, n_cases: int) -> str:
    """``Ts`` for the last quarter of the cases (at least one when there are two or more), else ``Tr``."""
    n_test = max(1, round(n_cases * 0.25)) if n_cases >= 2 else 0
    return "Ts" if index >= n_cases - n_test else "Tr"


def is_tumour_free(index: int) -> bool:
    return index % 5 == 3


def _case_files(folder: Path, index: int, n_cases: int) -> tuple[Path, Path]:
    split = split_of(index, n_cases)
    return (image_path(folder, split, case_id(index), FILE_ENDING),
            label_path(folder, split, case_id(index), FILE_ENDING))


def generate_case(folder: Path, index: int, n_cases: int, seed: int, size: str,
                  clinical_signal: float = DEFAULT_SIGNAL) -> dict[str, Any]:
    """Render case ``index`` and write its image and label; return its truth and clinical row."""
    phantom = make_phantom(np.random.default_rng([seed, index]), size, tumour_free=is_tumour_free(index))
    image_file, label_file = _case_files(folder, index, n_cases)
    write_image(phantom.image, phantom.geometry, image_file)
    write_image(phantom.label, phantom.geometry, label_file)
    clinical = clinical_row(np.random.default_rng([seed, index, 1]), phantom.info["tlvr"],
                            phantom.info["max_tumour_diameter_mm"], clinical_signal,
                            np.random.default_rng([seed, index, 2]))
    return {"case_id": case_id(index), "split": split_of(index, n_cases), "truth": phantom.info,
            "geometry": phantom.geometry.to_dict(), "clinical": clinical}


def _generate_star(args) -> dict[str, Any]:
    return generate_case(*args)


def demo_dataset_spec(n_train: int, config: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec(
        channel_names={"0": "CT"},
        labels=dict(LABELS),
        num_training=n_train,
        file_ending=FILE_ENDING,
        task_regions=TaskRegions(liver=(1, 2, 3), tumor=(2,)),
        clinical=ClinicalSpec("clinical.csv", "case_id", FEATURES, CATEGORICAL),
        name=DEMO_DATASET_NAME,
        extra={"description": "Synthetic abdominal CT phantoms with liver, portal veins and tumours (smoothseg).",
               "synthetic": config},
    )


def _clinical_csv(records: list[dict[str, Any]]) -> str:
    rows = [{"case_id": r["case_id"], **r["clinical"]} for r in records]
    frame = pd.DataFrame(rows, columns=["case_id", *FEATURES])
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def make_demo_dataset(raw: Path | None = None, dataset_id: int = DEMO_DATASET_ID, n_cases: int = 24, seed: int = 0,
                      size: str = "small", num_processes: int = 1, overwrite: bool = False,
                      clinical_signal: float = DEFAULT_SIGNAL) -> Path:
    """Write (or complete) the synthetic dataset and return its folder. ``clinical_signal``: how much the clinical
    variables know about the tumour burden (:func:`~smoothseg.synthetic.clinical.clinical_row`; 1 by default).

    An existing dataset made with the same settings is kept: only missing case files are written.
    One made with other settings is refused unless ``overwrite``.
    """
    if size not in SIZES:
        raise SmoothSegError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    if n_cases < 2:
        raise SmoothSegError(f"need at least 2 cases (one to train, one to test), got {n_cases}")
    folder = Path(raw or raw_root()) / dataset_folder_name(dataset_id, DEMO_DATASET_NAME)
    if not clinical_signal >= 0:
        raise SmoothSegError(f"--clinical-signal must be >= 0, got {clinical_signal}")
    config = {"generator_version": GENERATOR_VERSION, "seed": seed, "size": size, "n_cases": n_cases}
    if clinical_signal != DEFAULT_SIGNAL:  # the default's settings stay as they were (existing datasets still match)
        config["clinical_signal"] = clinical_signal
    dataset_json = folder / "dataset.json"
    if dataset_json.exists() and not overwrite:
        try:
            existing = DatasetSpec.from_file(dataset_json).extra.get("synthetic")
        except SmoothSegError:
            existing = None
        if existing != config:
            raise SmoothSegError(f"{folder} already holds a dataset made with other settings ({existing}); "
                                 "pass --overwrite to replace it")
    if overwrite and folder.exists():
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            for f in (folder / sub).glob(f"*{FILE_ENDING}") if (folder / sub).is_dir() else []:
                f.unlink()

    done = load_truth(folder) if dataset_json.exists() and not overwrite else {}
    todo = [i for i in range(n_cases)
            if case_id(i) not in done or not all(p.exists() for p in _case_files(folder, i, n_cases))]
    if not todo:
        logger.info("%s is complete (%d cases, seed %d, size %s); nothing to do", folder, n_cases, seed, size)
        return folder
    logger.info("writing %d of %d synthetic cases (size %s, seed %d) to %s", len(todo), n_cases, size, seed, folder)
    jobs = [(folder, i, n_cases, seed, size, clinical_signal) for i in todo]
    results = map_cases(_generate_star, jobs, num_processes, desc="phantoms")
    done.update({r["case_id"]: r for r in results})
    records = [done[case_id(i)] for i in range(n_cases)]

    write_text(_clinical_csv(records), folder / "clinical.csv")
    write_json({"config": config, "cases": records}, folder / "phantoms.json")
    n_train = sum(split_of(i, n_cases) == "Tr" for i in range(n_cases))
    demo_dataset_spec(n_train, config).save(dataset_json)  # written last: its presence marks completion
    logger.info("synthetic dataset ready: %s (%d training, %d test cases)", folder, n_train, n_cases - n_train)
    return folder


def load_truth(folder: Path) -> dict[str, dict[str, Any]]:
    """The generator's per-case ground truth (tumours, TLVR, geometry) from ``phantoms.json``; {} if absent."""
    path = Path(folder) / "phantoms.json"
    if not path.exists():
        return {}
    try:
        return {r["case_id"]: r for r in json.loads(path.read_text())["cases"]}
    except (ValueError, KeyError, TypeError):
        return {}
