"""Full validation of a trained fold: the whole cascade on the fold's validation cases, then the metrics.

:func:`validate_fold` predicts the validation cases of fold k (from the preprocessed ``splits.json``; images from the
raw dataset's ``imagesTr``) with the liver model *and* the tumour model of fold k. The tumour stage runs on the
liver that the liver model predicted, never on the reference liver, so the numbers are those a user will get.
Outputs go to ``<results>/DatasetXXX/<Trainer>__tumor/fold_k/validation/``:

* ``<case><ending>`` label maps (0 background, 1 liver, 2 tumour), ``<case>_report.json``, ``report.csv`` and
  ``summary.json`` (per-case status), exactly as ``smoothseg_predict`` writes them;
* ``../postprocessing.json`` (in ``fold_k``): the post-processing chosen on these predictions, which are made without
  any: whether and how active contours run (:mod:`smoothseg.inference.contour_choice`), then the minimum lesion volume
  (:mod:`smoothseg.inference.lesion_filter`), each with every candidate's validation score;
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
from smoothseg.inference.cascade import CascadePredictor, ModelOptions, active_contour_plan
from smoothseg.inference.cohort import CohortOptions, run_cohort
from smoothseg.inference.contour_choice import candidate_scores, candidates, section
from smoothseg.inference.inputs import InputCase
from smoothseg.inference.lesion_filter import candidate_dice, write_postprocessing
from smoothseg.inference.postprocessing import refine_and_compose
from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
from smoothseg.models.store import DEFAULT_CHECKPOINT, DEFAULT_TRAINER, select_models
from smoothseg.paths import find_dataset, preprocessed_root
from smoothseg.planning.plans import ActiveContourPlan
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
    # predicted without post-processing, which is then chosen on these predictions
    models = replace(models or ModelOptions(), min_lesion_volume_ml=0.0, active_contour="off", progress=False)
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
    images = {c.case_id: c.path for c in done}
    choose_postprocessing(raw, references, images, output, output.parent, active_contour_plan(cascade.tumor.plan),
                          f"validation of fold {fold} (predicted liver)")
    return output


def choose_postprocessing(raw: RawDataset, references: dict[str, Path], images: dict[str, Path], prediction_dir: Path,
                          fold_folder: Path, plan_contours: ActiveContourPlan, source: str) -> float:
    """Choose the post-processing on the predictions of ``references``' cases (made without any): first the active
    contours (:mod:`smoothseg.inference.contour_choice`), then the minimum lesion volume on top of the chosen contours
    (:mod:`smoothseg.inference.lesion_filter`). Writes ``postprocessing.json``; returns the minimum lesion volume."""
    settings = candidates(plan_contours)
    loaded, contour_rows = {}, {}
    for case_id, label_path in sorted(references.items()):
        reference, _ = read_image(label_path)
        image, geometry = read_image(images[case_id])
        prediction, _ = read_image(prediction_dir / f"{case_id}{raw.spec.file_ending}")
        tumour = np.isin(reference, list(raw.spec.task_regions.tumor))
        contour_rows[case_id] = candidate_scores(image, geometry, prediction, tumour, settings)
        loaded[case_id] = (image, geometry, prediction, tumour)
    contours = section(contour_rows, settings)
    chosen = settings[contours["chosen"]]
    per_case = {}
    for case_id, (image, geometry, prediction, tumour) in loaded.items():
        labels = refine_and_compose(image, geometry, prediction, chosen) if chosen is not None else prediction
        per_case[case_id] = candidate_dice(labels, tumour, geometry.spacing_zyx)
    return write_postprocessing(fold_folder, per_case, source, extra={"active_contour": contours})


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
