"""Cohort prediction on Dask: each case is one task, each worker keeps its model pair loaded.

``smoothseg_predict -i IN -o OUT --dask-workers N`` starts a local cluster of N single-threaded worker processes;
``--dask-scheduler ADDRESS`` uses a running scheduler instead (e.g. one that dask-jobqueue started on SLURM, see
documentation/scaling.md). The case list, the ``--continue`` decision, the one ``summary.json`` and ``report.csv``
are made here, in the client; a worker loads the liver and tumour models the first time it gets a case and keeps
them for the next (keyed by the model id), predicts the case with the same code as a serial run
(:func:`smoothseg.inference.cohort.predict_case_files`) and writes its label map and report atomically itself. A
failing case, or one whose worker died twice, is a failed entry in the summary; the other cases finish.

Dask is optional: ``pip install -e ".[cluster]"``. Without it, the flags stop with a message saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from smoothseg.device import resolve_device
from smoothseg.errors import SmoothSegError
from smoothseg.inference.cascade import CascadePredictor, ModelOptions, describe_models
from smoothseg.inference.cohort import (
    CaseOutcome,
    CohortOptions,
    PredictionSummary,
    cases_to_predict,
    predict_case_files,
    prepare_run,
    skipped_outcome,
    summary_name_for,
    write_summary,
)
from smoothseg.inference.inputs import InputCase, normalise_ending
from smoothseg.knowledge.clinical_tlvr import ClinicalTLVR
from smoothseg.logging_setup import progress_bar
from smoothseg.models.store import ModelPair

__all__ = ["DaskSettings", "predict_on_dask"]

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[cluster]" (dask[distributed])'
#: A worker that died this many times while holding a case gives the case up (Dask's ``allowed-failures``; set for the
#: local cluster this module starts, while a running scheduler keeps its own setting).
ALLOWED_FAILURES = 1


@dataclass(frozen=True)
class DaskSettings:
    """Where the cases run: ``workers`` local processes, or the cluster behind ``scheduler`` (an address)."""

    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.scheduler is None):
            raise SmoothSegError("give either --dask-workers N (a local cluster) or --dask-scheduler ADDRESS")
        if self.workers is not None and self.workers < 1:
            raise SmoothSegError(f"--dask-workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class _ModelJob:
    """What a worker needs to build the cascade: the model pair, the model options and the clinical table."""

    pair: ModelPair
    models: ModelOptions
    model_id: str
    clinical_csv: str | None


_LOADED: dict[str, tuple[CascadePredictor, ClinicalTLVR | None]] = {}


def _cascade_for(job: _ModelJob) -> tuple[CascadePredictor, ClinicalTLVR | None]:
    """The worker's cascade for ``job``, loaded once per worker process (one model pair kept at a time)."""
    if job.model_id not in _LOADED:
        _LOADED.clear()
        cascade = CascadePredictor.from_models(job.pair, job.models)
        clinical = ClinicalTLVR(job.clinical_csv, cascade.tumor.tlvr_models) if job.clinical_csv else None
        _LOADED[job.model_id] = (cascade, clinical)
    return _LOADED[job.model_id]


def _predict_task(case: InputCase, job: _ModelJob, output_dir: str, ending: str | None) -> CaseOutcome:
    """A Dask task: one case to files; a failure (also while loading the models) is the outcome, not an error."""
    try:
        cascade, clinical = _cascade_for(job)
    except Exception as exc:  # noqa: BLE001 - reported per case, the run goes on
        return CaseOutcome(case.case_id, str(case.path), "", "failed", f"cannot load the models: {exc}")
    return predict_case_files(cascade, clinical, case, Path(output_dir), ending)


def _client(settings: DaskSettings):
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SmoothSegError(f"--dask-workers/--dask-scheduler need Dask: {INSTALL_HINT}") from None
    if settings.scheduler is not None:
        try:
            return Client(settings.scheduler, timeout="30s")
        except OSError as exc:
            raise SmoothSegError(f"cannot reach the Dask scheduler at {settings.scheduler} ({exc})") from None
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = LocalCluster(n_workers=settings.workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")  # any free port: never clashes with a running cluster
    return Client(cluster)


def _failed(case: InputCase, output_dir: Path, ending: str | None, exc: BaseException) -> CaseOutcome:
    output = output_dir / f"{case.case_id}{ending or case.ending}"
    return CaseOutcome(case.case_id, str(case.path), str(output), "failed",
                       f"{case.path}: the Dask task failed ({type(exc).__name__}: {exc})")


def run_on_dask(cases: Sequence[InputCase], output_dir: Path, job: _ModelJob, info: dict[str, Any],
                options: CohortOptions, settings: DaskSettings) -> PredictionSummary:
    """Fan ``cases`` out as tasks, collect the outcomes and write the one summary (see the module docstring)."""
    ending = normalise_ending(options.output_format)
    todo, skipped = cases_to_predict(cases, output_dir, ending, options, job.model_id)
    outcomes = {c.case_id: skipped_outcome(c, output_dir, ending) for c in skipped}
    if todo:
        from dask.distributed import as_completed

        with _client(settings) as client:
            logger.info("Dask: %d case(s) on %d worker(s) (%s)", len(todo), len(client.scheduler_info()["workers"]),
                        settings.scheduler or "local cluster")
            futures = {client.submit(_predict_task, case, job, str(output_dir), ending, pure=False,
                                     key=f"smoothseg-{case.case_id}-{job.model_id}"): case for case in todo}
            bar = progress_bar(total=len(futures), desc="predict (dask)", unit="case", disable=not options.progress)
            for future in as_completed(futures):
                case = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: this case fails, the others go on
                    outcome = _failed(case, output_dir, ending, exc)
                if outcome.status == "failed":
                    logger.error("case %s failed: %s", case.case_id, outcome.message)
                outcomes[case.case_id] = outcome
                bar.update(1)
            bar.close()
    return write_summary([outcomes[c.case_id] for c in cases], output_dir, info, options, summary_name_for(options),
                         runner={"dask_workers": settings.workers, "dask_scheduler": settings.scheduler})


def predict_on_dask(input_path: str | Path, output_dir: str | Path, settings: DaskSettings, *,
                    dataset: str | int | None = None, folds: Sequence[str] | None = None,
                    checkpoint: str | None = None, trainer: str | None = None, models: ModelOptions | None = None,
                    options: CohortOptions | None = None) -> PredictionSummary:
    """``smoothseg_predict --dask-workers N | --dask-scheduler ADDRESS``: as
    :func:`~smoothseg.inference.cohort.predict`, with the cases fanned out over Dask workers. The pre- and
    post-processing pools of ``options`` are not used: each worker is one process doing one case at a time."""
    options = options or CohortOptions()
    models = models or ModelOptions()
    models = replace(models, device=models.device if models.device is not None else resolve_device("auto"),
                     progress=False)
    cases, pair = prepare_run(input_path, output_dir, options, dataset=dataset, folds=folds, checkpoint=checkpoint,
                              trainer=trainer)
    info = describe_models(pair, models)
    job = _ModelJob(pair, models, info["model_id"], str(options.clinical_csv) if options.clinical_csv else None)
    return run_on_dask(cases, Path(output_dir), job, info, options, settings)
