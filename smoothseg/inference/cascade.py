"""The liver -> tumour inference cascade, for one image (:class:`CascadePredictor`) and for a cohort (:func:`predict`).

One case goes through these steps:

1. liver stage on the whole volume (:class:`~smoothseg.inference.predictor.StagePredictor` of the ``liver``
   configuration), probabilities reverted to the original grid, argmax;
2. largest connected component and 3D hole filling of the liver region, on the original grid;
3. tumour stage on the crop around the *predicted* liver, with intensities outside the predicted liver masked as in
   training (steps 3 and 4 of the method); skipped when no liver was found;
4. the liver refined at the tumour stage's fine spacing: inside the crop, the liver region is what both stages call
   liver (liver-stage mask and the tumour model's liver or tumour classes), again reduced to its largest component
   with holes filled; the tumour is kept inside it. The liver model sees the whole CT at a coarse spacing (4-6 mm on
   typical plans), where the liver boundary is blurred by a voxel or more; the tumour model was trained to delineate
   liver and tumour inside a perturbed liver mask at the fine spacing, so it can trim the coarse boundary (it cannot
   grow the liver beyond the mask it is given). ``refine_liver=False`` keeps the liver stage's mask;
5. local active contours per lesion (:func:`~smoothseg.inference.active_contour.refine_tumours`), with the tumour
   plan's intensity window and :class:`~smoothseg.inference.active_contour.ActiveContourParams` defaults, overridden
   by an optional ``"active_contour"`` dict in ``plans.json``'s tumor configuration; can be switched off;
6. tumour components under the minimum lesion volume chosen on the validation fold become liver
   (:mod:`smoothseg.inference.lesion_filter`; none without a full validation, or with ``min_lesion_volume_ml=0``);
7. the label map: 0 background, 1 liver, 2 tumour, written with the input's exact geometry (spacing, origin and any
   direction matrix), atomically, plus the per-case tumour report (:mod:`smoothseg.inference.report`).

For a cohort, :func:`run_cascade` processes every case independently: a failing case (unreadable, truncated, 2D,
NaN...) is recorded in ``summary.json`` with a message naming the file, and the others finish. Reading and
preprocessing of the next cases and the active contours + writing of finished ones can run in small process pools
(``num_processes_preprocessing`` / ``num_processes_postprocessing``) with at most that many cases in flight each,
so memory stays bounded; the networks run in the main process. This module imports no torch, so the worker
processes start quickly.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from smoothseg.atomic import write_json
from smoothseg.dataset.io import IMAGE_ENDINGS, Geometry, image_ending, read_image, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.inference.active_contour import ActiveContourParams, refine_tumours
from smoothseg.inference.lesion_filter import min_lesion_volume_from_folders, remove_small_lesions
from smoothseg.inference.postprocessing import bounding_box, fill_holes_3d, keep_inside, largest_connected_component
from smoothseg.inference.report import (
    ClinicalTLVR,
    case_report,
    read_case_reports,
    write_case_report,
    write_cohort_report,
)
from smoothseg.planning.plans import ConfigurationPlan
from smoothseg.preprocessing.preprocessor import TaskPreprocessor

#: The tumour stage's liver refinement is used only when it keeps at least this fraction of the liver stage's mask.
MIN_REFINED_LIVER_FRACTION = 0.5

if TYPE_CHECKING:
    from smoothseg.inference.model_store import ModelPair
    from smoothseg.inference.predictor import StagePredictor

__all__ = ["CascadePredictor", "CascadeResult", "InputCase", "PredictOptions", "PredictionSummary", "Predictor",
           "active_contour_params", "compose_labels", "find_input_cases", "postprocess_liver", "predict",
           "run_cascade", "select_part"]

logger = logging.getLogger(__name__)

LIVER, TUMOUR = 1, 2
#: The tumour configuration's class index for tumour ({0 outside the liver, 1 liver, 2 tumour}).
TUMOUR_CLASS = 2
SUMMARY_NAME = "summary.json"
REPORT_CSV = "report.csv"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# ------------------------------------------------------------------------------------------------------------------
# single-case building blocks
# ------------------------------------------------------------------------------------------------------------------

def postprocess_liver(mask: np.ndarray) -> np.ndarray:
    """Largest connected component (26-connectivity) with its holes filled in 3D; empty stays empty.

    Works inside the mask's bounding box plus one voxel, which gives the same result as on the whole grid.
    """
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask, 1)
    if box is None:
        return mask.copy()
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = fill_holes_3d(largest_connected_component(mask[box]))
    return out


def compose_labels(liver: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Label map 0 background, 1 liver, 2 tumour (tumour outside the liver is dropped)."""
    labels = np.asarray(liver, dtype=bool).astype(np.uint8)
    labels[np.asarray(tumour, dtype=bool) & (labels > 0)] = TUMOUR
    return labels


def active_contour_params(plan: ConfigurationPlan, plans_dict: dict[str, Any] | None = None) -> ActiveContourParams:
    """Active-contour parameters: the tumour plan's window, defaults, and ``plans.json``'s optional overrides.

    The overrides live in ``configurations.tumor.active_contour`` of the plans as written on disk (a dict of
    :class:`ActiveContourParams` fields); the typed plans do not model that key.
    """
    base = ActiveContourParams(window=(plan.window.lower, plan.window.upper))
    override = ((plans_dict or {}).get("configurations", {}).get(plan.name, {}) or {}).get("active_contour")
    if override is None:
        return base
    if not isinstance(override, dict):
        raise SmoothSegError(f"plans.json: configurations.{plan.name}.active_contour must be a dict, got "
                             f"{type(override).__name__}")
    try:
        return ActiveContourParams.from_dict({**base.to_dict(), **override})
    except (TypeError, ValueError) as exc:
        raise SmoothSegError(f"plans.json: configurations.{plan.name}.active_contour: {exc}") from None


def refine_and_compose(image: np.ndarray, geometry: Geometry, labels: np.ndarray,
                       params: ActiveContourParams | None) -> np.ndarray:
    """Active contours on the tumour of a cascade label map (``params`` None: none), then the final label map."""
    liver = labels > 0
    tumour = labels == TUMOUR
    if params is not None and tumour.any():
        tumour = refine_tumours(image, tumour, liver, geometry.spacing_zyx, params=params)
    return compose_labels(liver, tumour)


@dataclass
class CascadeResult:
    """One predicted case: the final label map, whether a liver was found, and seconds per stage."""

    labels: np.ndarray
    liver_found: bool
    timings: dict[str, float] = field(default_factory=dict)


class CascadePredictor:
    """Liver stage -> tumour stage on the predicted liver crop -> active contours, for images in memory.

    ``active_contour_params`` None switches the active contours off; ``min_lesion_volume_ml`` 0 keeps every lesion.
    """

    def __init__(self, liver: StagePredictor, tumor: StagePredictor,
                 active_contour_params: ActiveContourParams | None = None, model_info: dict[str, Any] | None = None,
                 refine_liver: bool = True, min_lesion_volume_ml: float = 0.0):
        if liver.task != "liver" or tumor.task != "tumor":
            raise SmoothSegError(f"a cascade needs a liver and a tumor stage, got {liver.task} and {tumor.task}")
        self.liver = liver
        self.tumor = tumor
        self.active_contour_params = active_contour_params
        self.refine_liver = refine_liver
        if not (math.isfinite(min_lesion_volume_ml) and min_lesion_volume_ml >= 0):
            raise SmoothSegError(f"the minimum lesion volume must be a non-negative number of ml, got "
                                 f"{min_lesion_volume_ml}")
        self.min_lesion_volume_ml = float(min_lesion_volume_ml)
        self.model_info = model_info or {"dataset": liver.dataset, "trainer": liver.trainer,
                                         "folds": {"liver": liver.folds, "tumor": tumor.folds}}

    @classmethod
    def from_models(cls, pair: ModelPair, *, device: str = "auto", step_size: float = 0.5, tta: bool | None = None,
                    active_contour: bool = True, progress: bool = False,
                    min_lesion_volume_ml: float | None = None) -> CascadePredictor:
        """Load the liver and tumour checkpoints of ``pair`` (see :func:`~.model_store.select_models`).

        ``min_lesion_volume_ml`` None: the volume chosen on the validation of the tumour model's folds.
        """
        from smoothseg.inference.model_store import raw_plans
        from smoothseg.inference.predictor import StagePredictor
        from smoothseg.training.trainer import resolve_device

        torch_device = resolve_device(device)
        stages = {task: StagePredictor(pair.checkpoints(task), device=torch_device, step_size=step_size, tta=tta,
                                       progress=progress) for task in ("liver", "tumor")}
        params = active_contour_params(stages["tumor"].plan, raw_plans(pair, "tumor")) if active_contour else None
        if params is not None:
            logger.info("active contours on: %s", params.to_dict())
        if min_lesion_volume_ml is None:
            min_lesion_volume_ml, source = min_lesion_volume_from_folders(p.parent for p in pair.checkpoints("tumor"))
        else:
            source = "given"
        logger.info("minimum lesion volume %g ml (%s)", min_lesion_volume_ml, source)
        info = {**pair.to_dict(), "active_contour": params is not None, "tta": stages["liver"].tta,
                "step_size": step_size, "min_lesion_volume_ml": min_lesion_volume_ml,
                "min_lesion_volume_source": source}
        return cls(stages["liver"], stages["tumor"], params, info, min_lesion_volume_ml=min_lesion_volume_ml)

    # -- stages ------------------------------------------------------------------------------------------------------
    def liver_stage(self, image: np.ndarray, geometry: Geometry,
                    prepared: tuple[np.ndarray, dict[str, Any]] | None = None) -> np.ndarray:
        """Steps 1-2: the post-processed liver-region mask on the original grid.

        ``prepared`` is the liver stage's ``preprocess(image, geometry)`` output when it was computed elsewhere.
        """
        data, properties = prepared if prepared is not None else self.liver.preprocess(image, geometry)
        probabilities = self.liver.predict_preprocessed(data)
        del data
        return postprocess_liver(self.liver.revert_labels(probabilities, properties) > 0)

    def tumour_stage(self, image: np.ndarray, geometry: Geometry,
                     liver: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Steps 3-4: the ``(liver, tumour)`` masks on the original grid, given the liver stage's mask ``liver``.

        The liver is ``liver`` refined by the tumour model (see the module docstring; never larger than ``liver``,
        and ``liver`` itself when ``refine_liver`` is off or the refinement would keep less than
        ``MIN_REFINED_LIVER_FRACTION`` of it); the tumour lies inside it. Both are empty when ``liver`` is.
        """
        tumour = np.zeros(liver.shape, dtype=bool)
        if not liver.any():
            return liver, tumour
        data, properties = self.tumor.preprocess(image, geometry, liver)
        probabilities = self.tumor.predict_preprocessed(data)
        del data
        cropped, region = self.tumor.revert_labels_to_crop(probabilities, properties)
        del probabilities
        tumour[region] = cropped == TUMOUR_CLASS
        if self.refine_liver:
            refined = np.zeros(liver.shape, dtype=bool)
            refined[region] = cropped > 0  # the tumour model's liver region: liver or tumour
            refined = postprocess_liver(refined & liver)
            # A boundary correction trims a few percent; a tumour model that removes most of the liver disagrees
            # wholesale with the liver model (e.g. it is barely trained), and the liver stage's mask is kept.
            if np.count_nonzero(refined) >= MIN_REFINED_LIVER_FRACTION * np.count_nonzero(liver):
                liver = refined
        return liver, keep_inside(tumour, liver)

    def network_stages(self, image: np.ndarray, geometry: Geometry, prepared: tuple[np.ndarray, dict[str, Any]]
                       | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Steps 1-4: the label map before active contours, and seconds per stage."""
        t0 = time.perf_counter()
        liver = self.liver_stage(image, geometry, prepared)
        t1 = time.perf_counter()
        liver, tumour = self.tumour_stage(image, geometry, liver)
        t2 = time.perf_counter()
        return compose_labels(liver, tumour), {"liver_stage": t1 - t0, "tumour_stage": t2 - t1}

    def predict(self, image: np.ndarray, geometry: Geometry) -> CascadeResult:
        """The whole cascade for one image in memory (HU, ``(z, y, x)``) with its geometry."""
        t0 = time.perf_counter()
        prepared = self.liver.preprocess(image, geometry)
        timings = {"preprocess": time.perf_counter() - t0}
        labels, stage_times = self.network_stages(image, geometry, prepared)
        timings.update(stage_times)
        t1 = time.perf_counter()
        labels = refine_and_compose(image, geometry, labels, self.active_contour_params)
        labels, _ = remove_small_lesions(labels, geometry.spacing_zyx, self.min_lesion_volume_ml)
        timings["active_contour"] = time.perf_counter() - t1
        return CascadeResult(labels, bool(labels.any()), timings)


#: ``from smoothseg.inference import Predictor``: the cascade is what users predict with.
Predictor = CascadePredictor


# ------------------------------------------------------------------------------------------------------------------
# input discovery
# ------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputCase:
    """One image to predict: its case id, its file and that file's ending."""

    case_id: str
    path: Path
    ending: str


def _case_of(path: Path) -> tuple[str, int | None, str] | None:
    ending = image_ending(path)
    if ending is None or path.name.startswith(".") or not path.is_file():
        return None
    stem = path.name[: -len(ending)]
    match = _CHANNEL_RE.match(stem)
    if match:
        return match.group("case"), int(match.group("channel")), ending
    return stem, None, ending


def find_input_cases(input_path: str | Path) -> list[InputCase]:
    """The cases in a folder (or one image file), sorted by case id.

    ``<case>_0000<ending>`` files (nnU-Net naming) give case ``<case>``; any other image file gives the case named
    by its file name without the ending. Other files are ignored. Several files for one case id, or channels other
    than ``_0000`` (the models read one CT channel), are errors.
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise SmoothSegError(f"{input_path}: input not found")
    files = [input_path] if input_path.is_file() else sorted(input_path.iterdir())
    by_id: dict[str, list[Path]] = {}
    cases: dict[str, InputCase] = {}
    for path in files:
        parsed = _case_of(path)
        if parsed is None:
            if input_path.is_file():
                raise SmoothSegError(f"{path}: not an image file; use one of {', '.join(IMAGE_ENDINGS)}")
            logger.debug("ignoring %s (not an image file)", path)
            continue
        case_id, channel, ending = parsed
        if channel not in (None, 0):
            raise SmoothSegError(f"{path}: channel {channel:04d} found, but the models read one CT channel "
                                 f"(<case>_0000{ending} only)")
        by_id.setdefault(case_id, []).append(path)
        cases[case_id] = InputCase(case_id, path, ending)
    duplicates = {cid: paths for cid, paths in by_id.items() if len(paths) > 1}
    if duplicates:
        listing = "; ".join(f"{cid}: {', '.join(p.name for p in paths)}" for cid, paths in sorted(duplicates.items()))
        raise SmoothSegError(f"{input_path}: several images for one case id ({listing})")
    if not cases:
        raise SmoothSegError(f"{input_path}: no images found (expected <case>_0000<ending> or <case><ending> with "
                             f"an ending among {', '.join(IMAGE_ENDINGS)})")
    return [cases[cid] for cid in sorted(cases)]


def select_part(cases: Sequence[InputCase], num_parts: int = 1, part_id: int = 0) -> list[InputCase]:
    """Every ``num_parts``-th case (sorted by id) starting at ``part_id``: the parts partition the cohort."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise SmoothSegError(f"--part-id must lie in [0, --num-parts), got part {part_id} of {num_parts}")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]


def _normalise_ending(ending: str | None) -> str | None:
    if ending is None:
        return None
    ending = ending if ending.startswith(".") else f".{ending}"
    if ending.lower() not in IMAGE_ENDINGS:
        raise SmoothSegError(f"--output-format {ending} is not supported; use one of {', '.join(IMAGE_ENDINGS)}")
    return ending.lower()


# ------------------------------------------------------------------------------------------------------------------
# cohort runs
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class PredictOptions:
    """Settings of a cohort run (the ``smoothseg_predict`` flags)."""

    device: str = "auto"
    step_size: float = 0.5
    tta: bool | None = None
    active_contour: bool = True
    output_format: str | None = None
    overwrite: bool = False
    num_processes_preprocessing: int = 2
    num_processes_postprocessing: int = 2
    num_parts: int = 1
    part_id: int = 0
    clinical_csv: Path | None = None
    progress: bool = True
    min_lesion_volume_ml: float | None = None  # None: chosen on the models' validation (postprocessing.json)


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


@dataclass
class _Outcome:
    """A worker's result: a value, or the failure message (exceptions may not survive pickling)."""

    ok: bool
    value: Any = None
    message: str = ""


def _failure_message(exc: BaseException, path: Path) -> str:
    message = str(exc) if isinstance(exc, SmoothSegError) else f"{type(exc).__name__}: {exc}"
    return message if str(path) in message or path.name in message else f"{path}: {message}"


@dataclass
class _LoadJob:
    case: InputCase
    preprocessor: TaskPreprocessor


def _load_case(job: _LoadJob) -> _Outcome:
    """Worker: read the image (validated by read_image) and preprocess it for the liver stage."""
    try:
        t0 = time.perf_counter()
        image, geometry = read_image(job.case.path)
        data, _, properties = job.preprocessor.preprocess(image, geometry)
        return _Outcome(True, (image, geometry, (data, properties), time.perf_counter() - t0))
    except Exception as exc:  # noqa: BLE001 - one case's failure must not stop the cohort
        return _Outcome(False, message=_failure_message(exc, job.case.path))


@dataclass
class _FinishJob:
    case: InputCase
    image: np.ndarray
    geometry: Geometry
    labels: np.ndarray
    params: ActiveContourParams | None
    output: Path
    report_path: Path
    clinical_tlvr: float | None
    report_extra: dict[str, Any]
    min_lesion_volume_ml: float = 0.0


def _finish_case(job: _FinishJob) -> _Outcome:
    """Worker: active contours, final label map, atomic writes of the map and then of the report."""
    try:
        t0 = time.perf_counter()
        labels = refine_and_compose(job.image, job.geometry, job.labels, job.params)
        labels, removed = remove_small_lesions(labels, job.geometry.spacing_zyx, job.min_lesion_volume_ml)
        t1 = time.perf_counter()
        liver_found = bool(job.labels.any())
        write_image(labels, job.geometry, job.output)
        report = case_report(job.case.case_id, job.image, labels, job.geometry, liver_found=liver_found,
                             clinical_tlvr=job.clinical_tlvr,
                             extra={**job.report_extra, "small_lesions_removed": removed})
        write_case_report(report, job.report_path)  # last: its presence marks a finished case
        timings = {"active_contour": t1 - t0, "write": time.perf_counter() - t1}
        return _Outcome(True, (liver_found, report["lesion_count"], timings))
    except Exception as exc:  # noqa: BLE001
        return _Outcome(False, message=_failure_message(exc, job.case.path))


class _Stage:
    """Runs ``fn(job)`` in a small spawn-process pool (inline for ``workers == 0``), at most ``workers`` jobs in flight.

    Results come back in submission order. When a worker dies (e.g. killed for memory), the oldest job fails, the pool
    is restarted and the other jobs in flight are resubmitted.
    """

    def __init__(self, fn: Callable[[Any], _Outcome], workers: int) -> None:
        self.fn = fn
        self.workers = max(int(workers), 0)
        self.pending: deque[tuple[Any, Future]] = deque()
        self.executor: ProcessPoolExecutor | None = None

    def _submit(self, job: Any) -> Future:
        if self.executor is None:
            self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self.executor.submit(self.fn, job)

    def submit(self, job: Any) -> list[tuple[Any, _Outcome]]:
        """Queue ``job``; returns the finished jobs that had to be collected to stay within the limit."""
        if self.workers == 0:
            return [(job, self.fn(job))]
        self.pending.append((job, self._submit(job)))
        done = []
        while len(self.pending) > self.workers:
            done.append(self._pop())
        return done

    def _pop(self) -> tuple[Any, _Outcome]:
        job, future = self.pending.popleft()
        try:
            return job, future.result()
        except BrokenProcessPool:
            self._restart()
            return job, _Outcome(False, message=f"{job.case.path}: a worker process died while processing this case "
                                                "(out of memory?)")

    def _restart(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = None
        self.pending = deque((job, self._submit(job)) for job, _ in self.pending)

    def drain(self) -> Iterator[tuple[Any, _Outcome]]:
        while self.pending:
            yield self._pop()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


class _CohortRun:
    """The bookkeeping of one :func:`run_cascade` call."""

    def __init__(self, cascade: CascadePredictor, output_dir: Path, options: PredictOptions,
                 clinical: ClinicalTLVR | None, total: int) -> None:
        self.cascade = cascade
        self.output_dir = output_dir
        self.options = options
        self.clinical = clinical
        self.ending = _normalise_ending(options.output_format)
        self.outcomes: dict[str, CaseOutcome] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self.finisher = _Stage(_finish_case, options.num_processes_postprocessing)
        self.bar = tqdm(total=total, desc="predict", unit="case", disable=not options.progress)

    def outputs(self, case: InputCase) -> tuple[Path, Path]:
        return (self.output_dir / f"{case.case_id}{self.ending or case.ending}",
                self.output_dir / f"{case.case_id}_report.json")

    def record(self, case: InputCase, status: str, message: str = "", **fields: Any) -> None:
        output, _ = self.outputs(case)
        timings = {k: round(v, 3) for k, v in self.timings.pop(case.case_id, {}).items()}
        self.outcomes[case.case_id] = CaseOutcome(case.case_id, str(case.path), str(output), status, message,
                                                  timings_s=timings, **fields)
        if status == "failed":
            logger.error("case %s failed: %s", case.case_id, message)
        elif status == "ok":
            logger.info("case %s: %s, %d lesion(s)", case.case_id, "liver found" if fields.get("liver_found")
                        else "NO LIVER FOUND", fields.get("lesion_count") or 0)
        self.bar.update(1)

    def finished(self, job: _FinishJob, outcome: _Outcome) -> None:
        if not outcome.ok:
            self.record(job.case, "failed", outcome.message)
            return
        liver_found, lesion_count, timings = outcome.value
        self.timings.setdefault(job.case.case_id, {}).update(timings)
        self.record(job.case, "ok", "" if liver_found else "no liver found", liver_found=liver_found,
                    lesion_count=lesion_count)

    def loaded(self, job: _LoadJob, outcome: _Outcome) -> None:
        """Run the networks on a loaded case and hand it to the finisher."""
        case = job.case
        if not outcome.ok:
            self.record(case, "failed", outcome.message)
            return
        image, geometry, prepared, load_seconds = outcome.value
        try:
            labels, timings = self.cascade.network_stages(image, geometry, prepared)
            clinical = self.clinical.predict(case.case_id) if self.clinical is not None else None
        except Exception as exc:  # noqa: BLE001 - one case's failure must not stop the cohort
            self.record(case, "failed", _failure_message(exc, case.path))
            return
        self.timings[case.case_id] = {"read_preprocess": load_seconds, **timings}
        output, report_path = self.outputs(case)
        extra = {"input": str(case.path), "output": str(output), "model": self.cascade.model_info}
        finish = _FinishJob(case, image, geometry, labels, self.cascade.active_contour_params, output, report_path,
                            clinical, extra, self.cascade.min_lesion_volume_ml)
        for done in self.finisher.submit(finish):
            self.finished(*done)


def run_cascade(cascade: CascadePredictor, cases: Sequence[InputCase], output_dir: str | Path,
                options: PredictOptions | None = None, *, clinical: ClinicalTLVR | None = None,
                summary_name: str = SUMMARY_NAME) -> PredictionSummary:
    """Predict ``cases`` into ``output_dir``: ``<case><ending>``, ``<case>_report.json``, ``report.csv``, summary.

    Cases whose label map and report both exist are skipped unless ``options.overwrite``. ``report.csv`` covers
    every case report in ``output_dir`` (so parts of a split cohort complete it together).
    """
    options = options or PredictOptions()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ending = _normalise_ending(options.output_format)
    todo, skipped = [], []
    for case in cases:
        output = output_dir / f"{case.case_id}{ending or case.ending}"
        if output.resolve() == case.path.resolve():
            raise SmoothSegError(f"{output}: the label map would overwrite its input image; choose another -o")
        if not options.overwrite and output.exists() and (output_dir / f"{case.case_id}_report.json").exists():
            skipped.append(case)
        else:
            todo.append(case)
    if skipped:
        logger.info("%d case(s) already predicted in %s are skipped (use --overwrite to redo them)", len(skipped),
                    output_dir)
    run = _CohortRun(cascade, output_dir, options, clinical, len(todo))
    for case in skipped:
        run.outcomes[case.case_id] = CaseOutcome(case.case_id, str(case.path), str(run.outputs(case)[0]), "skipped",
                                                 "outputs exist (use --overwrite to redo)")
    loader = _Stage(_load_case, options.num_processes_preprocessing)
    try:
        for case in todo:
            for done in loader.submit(_LoadJob(case, cascade.liver.preprocessor)):
                run.loaded(*done)
        for done in loader.drain():
            run.loaded(*done)
        for done in run.finisher.drain():
            run.finished(*done)
    finally:
        loader.close()
        run.finisher.close()
        run.bar.close()
    summary = PredictionSummary([run.outcomes[c.case_id] for c in cases], output_dir)
    write_json({**summary.to_dict(), "model": cascade.model_info, "options": _options_dict(options)},
               output_dir / summary_name)
    write_cohort_report(read_case_reports(output_dir), output_dir / REPORT_CSV)
    logger.info("%s", summary.text())
    return summary


def _options_dict(options: PredictOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}


def predict(input_path: str | Path, output_dir: str | Path, *, dataset: str | int | None = None,
            folds: Sequence[str] | None = None, checkpoint: str | None = None, trainer: str | None = None,
            options: PredictOptions | None = None) -> PredictionSummary:
    """``smoothseg_predict``: select the models, predict every case of ``input_path`` into ``output_dir``.

    ``input_path`` is a folder of ``<case>_0000<ending>`` or ``<case><ending>`` images, or one image file. With
    ``options.num_parts`` > 1 only every ``num_parts``-th case (from ``part_id``) is predicted and the summary is
    written as ``summary_part<K>of<N>.json``.
    """
    from smoothseg.inference.model_store import DEFAULT_CHECKPOINT, DEFAULT_TRAINER, select_models

    options = options or PredictOptions()
    input_path, output_dir = Path(input_path), Path(output_dir)
    _normalise_ending(options.output_format)
    if input_path.is_dir() and output_dir.resolve() == input_path.resolve():
        raise SmoothSegError(f"{output_dir}: the output folder must differ from the input folder")
    cases = select_part(find_input_cases(input_path), options.num_parts, options.part_id)
    pair = select_models(dataset, list(folds) if folds else None, checkpoint or DEFAULT_CHECKPOINT,
                         trainer or DEFAULT_TRAINER)
    cascade = CascadePredictor.from_models(pair, device=options.device, step_size=options.step_size,
                                           tta=options.tta, active_contour=options.active_contour,
                                           min_lesion_volume_ml=options.min_lesion_volume_ml)
    clinical = None
    if options.clinical_csv is not None:
        clinical = ClinicalTLVR(options.clinical_csv, cascade.tumor.tlvr_models)
    summary_name = SUMMARY_NAME if options.num_parts == 1 else \
        f"summary_part{options.part_id}of{options.num_parts}.json"
    logger.info("predicting %d case(s) from %s into %s%s", len(cases), input_path, output_dir,
                f" (part {options.part_id} of {options.num_parts})" if options.num_parts > 1 else "")
    return run_cascade(cascade, cases, output_dir, options, clinical=clinical, summary_name=summary_name)
