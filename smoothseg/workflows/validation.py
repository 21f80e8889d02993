"""Full validation of a trained fold: the whole cascade on the fold's validation cases, then the metrics.

:func:`validate_fold` predicts the validation cases of fold k (from the preprocessed ``splits.json``; images from the
raw dataset's ``imagesTr``) with the liver model *and* the tumour model of fold k. The tumour stage runs on the
liver that the liver model predicted, never on the reference liver, so the numbers are those a user will get.
Outputs go to ``<results>/DatasetXXX/<Trainer>__tumor/fold_k/validation/``:

* ``<case><ending>`` label maps (0 background, 1 liver, 2 tumour), ``<case>_report.json``, ``report.csv`` and
  ``summary.json`` (per-case status), exactly as ``smoothseg_predict`` writes them;
* ``../postprocessing.json`` (in ``fold_k``): the minimum lesion volume chosen on these predictions, which are made
  without it (:mod:`smoothseg.inference.lesion_filter`);
* ``metrics.json``: the evaluation against the reference labels (before that filter), by
  :func:`smoothseg.evaluation.evaluate.evaluate_folders` (per-case metrics, their means and pooled overlap metrics).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.dataset.io import read_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import evaluate_folders
from smoothseg.inference.cascade import CascadePredictor, ModelOptions
from smoothseg.inference.cohort import CohortOptions, run_cohort
from smoothseg.inference.inputs import InputCase
from smoothseg.inference.lesion_filter import candidate_dice, write_postprocessing
from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
from smoothseg.models.store import DEFAULT_CHECKPOINT, DEFAULT_TRAINER, select_models
from smoothseg.paths import find_dataset, preprocessed_root
from smoothseg.planning.splits import load_fold

__all__ = ["choose_postprocessing", "evaluate_predictions", "validate_fold", "validation_cases"]

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"


def validation_cases(dataset: str | int, fold: str) -> list[str]:
    """The validation case ids of ``fold`` in the preprocessed dataset's ``splits.json`` (all cases for ``all``)."""
    return sorted(load_fold(find_dataset(dataset, preprocessed_root()) / "splits.json", fold)[1])


def validate_fold(dataset: str | int, fold: str | int, trainer: str = DEFAULT_TRAINER,
                  checkpoint: str = DEFAULT_CHECKPOINT, models: ModelOptions | None = None, *,
                  num_processes: int = 1, progress: bool = True) -> Path:
    """Predict fold ``fold``'s validation cases with that fold's liver and tumour models, and evaluate them.

    ``models`` says how the models predict; its minimum lesion volume is ignored (the validation predicts without
    it, to choose it). Returns the ``validation`` folder. ``num_processes`` sizes the pre-/post-processing pools and
    the evaluation.
    """
    fold = str(fold)
    pair = select_models(dataset, [fold], checkpoint, trainer)
    ids = validation_cases(pair.dataset, fold)
    raw = RawDataset.find(pair.dataset)
    by_id = {c.case_id: c for c in raw.training_cases}
    missing = [c for c in ids if c not in by_id or 0 not in by_id[c].images or by_id[c].label is None]
    if missing:
        raise SmoothSegError(f"{raw.folder}: validation case(s) without image or label: {', '.join(missing[:10])}")
    cases = [InputCase(c, by_id[c].image(0), raw.spec.file_ending) for c in ids]
    output = pair.task_folder("tumor") / f"fold_{fold}" / "validation"
    logger.info("validating %s fold %s on %d case(s) with the predicted liver -> %s", pair.dataset, fold, len(cases),
                output)
    models = replace(models or ModelOptions(), min_lesion_volume_ml=0.0, progress=False)
    cascade = CascadePredictor.from_models(pair, models)
    table = raw.clinical()
    clinical = ClinicalTLVR(table, cascade.tumor.tlvr_models) if table is not None and cascade.tumor.tlvr_models \
        else None
    workers = num_processes if num_processes > 1 else 0
    options = CohortOptions(num_processes_preprocessing=workers,
                            num_processes_postprocessing=workers, progress=progress)
    summary = run_cohort(cascade, cases, output, options, clinical=clinical)
    if summary.failed:
        logger.warning("validation: %d case(s) failed and are not evaluated:\n%s", len(summary.failed),
                       summary.text())
    done = [c for c, o in zip(cases, summary.cases, strict=True) if o.status != "failed"]
    references = {c.case_id: by_id[c.case_id].label for c in done}
    evaluate_predictions(raw, references, output, num_processes)
    choose_postprocessing(raw, references, output, output.parent, f"validation of fold {fold} (predicted liver)")
    return output


def choose_postprocessing(raw: RawDataset, references: dict[str, Path], prediction_dir: Path, fold_folder: Path,
                          source: str) -> float:
    """Choose the minimum lesion volume on the predictions of ``references``' cases; writes ``postprocessing.json``."""
    per_case = {}
    for case_id, label_path in sorted(references.items()):
        reference, geometry = read_image(label_path)
        prediction, _ = read_image(prediction_dir / f"{case_id}{raw.spec.file_ending}")
        per_case[case_id] = candidate_dice(prediction, np.isin(reference, list(raw.spec.task_regions.tumor)),
                                           geometry.spacing_zyx)
    return write_postprocessing(fold_folder, per_case, source)


def evaluate_predictions(raw: RawDataset, references: dict[str, Path], prediction_dir: Path,
                         num_processes: int = 1) -> dict[str, Any]:
    """Evaluate the predictions of ``references``' cases in ``prediction_dir``; writes ``metrics.json``."""
    with tempfile.TemporaryDirectory(prefix=".reference-", dir=prediction_dir.parent) as tmp:
        for path in references.values():
            _link_or_copy(path, Path(tmp) / path.name)
        return evaluate_folders(Path(tmp), prediction_dir, prediction_dir / METRICS_NAME, dataset=raw.name,
                                clinical_csv=None, num_processes=num_processes)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
