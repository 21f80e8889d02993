"""Full validation of a trained fold: the whole cascade on the fold's validation cases, then the metrics.

:func:`validate_fold` predicts the validation cases of fold k (from the preprocessed ``splits.json``; images from the
raw dataset's ``imagesTr``) with the liver model *and* the tumour model of fold k. The tumour stage runs on the
liver that the liver model predicted, never on the reference liver, so the numbers are those a user will get.
Outputs go to ``<results>/DatasetXXX/<Trainer>__tumor/fold_k/validation/``:

* ``<case><ending>`` label maps (0 background, 1 liver, 2 tumour; argmax), ``<case>.npz`` tumour probability maps,
  ``<case>_report.json``, ``report.csv`` and ``summary.json`` (per-case status), as ``smoothseg_predict
  --save_probabilities`` writes them;
* ``../postprocessing.json`` (in ``fold_k``): the post-processing chosen on these predictions, which are made without
  any: the tumour operating point, a voxel threshold, a lesion confidence and a minimum lesion volume chosen for
  lesion detection (:mod:`smoothseg.inference.operating_point`, with its FROC table; ``froc.png`` here), then whether
  and how active contours run at that point (:mod:`smoothseg.inference.contour_choice`), each with every candidate's
  validation score;
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

from smoothseg.atomic import json_safe
from smoothseg.dataset.io import read_image
from smoothseg.dataset.raw_dataset import RawDataset
from smoothseg.errors import SmoothSegError
from smoothseg.evaluation.evaluate import evaluate_folders
from smoothseg.evaluation.froc import candidate_rows, plot_froc
from smoothseg.inference.cascade import CascadePredictor, ModelOptions, active_contour_plan
from smoothseg.inference.cohort import CohortOptions, run_cohort
from smoothseg.inference.contour_choice import candidate_scores, candidates, section
from smoothseg.inference.inputs import InputCase
from smoothseg.inference.lesion_filter import candidate_dice, write_postprocessing
from smoothseg.inference.operating_point import (
    ARGMAX,
    FORMAT,
    MAX_FP_PER_TUMOUR_FREE,
    OperatingPoint,
    choose_operating_point,
    objective_of,
    parse_key,
    tumour_at,
)
from smoothseg.inference.postprocessing import compose_labels, refine_and_compose
from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
from smoothseg.models.store import DEFAULT_CHECKPOINT, DEFAULT_TRAINER, select_models
from smoothseg.paths import find_dataset, preprocessed_root
from smoothseg.planning.plans import ActiveContourPlan
from smoothseg.planning.splits import load_fold

__all__ = ["choose_postprocessing", "evaluate_predictions", "validate_fold", "validation_cases"]

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
FROC_PLOT = "froc.png"


def validation_cases(dataset: str | int, fold: str) -> list[str]:
    """The validation case ids of ``fold`` in the preprocessed dataset's ``splits.json`` (all cases for ``all``)."""
    return sorted(load_fold(find_dataset(dataset, preprocessed_root()) / "splits.json", fold)[1])


def validate_fold(dataset: str | int, fold: str | int, trainer: str = DEFAULT_TRAINER,
                  checkpoint: str = DEFAULT_CHECKPOINT, models: ModelOptions | None = None, *,
                  num_processes: int = 1, progress: bool = True, objective: str = "f1") -> Path:
    """Predict fold ``fold``'s validation cases with that fold's liver and tumour models, and evaluate them.

    ``models`` says how the models predict; its minimum lesion volume is ignored (the validation predicts without
    it, to choose it), and so are its tumour threshold (argmax; the probabilities are saved) and active contours (off).
    ``objective`` is what the operating point is chosen for (``f1`` or ``dice``, :func:`choose_postprocessing`).
    Returns the ``validation`` folder. ``num_processes`` sizes the pre-/post-processing pools and the evaluation.
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
    models = replace(models or ModelOptions(), min_lesion_volume_ml=0.0, active_contour="off", progress=False,
                     tumor_threshold=ARGMAX, min_lesion_confidence=0.0, save_probabilities=True)
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
                          f"validation of fold {fold} (predicted liver)", objective)
    return output


def choose_postprocessing(raw: RawDataset, references: dict[str, Path], images: dict[str, Path], prediction_dir: Path,
                          fold_folder: Path, plan_contours: ActiveContourPlan, source: str,
                          objective: str = "f1") -> float:
    """Choose the post-processing on the predictions of ``references``' cases (made without any, with their tumour
    probability maps ``<case>.npz`` where present): first the tumour operating point, a voxel threshold, a minimum
    lesion confidence and a minimum lesion volume, for ``objective`` (:mod:`smoothseg.inference.operating_point`;
    FROC table and plot), then
    the active contours on the label maps at that threshold (:mod:`smoothseg.inference.contour_choice`). Writes
    ``postprocessing.json`` and ``froc.png``; returns the minimum lesion volume."""
    objective = objective_of(objective)
    loaded, rows = {}, {}
    for case_id, label_path in sorted(references.items()):
        reference, _ = read_image(label_path)
        image, geometry = read_image(images[case_id])
        prediction, _ = read_image(prediction_dir / f"{case_id}{raw.spec.file_ending}")
        probability = _probability(prediction_dir / f"{case_id}.npz", prediction.shape)
        tumour = np.isin(reference, list(raw.spec.task_regions.tumor))
        rows[case_id] = candidate_rows(prediction, probability, tumour, geometry.spacing_zyx)
        loaded[case_id] = (image, geometry, prediction, probability, tumour)
    best, table = choose_operating_point(rows, objective)
    point = parse_key(best["key"]) if best is not None else OperatingPoint()
    plot_froc(table, prediction_dir / FROC_PLOT, f"FROC, {source}")
    settings = candidates(plan_contours)
    at_threshold, contour_rows = {}, {}
    for case_id, (image, geometry, prediction, probability, tumour) in loaded.items():
        labels = compose_labels(prediction > 0, tumour_at(prediction, probability, point))
        contour_rows[case_id] = candidate_scores(image, geometry, labels, tumour, settings)
        at_threshold[case_id] = labels
    contours = section(contour_rows, settings)
    chosen = settings[contours["chosen"]]
    per_case = {}
    for case_id, (image, geometry, _, _, tumour) in loaded.items():
        labels = at_threshold[case_id]
        labels = refine_and_compose(image, geometry, labels, chosen) if chosen is not None else labels
        per_case[case_id] = candidate_dice(labels, tumour, geometry.spacing_zyx)
    operating_point = {"format": FORMAT, "objective": objective, "max_fp_per_tumour_free": MAX_FP_PER_TUMOUR_FREE,
                       "tumor_threshold": ARGMAX if point.threshold is None else point.threshold,
                       "min_lesion_confidence": point.confidence, "min_lesion_volume_ml": point.min_volume_ml,
                       "chosen": best, "froc": table, "per_case": rows}
    return write_postprocessing(fold_folder, per_case, source, extra={"active_contour": contours},
                                operating_point=json_safe(operating_point))


def _probability(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The tumour probability map written with a validation prediction (None when there is none)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        probability = saved["tumor_probability"].astype(np.float32)
    if probability.shape != tuple(shape):
        raise SmoothSegError(f"{path}: probability map of shape {probability.shape}, label map {tuple(shape)}")
    return probability


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
