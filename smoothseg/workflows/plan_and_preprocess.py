"""``plan_and_preprocess``: fingerprint -> plans -> splits -> preprocessed data, for one dataset.

Outputs in ``<preprocessed root>/DatasetXXX_Name/``: ``fingerprint.json``, ``plans.json``,
``splits.json`` and ``liver/`` and ``tumor/`` with the preprocessed cases. An existing plans.json is
kept (it may have been edited by hand) unless ``overwrite_plans``; preprocessing always follows the
plans file on disk.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from smoothseg.atomic import ensure_writable_folder, remove_stale_temp
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.dataset.verify import VerificationReport, verify_dataset
from smoothseg.errors import SmoothSegError
from smoothseg.paths import preprocessed_root
from smoothseg.planning.fingerprint import FINGERPRINT_VERSION, extract_fingerprint, save_fingerprint
from smoothseg.planning.planner import plan, summarize
from smoothseg.planning.plans import TASKS, Plans
from smoothseg.planning.splits import make_splits, save_splits, split_summary
from smoothseg.preprocessing.dataset_preprocessing import preprocess_task

logger = logging.getLogger(__name__)


class DatasetIntegrityError(SmoothSegError):
    """The dataset failed verification; nothing was written."""

    def __init__(self, report: VerificationReport):
        self.report = report
        super().__init__(f"dataset verification failed, nothing written:\n{report.summary()}")


@dataclass
class PlanAndPreprocessResult:
    folder: Path
    plans: Plans
    preprocessed: dict[str, list[str]] = field(default_factory=dict)


def _load_or_extract_fingerprint(raw: RawDataset, folder: Path, num_processes: int, clean: bool) -> dict:
    path = folder / "fingerprint.json"
    ids = sorted(c.case_id for c in raw.training_cases if c.label is not None)
    if path.exists() and not clean:
        try:
            existing = json.loads(path.read_text())
            if existing.get("version") == FINGERPRINT_VERSION and sorted(
                    c["case_id"] for c in existing["cases"]) == ids:
                logger.info("reusing %s (same %d training cases)", path, len(ids))
                return existing
        except (ValueError, KeyError):
            pass
    fingerprint = extract_fingerprint(raw, num_processes)
    ensure_writable_folder(folder, "preprocessed dataset folder")
    remove_stale_temp(folder)
    save_fingerprint(fingerprint, path)
    logger.info("fingerprint written: %s", path)
    return fingerprint


def plan_and_preprocess(dataset: str | int, tasks: tuple[str, ...] = TASKS, num_processes: int = 1,
                        verify: bool = False, preprocess: bool = True, clean: bool = False,
                        gpu_memory_target_gb: float = 8.0, split_scheme: str = "kfold",
                        overwrite_plans: bool = False, output_root: Path | None = None) -> PlanAndPreprocessResult:
    """Fingerprint, plan and preprocess ``dataset`` (an id or a raw dataset folder)."""
    raw = RawDataset(dataset) if isinstance(dataset, Path) else RawDataset.find(dataset)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SmoothSegError(f"unknown configuration(s) {unknown}; choose from {', '.join(TASKS)}")
    if verify:
        report = verify_dataset(raw.folder, num_processes=num_processes)
        if not report.ok:
            raise DatasetIntegrityError(report)
        logger.info("dataset verified: %s", report.summary().splitlines()[0])
    folder = Path(output_root or preprocessed_root()) / raw.name
    fingerprint = _load_or_extract_fingerprint(raw, folder, num_processes, clean)  # checks every case first
    plans_path = folder / "plans.json"
    fresh = plan(fingerprint, gpu_memory_target_gb)
    if plans_path.exists() and not overwrite_plans:
        plans = Plans.load(plans_path)
        if plans.to_dict() != fresh.to_dict():
            logger.warning("%s differs from a fresh plan (edited by hand?); using it as it is. Pass "
                           "--overwrite_plans to replace it.", plans_path)
    else:
        plans = fresh
        plans.save(plans_path)
    logger.info("%s", summarize(plans))

    ids = [c.case_id for c in raw.training_cases if c.label is not None]
    splits_path = folder / "splits.json"
    existing_splits = json.loads(splits_path.read_text()) if splits_path.exists() else None
    if existing_splits is None or existing_splits.get("scheme") != split_scheme or clean:
        splits = make_splits(ids, split_scheme)
        save_splits(splits, splits_path)
    else:
        splits = existing_splits
    logger.info("%s", split_summary(splits))

    result = PlanAndPreprocessResult(folder, plans)
    if preprocess:
        cases = [c for c in raw.training_cases if c.label is not None]
        for task in tasks:
            result.preprocessed[task] = preprocess_task(cases, plans, task, folder / task, num_processes, clean)
            logger.info("%s: %d case(s) preprocessed into %s", task, len(result.preprocessed[task]), folder / task)
    return result
