"""Prediction of a cohort: many cases through one :class:`~smoothseg.inference.cascade.CascadePredictor`.

:func:`run_cohort` processes every case independently: a failing case (unreadable, truncated, 2D, NaN...) is
recorded in ``summary.json`` with a message naming the file, and the others finish. Reading and preprocessing of the
next cases and the active contours + writing of finished ones run in small process pools
(:mod:`smoothseg.inference.cohort_workers`, ``num_processes_preprocessing`` / ``num_processes_postprocessing``) with
at most that many cases in flight each, so memory stays bounded; the networks run in the main process.
:func:`predict` is ``smoothseg_predict``: select the models, find the cases, run them.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from smoothseg.atomic import ensure_writable_folder, remove_stale_temp, write_json
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import CascadePredictor, ModelOptions
from smoothseg.inference.cohort_workers import (
    FinishJob,
    LoadJob,
    Outcome,
    WorkerStage,
    failure_message,
    finish_case,
    load_case,
)
from smoothseg.inference.inputs import (
    InputCase,
    check_output_format,
    find_input_cases,
    normalise_ending,
    select_part,
)
from smoothseg.inference.report import read_case_reports, write_cohort_report
from smoothseg.inference.writers import write_tumour_probability
from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
from smoothseg.logging_setup import progress_bar
from smoothseg.models.store import DEFAULT_CHECKPOINT, DEFAULT_TRAINER, ModelPair, select_models

__all__ = ["CaseOutcome", "CohortOptions", "PredictionSummary", "predict", "run_cohort"]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
REPORT_CSV = "report.csv"


@dataclass
class CohortOptions:
    """How a cohort is run (``smoothseg_predict``'s cohort flags); how the models predict is
    :class:`~smoothseg.inference.cascade.ModelOptions`."""

    output_format: str | None = None
    continue_prediction: bool = False  # skip cases whose outputs this very model already wrote (nnU-Net's --continue)
    num_processes_preprocessing: int = 2
    num_processes_postprocessing: int = 2
    num_parts: int = 1
    part_id: int = 0
    clinical_csv: Path | None = None
    progress: bool = True  # a progress bar over the cases (drawn on a terminal only)
    allow_non_ct: bool = False  # read DICOM series of another modality than CT (refused by default)
    resample_irregular: bool = False  # resample DICOM series with gaps or shear instead of refusing them


@dataclass
class CaseOutcome:
    """What happened to one case: ``ok``, ``skipped`` (outputs existed) or ``failed`` (with the message)."""

    case_id: str
    input: str
    output: str
    status: str
    message: str = ""
    liver_found: bool | None = None
    lesion_count: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class PredictionSummary:
    """The outcomes of a cohort run, in case order."""

    cases: list[CaseOutcome]
    output_dir: Path | None = None

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cases)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [c for c in self.cases if c.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"n_cases": len(self.cases), "n_ok": self.count("ok"), "n_skipped": self.count("skipped"),
                "n_failed": self.count("failed"), "cases": [asdict(c) for c in self.cases]}

    def text(self) -> str:
        lines = [f"{len(self.cases)} case(s): {self.count('ok')} ok, {self.count('skipped')} skipped (outputs "
                 f"existed), {self.count('failed')} failed"]
        lines += [f"  FAILED {c.case_id}: {c.message}" for c in self.failed]
        return "\n".join(lines)


def output_paths(output_dir: Path, case: InputCase, ending: str | None) -> tuple[Path, Path]:
    """The label map and the report of ``case`` in ``output_dir`` (``ending`` None: the input's ending)."""
    return output_dir / f"{case.case_id}{ending or case.ending}", output_dir / f"{case.case_id}_report.json"


def network_job(cascade: CascadePredictor, clinical: ClinicalTLVR | None, case: InputCase, loaded: tuple,
                output: Path, report_path: Path) -> tuple[FinishJob, dict[str, float]]:
    """The networks on a case that :func:`~smoothseg.inference.cohort_workers.load_case` read: the post-processing
    job to finish it, and the seconds so far. Input warnings are logged here and go into the report."""
    image, geometry, prepared, load_seconds, warnings = loaded
    for warning in warnings:
        logger.warning("%s: %s", case.path, warning)
    # the probability also gives each reported lesion its confidence
    outputs = cascade.network_outputs(image, geometry, prepared, tumour_probability=True)
    labels, timings = outputs.labels, outputs.timings
    if cascade.save_probabilities:
        write_tumour_probability(outputs.tumour_probability, geometry, output.parent / f"{case.case_id}.npz")
    tlvr = clinical.predict(case.case_id) if clinical is not None else None
    extra = {"input": str(case.path), "output": str(output), "model": cascade.model_info, "input_warnings": warnings}
    return (FinishJob(case, image, geometry, labels, cascade.active_contour_params, output, report_path, tlvr, extra,
                      cascade.min_lesion_volume_ml, outputs.tumour_probability),
            {"read_preprocess": load_seconds, **timings})


def predict_case_files(cascade: CascadePredictor, clinical: ClinicalTLVR | None, case: InputCase, output_dir: Path,
                       ending: str | None, on_stage: Callable[[str, float], None] | None = None) -> CaseOutcome:
    """One case, start to end, in this process: read, networks, post-processing, atomic writes. Never raises: a
    failure is the outcome's message (for runners that fan cases out, e.g. :mod:`smoothseg.inference.dask_cohort`).
    ``on_stage(stage, fraction done)`` hears of each step as it starts (the serve worker's progress)."""
    def stage(name: str, fraction: float) -> None:
        if on_stage is not None:
            on_stage(name, fraction)

    output, report_path = output_paths(output_dir, case, ending)
    stage("reading the image", 0.02)
    loaded = load_case(LoadJob(case, cascade.liver.preprocessor))
    if not loaded.ok:
        return CaseOutcome(case.case_id, str(case.path), str(output), "failed", loaded.message)
    try:
        stage("liver and tumour networks", 0.1)
        finish, timings = network_job(cascade, clinical, case, loaded.value, output, report_path)
    except Exception as exc:  # noqa: BLE001 - the case fails, not the runner
        return CaseOutcome(case.case_id, str(case.path), str(output), "failed", failure_message(exc, case.path))
    stage("post-processing and writing", 0.8)
    finished = finish_case(finish)
    if not finished.ok:
        return CaseOutcome(case.case_id, str(case.path), str(output), "failed", finished.message)
    liver_found, lesion_count, more = finished.value
    timings.update(more)
    return CaseOutcome(case.case_id, str(case.path), str(output), "ok", "" if liver_found else "no liver found",
                       liver_found=liver_found, lesion_count=lesion_count,
                       timings_s={k: round(v, 3) for k, v in timings.items()})


def cases_to_predict(cases: Sequence[InputCase], output_dir: Path, ending: str | None, options: CohortOptions,
                     current_model_id: str | None) -> tuple[list[InputCase], list[InputCase]]:
    """``(todo, skipped)``: every case, unless ``options.continue_prediction`` skips those whose outputs this very
    model (``current_model_id``) wrote; outputs of another model are redone."""
    check_output_format(cases, ending)
    todo, skipped, stale = [], [], []
    for case in cases:
        output, report = output_paths(output_dir, case, ending)
        if output.resolve() == case.path.resolve():
            raise SmoothSegError(f"{output}: the label map would overwrite its input image; choose another -o")
        if options.continue_prediction and output.exists() and report.exists():
            if _model_id_of(report) == current_model_id:
                skipped.append(case)
                continue
            stale.append(case.case_id)
        todo.append(case)
    if skipped:
        logger.info("%d case(s) already predicted by this model in %s are skipped (--continue)", len(skipped),
                    output_dir)
    if stale:
        logger.info("%d case(s) in %s were predicted by another model and are redone: %s", len(stale), output_dir,
                    ", ".join(stale[:10]))
    return todo, skipped


def skipped_outcome(case: InputCase, output_dir: Path, ending: str | None) -> CaseOutcome:
    return CaseOutcome(case.case_id, str(case.path), str(output_paths(output_dir, case, ending)[0]), "skipped",
                       "outputs of this model exist (--continue)")


def warning_kind(warning: str) -> str:
    """The kind of an input warning, for counting: its text before the first colon, numbers as ``N``."""
    return re.sub(r"\d+", "N", warning.split(":")[0]).strip()


def write_summary(outcomes: Sequence[CaseOutcome], output_dir: Path, model_info: dict[str, Any],
                  options: CohortOptions, summary_name: str = SUMMARY_NAME, **extra: Any) -> PredictionSummary:
    """``summary.json`` (the outcomes, the model, the options, the input warnings of this run's cases counted per
    kind) and ``report.csv`` (every report in the folder)."""
    summary = PredictionSummary(list(outcomes), output_dir)
    reports = read_case_reports(output_dir)
    ids = {o.case_id for o in outcomes}
    kinds = Counter(warning_kind(w) for r in reports if r.get("case_id") in ids for w in r.get("input_warnings") or [])
    write_json({**summary.to_dict(), "input_warnings": dict(sorted(kinds.items())), "model": model_info,
                "options": _options_dict(options), **extra}, output_dir / summary_name)
    write_cohort_report(reports, output_dir / REPORT_CSV)
    logger.info("%s", summary.text())
    return summary


def summary_name_for(options: CohortOptions) -> str:
    return SUMMARY_NAME if options.num_parts == 1 else f"summary_part{options.part_id}of{options.num_parts}.json"


class _CohortRun:
    """The bookkeeping of one :func:`run_cohort` call."""

    def __init__(self, cascade: CascadePredictor, output_dir: Path, options: CohortOptions,
                 clinical: ClinicalTLVR | None, total: int) -> None:
        self.cascade = cascade
        self.output_dir = output_dir
        self.options = options
        self.clinical = clinical
        self.ending = normalise_ending(options.output_format)
        self.outcomes: dict[str, CaseOutcome] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self.finisher = WorkerStage(finish_case, options.num_processes_postprocessing)
        self.bar = progress_bar(total=total, desc="predict", unit="case", disable=not options.progress)

    def outputs(self, case: InputCase) -> tuple[Path, Path]:
        return output_paths(self.output_dir, case, self.ending)

    def record(self, case: InputCase, status: str, message: str = "", detail: str = "", **fields: Any) -> None:
        """Record a case's outcome; ``detail`` (a failure's traceback) goes to the debug log (``-v``)."""
        output, _ = self.outputs(case)
        timings = {k: round(v, 3) for k, v in self.timings.pop(case.case_id, {}).items()}
        self.outcomes[case.case_id] = CaseOutcome(case.case_id, str(case.path), str(output), status, message,
                                                  timings_s=timings, **fields)
        if status == "failed":
            logger.error("case %s failed: %s", case.case_id, message)
            if detail:
                logger.debug("case %s failed here:\n%s", case.case_id, detail.rstrip())
        elif status == "ok":
            logger.info("case %s: %s, %d lesion(s)", case.case_id, "liver found" if fields.get("liver_found")
                        else "NO LIVER FOUND", fields.get("lesion_count") or 0)
        self.bar.update(1)

    def finished(self, job: FinishJob, outcome: Outcome) -> None:
        if not outcome.ok:
            self.record(job.case, "failed", outcome.message, outcome.detail)
            return
        liver_found, lesion_count, timings = outcome.value
        self.timings.setdefault(job.case.case_id, {}).update(timings)
        self.record(job.case, "ok", "" if liver_found else "no liver found", liver_found=liver_found,
                    lesion_count=lesion_count)

    def loaded(self, job: LoadJob, outcome: Outcome) -> None:
        """Run the networks on a loaded case and hand it to the finisher."""
        case = job.case
        if not outcome.ok:
            self.record(case, "failed", outcome.message, outcome.detail)
            return
        try:
            finish, timings = network_job(self.cascade, self.clinical, case, outcome.value, *self.outputs(case))
        except Exception as exc:  # noqa: BLE001 - one case's failure must not stop the cohort
            self.record(case, "failed", failure_message(exc, case.path), traceback.format_exc())
            return
        self.timings[case.case_id] = timings
        for done in self.finisher.submit(finish):
            self.finished(*done)


def run_cohort(cascade: CascadePredictor, cases: Sequence[InputCase], output_dir: str | Path,
               options: CohortOptions | None = None, *, clinical: ClinicalTLVR | None = None,
               summary_name: str = SUMMARY_NAME) -> PredictionSummary:
    """Predict ``cases`` into ``output_dir``: ``<case><ending>``, ``<case>_report.json``, ``report.csv``, summary.

    Every case is predicted, replacing existing outputs (as nnU-Net does), unless ``options.continue_prediction``:
    then a case whose label map and report exist *and were made by this model* (the report's ``model.model_id``) is
    skipped, and one made by another model is redone. ``report.csv`` covers every case report in ``output_dir`` (so
    parts of a split cohort complete it together).
    """
    options = options or CohortOptions()
    output_dir = ensure_writable_folder(Path(output_dir))
    remove_stale_temp(output_dir)
    ending = normalise_ending(options.output_format)
    todo, skipped = cases_to_predict(cases, output_dir, ending, options, cascade.model_info.get("model_id"))
    run = _CohortRun(cascade, output_dir, options, clinical, len(todo))
    for case in skipped:
        run.outcomes[case.case_id] = skipped_outcome(case, output_dir, ending)
    loader = WorkerStage(load_case, options.num_processes_preprocessing)
    try:
        for case in todo:
            for done in loader.submit(LoadJob(case, cascade.liver.preprocessor)):
                run.loaded(*done)
        for done in loader.drain():
            run.loaded(*done)
        for done in run.finisher.drain():
            run.finished(*done)
    finally:
        loader.close()
        run.finisher.close()
        run.bar.close()
    return write_summary([run.outcomes[c.case_id] for c in cases], output_dir, cascade.model_info, options,
                         summary_name)


def _model_id_of(report_path: Path) -> str | None:
    """The ``model.model_id`` recorded in a case report, or None (unreadable, or written before model ids)."""
    try:
        return json.loads(report_path.read_text()).get("model", {}).get("model_id")
    except (OSError, ValueError, AttributeError):
        return None


def _options_dict(options: CohortOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}


def prepare_run(input_path: str | Path, output_dir: str | Path, options: CohortOptions, *,
                dataset: str | int | None = None, folds: Sequence[str] | None = None, checkpoint: str | None = None,
                trainer: str | None = None) -> tuple[list[InputCase], ModelPair]:
    """What every cohort runner checks before a model loads: the cases of ``input_path`` (this part of them), an
    output format they allow, an output folder apart from the input and writable; then the model pair."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    ending = normalise_ending(options.output_format)
    if input_path.is_dir() and output_dir.resolve() == input_path.resolve():
        raise SmoothSegError(f"{output_dir}: the output folder must differ from the input folder")
    cases = select_part(find_input_cases(input_path), options.num_parts, options.part_id)
    if options.allow_non_ct or options.resample_irregular:
        cases = [replace(case, allow_non_ct=options.allow_non_ct, resample_irregular=options.resample_irregular)
                 for case in cases]
    check_output_format(cases, ending)
    ensure_writable_folder(output_dir)  # before the models load and any case is computed
    pair = select_models(dataset, list(folds) if folds else None, checkpoint or DEFAULT_CHECKPOINT,
                         trainer or DEFAULT_TRAINER)
    return cases, pair


def predict(input_path: str | Path, output_dir: str | Path, *, dataset: str | int | None = None,
            folds: Sequence[str] | None = None, checkpoint: str | None = None, trainer: str | None = None,
            models: ModelOptions | None = None, options: CohortOptions | None = None) -> PredictionSummary:
    """``smoothseg_predict``: select the models, predict every case of ``input_path`` into ``output_dir``.

    ``input_path`` is a folder of ``<case>_0000<ending>`` or ``<case><ending>`` images, or one image file. With
    ``options.num_parts`` > 1 only every ``num_parts``-th case (from ``part_id``) is predicted and the summary is
    written as ``summary_part<K>of<N>.json``.
    """
    options = options or CohortOptions()
    cases, pair = prepare_run(input_path, output_dir, options, dataset=dataset, folds=folds, checkpoint=checkpoint,
                              trainer=trainer)
    cascade = CascadePredictor.from_models(pair, models)
    clinical = None
    if options.clinical_csv is not None:
        clinical = ClinicalTLVR(options.clinical_csv, cascade.tumor.tlvr_models)
    logger.info("predicting %d case(s) from %s into %s%s", len(cases), input_path, output_dir,
                f" (part {options.part_id} of {options.num_parts})" if options.num_parts > 1 else "")
    return run_cohort(cascade, cases, Path(output_dir), options, clinical=clinical,
                      summary_name=summary_name_for(options))
