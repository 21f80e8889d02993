"""The cohort runner's worker side: reading + preprocessing a case, and active contours + writing a finished one,
each in a small spawn-process pool with a bounded number of cases in flight.

This module imports no torch, so worker processes start quickly. A worker returns an :class:`_Outcome` (a value or
the failure message as data) instead of raising: exceptions may not survive pickling back to the parent.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothseg.dataset.io import Geometry, ct_input_warnings, read_image
from smoothseg.errors import SmoothSegError
from smoothseg.inference.inputs import InputCase
from smoothseg.inference.lesion_filter import remove_small_lesions
from smoothseg.inference.postprocessing import refine_and_compose
from smoothseg.inference.report import case_report, write_case_report
from smoothseg.inference.writers import write_label_map
from smoothseg.parallel import process_pool
from smoothseg.planning.plans import ActiveContourPlan
from smoothseg.preprocessing.preprocessor import TaskPreprocessor


@dataclass
class Outcome:
    """A worker's result: a value, or the failure message (exceptions may not survive pickling)."""

    ok: bool
    value: Any = None
    message: str = ""
    detail: str = ""  # the failure's traceback, logged at debug level (-v) by the parent


def failure_message(exc: BaseException, path: Path) -> str:
    message = str(exc) if isinstance(exc, SmoothSegError) else f"{type(exc).__name__}: {exc}"
    return message if str(path) in message or path.name in message else f"{path}: {message}"


@dataclass
class LoadJob:
    case: InputCase
    preprocessor: TaskPreprocessor


def load_case(job: LoadJob) -> Outcome:
    """Worker: read the image (validated by read_image) and preprocess it for the liver stage."""
    try:
        t0 = time.perf_counter()
        notes: list[str] = []  # what the reader cleaned up (e.g. duplicate DICOM slices dropped)
        image, geometry = read_image(job.case.path, allow_non_ct=job.case.allow_non_ct,
                                     resample_irregular=job.case.resample_irregular, notes=notes)
        warnings = notes + ct_input_warnings(image)
        data, _, properties = job.preprocessor.preprocess(image, geometry)
        return Outcome(True, (image, geometry, (data, properties), time.perf_counter() - t0, warnings))
    except Exception as exc:  # noqa: BLE001 - one case's failure must not stop the cohort
        return Outcome(False, message=failure_message(exc, job.case.path), detail=traceback.format_exc())


@dataclass
class FinishJob:
    case: InputCase
    image: np.ndarray
    geometry: Geometry
    labels: np.ndarray
    params: ActiveContourPlan | None
    output: Path
    report_path: Path
    clinical_tlvr: float | None
    report_extra: dict[str, Any]
    min_lesion_volume_ml: float = 0.0
    tumour_probability: np.ndarray | None = None  # gives each reported lesion its confidence


def finish_case(job: FinishJob) -> Outcome:
    """Worker: active contours, final label map, atomic writes of the map and then of the report."""
    try:
        t0 = time.perf_counter()
        labels = refine_and_compose(job.image, job.geometry, job.labels, job.params)
        labels, removed = remove_small_lesions(labels, job.geometry.spacing_zyx, job.min_lesion_volume_ml)
        t1 = time.perf_counter()
        liver_found = bool(job.labels.any())
        write_label_map(labels, job.geometry, job.output, source=job.case.path)
        report = case_report(job.case.case_id, job.image, labels, job.geometry, liver_found=liver_found,
                             clinical_tlvr=job.clinical_tlvr, tumour_probability=job.tumour_probability,
                             extra={**job.report_extra, "small_lesions_removed": removed})
        write_case_report(report, job.report_path)  # last: its presence marks a finished case
        timings = {"active_contour": t1 - t0, "write": time.perf_counter() - t1}
        return Outcome(True, (liver_found, report["lesion_count"], timings))
    except Exception as exc:  # noqa: BLE001
        return Outcome(False, message=failure_message(exc, job.case.path), detail=traceback.format_exc())


class WorkerStage:
    """Runs ``fn(job)`` in a small spawn-process pool (inline for ``workers == 0``), at most ``workers`` jobs in flight.

    Results come back in submission order. When a worker dies (e.g. killed for memory), the oldest job fails, the pool
    is restarted and the other jobs in flight are resubmitted.
    """

    def __init__(self, fn: Callable[[Any], Outcome], workers: int) -> None:
        self.fn = fn
        self.workers = max(int(workers), 0)
        self.pending: deque[tuple[Any, Future]] = deque()
        self.executor: ProcessPoolExecutor | None = None

    def _submit(self, job: Any) -> Future:
        if self.executor is None:
            self.executor = process_pool(self.workers, multiprocessing.get_context("spawn"))
        return self.executor.submit(self.fn, job)

    def submit(self, job: Any) -> list[tuple[Any, Outcome]]:
        """Queue ``job``; returns the finished jobs that had to be collected to stay within the limit."""
        if self.workers == 0:
            return [(job, self.fn(job))]
        self.pending.append((job, self._submit(job)))
        done = []
        while len(self.pending) > self.workers:
            done.append(self._pop())
        return done

    def _pop(self) -> tuple[Any, Outcome]:
        job, future = self.pending.popleft()
        try:
            return job, future.result()
        except BrokenProcessPool:
            self._restart()
            return job, Outcome(False, message=f"{job.case.path}: a worker process died while processing this case "
                                                "(out of memory?)")

    def _restart(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = None
        self.pending = deque((job, self._submit(job)) for job, _ in self.pending)

    def drain(self) -> Iterator[tuple[Any, Outcome]]:
        while self.pending:
            yield self._pop()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None
